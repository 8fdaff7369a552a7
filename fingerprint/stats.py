"""Exact hypothesis tests for watermark detection, computed in log space.

Everything here is pure arithmetic on numbers (numpy, scipy and :mod:`math`): no torch, no I/O.

Every p-value is exact (up to floating-point rounding and a rigorously bounded series
truncation) and is reported as ``log10_pvalue``, which stays finite and accurate far below the
smallest positive float64 (down to 1e-1,000,000 and beyond). ``pvalue`` is ``10**log10_pvalue``
as a float and is 0.0 only when that number underflows; callers that compare or combine p-values
must use ``log10_pvalue``. A z-score is reported as a descriptive statistic, never as a p-value.

How the tails are computed
--------------------------
A binomial or gamma tail is a sum of positive, log-concave terms. The smaller of the two tails
is summed from the mode side outwards, in chunks, with numpy:

* the leading term (a binomial or Poisson-like probability) is computed with Loader's
  saddle-point form (``stirlerr``/``bd0``), which has no cancellation even for n ~ 1e12;
* each following term is the previous one times an exact rational ratio, taken as ``log1p`` of
  a small quantity near the mode so that no relative precision is lost;
* summation stops when the terms have fallen 60 e-folds below the first one; because the terms
  are log-concave the neglected remainder is below ``1e-26 * sum * (number of terms)``.

The other tail is ``log1p(-smaller tail)``, so log10 p is accurate in relative terms near 1 as
well. scipy is used only where it was checked to be as accurate (see ``_SCIPY_*`` below); it is
never used for binomial tails (Boost's ``betainc`` drifts to ~3e-11 relative error at n = 1e12).
The dual-key Gumbel tail is an exact negative-binomial mixture of gamma tails, or, where that
mixture is too wide to sum, an adaptive Gauss-Legendre quadrature in log space.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

import numpy as np

from fingerprint.errors import ConfigError, InputError


def _special() -> Any:
    """``scipy.special``, imported on first use: importing it costs a quarter of a second in
    every process that imports this module (each Ray worker among them), most of which never
    computes a p-value."""
    from scipy import special

    return special


__all__ = [
    "BinomialTestResult",
    "CalibrationResult",
    "DualKeyGumbelTestResult",
    "GumbelTestResult",
    "TestResult",
    "binomial_sf_log10",
    "binomial_test",
    "calibration_summary",
    "clopper_pearson",
    "combine_bonferroni_log10",
    "combine_sidak_log10",
    "dual_key_gumbel_sf_log10",
    "dual_key_gumbel_test",
    "gamma_sf_log10",
    "gumbel_test",
    "ks_uniform",
    "log10_to_pvalue",
    "vllm_compat_pvalue",
]

_LN10 = math.log(10.0)
_LN2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# A series of log-concave terms is cut once its terms are this many e-folds below the largest.
_TRUNC = 60.0
# For large shapes, where the exact series needs ~sqrt(shape) terms, scipy's gammainc/gammaincc
# are used where they were checked against the series and mpmath (relative error of log p
# below ~5e-15): within 4.4 standard deviations of the mean (Temme's uniform expansion) for
# shapes >= 1e6, and for the whole upper tail down to 1e-280 for shapes >= 1e8. Elsewhere
# scipy is not used: its lower tail can be wrong by up to 10% for shapes above 2e5.
_SCIPY_MIN = 1e-280
_SCIPY_GAMMA_CENTRAL_SHAPE = 1e6
_SCIPY_GAMMA_CENTRAL_Z = 4.4
_SCIPY_GAMMA_UPPER_SHAPE = 1e8
# Counts and shapes up to 2**52 keep integer arithmetic exact in float64.
_MAX_COUNT = 2**52
# vLLM's integer-shape Gamma tail is a sum of `shape` terms; beyond this many, the exact tail
# (equal up to rounding) is used instead of an O(shape) array.
_VLLM_MAX_TERMS = 1 << 20

_NULL_BINOMIAL = (
    "each of the n scored tokens is green independently with probability gamma "
    "(text generated without the key)"
)
_NULL_GUMBEL = (
    "the n scored values -log(1-u_i) are iid Exp(1) (u_i iid Uniform(0,1): text independent "
    "of the key), so their sum is Gamma(n, 1)"
)
_NULL_DUAL = (
    "each scored token contributes (1-alpha)*E_a + alpha*E_b with E_a, E_b iid Exp(1) (text "
    "independent of both keys), so the score is (1-alpha)*G1 + alpha*G2 with G1, G2 iid "
    "Gamma(n, 1)"
)


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _as_count(name: str, value: Any, *, minimum: int | None = 0) -> int:
    """Return ``value`` as an int, or raise InputError if it is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{name} must be an integer count, got {value!r}; pass an int.")
    if isinstance(value, Integral):
        out = int(value)
    else:
        f = float(value)
        if not math.isfinite(f) or not f.is_integer():
            raise InputError(
                f"{name} must be a whole number, got {value!r}; pass an int (counts of tokens "
                "cannot be fractional, NaN or infinite)."
            )
        out = int(f)
    if minimum is not None and out < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {out}; counts cannot be negative.")
    if abs(out) > _MAX_COUNT:
        raise InputError(f"{name}={out} is too large; counts up to 2**52 are supported.")
    return out


def _as_float(name: str, value: Any, error: type[InputError] = InputError) -> float:
    """``value`` (a Python or numpy real scalar, not a bool) as a float; NaN and inf pass."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise error(f"{name} must be a real number, got {value!r}.")
    return float(value)


def _as_real(name: str, value: Any, source: str = "scores") -> float:
    """A statistic or log10 p-value as a float: +-inf are valid values, NaN is refused."""
    f = _as_float(name, value)
    if math.isnan(f):
        raise InputError(f"{name} is NaN; check the {source} that produced it.")
    return f


def _as_observed_score(name: str, value: Any) -> float:
    """An observed Gumbel score as a finite float: every scored value -log(1-u) is finite for
    u in (0, 1), so an infinite (or NaN) sum means corrupted scores, never evidence."""
    f = _as_real(name, value)
    if math.isinf(f):
        raise InputError(f"{name} is {f}: a sum of -log(1-u) with every u in (0, 1) is finite; "
                         "check the scores that produced it.")
    return f


def _as_open_prob(name: str, value: Any, error: type[InputError] = InputError) -> float:
    """A parameter in (0, 1) as a float (NaN is refused as out of range)."""
    f = _as_float(name, value, error)
    if not 0.0 < f < 1.0:
        raise error(f"{name} must lie strictly between 0 and 1, got {f}.")
    return f


# --------------------------------------------------------------------------------------------
# Exact building blocks (natural logarithms)
# --------------------------------------------------------------------------------------------


def _split(a: float) -> tuple[float, float]:
    c = 134217729.0 * a
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a: float, b: float) -> tuple[float, float]:
    """Return (hi, lo) with hi + lo == a * b exactly (Dekker's algorithm)."""
    hi = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    lo = ((a_hi * b_hi - hi) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return hi, lo


def _stirlerr(x: float) -> float:
    """log(x!) - log(sqrt(2 pi x) (x/e)^x), the error of Stirling's formula, for x > 0."""
    if x > 15.0:
        x2 = x * x
        return (
            1.0 / 12.0
            - (1.0 / 360.0 - (1.0 / 1260.0 - (1.0 / 1680.0 - 1.0 / (1188.0 * x2)) / x2) / x2) / x2
        ) / x
    return math.lgamma(x + 1.0) - (x + 0.5) * math.log(x) + x - _LOG_SQRT_2PI


def _bd0(x: float, m: float, d: float) -> float:
    """x log(x/m) + m - x for x, m > 0, given d = x - m (computed accurately by the caller)."""
    s = x + m
    if abs(d) < 0.1 * s:
        v = d / s
        total = d * v
        term = 2.0 * x * v
        v2 = v * v
        j = 1
        while True:
            term *= v2
            nxt = total + term / (2 * j + 1)
            if nxt == total:
                return nxt
            total = nxt
            j += 1
    r = x / m
    log_r = math.log(r) if 0.0 < r < math.inf else math.log(x) - math.log(m)
    return x * log_r - d


def _binom_deviation(k: float, n: float, p: float, q: float) -> tuple[float, float, float]:
    """(k - n p, n p, n q) for p + q = 1 with the difference k - n p computed accurately.

    ``p`` and ``q`` must both be accurate (e.g. q = 1 - p is exact when p >= 0.5).
    """
    if p <= 0.5:
        hi, lo = _two_prod(n, p)
        d = (k - hi) - lo
        return d, hi + lo, (n - k) + d
    hi, lo = _two_prod(n, q)
    d = ((k - n) + hi) + lo
    return d, k - d, hi + lo


def _log_binom_pmf(
    k: float, n: float, d: float, mean: float, mean_q: float, log_p: float, log_q: float
) -> float:
    """log P(Binom(n, p) = k) for 0 <= k <= n, given d = k - n p, n p, n q, log p and log q."""
    if k == 0:
        return n * log_q
    if k == n:
        return n * log_p
    return (
        _stirlerr(n)
        - _stirlerr(k)
        - _stirlerr(n - k)
        - _bd0(k, mean, d)
        - _bd0(n - k, mean_q, -d)
        + 0.5 * (math.log(n) - math.log(k) - math.log(n - k))
        - _LOG_SQRT_2PI
    )


def _log_poisson_like(a: float, x: float) -> float:
    """log(x^a e^-x / Gamma(a+1)) for a > 0, x > 0 (the Poisson pmf at a when a is an integer)."""
    if a >= 10.0:
        return -_bd0(a, x, a - x) - _LOG_SQRT_2PI - 0.5 * math.log(a) - _stirlerr(a)
    return a * math.log(x) - x - math.lgamma(a + 1.0)


def _log_gamma_pdf(g: float, a: float) -> float:
    """log density of Gamma(a, 1) at g > 0."""
    return _log_poisson_like(a, g) + math.log(a) - math.log(g)


def _log1p_ratio(
    num_minus_den: np.ndarray, den: np.ndarray, log_num: Callable[[], np.ndarray]
) -> np.ndarray:
    """log(num/den), as log1p((num-den)/den) near 1 (no loss) and from logs when num << den."""
    y = num_minus_den / den
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log1p(y)
    far = y <= -0.5
    if far.any():
        out = np.where(far, log_num() - np.log(den), out)
    return out


def _log_series(
    log_ratio: Callable[[np.ndarray], np.ndarray], n_terms: float
) -> tuple[float, bool]:
    """log sum_{j < n_terms} exp(L_j) with L_0 = 0 and L_{j+1} = L_j + log_ratio(j).

    The log ratios must be <= 0 and non-increasing (terms log-concave, largest first). Returns
    the log of the sum and whether every term was included (False: cut after 60 e-folds).
    """
    total = 1.0
    last = 0.0
    start = 0
    chunk = 32
    n_ratios = n_terms - 1
    while start < n_ratios:
        stop = int(min(start + chunk, n_ratios))
        j = np.arange(start, stop, dtype=np.float64)
        cum = last + np.cumsum(log_ratio(j))
        total += float(np.sum(np.exp(cum)))
        last = float(cum[-1])
        start = stop
        if last < -_TRUNC:
            return math.log(total), False
        chunk = min(2 * chunk, 1 << 18)
    return math.log(total), True


# --------------------------------------------------------------------------------------------
# Binomial upper tail
# --------------------------------------------------------------------------------------------


def _log_binom_sf(k: int, n: int, p: float) -> float:
    """Natural log of P(Binom(n, p) >= k) for 1 <= k <= n, 0 < p < 1."""
    if k == n:
        return n * math.log(p)
    kf, nf = float(k), float(n)
    log_p = math.log(p)
    log_q = math.log1p(-p)
    q = 1.0 - p
    d, mean, mean_q = _binom_deviation(kf, nf, p, q)
    if d >= p:
        # k >= (n+1) p: the pmf decreases from k upwards; this is the small (upper) tail.
        big_d = -d - q  # (n+1) p - (k+1)

        def ratio(j: np.ndarray) -> np.ndarray:
            den = (kf + 1.0 + j) * q
            return _log1p_ratio(
                big_d - j,
                den,
                lambda: np.log(nf - kf - j) + log_p,
            )

        log_sum, _ = _log_series(ratio, nf - kf + 1.0)
        return _log_binom_pmf(kf, nf, d, mean, mean_q, log_p, log_q) + log_sum
    # k < (n+1) p: sum the lower tail P(X <= k-1) downwards from k-1 and take its complement.
    m = kf - 1.0
    big_e = d - 1.0 - p  # (k-1) - (n+1) p

    def ratio_down(j: np.ndarray) -> np.ndarray:
        den = (nf - m + 1.0 + j) * p
        return _log1p_ratio(
            big_e - j,
            den,
            lambda: np.log(m - j) + log_q,
        )

    log_sum, _ = _log_series(ratio_down, m + 1.0)
    log_cdf = _log_binom_pmf(m, nf, d - 1.0, mean, mean_q, log_p, log_q) + log_sum
    return _log1mexp(log_cdf)


def _log1mexp(log_x: float) -> float:
    """log(1 - exp(log_x)) for log_x <= 0, accurate everywhere."""
    if log_x >= 0.0:
        return -math.inf
    if log_x > -_LN2:
        return math.log(-math.expm1(log_x))
    return math.log1p(-math.exp(log_x))


def binomial_sf_log10(k: int, n: int, p: float) -> float:
    """log10 P(Binom(n, p) >= k), exact, for n up to 2**52 and any p in (0, 1).

    ``k <= 0`` gives 0.0 and ``k > n`` gives ``-inf``. The result is accurate in relative terms
    (about 1e-13 or better) from 0 down to far below 1e-1,000,000.
    """
    k = _as_count("k", k, minimum=None)
    n = _as_count("n", n)
    p = _as_open_prob("p", p)
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    return _log_binom_sf(k, n, p) / _LN10


# --------------------------------------------------------------------------------------------
# Gamma upper tail
# --------------------------------------------------------------------------------------------


def _log_gamma_tails_unit(x: float, a: float) -> tuple[float, float]:
    """(log P(a, x), log Q(a, x)) for 0 < a <= 1 and x > 0."""
    if a == 1.0:
        return _log1mexp(-x), -x
    if x < 1.0:
        # P(a, x) = x^a e^-x / Gamma(a+1) * sum_i x^i / ((a+1)...(a+i)): fast series for x < 1.
        total, term, i = 1.0, 1.0, 1
        while True:
            term *= x / (a + i)
            nxt = total + term
            if nxt == total:
                break
            total, i = nxt, i + 1
        log_p = a * math.log(x) - x - math.lgamma(a + 1.0) + math.log(total)
        if log_p < -_LN2:
            return log_p, _log1mexp(log_p)
        v = float(_special().gammaincc(a, x))
        # For a < ~1e-250, Q(a, x) = a E1(x) (1 + O(a)) to far beyond double precision.
        log_q = math.log(v) if v >= _SCIPY_MIN else math.log(a) + math.log(_special().exp1(x))
        return _log1mexp(log_q), log_q
    v = float(_special().gammaincc(a, x))
    if v >= _SCIPY_MIN:
        log_q = math.log(v)
        return _log1mexp(log_q), log_q
    # Legendre's continued fraction for Gamma(a, x), modified Lentz; converges fast for x >> 1.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    dd = 1.0 / b
    h = dd
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        dd = an * dd + b
        if abs(dd) < tiny:
            dd = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        dd = 1.0 / dd
        delta = dd * c
        h *= delta
        if abs(delta - 1.0) < 1e-17:
            break
    log_q = a * math.log(x) - x - math.lgamma(a) + math.log(h)
    return _log1mexp(log_q), log_q


def _log_gamma_tails(x: float, a: float) -> tuple[float, float]:
    """(log P(a, x), log Q(a, x)): natural logs of both tails of Gamma(a, 1) at x, a > 0.

    The smaller tail is computed directly (scipy when it is a normal float, else an exact
    series in log space) and the other one as its complement.
    """
    if x <= 0.0:
        return -math.inf, 0.0
    if x == math.inf:
        return 0.0, -math.inf
    d = a - x
    if a >= _SCIPY_GAMMA_CENTRAL_SHAPE and abs(d) <= _SCIPY_GAMMA_CENTRAL_Z * math.sqrt(a):
        if d > 0.0:
            log_p = math.log(float(_special().gammainc(a, x)))
            return log_p, _log1mexp(log_p)
        log_q = math.log(float(_special().gammaincc(a, x)))
        return _log1mexp(log_q), log_q
    if a > 1.0 and d > 1.0:
        # x < a - 1: below the mode, the lower tail P(a, x) is the small one.
        # P(a, x) = sum_{i>=0} x^(a+i) e^-x / Gamma(a+i+1), terms decreasing in i.
        def ratio_up(j: np.ndarray) -> np.ndarray:
            den = a + 1.0 + j
            return _log1p_ratio(-d - 1.0 - j, den, lambda: np.full_like(j, math.log(x)))

        log_sum, _ = _log_series(ratio_up, math.inf)
        log_p = _log_poisson_like(a, x) + log_sum
        return log_p, _log1mexp(log_p)
    if a >= _SCIPY_GAMMA_UPPER_SHAPE:
        v = float(_special().gammaincc(a, x))
        if v >= _SCIPY_MIN:
            log_q = math.log(v)
            return _log1mexp(log_q), log_q
    m = math.ceil(a) - 1.0
    if m <= 0.0:
        return _log_gamma_tails_unit(x, a)
    # Q(a, x) = sum_{i=1..m} x^(a-i) e^-x / Gamma(a-i+1) + Q(a-m, x), terms decreasing in i.
    log_t1 = _log_poisson_like(a, x) + math.log(a / x)

    def ratio_down(j: np.ndarray) -> np.ndarray:
        return _log1p_ratio(d - 1.0 - j, np.full_like(j, x), lambda: np.log(a - 1.0 - j))

    log_sum, complete = _log_series(ratio_down, m)
    log_q = log_t1 + log_sum
    if complete:
        log_q = float(np.logaddexp(log_q, _log_gamma_tails_unit(x, a - m)[1]))
    return _log1mexp(log_q), log_q


def _log_gamma_sf(x: float, a: float) -> float:
    """Natural log of Q(a, x) = P(Gamma(a, 1) >= x) for a > 0."""
    return _log_gamma_tails(x, a)[1]


def gamma_sf_log10(x: float, shape: float) -> float:
    """log10 P(Gamma(shape, 1) >= x), exact, for any real shape > 0 (up to 2**52).

    ``x <= 0`` gives 0.0 and ``x = inf`` gives ``-inf``. With an integer shape n this is the
    upper tail of a sum of n iid Exp(1) variables. Accurate in relative terms from 0 down to far
    below 1e-1,000,000.
    """
    x = _as_real("x", x)
    shape = _as_float("shape", shape)
    if not 0.0 < shape <= _MAX_COUNT:
        raise InputError(f"shape must be > 0 (and <= 2**52), got {shape}.")
    return _log_gamma_sf(x, shape) / _LN10


# --------------------------------------------------------------------------------------------
# Dual-key Gumbel score: (1-alpha) G1 + alpha G2, G1, G2 iid Gamma(n, 1)
# --------------------------------------------------------------------------------------------


class _BudgetExceededError(Exception):
    """The mixture series would need too many terms; use quadrature instead."""


def _log_dual_sf(s: float, n: int, alpha: float) -> float:
    """Natural log of P((1-alpha) G1 + alpha G2 >= s), G1, G2 iid Gamma(n, 1)."""
    if s <= 0.0:
        return 0.0
    if s == math.inf:
        return -math.inf
    if alpha in (0.0, 1.0):
        return _log_gamma_sf(s, float(n))
    if alpha == 0.5:
        return _log_gamma_sf(2.0 * s, 2.0 * n)
    c1, c2 = 1.0 - alpha, alpha
    c_min, c_max = min(c1, c2), max(c1, c2)
    diff = abs(1.0 - 2.0 * alpha)
    # S >= c_max G, so P(S < s) <= P(c_max G < s); when that bound underflows, log p = -0.0.
    if _log_gamma_tails(s / c_max, float(n))[0] < -745.0:
        return -0.0

    def tail(upper: bool) -> float:
        try:
            return _log_dual_series(s, n, c_min, c_max, diff, upper=upper)
        except _BudgetExceededError:
            return _log_dual_quad(s, n, c_min, c_max, upper=upper)

    # The smaller tail is computed directly, the larger one as its complement (full precision
    # both ways). E[S] = n tells which is likely the smaller, so the other is rarely computed.
    if s >= n:
        log_upper = tail(True)
        return _log1mexp(tail(False)) if log_upper > -_LN2 else log_upper
    log_lower = tail(False)
    return _log1mexp(log_lower) if log_lower <= -_LN2 else tail(True)


def _log_dual_series(
    s: float, n: int, c_min: float, c_max: float, diff: float, *, upper: bool
) -> float:
    """One tail of c_max G + c_min G' (G, G' iid Gamma(n, 1)) as an exact mixture.

    With q = c_min / c_max, c_max G = c_min Gamma(n + K, 1) in law with K ~ NegBin(n, q) (an
    Exp of rate q is a geometric number of Exp(1) variables). Hence, with x = s / c_min,
    P(S >= s) = sum_k P(K = k) Q(2n + k, x) and P(S < s) = sum_k P(K = k) P(2n + k, x):
    mixtures with positive weights whose terms are log-concave in k. Each is summed in chunks
    around its largest term until the terms are 60 e-folds down on both sides.
    """
    nf = float(n)
    x = s / c_min
    q = c_min / c_max
    theta = diff / c_max
    log_q = math.log(c_min) - math.log(c_max)
    # log(theta) enters multiplied by k (up to ~n / q): take it from log1p when q is small.
    log_theta = math.log1p(-q) if q < 0.5 else math.log(diff) - math.log(c_max)
    # Rough cost of summing every integer (the summand is about as wide as the negative
    # binomial, sd sqrt(n theta) / q, or the Poisson spread sqrt(x)) against the cost of
    # ~2000 quadrature nodes, each a Gamma(n) tail; take the cheaper one.
    series_cost = 24.0 * (math.sqrt(nf * theta) / q + math.sqrt(x))
    quad_cost = 2000.0 * (2000.0 + 10.0 * math.sqrt(min(nf, _SCIPY_GAMMA_CENTRAL_SHAPE)))
    if series_cost > quad_cost:
        raise _BudgetExceededError
    budget = int(4.0 * series_cost) + 100_000
    side = 1 if upper else 0

    def log_weight(k: float) -> float:
        if k == 0.0:
            return nf * log_q
        big_n = nf + k
        d, mean, mean_q = _binom_deviation(nf, big_n, q, theta)
        return math.log(nf / big_n) + _log_binom_pmf(nf, big_n, d, mean, mean_q, log_q, log_theta)

    def term(k: float) -> float:
        return log_weight(k) + _log_gamma_tails(x, 2.0 * nf + k)[side]

    def chunk(k0: float, length: int) -> np.ndarray:
        j = np.arange(length - 1, dtype=np.float64)
        lw = np.empty(length)
        lw[0] = log_weight(k0)
        lw[1:] = lw[0] + np.cumsum(np.log1p((nf - 1.0) / (k0 + 1.0 + j)) + log_theta)
        a0 = 2.0 * nf + k0
        aa = a0 + 1.0 + j  # log Pois(a+1; x) - log Pois(a; x) = log(x / (a+1))
        lp = np.empty(length)
        lp[0] = _log_poisson_like(a0, x)
        lp[1:] = lp[0] + np.cumsum(_log1p_ratio(x - aa, aa, lambda: np.full_like(aa, math.log(x))))
        steps = np.empty(length)
        if upper:
            # Q(a+1, x) = Q(a, x) + Pois(a; x), accumulated upwards from a fresh Q(a0, x).
            steps[0] = _log_gamma_tails(x, a0)[1]
            steps[1:] = lp[:-1]
            return lw + np.logaddexp.accumulate(steps)
        # P(a, x) = P(a+1, x) + Pois(a; x), accumulated downwards from a fresh top value.
        steps[0] = _log_gamma_tails(x, a0 + length - 1.0)[0]
        steps[1:] = lp[-2::-1]
        return lw + np.logaddexp.accumulate(steps)[::-1]

    # Start near the peak: where the weight ratio balances the Poisson ratio x / (2n + k).
    b = theta * x - 2.0 * nf - 1.0
    root = 0.5 * (b + math.sqrt(b * b + 4.0 * nf * (theta * x - 2.0)))
    nb_mode = (nf - 1.0) * theta / q
    guess = max(root, nb_mode) if upper else min(root, nb_mode)
    k_peak = _argmax_log_concave(term, int(max(0.0, guess)))
    return _sum_log_concave(chunk, float(k_peak), budget)


def _argmax_log_concave(f: Callable[[float], float], guess: int = 0) -> int:
    """Index k >= 0 of the largest value of a log-concave (unimodal) sequence f(k)."""
    cache: dict[int, float] = {}

    def g(k: int) -> float:
        if k not in cache:
            cache[k] = f(float(k))
        return cache[k]

    k0 = max(0, guess)
    # Exponential search away from the guess, towards increasing values.
    if g(k0 + 1) > g(k0):
        prev, step = k0, 1
        while g(prev + step) > g(prev):
            prev, step = prev + step, 2 * step
        lo, hi = max(k0, prev - step // 2), prev + step
    elif k0 > 0 and g(k0 - 1) > g(k0):
        prev, step = k0, 1
        while prev - step >= 0 and g(prev - step) > g(prev):
            prev, step = prev - step, 2 * step
        lo, hi = max(0, prev - step), min(k0, prev + step // 2)
    else:
        return k0
    # Integer ternary search on [lo, hi], which contains the maximum.
    while hi - lo > 2:
        m1 = lo + (hi - lo) // 3
        m2 = hi - (hi - lo) // 3
        if g(m1) < g(m2):
            lo = m1
        else:
            hi = m2
    return max(range(lo, hi + 1), key=g)


def _sum_log_concave(
    chunk: Callable[[float, int], np.ndarray], k_start: float, budget: int
) -> float:
    """log sum_{k >= 0} exp(u_k) for log-concave u, computed in chunks around k_start."""
    ref = -math.inf
    acc = 0.0
    used = 0

    def add(vals: np.ndarray) -> None:
        nonlocal ref, acc
        top = float(np.max(vals))
        if top > ref:
            acc = acc * math.exp(ref - top) if ref > -math.inf else 0.0
            ref = top
        acc += float(np.sum(np.exp(vals - ref)))

    # Upwards from k_start.
    k = k_start
    size = 64
    while True:
        vals = chunk(k, size)
        add(vals)
        used += size
        k += size
        if vals[-1] < vals[-2] and vals[-1] < ref - _TRUNC:
            break
        if used > budget:
            raise _BudgetExceededError
        size = min(2 * size, 1 << 18)
    # Downwards from k_start - 1.
    k_hi = k_start
    size = 64
    while k_hi > 0:
        k_lo = max(0.0, k_hi - size)
        length = int(k_hi - k_lo)
        vals = chunk(k_lo, length) if length >= 2 else chunk(k_lo, 2)[:1]
        add(vals)
        used += length
        k_hi = k_lo
        if len(vals) > 1 and vals[0] < vals[1] and vals[0] < ref - _TRUNC:
            break
        if used > budget:
            raise _BudgetExceededError
        size = min(2 * size, 1 << 18)
    return ref + math.log(acc)


_GL_NODES, _GL_WEIGHTS = (v.tolist() for v in np.polynomial.legendre.leggauss(20))


def _log_dual_quad(s: float, n: int, c_min: float, c_max: float, *, upper: bool) -> float:
    """One tail of c_max G + c_min G' by Gauss-Legendre quadrature over G' (small weight).

    With B = s / c_min and y(g) = (s - c_min g) / c_max:
    P(S >= s) = int_0^B f_n(g) Q(n, y(g)) dg + Q(n, B) and P(S < s) = int_0^B f_n(g) P(n, y(g)) dg.
    The integrand is log-concave; it is integrated between the points where it is 60 e-folds
    below its maximum, with 20-point rules on panels doubled until two successive results
    agree to 1e-13 (relative).
    """
    nf = float(n)
    big_b = s / c_min
    ratio = c_min / c_max
    side = 1 if upper else 0

    def log_h(g: float) -> float:
        if g <= 0.0:
            return _log_gamma_tails(s / c_max, nf)[side] if n == 1 else -math.inf
        y = (s - c_min * g) / c_max
        return _log_gamma_pdf(g, nf) + _log_gamma_tails(y, nf)[side]

    def slope(g: float) -> float:
        """d/dg log_h(g) (decreasing in g)."""
        y = (s - c_min * g) / c_max
        if y <= 0.0:
            return (nf - 1.0) / g - 1.0 if upper else -math.inf
        log_change = math.log(ratio) + _log_gamma_pdf(y, nf) - _log_gamma_tails(y, nf)[side]
        change = math.exp(log_change) if log_change < 700.0 else math.inf
        return (nf - 1.0) / g - 1.0 + (change if upper else -change)

    # The Gamma(n) hazard is at most 1, so the slope is negative beyond (n-1) / (1 - ratio)
    # (upper tail) or n - 1 (lower tail): the mode lies below that bound.
    lo = 0.0
    hi = min(big_b, (nf - 1.0) / (1.0 - ratio) + 1.0 if upper else nf)
    while hi - lo > 1e-9 * (1.0 + hi):
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    g_star = 0.5 * (lo + hi)
    top = log_h(g_star)
    step0 = 1e-3 * math.sqrt(nf)

    def edge(direction: float, bound: float) -> float:
        """Point beyond g_star (towards bound) where log_h falls to top - 60, or bound."""
        inside, step = g_star, step0
        while True:
            cand = g_star + direction * step
            if (cand - bound) * direction >= 0.0:
                if log_h(bound) >= top - _TRUNC:
                    return bound
                outside = bound
                break
            if log_h(cand) < top - _TRUNC:
                outside = cand
                break
            inside, step = cand, 2.0 * step
        for _ in range(200):
            mid = 0.5 * (inside + outside)
            if mid in (inside, outside):
                break
            if log_h(mid) > top - _TRUNC:
                inside = mid
            else:
                outside = mid
        return outside

    left, right = edge(-1.0, 0.0), edge(1.0, big_b)

    def integrate(panels: int) -> float:
        logs = []
        for a, b in ((left, g_star), (g_star, right)):
            edges = np.linspace(a, b, panels + 1).tolist()
            for lo_e, hi_e in itertools.pairwise(edges):
                half = 0.5 * (hi_e - lo_e)
                if not half > 0.0:
                    continue
                mid = 0.5 * (hi_e + lo_e)
                for node, w in zip(_GL_NODES, _GL_WEIGHTS, strict=True):
                    g = mid + half * node
                    if 0.0 < g < big_b:
                        logs.append(log_h(g) + math.log(w) + math.log(half))
        return float(_special().logsumexp(logs)) if logs else -math.inf

    panels = 4
    result = integrate(panels)
    while panels < 512:
        panels *= 2
        finer = integrate(panels)
        converged = abs(finer - result) < 1e-13 * max(1.0, abs(finer))
        result = finer
        if converged:
            break
    if upper and big_b < math.inf:
        result = float(np.logaddexp(result, _log_gamma_sf(big_b, nf)))
    return result


def dual_key_gumbel_sf_log10(score: float, n: int, alpha: float) -> float:
    """log10 P((1-alpha) G1 + alpha G2 >= score) with G1, G2 iid Gamma(n, 1), exact.

    ``score <= 0`` gives 0.0 and ``score = inf`` gives ``-inf``. Computed as an exact
    negative-binomial mixture of Gamma tails (closed forms for alpha in {0, 0.5, 1}); for
    extreme alpha, where the mixture would need millions of terms, by adaptive Gauss-Legendre
    quadrature in log space.
    """
    score = _as_real("score", score)
    n = _as_count("n", n)
    alpha = _as_alpha(alpha)
    if n == 0:
        return 0.0 if score <= 0.0 else -math.inf
    return _log_dual_sf(score, n, alpha) / _LN10


def _as_alpha(alpha: Any) -> float:
    """The weight of key b, in [0, 1] (NaN is refused as out of range)."""
    a = _as_float("alpha", alpha, ConfigError)
    if not 0.0 <= a <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {a}; it is the weight of key b.")
    return a


def _vllm_int_gamma_sf(x: float, shape: int) -> float:
    """vLLM's term-by-term sum of P(Gamma(shape, 1) >= x) for an integer shape, x finite."""
    if shape <= 0 or x <= 0.0:
        return 1.0
    if shape > _VLLM_MAX_TERMS:
        # The sum needs O(shape) time and memory; it equals the exact tail up to rounding.
        return min(1.0, math.exp(_log_gamma_sf(x, float(shape))))
    i = np.arange(shape, dtype=np.float64)
    terms = i * math.log(x) - _special().gammaln(i + 1.0)
    top = float(terms.max())  # log-sum-exp, without scipy's per-call overhead (per control key)
    log_p = -x + top + math.log(float(np.exp(terms - top).sum()))
    return min(1.0, math.exp(min(0.0, log_p)))


def vllm_compat_pvalue(score: float, n: int, alpha: float) -> float:
    """The p-value vLLM 0.33 reports for a (dual-key) Gumbel score, reproduced in float64.

    A moment-matched approximation kept only for interoperability: with
    ``variance = (1-alpha)**2 + alpha**2`` it treats ``score / variance`` as
    Gamma(n / variance, 1) (summed as vLLM does for alpha in {0, 0.5, 1}, scipy's gammaincc
    otherwise). It is exact only for alpha in {0, 0.5, 1} and is not a valid p-value in
    general; the authoritative p-value is :func:`dual_key_gumbel_test`'s, which uses the exact
    distribution. Scores <= 0 and n = 0 give 1.0, an infinite score 0.0. For alpha in
    {0, 0.5, 1} and more than 2**20 terms, the exact tail stands in for vLLM's sum (they are
    equal up to rounding; the sum would need O(n) time and memory).
    """
    score = _as_real("score", score)
    n = _as_count("n", n)
    alpha = _as_alpha(alpha)
    if n == 0 or score <= 0.0:
        return 1.0
    if score == math.inf:
        return 0.0
    variance = (1.0 - alpha) ** 2 + alpha**2
    if alpha in (0.0, 0.5, 1.0):
        return _vllm_int_gamma_sf(score / variance, round(n / variance))
    return float(_special().gammaincc(n / variance, score / variance))


# --------------------------------------------------------------------------------------------
# Result objects
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (Integral, np.integer)):
        return int(value)
    if isinstance(value, (Real, np.floating)):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class TestResult:
    """Outcome of one hypothesis test.

    ``log10_pvalue`` is authoritative; ``pvalue`` is ``10**log10_pvalue`` and is 0.0 when that
    underflows float64. ``no_evidence`` is True when nothing was scored (p = 1).
    """

    __test__ = False  # not a pytest test class

    statistic: float
    pvalue: float
    log10_pvalue: float
    n_scored: int
    null_hypothesis: str
    test: str
    no_evidence: bool

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-serializable Python types."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class BinomialTestResult(TestResult):
    """KGW green-list test: ``statistic`` is the number of green tokens.

    ``green_rate`` and ``zscore`` are None when nothing was scored (n = 0): they are undefined.
    """

    n_green: int
    gamma: float
    green_rate: float | None
    zscore: float | None


@dataclass(frozen=True, kw_only=True)
class GumbelTestResult(TestResult):
    """Single-key Gumbel test: ``statistic`` is the score sum."""

    score_sum: float


@dataclass(frozen=True, kw_only=True)
class DualKeyGumbelTestResult(TestResult):
    """Dual-key Gumbel test: ``statistic`` is the score; ``vllm_pvalue`` is vLLM's number."""

    score: float
    alpha: float
    vllm_pvalue: float


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def log10_to_pvalue(log10_p: float) -> float:
    """``10**log10_p`` as a float; 0.0 only when it underflows (keep the log10 in that case)."""
    lp = _as_real("log10_p", log10_p, "test")
    if lp > 0.0:
        raise InputError(f"log10_p must be <= 0, got {lp}; a p-value cannot exceed 1.")
    if lp == -math.inf:
        return 0.0
    return 10.0**lp


def gumbel_test(score_sum: float, n: int) -> GumbelTestResult:
    """Aaronson's Gumbel watermark test (as in vLLM's single-key detector).

    Null hypothesis: the n scored values -log(1-u_i) are iid Exp(1) (the u_i are iid
    Uniform(0,1) because the text does not depend on the key), so ``score_sum`` ~ Gamma(n, 1).
    The p-value is the exact upper tail P(Gamma(n, 1) >= score_sum). An infinite score sum is
    refused: it needs a value u = 1, which no PRF here produces, so it can only come from
    corrupted scores, and its p-value of 0 would be evidence made of an error.
    """
    score_sum = _as_observed_score("score_sum", score_sum)
    n = _as_count("n", n)
    if score_sum < 0.0:
        raise InputError(
            f"score_sum must be >= 0, got {score_sum}; it is a sum of -log(1-u) values."
        )
    if n == 0:
        if score_sum != 0.0:
            raise InputError("score_sum must be 0 when n = 0 (no scored tokens).")
        log10_p = 0.0
    else:
        log10_p = _log_gamma_sf(score_sum, float(n)) / _LN10
    return GumbelTestResult(
        statistic=score_sum,
        pvalue=log10_to_pvalue(log10_p),
        log10_pvalue=log10_p,
        n_scored=n,
        null_hypothesis=_NULL_GUMBEL,
        test="gamma-upper",
        no_evidence=n == 0,
        score_sum=score_sum,
    )


def binomial_test(n_green: int, n: int, gamma: float) -> BinomialTestResult:
    """KGW green-list test.

    Null hypothesis: each of the n scored tokens is green independently with probability
    ``gamma``. The p-value is the exact upper tail P(Binom(n, gamma) >= n_green). The z-score
    ``(n_green - n gamma) / sqrt(n gamma (1 - gamma))`` is reported as a statistic only: its
    normal tail is not a valid p-value (it is anti-conservative for small n or small tails).
    With n = 0 the p-value is 1 and ``green_rate`` and ``zscore`` are None (undefined).
    """
    n_green = _as_count("n_green", n_green)
    n = _as_count("n", n)
    gamma = _as_open_prob("gamma", gamma, ConfigError)
    if n_green > n:
        raise InputError(
            f"n_green={n_green} exceeds n={n}; count green tokens among the scored ones only."
        )
    zscore: float | None
    rate: float | None
    if n == 0:
        log10_p, zscore, rate = 0.0, None, None
    else:
        log10_p = 0.0 if n_green == 0 else _log_binom_sf(n_green, n, gamma) / _LN10
        zscore = (n_green - n * gamma) / math.sqrt(n * gamma * (1.0 - gamma))
        rate = n_green / n
    return BinomialTestResult(
        statistic=float(n_green),
        pvalue=log10_to_pvalue(log10_p),
        log10_pvalue=log10_p,
        n_scored=n,
        null_hypothesis=_NULL_BINOMIAL,
        test="binomial-upper",
        no_evidence=n == 0,
        n_green=n_green,
        gamma=gamma,
        green_rate=rate,
        zscore=zscore,
    )


def dual_key_gumbel_test(score: float, n: int, alpha: float) -> DualKeyGumbelTestResult:
    """vLLM's dual-key Gumbel test, with the exact null distribution.

    Null hypothesis: each scored token contributes (1-alpha) E_a + alpha E_b with E_a, E_b iid
    Exp(1) (text independent of both keys), so ``score`` ~ (1-alpha) G1 + alpha G2 with G1, G2
    iid Gamma(n, 1). ``pvalue``/``log10_pvalue`` are the exact upper tail of that law;
    ``vllm_pvalue`` is vLLM's moment-matched approximation, kept for comparison only. An
    infinite score is refused, as by :func:`gumbel_test`.
    """
    score = _as_observed_score("score", score)
    n = _as_count("n", n)
    alpha = _as_alpha(alpha)
    if score < 0.0:
        raise InputError(f"score must be >= 0, got {score}; it is a weighted sum of Exp scores.")
    if n == 0:
        if score != 0.0:
            raise InputError("score must be 0 when n = 0 (no scored tokens).")
        log10_p = 0.0
    else:
        log10_p = _log_dual_sf(score, n, alpha) / _LN10
    return DualKeyGumbelTestResult(
        statistic=score,
        pvalue=log10_to_pvalue(log10_p),
        log10_pvalue=log10_p,
        n_scored=n,
        null_hypothesis=_NULL_DUAL,
        test="dual-key-gamma-exact",
        no_evidence=n == 0,
        score=score,
        alpha=alpha,
        vllm_pvalue=vllm_compat_pvalue(score, n, alpha),
    )


# --------------------------------------------------------------------------------------------
# Multiple-testing corrections
# --------------------------------------------------------------------------------------------


def _check_combine(log10_p: Any, m: Any) -> tuple[float, int]:
    lp = _as_real("log10_p", log10_p, "test")
    if lp > 0.0:
        raise InputError(f"log10_p must be <= 0, got {lp}; a p-value cannot exceed 1.")
    m = _as_count("m", m, minimum=1)
    return lp, m


def combine_bonferroni_log10(log10_p: float, m: int) -> float:
    """Bonferroni correction of the smallest of m p-values: ``min(0, log10 p + log10 m)``.

    Valid under any dependence between the m tests (e.g. the maximum over overlapping
    windows of the same text).
    """
    lp, m = _check_combine(log10_p, m)
    return min(0.0, lp + math.log10(m))


def combine_sidak_log10(log10_p: float, m: int) -> float:
    """Sidak correction of the smallest of m p-values: ``log10(1 - (1 - p)**m)``.

    Exact when the m tests are independent (e.g. the maximum over independent keys); not
    valid under arbitrary dependence (use :func:`combine_bonferroni_log10` there). Computed in
    log space, so for tiny p it equals log10(m p) to relative precision.
    """
    lp, m = _check_combine(log10_p, m)
    if m == 1 or lp == 0.0:
        return lp
    if lp == -math.inf:
        return -math.inf
    ln_p = lp * _LN10
    # ln(-ln(1 - p)), accurate for every p in (0, 1).
    # -ln(1-p) = p (1 + p/2 + ...) = p to double precision when p < 2e-22.
    ln_neg_log1mp = ln_p if ln_p < -50.0 else math.log(-_log1mexp(ln_p))
    ln_neg_y = math.log(m) + ln_neg_log1mp  # y = m ln(1 - p) = ln((1-p)^m)
    neg_y = math.exp(ln_neg_y)
    if neg_y < 1e-3:
        # ln(1 - e^-z) = ln z + ln((1 - e^-z) / z) for small z = -y
        out = ln_neg_y if neg_y == 0.0 else ln_neg_y + math.log(-math.expm1(-neg_y) / neg_y)
    else:
        out = _log1mexp(-neg_y)
    out /= _LN10
    # 1 - (1-p)^m lies between p and m p; clamp rounding at the ulp level onto those bounds.
    return max(lp, min(out, lp + math.log10(m), 0.0))


# --------------------------------------------------------------------------------------------
# Calibration helpers
# --------------------------------------------------------------------------------------------


def clopper_pearson(k: int, n: int, confidence: float = 0.99) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval for a binomial proportion k/n."""
    k = _as_count("k", k)
    n = _as_count("n", n)
    confidence = _as_open_prob("confidence", confidence, ConfigError)
    if k > n:
        raise InputError(f"k={k} exceeds n={n}.")
    if n == 0:
        return 0.0, 1.0
    from scipy import stats as _sps  # here: importing scipy.stats costs most of a second

    tail = 0.5 * (1.0 - confidence)
    lo = 0.0 if k == 0 else float(_sps.beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(_sps.beta.ppf(1.0 - tail, k + 1, n - k))
    return lo, hi


def _as_pvalues(pvalues: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(pvalues) if not isinstance(pvalues, np.ndarray) else pvalues, float)
    arr = arr.ravel()
    if arr.size == 0:
        raise InputError("pvalues is empty; pass at least one p-value.")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0):
        raise InputError("pvalues must all be finite numbers in [0, 1].")
    return arr


def ks_uniform(pvalues: Iterable[float]) -> tuple[float, float]:
    """Kolmogorov-Smirnov test of p-values against Uniform(0, 1): (statistic, pvalue).

    Null hypothesis: the p-values are iid Uniform(0, 1) (the test is calibrated). Note that
    the p-values of discrete tests (binomial) are only approximately uniform.
    """
    from scipy import stats as _sps  # here: importing scipy.stats costs most of a second

    arr = _as_pvalues(pvalues)
    res = _sps.kstest(arr, "uniform")
    return float(res.statistic), float(res.pvalue)


@dataclass(frozen=True)
class CalibrationResult:
    """Empirical false-positive rates of null p-values at each alpha, with 99% CP intervals."""

    n: int
    alphas: tuple[float, ...]
    fpr: tuple[float, ...]
    fpr_ci: tuple[tuple[float, float], ...]
    alpha_inside: tuple[bool, ...]
    ks_statistic: float
    ks_pvalue: float
    calibrated: bool

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-serializable Python types."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def calibration_summary(
    pvalues: Iterable[float], alphas: Sequence[float] = (0.01, 0.05)
) -> CalibrationResult:
    """Summarize p-values computed on null data.

    For each alpha: the empirical false-positive rate (fraction of p <= alpha), its 99%
    Clopper-Pearson interval and whether alpha lies inside it; plus a KS test against
    Uniform(0, 1). ``calibrated`` is True when every alpha is inside its interval and the KS
    p-value is >= 0.01. Null hypothesis of both checks: the p-values are iid Uniform(0, 1).
    ``alphas`` must name at least one level: the KS test alone is too weak in the small tail
    that detection thresholds use.
    """
    arr = _as_pvalues(pvalues)
    alist = tuple(_as_open_prob("alpha", a, ConfigError) for a in alphas)
    if not alist:
        raise ConfigError("alphas is empty; pass at least one level, e.g. alphas=(0.01, 0.05).")
    n = int(arr.size)
    fprs, cis, inside = [], [], []
    for a in alist:
        k = int(np.count_nonzero(arr <= a))
        lo, hi = clopper_pearson(k, n, 0.99)
        fprs.append(k / n)
        cis.append((lo, hi))
        inside.append(lo <= a <= hi)
    ks_stat, ks_p = ks_uniform(arr)
    return CalibrationResult(
        n=n,
        alphas=alist,
        fpr=tuple(fprs),
        fpr_ci=tuple(cis),
        alpha_inside=tuple(inside),
        ks_statistic=ks_stat,
        ks_pvalue=ks_p,
        calibrated=all(inside) and ks_p >= 0.01,
    )
