"""Tests of fingerprint.detect.normalize: invisible and bidi characters, NFC/NFKC, homoglyphs,
offsets back to the original text, strict UTF-8 decoding and validation.

Non-ASCII test characters are written as escapes so that the spoofed strings are visible."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fingerprint.detect import normalize as nz
from fingerprint.detect.normalize import (
    NormalizeConfig,
    decode_utf8,
    homoglyph_table,
    normalize_text,
    normalize_with_offsets,
    original_span,
)
from fingerprint.errors import ConfigError, InputError

HAVE_CONFUSABLES = importlib.util.find_spec("confusable_homoglyphs") is not None
needs_confusables = pytest.mark.skipif(
    not HAVE_CONFUSABLES, reason="the confusable-homoglyphs package is not installed"
)

ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e"]
BIDI_CONTROLS = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068"]
BIDI_CONTROLS.append("\u2069")
VARIATION_SELECTORS = ["\ufe00", "\ufe0f", "\U000e0100", "\u180b"]

SENTENCE = "The quick brown fox jumps over the lazy dog, said Pixie to Jo."
# Latin letter -> Cyrillic look-alike (the test's spoofing, not the library's table).
CYRILLIC_SPOOF = {
    "a": "\u0430",
    "c": "\u0441",
    "e": "\u0435",
    "i": "\u0456",
    "j": "\u0458",
    "o": "\u043e",
    "p": "\u0440",
    "s": "\u0455",
    "x": "\u0445",
    "y": "\u0443",
    "J": "\u0408",
    "P": "\u0420",
    "T": "\u0422",
}


def spoof(text: str) -> str:
    return "".join(CYRILLIC_SPOOF.get(ch, ch) for ch in text)


# --------------------------------------------------------------------------------------------
# Invisible characters and bidi controls


def test_zero_width_insertions_are_removed() -> None:
    word = "watermark"
    attacked = ZERO_WIDTH[0].join(word[:5]) + "".join(ZERO_WIDTH) + word[5:]
    assert attacked != word
    assert normalize_text(attacked) == word
    out, offsets = normalize_with_offsets(attacked)
    assert out == word
    assert [attacked[i] for i in offsets] == list(word)


def test_variation_selectors_and_grapheme_joiner_are_removed() -> None:
    text = "a" + "".join(VARIATION_SELECTORS) + "b\u034fc"
    assert normalize_text(text) == "abc"


def test_meaningful_combining_marks_and_visible_format_characters_are_kept() -> None:
    # Combining marks are not invisible: "e" + acute survives (composed by NFC).
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text("e\u0301", NormalizeConfig(form="none")) == "e\u0301"
    assert normalize_text("a\u0316\u0301", NormalizeConfig(form="none")) == "a\u0316\u0301"
    # Arabic number sign is a visible format character (Cf but not default-ignorable).
    assert normalize_text("\u0600\u0661") == "\u0600\u0661"


def test_bidi_overrides_and_isolates_are_removed() -> None:
    text = "pay \u202eusd 001\u202c now \u2067x\u2069 \u2066y\u2069 \u2068z\u2069"
    assert normalize_text(text) == "pay usd 001 now x y z"
    for control in BIDI_CONTROLS:
        assert normalize_text(f"a{control}b") == "ab"


def test_strip_options_are_independent() -> None:
    text = "a\u200bb\u202ec\u202c"
    only_bidi = NormalizeConfig(strip_invisible=False)
    only_invisible = NormalizeConfig(strip_bidi=False)
    neither = NormalizeConfig(strip_invisible=False, strip_bidi=False)
    assert normalize_text(text, only_bidi) == "a\u200bbc"
    assert normalize_text(text, only_invisible) == "ab\u202ec\u202c"
    assert normalize_text(text, neither) == text
    # Implicit direction marks are invisible characters, not explicit controls.
    assert normalize_text("a\u200eb\u200fc\u061cd", only_invisible) == "abcd"


# --------------------------------------------------------------------------------------------
# NFC / NFKC


def test_nfkc_folds_full_width_forms_and_ligatures() -> None:
    nfkc = NormalizeConfig(form="NFKC")
    full_width = "".join(chr(ord(ch) + 0xFEE0) for ch in "watermark")
    assert normalize_text(full_width, nfkc) == "watermark"
    assert normalize_text("\ufb01nal \ufb02ow \ufb00", nfkc) == "final flow ff"
    bold = "".join(chr(0x1D41A + ord(ch) - ord("a")) for ch in "hello")
    assert normalize_text(bold, nfkc) == "hello"
    assert normalize_text("x\u00b2", nfkc) == "x2"
    # NFC leaves compatibility characters alone.
    assert normalize_text(full_width + "\ufb01") == full_width + "\ufb01"


def test_offsets_of_expansions_and_compositions() -> None:
    nfkc = NormalizeConfig(form="NFKC")
    assert normalize_with_offsets("\ufb01x", nfkc) == ("fix", [0, 0, 1])
    assert normalize_with_offsets("a\u200b\ufb03", nfkc) == ("affi", [0, 2, 2, 2])
    assert normalize_with_offsets("xe\u0301y") == ("x\u00e9y", [0, 1, 3])
    assert normalize_with_offsets("\u1100\u1161!") == ("\uac00!", [0, 2])
    # Half-width katakana + half-width voiced mark compose into one character under NFKC.
    assert normalize_with_offsets("\uff76\uff9e", nfkc) == ("\u30ac", [0])
    # An invisible character between a letter and its mark does not block the composition.
    assert normalize_with_offsets("e\u200b\u0301") == ("\u00e9", [0])


def test_original_span() -> None:
    text = "a\u200bb\ufb01c"
    out, offsets = normalize_with_offsets(text, NormalizeConfig(form="NFKC"))
    assert out == "abfic"
    assert original_span(offsets, 0, 1, len(text)) == (0, 2)  # covers the removed ZWSP
    assert original_span(offsets, 1, 2, len(text)) == (2, 3)
    assert original_span(offsets, 2, 4, len(text)) == (3, 4)  # "fi" <- the ligature
    assert original_span(offsets, 2, 3, len(text)) == (3, 4)  # "f" alone: the whole ligature
    assert original_span(offsets, 3, 4, len(text)) == (3, 4)
    assert original_span(offsets, 0, len(out), len(text)) == (0, len(text))
    assert original_span(offsets, 5, 5, len(text)) == (len(text), len(text))
    with pytest.raises(InputError):
        original_span(offsets, 3, 2, len(text))
    with pytest.raises(InputError):
        original_span(offsets, 0, 6, len(text))


# --------------------------------------------------------------------------------------------
# Homoglyphs


@needs_confusables
def test_cyrillic_spoofed_sentence_maps_back_to_ascii() -> None:
    attacked = spoof(SENTENCE)
    assert attacked != SENTENCE and not attacked.isascii()
    config = NormalizeConfig(homoglyphs=True)
    assert normalize_text(attacked, config) == SENTENCE
    assert normalize_with_offsets(attacked, config) == (SENTENCE, list(range(len(SENTENCE))))
    # Combined with the other tricks.
    mixed = "\u200b".join(attacked[:10]) + "\u202e" + attacked[10:]
    out, offsets = normalize_with_offsets(mixed, NormalizeConfig(form="NFKC", homoglyphs=True))
    assert out == SENTENCE
    assert [normalize_text(mixed[i], config) for i in offsets] == list(SENTENCE)
    # Off by default.
    assert normalize_text(attacked) == attacked


@needs_confusables
def test_homoglyphs_never_change_ascii() -> None:
    printable = "".join(map(chr, range(0x20, 0x7F)))
    config = NormalizeConfig(form="NFKC", homoglyphs=True)
    assert normalize_text(printable, config) == printable
    assert normalize_text(printable + "\u0430", config) == printable + "a"


@needs_confusables
def test_homoglyph_table_contents() -> None:
    table = homoglyph_table()
    assert len(table) > 1000
    assert all(len(v) == 1 and v.isascii() for v in table.values())
    assert not any(k.isascii() for k in table)
    assert not any(unicodedata.category(k)[0] in "MC" for k in table)
    expected = {
        "\u0430": "a",  # Cyrillic a
        "\u0410": "A",
        "\u03bf": "o",  # Greek omicron
        "\u039f": "O",
        "\u0406": "I",  # Cyrillic I: the case decides between I and l
        "\U0001d7cf": "1",  # mathematical bold digit one: a digit, so 1
        "\u2019": "'",
        "\u0131": "i",
    }
    for source, target in expected.items():
        assert table[source] == target, hex(ord(source))
    # A character whose prototype is a sequence is not replaced.
    assert "\u01c9" not in table


@needs_confusables
def test_homoglyphs_keep_combining_marks() -> None:
    config = NormalizeConfig(homoglyphs=True)
    # Precomposed Cyrillic io -> Latin e with diaeresis.
    assert normalize_text("\u0451", config) == "\u00eb"
    # Cyrillic e + combining acute -> Latin e + acute, composed by NFC.
    assert normalize_with_offsets("x\u0435\u0301", config) == ("x\u00e9", [0, 1])
    assert normalize_text("\u0435\u0301", NormalizeConfig(form="none", homoglyphs=True)) == (
        "e\u0301"
    )


def test_missing_confusables_data_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nz, "_CONFUSABLES_MODULE", "no_such_module_for_confusables")
    nz._homoglyph_map.cache_clear()
    try:
        with pytest.raises(ConfigError, match="confusable-homoglyphs"):
            normalize_text("\u0430", NormalizeConfig(homoglyphs=True))
        with pytest.raises(ConfigError):
            normalize_text("plain ascii", NormalizeConfig(homoglyphs=True))
        assert normalize_text("\u0430") == "\u0430"  # homoglyphs off: no data needed
    finally:
        nz._homoglyph_map.cache_clear()


def test_corrupt_confusables_data_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "confusables.json"
    bad.write_text('{"a": [{"nope": 1}]}', encoding="utf-8")
    monkeypatch.setattr(nz, "_confusables_path", lambda: bad)
    nz._homoglyph_map.cache_clear()
    try:
        with pytest.raises(ConfigError, match="cannot read"):
            normalize_text("\u0430", NormalizeConfig(homoglyphs=True))
    finally:
        nz._homoglyph_map.cache_clear()


def test_prototype_direction_recovery() -> None:
    # Undirected pairs as the package stores them: a star around "a", a lone pair (source
    # first), and a right-to-left source wrapped in display marks.
    data = {
        "\u0430": [{"c": "a"}],
        "a": [{"c": "\u0430"}, {"c": "\u237a"}],
        "\u237a": [{"c": "a"}],
        "\u05ad": [{"c": "\u0596"}],
        "\u0596": [{"c": "\u05ad"}],
        "\u200e\u05d5\u200e": [{"c": "l"}],
        "l": [{"c": "\u200e\u05d5\u200e"}, {"c": "\u0406"}],
        "\u0406": [{"c": "l"}],
    }
    assert nz._prototypes(data) == {
        "\u0430": "a",
        "\u237a": "a",
        "\u05ad": "\u0596",
        "\u05d5": "l",
        "\u0406": "l",
    }


# --------------------------------------------------------------------------------------------
# Properties

SAMPLES = st.sampled_from(
    ZERO_WIDTH
    + BIDI_CONTROLS
    + VARIATION_SELECTORS
    + ["\u034f", "\u0600", "\u0f73", "\u0344", "\uff9e", "\u3099", "\u0b3e", "\u0b47"]
    + ["\ufb01", "\ufb03", "\u00b2", "\u2126", "\u212b", "\u1e9b", "\u0451", "\u0130"]
)
ALPHABET = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),  # ASCII
    st.characters(min_codepoint=0x300, max_codepoint=0x36F),  # combining marks
    st.characters(min_codepoint=0xFF01, max_codepoint=0xFF9F),  # full-width, half-width
    st.characters(min_codepoint=0x400, max_codepoint=0x4FF),  # Cyrillic
    st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),  # Hangul jamo
    st.characters(min_codepoint=0xAC00, max_codepoint=0xAC40),  # Hangul syllables
    st.characters(min_codepoint=0xC0, max_codepoint=0x24F),  # precomposed Latin
    SAMPLES,
    st.characters(exclude_categories=("Cs",)),  # anything
)
TEXTS = st.text(ALPHABET, max_size=40)
CONFIGS = st.builds(
    NormalizeConfig,
    form=st.sampled_from(["none", "NFC", "NFKC"]),
    strip_invisible=st.booleans(),
    strip_bidi=st.booleans(),
    homoglyphs=st.booleans() if HAVE_CONFUSABLES else st.just(False),
)
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(text=TEXTS, config=CONFIGS)
def test_offsets_are_monotone_in_range_and_consistent(text: str, config: NormalizeConfig) -> None:
    out, offsets = normalize_with_offsets(text, config)
    assert out == normalize_text(text, config)
    assert len(offsets) == len(out)
    assert all(0 <= o < len(text) for o in offsets)
    assert all(a <= b for a, b in itertools.pairwise(offsets))
    # Each group of output characters is what its source segment normalizes to.
    starts = sorted(set(offsets))
    groups: dict[int, str] = {}
    for ch, o in zip(out, offsets, strict=True):
        groups[o] = groups.get(o, "") + ch
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else len(text)
        assert normalize_text(text[start:stop], config) == groups[start]
    # Every one-character span of the output maps to a non-empty span of the input.
    for i in range(len(out)):
        first, last = original_span(offsets, i, i + 1, len(text))
        assert 0 <= first < last <= len(text)
        assert first == offsets[i]


@PROPERTY_SETTINGS
@given(text=TEXTS, config=CONFIGS)
def test_normalization_is_idempotent(text: str, config: NormalizeConfig) -> None:
    once = normalize_text(text, config)
    assert normalize_text(once, config) == once
    assert normalize_with_offsets(once, config) == (once, list(range(len(once))))
    if config.form != "none":
        assert unicodedata.is_normalized(config.form, once)


@PROPERTY_SETTINGS
@given(
    text=st.text(
        st.one_of(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E), st.sampled_from(ZERO_WIDTH)
        ),
        max_size=40,
    )
)
def test_offsets_point_at_the_kept_characters(text: str) -> None:
    out, offsets = normalize_with_offsets(text)
    assert [text[i] for i in offsets] == list(out)
    assert out == "".join(ch for ch in text if ch not in ZERO_WIDTH)


@PROPERTY_SETTINGS
@given(
    text=st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFFFF, exclude_categories=("Cs",)),
        max_size=40,
    )
)
def test_ascii_and_bmp_text_under_nfkc(text: str) -> None:
    out, _ = normalize_with_offsets(text, NormalizeConfig(form="NFKC"))
    assert out == unicodedata.normalize("NFKC", normalize_text(text, NormalizeConfig(form="none")))


def test_ascii_is_unchanged_with_identity_offsets() -> None:
    text = "".join(map(chr, range(128)))
    for config in (NormalizeConfig(), NormalizeConfig(form="NFKC"), NormalizeConfig("none")):
        assert normalize_with_offsets(text, config) == (text, list(range(128)))


# --------------------------------------------------------------------------------------------
# decode_utf8 and validation


def test_decode_utf8_valid() -> None:
    text = "h\u00e9llo \u4e16\u754c \U0001f600"
    assert decode_utf8(text.encode("utf-8")) == text
    assert decode_utf8(bytearray(b"abc")) == "abc"
    assert decode_utf8(memoryview(b"abc")) == "abc"
    assert decode_utf8(b"\xef\xbb\xbfabc") == "\ufeffabc"  # BOM kept, stripped as invisible
    assert normalize_text(decode_utf8(b"\xef\xbb\xbfabc")) == "abc"


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"ab\xffcd", 2),  # invalid start byte
        (b"abc\xe2\x82", 3),  # truncated sequence at the end
        (b"\xc3\xa9\xe2(\xa1", 2),  # bad continuation byte
        (b"x\xed\xa0\x80", 1),  # encoded surrogate
        (b"\xc0\xaf", 0),  # overlong form
    ],
)
def test_decode_utf8_reports_the_byte_offset(data: bytes, offset: int) -> None:
    with pytest.raises(InputError, match=f"byte offset {offset} ") as info:
        decode_utf8(data)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    assert info.value.__cause__.start == offset


@pytest.mark.parametrize("data", ["text", 12, None, [1, 2]])
def test_decode_utf8_rejects_non_bytes(data: object) -> None:
    with pytest.raises(InputError):
        decode_utf8(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("function", [normalize_text, normalize_with_offsets])
def test_non_str_input_is_an_input_error(function: object) -> None:
    for bad in (b"abc", bytearray(b"abc"), 12, None, ["a"]):
        with pytest.raises(InputError):
            function(bad)  # type: ignore[operator]
    with pytest.raises(InputError, match="decode_utf8"):
        function(b"abc")  # type: ignore[operator]
    with pytest.raises(InputError, match="index 1"):
        function("a\ud800b")  # type: ignore[operator]


@pytest.mark.parametrize("form", ["NFD", "NFKD", "nfc", "", None, 1])
def test_unknown_form_is_a_config_error(form: object) -> None:
    with pytest.raises(ConfigError, match="normalization form"):
        NormalizeConfig(form=form)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["strip_invisible", "strip_bidi", "homoglyphs"])
def test_non_bool_flags_are_config_errors(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        NormalizeConfig(**{field: 1})  # type: ignore[arg-type]


def test_config_must_be_a_normalize_config() -> None:
    with pytest.raises(ConfigError):
        normalize_text("abc", {"form": "NFC"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        normalize_with_offsets("abc", None)  # type: ignore[arg-type]


def test_config_is_frozen_and_reports_itself() -> None:
    config = NormalizeConfig(form="NFKC", strip_bidi=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.form = "NFC"  # type: ignore[misc]
    report = config.to_dict()
    json.dumps(report)
    settings_only = {f.name: report[f.name] for f in dataclasses.fields(NormalizeConfig)}
    assert NormalizeConfig(**settings_only) == config
    assert report["unicode_data"] == unicodedata.unidata_version
    assert report["homoglyph_data"] is None
    assert NormalizeConfig(form="none").to_dict()["unicode_data"] is None
    if HAVE_CONFUSABLES:
        label = NormalizeConfig(homoglyphs=True).to_dict()["homoglyph_data"]
        assert label.startswith("confusable-homoglyphs ")
