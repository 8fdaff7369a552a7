"""API keys for ``fingerprint serve``: a key file, bearer tokens, constant-time checks.

The key file holds one API key per line, optionally followed by the marker ``trusted``::

    # fingerprint serve API keys (mode 0600)
    sk-team-a-6f1c0e2b9d8a4c7e   trusted   # may send "watermarking": false
    sk-team-b-0a9e77c4d1b35f62

Blank lines and ``#`` comments are ignored. A key is 16 to 256 printable ASCII characters without
spaces or ``#``. The file must not be readable by group or others (like a watermark key file).

Only SHA-256 digests of the keys are kept in memory. A bearer token is hashed once and compared
with every stored digest by :func:`hmac.compare_digest`, all of them every time, so neither the
outcome nor the position of a match shows in the timing. Keys are never logged: a client is named
by its key's line number (``key@3``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from fingerprint.errors import ConfigError, KeyFileError
from fingerprint.keys import check_private_file

MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256
TRUSTED_MARKER = "trusted"


@dataclass(frozen=True)
class Principal:
    """Who sent a request: a label that is safe to log and whether it may opt out."""

    label: str
    trusted: bool


ANONYMOUS = Principal("anonymous", False)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _check_key(key: str, where: str) -> None:
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
        raise ConfigError(f"{where}: an API key must have {MIN_KEY_CHARS} to {MAX_KEY_CHARS} "
                          f"characters (this one has {len(key)}); the key is not shown")
    if not all(33 <= ord(c) <= 126 and c != "#" for c in key):
        raise ConfigError(f"{where}: an API key may hold printable ASCII characters only, "
                          "without spaces or '#'; the key is not shown")


class ApiKeys:
    """A set of API keys (their digests) with a trusted flag each.

    Build with :meth:`load` (a key file) or :meth:`from_pairs` (in code, e.g. tests).
    """

    def __init__(self, entries: list[_Entry]) -> None:
        if not entries:
            raise ConfigError("no API keys given: the key file holds no key")
        self._entries = tuple(entries)

    def __repr__(self) -> str:
        trusted = sum(e.principal.trusted for e in self._entries)
        return f"ApiKeys({len(self._entries)} keys, {trusted} trusted)"

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, bool]]) -> ApiKeys:
        """Keys given as ``(key, trusted)``, labelled ``key@1``, ``key@2``, ... in order."""
        entries: list[_Entry] = []
        seen: set[bytes] = set()
        for i, (key, trusted) in enumerate(pairs, start=1):
            if not isinstance(key, str):
                raise ConfigError(f"API key {i} must be a string")
            _check_key(key, f"API key {i}")
            d = _digest(key)
            if d in seen:
                raise ConfigError(f"API key {i} is given twice")
            seen.add(d)
            entries.append(_Entry(d, Principal(f"key@{i}", bool(trusted))))
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ApiKeys:
        """Read a key file (format in the module docstring).

        Refuses a missing file, one that group or others can access, and malformed lines (the
        error names the line, never the key).
        """
        path = Path(path)
        check_private_file(path, "API key file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise KeyFileError(f"API key file {path} is not UTF-8 text") from None
        entries: list[_Entry] = []
        seen: dict[bytes, int] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{path}:{number}"
            fields = line.split()
            if len(fields) > 2 or (len(fields) == 2 and fields[1] != TRUSTED_MARKER):
                raise ConfigError(f"{where}: expected 'KEY' or 'KEY {TRUSTED_MARKER}' (the line is "
                                  "not shown)")
            _check_key(fields[0], where)
            d = _digest(fields[0])
            if d in seen:
                raise ConfigError(f"{where}: the same key is already on line {seen[d]}")
            seen[d] = number
            entries.append(_Entry(d, Principal(f"key@{number}", len(fields) == 2)))
        if not entries:
            raise ConfigError(f"API key file {path} holds no key")
        return cls(entries)

    def check(self, token: str | None) -> Principal | None:
        """The principal of ``token``, or None. Compares against every key, in constant time."""
        probe = _digest(token if isinstance(token, str) else "")
        found: Principal | None = None
        for entry in self._entries:  # no early exit: every comparison runs
            if hmac.compare_digest(probe, entry.digest) and token is not None:
                found = entry.principal
        return found


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


__all__ = ["ANONYMOUS", "ApiKeys", "Principal", "bearer_token"]
