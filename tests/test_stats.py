"""Tests of fingerprint.stats: exactness against mpmath, agreement with scipy and vLLM,
validity under the null, monotonicity and input validation."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sps

from fingerprint.errors import ConfigError, InputError
from fingerprint.stats import (
    BinomialTestResult,
    CalibrationResult,
    DualKeyGumbelTestResult,
    GumbelTestResult,
    TestResult,
    binomial_sf_log10,
    binomial_test,
    calibration_summary,
    clopper_pearson,
    combine_bonferroni_log10,
    combine_sidak_log10,
    dual_key_gumbel_sf_log10,
    dual_key_gumbel_test,
    gamma_sf_log10,
    gumbel_test,
    ks_uniform,
    log10_to_pvalue,
    vllm_compat_pvalue,
)

DATA = Path(__file__).parent / "data" / "vllm_0.33_philox_gumbel.json"
LOG10_TOL = 1e-9  # |d log10 p| / max(1, |log10 p|)


def rel_log_err(got: float, want: float) -> float:
    return abs(got - want) / max(1.0, abs(want))


# ---------------------------------------------------------------------------------------------
# mpmath references (independent high-precision computations)
# ---------------------------------------------------------------------------------------------


def mp_binom_sf_log10(k: int, n: int, p: float) -> mp.mpf:
    """log10 P(Binom(n, p) >= k) by exact summation of pmf terms at high precision."""
    with mp.workdps(40 + len(str(n))):
        pm = mp.mpf(p)
        qm = 1 - pm
        eps = mp.mpf(10) ** -(mp.mp.dps - 5)

        def log_pmf(i: int) -> mp.mpf:
            return (
                mp.loggamma(n + 1)
                - mp.loggamma(i + 1)
                - mp.loggamma(n - i + 1)
                + i * mp.log(pm)
                + (n - i) * mp.log(qm)
            )

        if k > (n + 1) * pm:  # upper tail, summed upwards
            first, total, term, i = log_pmf(k), mp.mpf(1), mp.mpf(1), k
            while i < n:
                term *= mp.mpf(n - i) / (i + 1) * pm / qm
                i += 1
                total += term
                if term < total * eps:
                    break
            return (first + mp.log(total)) / mp.log(10)
        m = k - 1  # lower tail P(X <= k-1), summed downwards, then complemented
        first, total, term, i = log_pmf(m), mp.mpf(1), mp.mpf(1), m
        while i > 0:
            term *= mp.mpf(i) / (n - i + 1) * qm / pm
            i -= 1
            total += term
            if term < total * eps:
                break
        return mp.log1p(-mp.exp(first) * total) / mp.log(10)


def mp_binom_sf_log10_quad(k: int, n: int, p: float) -> mp.mpf:
    """log10 I_p(k, n-k+1) by quadrature of the beta integrand (for huge n near the mean)."""
    with mp.workdps(40):
        a, b, x = mp.mpf(k), mp.mpf(n - k + 1), mp.mpf(p)
        mode = (a - 1) / (a + b - 2)
        assert x < mode
        scale = min(mp.sqrt(mode * (1 - mode) / (a + b)), 1 / ((a - 1) / x - (b - 1) / (1 - x)))

        def log_f(t: mp.mpf) -> mp.mpf:
            return (a - 1) * mp.log(t) + (b - 1) * mp.log1p(-t)

        top = log_f(x)
        pts = sorted({mp.mpf(0)} | {x - scale * c for c in (0, 1, 3, 10, 30, 100, 300, 1000)})
        integral = mp.quad(lambda t: mp.exp(log_f(t) - top), [t for t in pts if t >= 0])
        return (top + mp.log(integral) - mp.log(mp.beta(a, b))) / mp.log(10)


def mp_gamma_sf_log10(x: float, a: float) -> mp.mpf:
    with mp.workdps(40):
        return mp.log10(mp.gammainc(mp.mpf(a), mp.mpf(x), mp.inf, regularized=True))


def mp_dual_sf_log10(s: float, n: int, alpha: float) -> mp.mpf:
    """log10 P((1-alpha) G1 + alpha G2 >= s) by mpmath quadrature over the small-weight Gamma."""
    with mp.workdps(30):
        sm, am = mp.mpf(s), mp.mpf(alpha)
        if alpha in (0.0, 1.0):
            return mp.log10(mp.gammainc(n, sm, mp.inf, regularized=True))
        c_big, c_small = (1 - am, am) if alpha < 0.5 else (am, 1 - am)
        big_b = sm / c_small
        lg = mp.loggamma(n)

        def q_tail(y: mp.mpf) -> mp.mpf:
            return mp.gammainc(n, y, mp.inf, regularized=True) if y > 0 else mp.mpf(1)

        def log_h(g: mp.mpf) -> mp.mpf:
            return (n - 1) * mp.log(g) - g - lg + mp.log(q_tail((sm - c_small * g) / c_big))

        lo, hi = mp.mpf(10) ** -12, big_b
        for _ in range(120):  # golden-section search for the mode of the integrand
            m1, m2 = lo + (hi - lo) * mp.mpf(0.382), lo + (hi - lo) * mp.mpf(0.618)
            if log_h(m1) < log_h(m2):
                lo = m1
            else:
                hi = m2
            if hi - lo < mp.mpf(10) ** -6 * (1 + hi):
                break
        mode = (lo + hi) / 2
        top = log_h(mode)
        width = mp.sqrt(n)
        pts = {mp.mpf(0), big_b} | {mode + c * width for c in (-30, -10, -4, -1, 0, 1, 4, 10, 30)}
        pts = sorted(t for t in pts if 0 <= t <= big_b)
        integral = mp.quad(lambda g: mp.exp(log_h(g) - top), pts)
        return mp.log10(mp.exp(top) * integral + q_tail(big_b))


# ---------------------------------------------------------------------------------------------
# Binomial tail: exactness
# ---------------------------------------------------------------------------------------------

BINOM_POINTS = [
    (3, 10, 0.25),
    (10, 10, 0.25),
    (1, 10, 0.25),
    (20, 100, 0.25),  # p close to 1
    (35, 100, 0.25),
    (60, 100, 0.25),
    (5000, 10_000, 0.5),
    (5300, 10_000, 0.5),
    (4800, 10_000, 0.5),  # log10 p ~ -1.3e-5
    (2_600_000, 10**7, 0.25),  # ~1e-1150
    (5_000_000, 10**7, 0.25),  # ~1e-624697
    (7_000_000, 10**7, 0.25),  # ~1e-1936290, beyond 1e-1,000,000
    (10, 10**6, 1e-7),
    (1000, 10**6, 1e-7),  # ~1e-3568
    (10, 1000, 1e-300),
    (400, 1000, 1e-300),  # ~1e-119709
    (999_990, 10**6, 0.99999999),  # p near 1, log10 p ~ -1e-30
    (5, 10**12, 1e-12),
    (100_000_000_000, 10**12, 0.01),  # ~1e-6.3e10
    (600_000_000_000, 10**12, 0.5),  # ~1e-8.7e9
    (10**12 - 10, 10**12, 1 - 1e-12),
]


@pytest.mark.parametrize(("k", "n", "p"), BINOM_POINTS)
def test_binomial_sf_matches_mpmath(k: int, n: int, p: float) -> None:
    want = mp_binom_sf_log10(k, n, p)
    got = binomial_sf_log10(k, n, p)
    assert rel_log_err(got, float(want)) <= LOG10_TOL
    assert rel_log_err(got, float(want)) <= 1e-13  # in fact far better than required
    if want > -300:  # the plain p-value too, in relative terms
        assert abs(log10_to_pvalue(got) / float(mp.power(10, want)) - 1) <= 1e-9


def test_binomial_sf_huge_n_near_mean_matches_quadrature() -> None:
    k, n, p = 500_000_300_000, 10**12, 0.5
    want = float(mp_binom_sf_log10_quad(k, n, p))
    got = binomial_sf_log10(k, n, p)
    assert abs(10**got / 10**want - 1) <= 1e-12
    # scipy (Boost) is off by ~3e-11 here, which is why it is not used for the binomial
    assert abs(math.log10(sps.binom.sf(k - 1, n, p)) - want) > 1e-13


def test_binomial_sf_edges() -> None:
    assert binomial_sf_log10(0, 10, 0.3) == 0.0
    assert binomial_sf_log10(-5, 10, 0.3) == 0.0
    assert binomial_sf_log10(11, 10, 0.3) == -math.inf
    assert binomial_sf_log10(1, 0, 0.3) == -math.inf
    assert binomial_sf_log10(10, 10, 0.5) == pytest.approx(10 * math.log10(0.5), rel=1e-15)
    assert binomial_sf_log10(10**12, 10**12, 0.5) == pytest.approx(-301029995663.9812, rel=1e-15)


def test_binomial_sf_agrees_with_scipy_where_scipy_is_accurate() -> None:
    checked = 0
    for n in (1, 2, 5, 20, 100, 1000, 10_000):
        for p in (0.01, 0.1, 0.25, 0.5, 0.9, 0.999):
            for k in sorted({1, 2, n // 4, n // 2, int(n * p), int(n * p) + 3, n - 1, n}):
                if not 1 <= k <= n:
                    continue
                want = sps.binom.sf(k - 1, n, p)
                if want < 1e-300:
                    continue
                got = log10_to_pvalue(binomial_sf_log10(k, n, p))
                assert got == pytest.approx(want, rel=1e-12, abs=0), (k, n, p)
                checked += 1
    assert checked > 150


# ---------------------------------------------------------------------------------------------
# Gamma tail: exactness
# ---------------------------------------------------------------------------------------------

GAMMA_POINTS = [
    (0.5, 1.0),
    (30.0, 1.0),
    (1e6, 1.0),  # ~1e-434294
    (1e-5, 0.3),
    (0.2, 0.3),
    (60.0, 0.3),
    (1e4, 0.3),
    (3.0, 2.5),
    (5.0, 5.5),
    (100.0, 5.5),
    (34.62537003928699, 33.0),
    (20.0, 33.0),
    (10.0, 33.0),  # log10 p ~ -3.2e-9
    (200.0, 33.0),
    (1000.0, 100.0),
    (9500.0, 1e4),
    (1.05e4, 1e4),
    (2e4, 1e4),
    (1.2e6, 1e6),
    (1.003e6, 1e6),
    (3e6, 1e6),  # ~1e-391471
    (1e7, 1e6),  # ~1e-2908655
    (502000.5, 500000.5),
    (1.15e7, 1e7),
    (1.0001e9, 1e9),  # scipy's gammaincc path
    (2e9, 1e9),
]


@pytest.mark.parametrize(("x", "a"), GAMMA_POINTS)
def test_gamma_sf_matches_mpmath(x: float, a: float) -> None:
    want = mp_gamma_sf_log10(x, a)
    got = gamma_sf_log10(x, a)
    assert rel_log_err(got, float(want)) <= LOG10_TOL
    assert rel_log_err(got, float(want)) <= 1e-13
    if want > -300:
        assert abs(log10_to_pvalue(got) / float(mp.power(10, want)) - 1) <= 1e-9


@pytest.mark.parametrize(
    ("a", "x"),
    [(1e-5, 1e-300), (1e-5, 0.5), (1e-5, 700.0), (0.3, 1e-5), (0.5, 3.0), (0.999, 1e-300)],
)
def test_gamma_sf_small_shapes(a: float, x: float) -> None:
    with mp.workdps(50):
        want = mp.log10(mp.gammainc(mp.mpf(a), mp.mpf(x), mp.inf, regularized=True))
    assert rel_log_err(gamma_sf_log10(x, a), float(want)) <= 1e-13


@pytest.mark.parametrize("a", [5e-324, 1e-300, 1e-100])
def test_gamma_sf_tiny_shapes(a: float) -> None:
    # Q(a, x) = Gamma(a, x) / Gamma(a) = a E1(x) (1 + O(a log a)): exact to double precision here.
    for x in (1e-5, 0.5, 3.0, 40.0, 700.0):
        with mp.workdps(30):
            want = float(mp.log10(mp.mpf(a) * mp.e1(x)))
        assert rel_log_err(gamma_sf_log10(x, a), want) <= 1e-14


def test_gamma_sf_edges() -> None:
    assert gamma_sf_log10(0.0, 3) == 0.0
    assert gamma_sf_log10(-1.0, 3) == 0.0
    assert gamma_sf_log10(math.inf, 3) == -math.inf
    assert gamma_sf_log10(2.0, 1) == pytest.approx(-2.0 / math.log(10), rel=1e-15)


def test_gamma_sf_agrees_with_scipy_gammaincc() -> None:
    # Moderate tails (p >= 1e-30). Here scipy's gammaincc is itself off by up to ~1e-12 relative
    # (the exact series stays within 1e-13 of mpmath); deeper in the tail scipy drifts to ~1e-11
    # (e.g. a = 4168, x = 5835.4), which is why the series, not scipy, is used there.
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(400):
        a = float(rng.choice([rng.integers(1, 5000), rng.uniform(0.05, 5000)]))
        x = max(1e-3, a + rng.uniform(-3, 12) * math.sqrt(a))
        want = special.gammaincc(a, x)
        if want < 1e-30:
            continue
        assert log10_to_pvalue(gamma_sf_log10(x, a)) == pytest.approx(want, rel=2e-12, abs=0)
        checked += 1
    assert checked > 300


def test_gamma_sf_uses_scipy_value_exactly_for_huge_shapes() -> None:
    for a, x in ((1e9, 1e9 + 3e4), (1e10, 1e10 + 2e5), (1e12, 1e12 + 1e6)):
        assert gamma_sf_log10(x, a) == math.log(special.gammaincc(a, x)) / math.log(10)


# ---------------------------------------------------------------------------------------------
# vLLM interoperability
# ---------------------------------------------------------------------------------------------

VLLM_GUMBEL = [
    (34.62537003928699, 33, 0.36833809620723046),
    (51.14177642326221, 50, 0.4178750403785734),
    (167.64031235535822, 180, 0.8207470171393393),
    (986.6361530108619, 981, 0.42455946187093363),
    (2906.2998532497654, 2983, 0.9207943608871458),
]
VLLM_DUAL_01 = [
    (27.39372813940379, 33, 0.8626430087289692),
    (179.6927760956603, 180, 0.5011163585537634),
    (1035.8520941488514, 981, 0.028153084094804607),
    (3025.5656699186816, 2983, 0.1943137967604976),
]


@pytest.mark.parametrize(("score", "n", "pvalue"), VLLM_GUMBEL)
def test_vllm_single_key_values(score: float, n: int, pvalue: float) -> None:
    assert vllm_compat_pvalue(score, n, 0.0) == pytest.approx(pvalue, rel=1e-9, abs=0)
    result = gumbel_test(score, n)  # the exact Gamma(n, 1) tail gives the same number
    assert result.pvalue == pytest.approx(pvalue, rel=1e-9, abs=0)
    assert result.log10_pvalue == pytest.approx(math.log10(pvalue), rel=1e-9)


@pytest.mark.parametrize(("score", "n", "pvalue"), VLLM_DUAL_01)
def test_vllm_dual_key_values(score: float, n: int, pvalue: float) -> None:
    assert vllm_compat_pvalue(score, n, 0.1) == pytest.approx(pvalue, rel=1e-9, abs=0)
    result = dual_key_gumbel_test(score, n, 0.1)
    assert result.vllm_pvalue == pytest.approx(pvalue, rel=1e-9, abs=0)
    # The exact tail differs from vLLM's moment-matched number (by up to ~0.5% here).
    exact = 10 ** float(mp_dual_sf_log10(score, n, 0.1))
    assert result.pvalue == pytest.approx(exact, rel=1e-12)


def test_vllm_recorded_detector_cases() -> None:
    if not DATA.exists():
        pytest.skip("vLLM reference data not present")
    cases = json.loads(DATA.read_text())["detector_cases"]
    assert cases
    for case in cases:
        alpha = case.get("alpha", 0.0) if case["algorithm"] == "dual_key_gumbel" else 0.0
        n, score = case["num_scored_tokens"], case["score"]
        got = vllm_compat_pvalue(score, n, alpha)
        assert got == pytest.approx(case["p_value"], rel=1e-9, abs=0)
        if alpha == 0.0:
            assert gumbel_test(score, n).pvalue == pytest.approx(case["p_value"], rel=1e-9)


def test_vllm_compat_special_alphas_and_edges() -> None:
    # alpha = 0.5: variance 1/2, shape 2n, x = 2 score; exact there as well.
    assert vllm_compat_pvalue(110.0, 50, 0.5) == pytest.approx(
        special.gammaincc(100, 220.0), rel=1e-12
    )
    assert vllm_compat_pvalue(0.0, 50, 0.0) == 1.0
    assert vllm_compat_pvalue(-1.0, 50, 1.0) == 1.0
    assert vllm_compat_pvalue(3.0, 0, 0.0) == 1.0


# ---------------------------------------------------------------------------------------------
# Dual-key exact tail
# ---------------------------------------------------------------------------------------------

DUAL_POINTS = [
    (27.39372813940379, 33, 0.1),
    (40.0, 33, 0.1),
    (1350.0, 100, 0.1),  # ~1e-490
    (60.0, 40, 0.9),
    (1350.0, 100, 0.9),
    (55.0, 50, 0.5),
    (700.0, 100, 0.5),  # ~1e-200
    (30.0, 33, 0.0),
    (1500.0, 100, 1.0),  # ~1e-493
    (120.0, 150, 0.3),  # p close to 1
    (25.0, 10, 1e-9),  # extreme alpha: quadrature path
    # below the mean n, where the lower tail is computed first
    (60.0, 100, 0.1),  # p = 1 - ~1e-5
    (95.0, 100, 0.2),
    (99.9, 100, 0.3),  # between the median and the mean: the lower tail is > 1/2 there
    (20.0, 40, 1e-9),  # quadrature path, p close to 1
]


@pytest.mark.parametrize(("s", "n", "alpha"), DUAL_POINTS)
def test_dual_key_sf_matches_mpmath_quadrature(s: float, n: int, alpha: float) -> None:
    want = float(mp_dual_sf_log10(s, n, alpha))
    got = dual_key_gumbel_sf_log10(s, n, alpha)
    assert rel_log_err(got, want) <= LOG10_TOL
    assert rel_log_err(got, want) <= 1e-12


def test_dual_key_tiny_tail_below_1e_minus_500() -> None:
    got = dual_key_gumbel_sf_log10(1350.0, 100, 0.1)
    assert got < -480
    assert rel_log_err(got, float(mp_dual_sf_log10(1350.0, 100, 0.1))) <= 1e-12


def test_dual_key_closed_forms_and_symmetry() -> None:
    s, n = 1234.5, 1000
    assert dual_key_gumbel_sf_log10(s, n, 0.0) == gamma_sf_log10(s, n)
    assert dual_key_gumbel_sf_log10(s, n, 1.0) == gamma_sf_log10(s, n)
    assert dual_key_gumbel_sf_log10(s, n, 0.5) == gamma_sf_log10(2 * s, 2 * n)
    # continuity at the closed forms and symmetry in alpha <-> 1 - alpha
    near_half = dual_key_gumbel_sf_log10(s, n, 0.5 - 1e-9)
    assert rel_log_err(near_half, gamma_sf_log10(2 * s, 2 * n)) < 1e-7
    for alpha in (0.1, 0.3, 0.45):
        a = dual_key_gumbel_sf_log10(s, n, alpha)
        b = dual_key_gumbel_sf_log10(s, n, 1 - alpha)
        assert rel_log_err(a, b) < 1e-12


def test_dual_key_series_and_quadrature_agree() -> None:
    from fingerprint import stats as fs

    for s, n, alpha in ((1100.0, 1000, 0.1), (950.0, 1000, 0.3), (5000.0, 1000, 0.2)):
        c_min, c_max = min(alpha, 1 - alpha), max(alpha, 1 - alpha)
        for upper in (True, False):
            series = fs._log_dual_series(s, n, c_min, c_max, abs(1 - 2 * alpha), upper=upper)
            quad = fs._log_dual_quad(s, n, c_min, c_max, upper=upper)
            assert rel_log_err(series, quad) < 1e-12


# ---------------------------------------------------------------------------------------------
# Validity under the null
# ---------------------------------------------------------------------------------------------


def test_gumbel_pvalues_uniform_under_null() -> None:
    rng = np.random.default_rng(20240601)
    ns = rng.integers(1, 300, size=2000)
    pvals = [gumbel_test(float(rng.exponential(size=n).sum()), int(n)).pvalue for n in ns]
    summary = calibration_summary(pvals)
    assert summary.ks_pvalue >= 0.01
    assert summary.calibrated


def test_dual_key_pvalues_uniform_under_null() -> None:
    rng = np.random.default_rng(99)
    alpha = 0.1
    pvals = []
    for _ in range(600):
        n = int(rng.integers(1, 100))
        score = (1 - alpha) * rng.exponential(size=n).sum() + alpha * rng.exponential(size=n).sum()
        pvals.append(dual_key_gumbel_test(float(score), n, alpha).pvalue)
    assert calibration_summary(pvals).calibrated


def test_binomial_pvalues_calibrated_under_null() -> None:
    rng = np.random.default_rng(5)
    n, gamma = 10_000, 0.25
    greens = rng.binomial(n, gamma, size=2000)
    pvals = [binomial_test(int(k), n, gamma).pvalue for k in greens]
    summary = calibration_summary(pvals)
    assert summary.calibrated, summary


@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5])
def test_exact_binomial_test_is_valid_for_small_n(gamma: float) -> None:
    """P(p <= alpha) <= alpha under H0, computed exactly by enumeration (no simulation)."""
    for n in range(1, 41):
        ks = np.arange(n + 1)
        pmf = sps.binom.pmf(ks, n, gamma)
        pvals = np.array([log10_to_pvalue(binomial_sf_log10(int(k), n, gamma)) for k in ks])
        for alpha in (0.001, 0.01, 0.05, 0.1):
            size = pmf[pvals <= alpha].sum()
            assert size <= alpha * (1 + 1e-12), (n, gamma, alpha, size)


def test_normal_approximation_is_anti_conservative_where_exact_test_is_not() -> None:
    """Why the z-score is never turned into a p-value: at n = 100, gamma = 0.25 the normal tail
    rejects with probability above alpha under H0, while the exact test stays below alpha."""
    n, gamma = 100, 0.25
    ks = np.arange(n + 1)
    pmf = sps.binom.pmf(ks, n, gamma)
    results = [binomial_test(int(k), n, gamma) for k in ks]
    z_pvals = np.array([sps.norm.sf(r.zscore) for r in results])
    exact = np.array([r.pvalue for r in results])
    for alpha in (1e-3, 1e-4, 1e-5, 1e-6):
        size_z = pmf[z_pvals <= alpha].sum()
        size_exact = pmf[exact <= alpha].sum()
        assert size_z > alpha  # anti-conservative: rejects a true H0 too often
        assert size_exact <= alpha
    alpha = 1e-6
    assert pmf[z_pvals <= alpha].sum() > 4 * alpha
    # at the z-test's critical count the exact p-value is several times alpha
    k_crit = int(np.argmax(z_pvals <= alpha))
    assert exact[k_crit] > 4 * alpha > z_pvals[k_crit]


# ---------------------------------------------------------------------------------------------
# Monotonicity and range (property tests)
# ---------------------------------------------------------------------------------------------

probs = st.floats(min_value=1e-300, max_value=1 - 1e-12, allow_nan=False).filter(
    lambda p: 0.0 < p < 1.0
)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=10**6),
    p=probs,
    u=st.floats(0, 1),
    v=st.floats(0, 1),
)
def test_binomial_sf_monotone_in_k(n: int, p: float, u: float, v: float) -> None:
    k1, k2 = sorted((int(u * n) + 1, int(v * n) + 1))
    k2 = min(k2 + 1, n)
    k1 = min(k1, k2)
    a, b = binomial_sf_log10(k1, n, p), binomial_sf_log10(k2, n, p)
    assert -math.inf < b <= a <= 0.0


@settings(max_examples=60, deadline=None)
@given(
    shape=st.floats(min_value=1e-3, max_value=1e6),
    x1=st.floats(min_value=0.0, max_value=1e7),
    x2=st.floats(min_value=0.0, max_value=1e7),
)
def test_gamma_sf_monotone_in_x(shape: float, x1: float, x2: float) -> None:
    lo, hi = sorted((x1, x2))
    a, b = gamma_sf_log10(lo, shape), gamma_sf_log10(hi, shape)
    assert -math.inf < b <= a <= 0.0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=5000),
    alpha=st.floats(min_value=0.0, max_value=1.0),
    f1=st.floats(min_value=0.0, max_value=5.0),
    f2=st.floats(min_value=0.0, max_value=5.0),
)
def test_dual_key_sf_monotone_in_score(n: int, alpha: float, f1: float, f2: float) -> None:
    lo, hi = sorted((f1 * n, f2 * n))
    a, b = dual_key_gumbel_sf_log10(lo, n, alpha), dual_key_gumbel_sf_log10(hi, n, alpha)
    assert -math.inf < b <= a <= 0.0


@settings(max_examples=200, deadline=None)
@given(
    log10_p=st.one_of(
        st.floats(min_value=-1e7, max_value=0.0), st.floats(min_value=-1e-3, max_value=0.0)
    ),
    m=st.integers(min_value=1, max_value=10**12),
)
def test_corrections_ordering(log10_p: float, m: int) -> None:
    sidak = combine_sidak_log10(log10_p, m)
    bonf = combine_bonferroni_log10(log10_p, m)
    assert log10_p <= sidak <= bonf <= 0.0


def test_sidak_against_mpmath() -> None:
    with mp.workdps(60):
        for log10_p in (-1e-12, -1e-3, -0.3, -2.0, -7.5, -30.0, -300.0, -5000.0, -1e6):
            for m in (1, 2, 7, 1000, 10**6, 10**12):
                p = mp.power(10, log10_p)
                want = mp.log10(-mp.expm1(m * mp.log1p(-p)))
                got = combine_sidak_log10(log10_p, m)
                assert rel_log_err(got, float(want)) <= 1e-12, (log10_p, m)


def test_sidak_tiny_p_equals_log10_mp() -> None:
    assert combine_sidak_log10(-1e6, 50) == pytest.approx(-1e6 + math.log10(50), rel=1e-15)
    assert combine_bonferroni_log10(-1e6, 50) == -1e6 + math.log10(50)
    assert combine_bonferroni_log10(-0.1, 50) == 0.0
    assert combine_sidak_log10(0.0, 50) == 0.0
    assert combine_sidak_log10(-math.inf, 3) == -math.inf


# ---------------------------------------------------------------------------------------------
# Result objects, helpers and validation
# ---------------------------------------------------------------------------------------------


def test_result_objects() -> None:
    r = binomial_test(40, 100, 0.25)
    assert isinstance(r, BinomialTestResult) and isinstance(r, TestResult)
    assert r.test == "binomial-upper" and r.n_scored == 100 and r.n_green == 40
    assert r.green_rate == 0.4 and r.zscore == pytest.approx(15 / math.sqrt(18.75))
    assert r.pvalue == pytest.approx(10**r.log10_pvalue) and not r.no_evidence
    assert "independently with probability gamma" in r.null_hypothesis
    g = gumbel_test(120.0, 100)
    assert isinstance(g, GumbelTestResult) and g.test == "gamma-upper" and g.score_sum == 120.0
    d = dual_key_gumbel_test(120.0, 100, 0.2)
    assert isinstance(d, DualKeyGumbelTestResult) and d.test == "dual-key-gamma-exact"
    assert 0.0 < d.vllm_pvalue <= 1.0 and d.alpha == 0.2
    for res in (r, g, d):
        payload = res.to_dict()
        assert json.loads(json.dumps(payload)) == payload
        assert payload["log10_pvalue"] == res.log10_pvalue
        with pytest.raises(dataclasses.FrozenInstanceError):
            res.pvalue = 0.5  # type: ignore[misc]


def test_no_evidence_results() -> None:
    for res in (binomial_test(0, 0, 0.25), gumbel_test(0.0, 0), dual_key_gumbel_test(0.0, 0, 0.1)):
        assert res.no_evidence and res.pvalue == 1.0 and res.log10_pvalue == 0.0
        assert res.n_scored == 0


def test_underflowing_pvalue_keeps_log10() -> None:
    r = binomial_test(5_000_000, 10**7, 0.25)
    assert r.pvalue == 0.0
    assert r.log10_pvalue == pytest.approx(-624697.1050102769, rel=1e-12)
    assert log10_to_pvalue(-300.0) == pytest.approx(1e-300)
    assert log10_to_pvalue(-320.0) > 0.0  # subnormal, not flushed
    assert log10_to_pvalue(-400.0) == 0.0
    assert log10_to_pvalue(0.0) == 1.0


def test_clopper_pearson_and_ks() -> None:
    lo, hi = clopper_pearson(5, 100, 0.99)
    assert lo == pytest.approx(sps.beta.ppf(0.005, 5, 96))
    assert hi == pytest.approx(sps.beta.ppf(0.995, 6, 95))
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.005 ** (1 / 10)))
    assert clopper_pearson(10, 10)[1] == 1.0
    stat, pval = ks_uniform(np.linspace(0.0005, 0.9995, 1000))
    assert stat < 0.01 and pval > 0.99


def test_calibration_summary_detects_miscalibration() -> None:
    rng = np.random.default_rng(3)
    good = rng.uniform(size=3000)
    s = calibration_summary(good)
    assert isinstance(s, CalibrationResult) and s.calibrated and s.n == 3000
    assert s.alphas == (0.01, 0.05) and all(s.alpha_inside)
    assert json.loads(json.dumps(s.to_dict()))["calibrated"] is True
    bad = calibration_summary(good**1.5)  # anti-conservative p-values
    assert not bad.calibrated and not all(bad.alpha_inside)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: binomial_test(5, 4, 0.25), InputError),
        (lambda: binomial_test(-1, 4, 0.25), InputError),
        (lambda: binomial_test(2.5, 4, 0.25), InputError),
        (lambda: binomial_test(1, 4, 0.0), ConfigError),
        (lambda: binomial_test(1, 4, 1.0), ConfigError),
        (lambda: binomial_test(1, 4, float("nan")), InputError),
        (lambda: binomial_test(True, 4, 0.25), InputError),
        (lambda: gumbel_test(float("nan"), 4), InputError),
        (lambda: gumbel_test(-float("inf"), 4), InputError),
        (lambda: gumbel_test(float("inf"), 0), InputError),
        (lambda: gumbel_test(-1.0, 4), InputError),
        (lambda: gumbel_test(1.0, -4), InputError),
        (lambda: gumbel_test(1.0, 0), InputError),
        (lambda: dual_key_gumbel_test(1.0, 4, 1.5), ConfigError),
        (lambda: dual_key_gumbel_test(1.0, 4, -0.1), ConfigError),
        (lambda: dual_key_gumbel_test(1.0, 4.5, 0.1), InputError),
        (lambda: binomial_sf_log10(1, 10, 1.0), InputError),
        (lambda: binomial_sf_log10(1, 2**60, 0.5), InputError),
        (lambda: gamma_sf_log10(1.0, 0.0), InputError),
        (lambda: gamma_sf_log10(float("nan"), 1.0), InputError),
        (lambda: combine_sidak_log10(0.5, 3), InputError),
        (lambda: combine_bonferroni_log10(-1.0, 0), InputError),
        (lambda: log10_to_pvalue(float("nan")), InputError),
        (lambda: clopper_pearson(3, 2), InputError),
        (lambda: ks_uniform([]), InputError),
        (lambda: calibration_summary([0.5, 1.5]), InputError),
        (lambda: calibration_summary([0.5], alphas=(0.0,)), ConfigError),
        (lambda: calibration_summary([0.1, 0.5, 0.9], alphas=()), ConfigError),
        (lambda: binomial_test(np.bool_(True), 4, 0.25), InputError),
        (lambda: gumbel_test(1.0, np.bool_(True)), InputError),
    ],
)
def test_input_validation(call: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_whole_float_counts_accepted() -> None:
    assert binomial_test(30.0, 100.0, 0.25).n_green == 30
    assert gumbel_test(12.0, np.int64(10)).n_scored == 10


def test_numpy_scalars_accepted() -> None:
    want = binomial_test(3, 10, 0.25).log10_pvalue
    assert binomial_test(np.int64(3), np.uint64(10), np.float64(0.25)).log10_pvalue == want
    assert binomial_test(np.int32(3), 10, np.float32(0.25)).gamma == 0.25
    g = gumbel_test(np.float32(12.5), np.int16(10))
    assert g.log10_pvalue == gumbel_test(12.5, 10).log10_pvalue
    d = dual_key_gumbel_test(np.float32(30.0), np.int64(10), np.float32(0.5))
    assert d.log10_pvalue == dual_key_gumbel_test(30.0, 10, 0.5).log10_pvalue
    assert gamma_sf_log10(np.float16(3.0), np.float32(2.0)) == gamma_sf_log10(3.0, 2.0)
    assert combine_sidak_log10(np.float32(-3.0), np.int8(4)) == combine_sidak_log10(-3.0, 4)
    assert clopper_pearson(np.int64(1), 10, np.float32(0.5)) == clopper_pearson(1, 10, 0.5)
    assert calibration_summary([0.1, 0.5, 0.9], alphas=(np.float32(0.5),)).alphas == (0.5,)


# ---------------------------------------------------------------------------------------------
# Infinite and NaN statistics, degenerate parameters, inputs that once hung
# ---------------------------------------------------------------------------------------------


class _TookTooLongError(Exception):
    pass


@contextmanager
def returns_within(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""

    def _alarm(signum: int, frame: object) -> None:
        raise _TookTooLongError(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, old)


INF = math.inf


@pytest.mark.parametrize("alpha", [0.0, 1e-9, 0.3, 0.5, 0.9, 1.0])
def test_infinite_score_tails_return_at_once_and_tests_refuse_it(alpha: float) -> None:
    # The tails are exact: P(S >= inf) = 0. An observed infinite score, though, needs u = 1,
    # which no PRF produces: the tests refuse it rather than report p = 0 from an error.
    with returns_within(20.0):
        assert dual_key_gumbel_sf_log10(INF, 3, alpha) == -INF
        assert dual_key_gumbel_sf_log10(-INF, 3, alpha) == 0.0
        with pytest.raises(InputError, match="is inf"):
            dual_key_gumbel_test(INF, 3, alpha)
        assert vllm_compat_pvalue(INF, 3, alpha) == 0.0
        assert vllm_compat_pvalue(-INF, 3, alpha) == 1.0
        assert vllm_compat_pvalue(INF, 0, alpha) == 1.0
        assert dual_key_gumbel_sf_log10(INF, 0, alpha) == -INF
    with pytest.raises(InputError, match="is inf"):
        gumbel_test(INF, 4)
    assert gamma_sf_log10(INF, 2.5) == -INF and gamma_sf_log10(-INF, 2.5) == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: gamma_sf_log10(math.nan, 2.0),
        lambda: gumbel_test(math.nan, 4),
        lambda: dual_key_gumbel_test(math.nan, 4, 0.3),
        lambda: dual_key_gumbel_sf_log10(math.nan, 4, 0.3),
        lambda: vllm_compat_pvalue(math.nan, 4, 0.3),
        lambda: vllm_compat_pvalue(math.nan, 4, 0.5),
    ],
)
def test_nan_score_is_refused(call: Callable[[], object]) -> None:
    with returns_within(20.0), pytest.raises(InputError, match="NaN; check the scores"):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dual_key_gumbel_test(1.0, 4, math.nan), r"alpha must lie in \[0, 1\], got nan"),
        (lambda: dual_key_gumbel_sf_log10(1.0, 4, math.nan), r"alpha must lie in \[0, 1\]"),
        (lambda: vllm_compat_pvalue(1.0, 4, math.nan), r"alpha must lie in \[0, 1\]"),
        (lambda: binomial_test(1, 4, math.nan), "gamma must lie strictly between 0 and 1"),
        (lambda: clopper_pearson(1, 4, math.nan), "confidence must lie strictly between"),
        (lambda: calibration_summary([0.5], alphas=(math.nan,)), "alpha must lie strictly"),
        (lambda: gamma_sf_log10(1.0, math.nan), r"shape must be > 0"),
        (lambda: gamma_sf_log10(1.0, math.inf), r"shape must be > 0"),
    ],
)
def test_nan_parameter_gets_a_message_about_the_parameter(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigError if "shape" not in message else InputError, match=message) as e:
        call()
    assert "scores" not in str(e.value)


def test_nan_log10_pvalue_names_the_test() -> None:
    for call in (
        lambda: log10_to_pvalue(math.nan),
        lambda: combine_sidak_log10(math.nan, 3),
        lambda: combine_bonferroni_log10(math.nan, 3),
    ):
        with pytest.raises(InputError, match="log10_p is NaN; check the test"):
            call()


def test_vllm_number_for_huge_n_needs_no_n_sized_array() -> None:
    # vLLM's integer-shape sum would need an array of n / variance terms (64 PiB for 2**52).
    big = 2**52
    with returns_within(60.0):
        p_half = vllm_compat_pvalue(float(big), big, 0.5)
        p_zero = vllm_compat_pvalue(float(big), big, 0.0)
        d = dual_key_gumbel_test(float(2**21), 2**21, 0.5)
    assert p_half == pytest.approx(0.5, abs=1e-6) and p_zero == pytest.approx(0.5, abs=1e-6)
    # alpha = 0.5: vLLM's moment match is exact, so its number equals the exact p-value.
    assert d.vllm_pvalue == pytest.approx(d.pvalue, rel=1e-12)
    # Below the cut-over, the sum is still vLLM's own (equal to the exact tail up to rounding).
    small = 1 << 20
    assert vllm_compat_pvalue(small + 900.0, small, 0.0) == pytest.approx(
        10 ** gamma_sf_log10(small + 900.0, small), rel=1e-9
    )


def test_huge_counts_return() -> None:
    big = 2**52
    with returns_within(120.0):
        assert binomial_test(0, big, 0.25).log10_pvalue == 0.0
        assert gumbel_test(float(big), big).log10_pvalue == pytest.approx(-0.30103, abs=1e-4)
        assert dual_key_gumbel_sf_log10(float(big), big, 0.5) == pytest.approx(-0.30103, abs=1e-4)
        assert combine_sidak_log10(-1e-300, big) <= 0.0
        assert dual_key_gumbel_sf_log10(2.0 * big, big, 0.0) < -1e14


def test_binomial_with_nothing_scored_leaves_rate_and_zscore_undefined() -> None:
    r = binomial_test(0, 0, 0.25)
    assert r.no_evidence and r.log10_pvalue == 0.0 and r.pvalue == 1.0
    assert r.green_rate is None and r.zscore is None
    payload = r.to_dict()
    assert payload["green_rate"] is None and payload["zscore"] is None
    assert json.loads(json.dumps(payload)) == payload
    one = binomial_test(0, 1, 0.25)
    assert one.green_rate == 0.0 and one.zscore == pytest.approx(-math.sqrt(1 / 3))


def test_calibration_summary_needs_an_alpha() -> None:
    # Without any alpha, "calibrated" would rest on the KS test alone, which cannot see the
    # small tail that detection thresholds use.
    with pytest.raises(ConfigError, match="alphas is empty"):
        calibration_summary(np.linspace(0.01, 0.99, 99), alphas=())
    assert calibration_summary(np.linspace(0.01, 0.99, 99), alphas=[0.05]).alphas == (0.05,)
