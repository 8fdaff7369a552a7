"""fingerprint: output-provenance fingerprinting for language models.

Keyed watermarks (KGW green lists, distortion-free Gumbel-max), exact detection tests, and
radioactivity audits of suspect models, on one shared keyed PRF core.
"""

from fingerprint.core import DEFAULT_PRF, available_prfs, get_prf
from fingerprint.keys import WatermarkKey

__version__ = "0.1.0"

__all__ = ["DEFAULT_PRF", "WatermarkKey", "__version__", "available_prfs", "get_prf"]
