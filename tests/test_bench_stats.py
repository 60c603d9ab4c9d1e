"""`metakd.bench.stats`: t quantiles against the tables, the paired interval, and the smallest
detectable difference checked against an independent oracle: a seeded Monte-Carlo simulation of the
paired t-test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metakd.bench.stats import detectable_effect, paired_difference, paired_t_power, t_cdf, t_quantile

# two-sided 5% critical values of Student's t from the printed tables (df: t_0.975), not from SciPy
T_975 = {2: 4.302653, 4: 2.776445, 9: 2.262157}
TRIALS = 40_000  # binomial sd of a power near 0.8: 0.002


def test_t_quantiles_match_the_tables():
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    assert t_quantile(0.8, 4) == pytest.approx(0.9410, abs=1e-4)
    assert t_quantile(0.025, 9) == pytest.approx(-2.2622, abs=1e-4)
    assert t_cdf(2.7764, 4) == pytest.approx(0.975, abs=1e-5) and t_cdf(0.0, 3) == 0.5
    with pytest.raises(ValueError):
        t_quantile(1.0, 4)


def test_paired_difference_interval():
    d = paired_difference([0.80, 0.81, 0.79, 0.80, 0.82], [0.82, 0.82, 0.80, 0.83, 0.83])
    diffs = [0.02, 0.01, 0.01, 0.03, 0.01]
    sd = (sum((x - 0.016) ** 2 for x in diffs) / 4) ** 0.5
    assert d["mean"] == pytest.approx(0.016) and d["std"] == pytest.approx(sd) and d["n"] == 5
    assert d["ci_low"] == pytest.approx(0.016 - 2.7764 * sd / 5 ** 0.5, abs=1e-5)
    assert d["ci_high"] == pytest.approx(0.016 + 2.7764 * sd / 5 ** 0.5, abs=1e-5)
    assert d["detectable"] == pytest.approx(detectable_effect(5) * sd)
    one = paired_difference([0.5], [0.6])
    assert one["ci_low"] is None and one["detectable"] is None  # one pair: no interval
    assert paired_difference([0.5, 0.6], [0.6, 0.7])["detectable"] is None  # no spread
    with pytest.raises(ValueError, match="equally many"):
        paired_difference([1.0, 2.0], [1.0])


def test_detectable_effect_matches_published_power_tables():
    # one-sample / paired t-test, two-sided α = 0.05, power 0.8 (G*Power: n = 10 → d = 0.9960)
    assert detectable_effect(10) == pytest.approx(0.9960, abs=5e-4)
    assert paired_t_power(0.0, 5) == pytest.approx(0.05)  # no difference: rejected at the test's level
    assert paired_t_power(-1.0, 5) == pytest.approx(paired_t_power(1.0, 5))
    assert paired_t_power(detectable_effect(2), 2) == pytest.approx(0.8)  # df = 1: no NaN deep in the tail
    assert detectable_effect(5, power=0.9) > detectable_effect(5) > detectable_effect(6)


def _simulated_power(effect: float, sd: float, n: int, seed: int) -> float:
    """The share of TRIALS paired designs of ``n`` differences drawn from N(effect, sd) whose two-sided
    5% t-test (sample mean over sample sd / √n against the tabulated critical value) rejects 0."""
    diffs = np.random.default_rng(seed).normal(effect, sd, size=(TRIALS, n))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > T_975[n - 1]))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_detectable_difference_is_found_with_80_percent_power_by_simulation(n):
    sd = 0.013
    a = [0.80] * n
    b = [0.80 + d for d in np.linspace(-1.0, 1.0, n) * sd / np.std(np.linspace(-1.0, 1.0, n), ddof=1)]
    d = paired_difference(a, b)
    assert d["std"] == pytest.approx(sd)
    power = _simulated_power(d["detectable"], sd, n, seed=n)
    assert power == pytest.approx(0.80, abs=0.01), power


def test_the_old_normal_style_formula_falls_short_of_80_percent_at_three_pairs():
    n, sd = 3, 1.0
    old = (T_975[2] + 1.060660) * sd / math.sqrt(n)  # (t_0.975 + t_0.8) · sd / √n, df = 2
    new = detectable_effect(n) * sd
    old_power, new_power = _simulated_power(old, sd, n, seed=30), _simulated_power(new, sd, n, seed=30)
    assert old < new
    assert old_power == pytest.approx(0.77, abs=0.01) and new_power - old_power > 0.02, (old_power, new_power)
