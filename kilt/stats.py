"""Paired significance tests between two systems scored on the same queries."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PairedTest:
    """Outcome of comparing system A with system B on the same n queries."""

    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean_a - mean_b
    p_randomization: float
    p_ttest: float


def paired_randomization(a: Sequence[float], b: Sequence[float], trials: int = 10_000,
                         seed: int = 0, weights: Sequence[float] | None = None) -> float:
    """Two-sided p-value of a paired randomisation (sign-flip) test on the mean difference
    (with `weights`: on the weighted sum of the differences, e.g. a macro average's).

    Each trial flips the sign of every per-query difference with probability 1/2; the
    p-value counts trials at least as extreme as observed, with the +1 correction so it
    is never 0.
    """
    d = _diffs(a, b)
    if d.size == 0 or not np.any(d):
        return 1.0
    w = np.full(d.size, 1.0 / d.size) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != d.shape:
        raise ValueError(f"{w.size} weights for {d.size} differences")
    wd = w * d
    observed = abs(wd.sum())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, trials, 1000):
        m = min(1000, trials - start)
        signs = rng.integers(0, 2, size=(m, d.size), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ wd) >= observed - 1e-12))
    return (hits + 1) / (trials + 1)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Student's paired t-test (1.0 when the differences are all equal)."""
    from scipy import stats

    d = _diffs(a, b)
    if d.size < 2:
        return 1.0
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d.mean() == 0 else 0.0
    t = d.mean() / (sd / math.sqrt(d.size))
    return float(2 * stats.t.sf(abs(t), df=d.size - 1))


def compare(a: Sequence[float], b: Sequence[float], trials: int = 10_000, seed: int = 0) -> PairedTest:
    d = _diffs(a, b)
    return PairedTest(
        n=int(d.size), mean_a=float(np.mean(a)) if len(a) else 0.0, mean_b=float(np.mean(b)) if len(b) else 0.0,
        diff=float(d.mean()) if d.size else 0.0,
        p_randomization=paired_randomization(a, b, trials, seed), p_ttest=paired_ttest(a, b),
    )


def compare_macro(groups_a: Sequence[Sequence[float]], groups_b: Sequence[Sequence[float]],
                  trials: int = 10_000, seed: int = 0) -> PairedTest:
    """A against B on the mean over groups (tasks) of each group's mean, the "avg" of a table.

    The randomisation test flips each query's difference as `compare` does, weighted by
    1 / (groups x its group's size); the t-test uses the stratified variance of that mean with
    Welch-Satterthwaite degrees of freedom (one group: Student's paired t-test). `n` counts queries.
    """
    if len(groups_a) != len(groups_b):
        raise ValueError(f"paired test needs the same groups, got {len(groups_a)} and {len(groups_b)}")
    nonempty = [(a, b) for a, b in zip(groups_a, groups_b) if len(a)]
    if not nonempty:
        return PairedTest(0, 0.0, 0.0, 0.0, 1.0, 1.0)
    diffs = [_diffs(a, b) for a, b in nonempty]
    k = len(diffs)
    weights = np.concatenate([np.full(d.size, 1.0 / (k * d.size)) for d in diffs])
    flat_a = [x for a, _ in nonempty for x in a]
    flat_b = [x for _, b in nonempty for x in b]
    diff = float(sum(d.mean() for d in diffs) / k)
    return PairedTest(
        n=int(weights.size), mean_a=float(sum(np.mean(a) for a, _ in nonempty) / k),
        mean_b=float(sum(np.mean(b) for _, b in nonempty) / k), diff=diff,
        p_randomization=paired_randomization(flat_a, flat_b, trials, seed, weights=weights),
        p_ttest=_stratified_ttest(diffs, diff))


def _stratified_ttest(diffs: Sequence[np.ndarray], diff: float) -> float:
    from scipy import stats

    k = len(diffs)
    parts = [d.var(ddof=1) / d.size / k**2 if d.size > 1 else 0.0 for d in diffs]
    variance = sum(parts)
    if variance == 0:
        return 1.0 if diff == 0 else 0.0
    df = variance**2 / sum(p**2 / (d.size - 1) for p, d in zip(parts, diffs) if d.size > 1)
    return float(2 * stats.t.sf(abs(diff) / math.sqrt(variance), df=df))


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    return np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
