"""The command line's output files: checked before a run starts, then written whole.

A run that took an hour must not end in a traceback because ``--out`` names a missing folder,
and a result must never replace a secret key file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fingerprint.errors import ConfigError
from fingerprint.keys import KEY_FILE_FORMAT

_SECRET_MARKERS = (KEY_FILE_FORMAT.encode(), b"PRIVATE KEY-----")
_SNIFF_BYTES = 4096


def holds_secret(path: Path) -> bool:
    """Whether ``path`` is a watermark key file or a PEM private key (read from its head)."""
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return any(marker in head for marker in _SECRET_MARKERS)


def check_output(path: str | os.PathLike[str] | None, option: str = "--out", *,
                 secret_ok: bool = False, make_folders: bool = False) -> Path | None:
    """``path`` as a :class:`Path` once it is known to be writable as a file: not a folder, in
    a folder that exists (or, with ``make_folders``, that can be made), and (unless
    ``secret_ok``) not a key file it would replace."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder; give a file path")
    folder = p.parent
    if make_folders:  # the nearest existing folder must let the missing ones be made
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{option} {p}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{option} {p}: the folder {folder} is not writable")
    if not secret_ok and p.exists() and holds_secret(p):
        raise ConfigError(f"{option} {p} is a secret key file; refusing to overwrite it")
    return p


def write_output(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` at once: a temporary file in the same folder, then renamed,
    so a reader never sees half a result and a failed write leaves the old file."""
    p = check_output(path)
    assert p is not None
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["check_output", "holds_secret", "write_output"]
