"""Bootstrap intervals of per-query hits: one model's score and the paired margin of two."""

from __future__ import annotations

import numpy as np
import pytest

from unime.evaluation.bootstrap import bootstrap_interval, paired_bootstrap_interval


def _mix(hits: int, n: int) -> np.ndarray:
    return np.arange(n) < hits


def test_all_hits_and_no_hits_have_no_spread():
    assert bootstrap_interval(np.ones(40, dtype=bool)) == (100.0, 100.0)
    assert bootstrap_interval(np.zeros(40)) == (0.0, 0.0)


def test_a_mix_brackets_its_mean_and_narrows_with_more_queries():
    low, high = bootstrap_interval(_mix(9, 50))  # 18 %
    assert low < 18.0 < high
    # Normal approximation: 2 * 1.96 * sqrt(0.18 * 0.82 / 50) = 21.3 points.
    assert 17 < high - low < 26
    wide = high - low
    low4, high4 = bootstrap_interval(_mix(36, 200))  # the same 18 % on four times the queries
    assert low4 < 18.0 < high4 and (high4 - low4) < 0.7 * wide
    # A lower level gives a narrower interval inside the wider one.
    low80, high80 = bootstrap_interval(_mix(9, 50), level=0.8)
    assert low <= low80 < high80 <= high


def test_intervals_are_fixed_by_the_seed():
    hits = _mix(13, 60)
    assert bootstrap_interval(hits, seed=3) == bootstrap_interval(hits, seed=3)
    # Another seed draws other resamples (on 60 queries the ends move by a query or so).
    assert bootstrap_interval(hits, seed=0) != bootstrap_interval(hits, seed=1)
    other = np.roll(hits, 7)
    assert paired_bootstrap_interval(hits, other, seed=5) == paired_bootstrap_interval(hits, other, seed=5)


def test_identical_models_differ_by_exactly_zero():
    hits = np.random.default_rng(1).random(80) < 0.3
    assert paired_bootstrap_interval(hits, hits.copy()) == (0.0, 0.0)


def test_paired_margin_is_a_minus_b_and_pairing_removes_shared_noise():
    # b gets right what a gets right, minus 6 of the 50 queries: every resample keeps a >= b.
    a = _mix(30, 50)
    b = a & (np.arange(50) >= 6)
    low, high = paired_bootstrap_interval(a, b)
    assert 0 < low <= 12.0 <= high
    assert paired_bootstrap_interval(b, a) == pytest.approx((-high, -low))
    # Unpaired, the two intervals overlap although the paired margin excludes zero.
    assert bootstrap_interval(b)[1] > bootstrap_interval(a)[0]
    assert paired_bootstrap_interval(np.ones(20), np.zeros(20)) == (100.0, 100.0)


@pytest.mark.parametrize("call, message", [
    (lambda: bootstrap_interval(np.array([])), "non-empty"),
    (lambda: bootstrap_interval(np.array([0, 2])), r"\[0, 1\]"),
    (lambda: paired_bootstrap_interval(np.ones(3), np.ones(4)), "same queries"),
    (lambda: bootstrap_interval(np.ones(3), level=1.0), "level"),
    (lambda: bootstrap_interval(np.ones(3), resamples=0), "resamples"),
])
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
