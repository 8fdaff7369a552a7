"""Typed errors shared by every layer of :mod:`fingerprint`.

Every error message says what was wrong and what to do. No message ever contains key material.
"""

from __future__ import annotations


class FingerprintError(Exception):
    """Base class of every error raised on purpose by this library."""


class InputError(FingerprintError, ValueError):
    """Input data (token ids, shapes, text, parameters) that cannot be processed as given."""


class TokenIdError(InputError):
    """Token ids of the wrong dtype or outside the valid range."""


class ShapeError(InputError):
    """Arrays whose shapes do not fit together."""


class ConfigError(InputError):
    """An invalid or inconsistent configuration value (gamma, delta, context width, PRF name...)."""


class WatermarkKeyError(FingerprintError, ValueError):
    """A key of the wrong size or kind. Never carries the key itself."""


class KeyFileError(FingerprintError, OSError):
    """A key file that cannot be read: wrong permissions, corrupt content or wrong version."""


class ResourceError(FingerprintError, OSError):
    """A local model, tokenizer or file that cannot be loaded. Never skipped as a bad row: it
    stops the run."""


class BackendError(FingerprintError, RuntimeError):
    """A compute backend that is unavailable or cannot handle the given arrays."""


__all__ = [
    "BackendError",
    "ConfigError",
    "FingerprintError",
    "InputError",
    "KeyFileError",
    "ResourceError",
    "ShapeError",
    "TokenIdError",
    "WatermarkKeyError",
]
