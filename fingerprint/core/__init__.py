"""The shared scoring core: the only code that maps (key, window, token) to a uniform value."""

from fingerprint.core.contexts import PAD, windows
from fingerprint.core.prf import (
    DEFAULT_PRF,
    PRF,
    available_prfs,
    check_gamma,
    get_prf,
    prf_class,
    register_prf,
)

__all__ = [
    "DEFAULT_PRF",
    "PAD",
    "PRF",
    "available_prfs",
    "check_gamma",
    "get_prf",
    "prf_class",
    "register_prf",
    "windows",
]
