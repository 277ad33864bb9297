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
                         seed: int = 0) -> float:
    """Two-sided p-value of a paired randomisation (sign-flip) test on the mean difference.

    Each trial flips the sign of every per-query difference with probability 1/2; the
    p-value counts trials at least as extreme as observed, with the +1 correction so it
    is never 0.
    """
    d = _diffs(a, b)
    if d.size == 0 or not np.any(d):
        return 1.0
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, trials, 1000):
        m = min(1000, trials - start)
        signs = rng.integers(0, 2, size=(m, d.size), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) / d.size >= observed - 1e-12))
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


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    return np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
