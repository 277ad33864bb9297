"""Paired significance tests: exact values on cases small enough to enumerate."""
import itertools

import pytest
from scipy import stats

from kilt.stats import compare, compare_macro, paired_randomization, paired_ttest


def test_identical_systems_have_p_one():
    assert paired_randomization([0.5, 1, 0], [0.5, 1, 0]) == 1.0
    assert paired_ttest([0.5, 1, 0], [0.5, 1, 0]) == 1.0


def test_randomization_matches_full_enumeration():
    a, b = [1, 1, 1, 0, 1], [0, 0, 1, 0, 0]
    d = [x - y for x, y in zip(a, b)]
    observed = abs(sum(d)) / len(d)
    flips = list(itertools.product([-1, 1], repeat=len(d)))
    exact = sum(abs(sum(s * x for s, x in zip(f, d))) / len(d) >= observed for f in flips) / len(flips)
    assert exact == pytest.approx(2 / 8)  # only the all-same-sign flips are as extreme
    assert paired_randomization(a, b, trials=20_000, seed=1) == pytest.approx(exact, abs=0.01)


def test_ttest_matches_scipy():
    a, b = [0.9, 0.8, 0.4, 0.7, 0.3], [0.5, 0.8, 0.1, 0.2, 0.4]
    assert paired_ttest(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)


def test_compare_reports_means_and_difference():
    result = compare([1, 0, 1, 1], [0, 0, 1, 0], trials=100)
    assert (result.n, result.mean_a, result.mean_b, result.diff) == (4, 0.75, 0.25, 0.5)


def test_unequal_lengths_are_an_error():
    with pytest.raises(ValueError, match="equal lengths"):
        compare([1, 0], [1])


def test_the_macro_test_weights_each_task_equally():
    a, b = [[1, 1, 1, 1], [0]], [[0, 0, 0, 0], [1]]  # task 1: +1 on 4 queries; task 2: -1 on 1
    result = compare_macro(a, b, trials=100)
    assert (result.n, result.mean_a, result.mean_b, result.diff) == (5, 0.5, 0.5, 0.0)
    assert compare([1, 1, 1, 1, 0], [0, 0, 0, 0, 1], trials=100).diff == pytest.approx(0.6)  # pooled


def test_macro_randomization_matches_full_enumeration():
    a, b = [[1, 1, 0], [1]], [[0, 0, 0], [0]]  # weights 1/6, 1/6, 1/6 and 1/2
    d, w = [1, 1, 0, 1], [1 / 6, 1 / 6, 1 / 6, 1 / 2]
    observed = abs(sum(x * y for x, y in zip(w, d)))
    flips = list(itertools.product([-1, 1], repeat=len(d)))
    exact = sum(abs(sum(s * x * y for s, x, y in zip(f, w, d))) >= observed - 1e-12 for f in flips) / len(flips)
    assert exact == pytest.approx(4 / 16)  # only flips giving the three non-zero differences one sign
    assert compare_macro(a, b, trials=20_000, seed=1).p_randomization == pytest.approx(exact, abs=0.01)


def test_with_equal_task_sizes_the_macro_test_is_the_pooled_one():
    a, b = [[1, 0, 1], [1, 1, 0]], [[0, 0, 1], [0, 1, 1]]
    macro, pooled = compare_macro(a, b, seed=3), compare([*a[0], *a[1]], [*b[0], *b[1]], seed=3)
    assert macro.diff == pytest.approx(pooled.diff)
    assert macro.p_randomization == pytest.approx(pooled.p_randomization)


def test_the_macro_ttest_of_one_task_is_students():
    a, b = [0.9, 0.8, 0.4, 0.7, 0.3], [0.5, 0.8, 0.1, 0.2, 0.4]
    assert compare_macro([a], [b]).p_ttest == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert compare_macro([[1, 1], []], [[0, 1], []]).n == 2  # an empty task is left out
