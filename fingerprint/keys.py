"""Watermark keys: a 256-bit secret, per-purpose subkeys, a public key id, and key files.

A :class:`WatermarkKey` never shows its secret: not in ``repr``, ``str``, pickles, logs or error
messages. Everything that needs key material asks for a *subkey* bound to a purpose (PRF name and
version, scheme), derived with HKDF-SHA256, so one master secret never feeds two schemes raw.

Two kinds of key exist:

* ``"master256"`` (the default, :meth:`WatermarkKey.generate`): 256 random bits from the OS.
* ``"int64"`` (:meth:`WatermarkKey.from_int`): a plain integer of up to 64 bits, for
  interoperability with vLLM, whose watermark takes such an integer. It is much weaker: at most
  64 bits of secret, often far fewer when people pick small numbers, so its key id can be
  brute-forced. With the ``philox4x32-10-v1`` PRF the integer is used raw, exactly as vLLM does,
  so that text watermarked by vLLM is detected with the same integer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fingerprint.errors import KeyFileError, WatermarkKeyError

KeyKind = Literal["master256", "int64"]

KEY_FILE_FORMAT = "fingerprint-watermark-key"
KEY_FILE_VERSION = 1
SECRET_BYTES = 32
_HKDF_SALT = b"fingerprint/v1/hkdf-salt"
_KEY_ID_DOMAIN = b"fingerprint/v1/key-id"


@dataclass(frozen=True)
class KeyPurpose:
    """What a subkey is for. Two different purposes always get independent subkeys."""

    prf: str
    scheme: str
    label: str = ""

    def info(self) -> bytes:
        """The HKDF ``info`` string: unambiguous, length-prefixed fields."""
        parts = [b"fingerprint/v1/subkey", self.prf.encode(), self.scheme.encode(),
                 self.label.encode()]
        return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def check_private_file(path: Path, what: str) -> None:
    """Refuse a missing path, a non-regular file, or one that group or others can access.

    Secrets (watermark keys, API keys) live in files only their owner can read; the error says
    how to fix the mode and never shows the content.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{what} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{what} {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` and retry"
        )


class WatermarkKey:
    """A secret watermark key. Create with :meth:`generate`, :meth:`from_int` or :meth:`load`."""

    __slots__ = ("__secret", "_kind")

    def __init__(self, secret: bytes, kind: KeyKind = "master256") -> None:
        if kind == "master256":
            if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
                is_bytes = isinstance(secret, bytes | bytearray)
                got = len(secret) if is_bytes else type(secret).__name__
                raise WatermarkKeyError(
                    f"a master key needs exactly {SECRET_BYTES} secret bytes, got {got}; "
                    "use WatermarkKey.generate() for a new key"
                )
        elif kind == "int64":
            if not isinstance(secret, bytes | bytearray) or len(secret) != 8:
                raise WatermarkKeyError("an int64 key needs 8 bytes; use WatermarkKey.from_int()")
        else:
            raise WatermarkKeyError(f"unknown key kind {kind!r}; expected 'master256' or 'int64'")
        self.__secret = bytes(secret)
        self._kind: KeyKind = kind

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def generate(cls) -> WatermarkKey:
        """A fresh 256-bit key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(SECRET_BYTES), "master256")

    @classmethod
    def from_int(cls, value: int) -> WatermarkKey:
        """A key from a plain integer in [0, 2**64), as vLLM's watermark takes.

        Weaker than a generated key (see the module docstring). Use only for interoperability.
        """
        if isinstance(value, bool) or not isinstance(value, int):
            raise WatermarkKeyError(
                f"an integer key must be an int, got {type(value).__name__}"
            )
        if not 0 <= value < 2**64:
            raise WatermarkKeyError("an integer key must lie in [0, 2**64)")
        return cls(value.to_bytes(8, "big"), "int64")

    # -- public facts -------------------------------------------------------------------------
    @property
    def kind(self) -> KeyKind:
        """``"master256"`` or ``"int64"``."""
        return self._kind

    @property
    def key_id(self) -> str:
        """A public identifier that commits to the key and reveals nothing of a 256-bit secret.

        It is ``"fpk1-"`` followed by the first 128 bits (hex) of
        HMAC-SHA256(key=secret, msg=domain || kind). Knowing the secret, anyone can check it; not
        knowing it, nobody can find it (an int64 key of low entropy can be guessed, though).
        """
        mac = hmac.new(self.__secret, _KEY_ID_DOMAIN + self._kind.encode(), hashlib.sha256)
        return "fpk1-" + mac.hexdigest()[:32]

    def __repr__(self) -> str:
        return f"WatermarkKey(kind={self._kind!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WatermarkKey):
            return NotImplemented
        return self._kind == other._kind and hmac.compare_digest(
            self.__secret, other._WatermarkKey__secret
        )

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self) -> tuple:
        raise TypeError("WatermarkKey cannot be pickled; save it with WatermarkKey.save()")

    # -- key material, for the PRFs only ------------------------------------------------------
    def subkey(self, purpose: KeyPurpose, length: int) -> bytes:
        """``length`` bytes of key material for ``purpose``, derived with HKDF-SHA256."""
        if not 1 <= length <= 64:
            raise WatermarkKeyError("subkey length must be between 1 and 64 bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT,
                    info=purpose.info())
        return hkdf.derive(self.__secret)

    def int64_value(self) -> int:
        """The raw integer of an ``int64`` key (vLLM compatibility). Refused for master keys."""
        if self._kind != "int64":
            raise WatermarkKeyError(
                "this is a 256-bit master key; only keys made with WatermarkKey.from_int() "
                "have a raw integer value"
            )
        return int.from_bytes(self.__secret, "big")

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key to ``path`` with mode 0600. Refuses to overwrite unless asked."""
        path = Path(path)
        payload = {
            "format": KEY_FILE_FORMAT,
            "version": KEY_FILE_VERSION,
            "kind": self._kind,
            "key_id": self.key_id,
            "secret": base64.b64encode(self.__secret).decode("ascii"),
        }
        data = (json.dumps(payload, indent=2) + "\n").encode()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise KeyFileError(
                f"{path} already exists; pass overwrite=True (or --force) to replace it"
            ) from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WatermarkKey:
        """Read a key file written by :meth:`save`.

        Refuses a file that group or others can read or write, a corrupt file, and a file of an
        unknown format or version, each with a :class:`KeyFileError` that says what to do.
        """
        path = Path(path)
        check_private_file(path, "key file")
        try:
            payload = json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeyFileError(f"key file {path} is corrupt: not valid JSON") from None
        if not isinstance(payload, dict) or payload.get("format") != KEY_FILE_FORMAT:
            raise KeyFileError(f"{path} is not a fingerprint watermark key file")
        if payload.get("version") != KEY_FILE_VERSION:
            raise KeyFileError(
                f"key file {path} has version {payload.get('version')!r}; this fingerprint "
                f"reads version {KEY_FILE_VERSION}. Upgrade fingerprint to read it"
            )
        try:
            secret = base64.b64decode(payload["secret"], validate=True)
            key = cls(secret, payload["kind"])
        except (KeyError, TypeError, ValueError):
            raise KeyFileError(f"key file {path} is corrupt: bad secret or kind field") from None
        if not hmac.compare_digest(str(payload.get("key_id", "")), key.key_id):
            raise KeyFileError(
                f"key file {path} is corrupt: its secret does not match its key id"
            )
        return key


def vllm_derived_key(key: WatermarkKey, domain: bytes) -> WatermarkKey:
    """vLLM's ``derive_watermark_key`` for an int64 key: its dual-key Gumbel's keys A and B.

    ``int(SHA-256(domain || key as 8 big-endian bytes)[:8])``, big-endian; ``domain`` is
    ``b"key_a"`` or ``b"key_b"`` in vLLM 0.33.
    """
    digest = hashlib.sha256(domain + key.int64_value().to_bytes(8, "big")).digest()
    return WatermarkKey.from_int(int.from_bytes(digest[:8], "big"))


def as_key(key: WatermarkKey | int | str | os.PathLike[str]) -> WatermarkKey:
    """Accept a key object, a vLLM-style integer, or a key file path."""
    if isinstance(key, WatermarkKey):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return WatermarkKey.from_int(key)
    if isinstance(key, str | os.PathLike):
        return WatermarkKey.load(key)
    raise WatermarkKeyError(
        f"expected a WatermarkKey, an integer or a key file path, got {type(key).__name__}"
    )


__all__ = ["KeyPurpose", "WatermarkKey", "as_key", "check_private_file", "vllm_derived_key"]
