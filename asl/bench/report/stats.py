"""How sure a benchmark result is: confidence intervals and paired tests between methods.

A benchmark cell has few samples (often 10-50), so "40 vs 55" may be noise. These helpers give
the interval around a score and the p-value of a difference, pairing methods on the same samples
(the same prompt under two methods) because pairing removes the per-sample difficulty.

    wilson(successes, n)                -> (lo, hi)        proportion interval
    mean_interval(scores)               -> (lo, hi)        interval of a mean score in [0, 1]
    bootstrap_mean_ci(values)           -> (lo, hi)        percentile bootstrap (paired differences)
    mcnemar_exact(b, c)                 -> p               paired binary outcomes
    paired_bootstrap_diff(a, b)         -> (diff, lo, hi)  paired mean difference, percentile bootstrap
    paired_proportion_diff(a, b)        -> (diff, lo, hi)  paired 0/1 outcomes (Newcombe)
    paired_score_diff(a, b)             -> (diff, lo, hi)  paired scores in [0, 1] (Newcombe on shares)
    wilcoxon_p(a, b)                    -> p               paired graded outcomes
    holm(pvalues)                       -> [p, ...]        adjusted for testing many at once
    compare(records)                    -> [row, ...]      every pair of methods, see COMPARISON_FIELDS

The tests are scipy.stats' (the small-sample signed-rank p is computed here as scipy defines it,
faster). The report's intervals are Wilson's and Newcombe's, which do not shrink to a point where
scores repeat; the percentile bootstrap (deterministic by seed) is kept as the baseline
docs/bench.md measures them against.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from itertools import combinations

import numpy as np

from asl.interval import wilson  # noqa: F401 (the bench's intervals: one formula)

__all__ = ["COMPARISON_FIELDS", "CORRECT_EPS", "bootstrap_mean_ci", "compare", "correct", "holm", "mcnemar_exact",
           "mean_interval", "newcombe_interval", "paired_bootstrap_diff", "paired_proportion_diff", "paired_score_diff", "partial_of",
           "signed_rank_exact_p", "wilcoxon_p", "wilson"]

CORRECT_EPS = 1e-9  # a score counts as "fully correct" when score >= 1 - CORRECT_EPS
ALL_TASKS = "all"  # the task of pooled rows (asl.bench.report.summary uses the same)
_CHUNK = 2**22  # bootstrap elements drawn at once (bounds memory for large pooled n)

COMPARISON_FIELDS = ["task", "length", "method_a", "budget_a", "method_b", "budget_b", "n", "acc_a", "acc_b",
                     "a_only", "b_only", "mcnemar_p", "acc_diff", "acc_diff_lo", "acc_diff_hi", "partial_a",
                     "partial_b", "partial_diff", "partial_diff_lo", "partial_diff_hi", "wilcoxon_p"]


def _st():
    """scipy.stats, imported on first use: it takes seconds, and importing asl.bench.report.summary should not."""
    from scipy import stats

    return stats


# --------------------------------------------------------------------------------------------
# intervals


def mean_interval(scores: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Interval of the mean of scores in [0, 1]: Wilson's, with the mean as the proportion. A score
    in [0, 1] with mean m has variance at most m(1 - m), the binomial's (0/1 scores reach it), so
    this is the binomial worst case, and for 0/1 scores exactly Wilson on the count. A percentile
    bootstrap of a small cell is far too sure where scores repeat: 15 scores of 0.25 give it
    [0.25, 0.25] (this gives [0.10, 0.50]), and on 15 draws of 1.0 (p 0.95) or 0.75 it covered
    the true mean 52% of the time for a nominal 95%; this interval, 100% (docs/bench.md, tested).
    n == 0 -> (None, None)."""
    x = [float(v) for v in scores]
    if any(not -CORRECT_EPS <= v <= 1.0 + CORRECT_EPS for v in x):
        raise ValueError(f"scores must lie in [0, 1] for mean_interval; got {min(x)} to {max(x)}")
    return wilson(math.fsum(min(max(v, 0.0), 1.0) for v in x), len(x), confidence)


def bootstrap_mean_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean: the paired differences' interval (values in
    [-1, 1], no binomial bound; too sure on small cells of repeated values, so not the intervals
    of a cell's scores, mean_interval). Deterministic by seed (numpy Generator). n == 0 ->
    (None, None); all values equal -> (v, v)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None, None
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    means = _resampled_means(x, resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _resampled_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The means of `resamples` resamples of x with replacement, drawn a chunk of rows at a time."""
    n = x.size
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    return np.concatenate([x[rng.integers(0, n, size=(min(rows, resamples - i), n))].mean(axis=1)
                           for i in range(0, resamples, rows)])


# --------------------------------------------------------------------------------------------
# paired tests


def mcnemar_exact(b: int, c: int) -> float:
    """Exact McNemar test: only discordant samples carry information (b: a right and b wrong,
    c: the reverse); under "no difference" b ~ Binomial(b + c, 1/2). Two-sided; 1.0 when b + c == 0."""
    return _mcnemar(int(b), int(c))


@lru_cache(maxsize=4096)
def _mcnemar(b: int, c: int) -> float:
    if b + c == 0:
        return 1.0
    return float(_st().binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def _paired(a, b) -> np.ndarray:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be two 1-d sequences of one length, got {x.shape} and {y.shape}")
    return x - y


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                          seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """Mean of a - b over paired samples and its percentile bootstrap interval (resampling pairs,
    so per-sample difficulty cancels). Empty -> (None, None, None)."""
    d = _paired(a, b)
    if d.size == 0:
        return None, None, None
    lo, hi = bootstrap_mean_ci(d, confidence, resamples, seed)
    return float(d.mean()), lo, hi


def paired_proportion_diff(a: Sequence[bool], b: Sequence[bool],
                           confidence: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """Difference of two proportions on paired 0/1 outcomes (a right minus b right, over n) and
    its interval (newcombe_interval). Empty -> (None, None, None)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not np.isin(x, (0.0, 1.0)).all() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("paired_proportion_diff takes 0/1 outcomes; for graded scores use paired_score_diff")
    return paired_score_diff(x, y, confidence)


def paired_score_diff(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """Mean of a - b over paired scores in [0, 1] and its interval: Newcombe's (newcombe_interval)
    on each pair's four shares, both min(a, b), a alone a - min, b alone b - min, neither
    1 - max(a, b), which for 0/1 scores are the paired counts. As a cell's mean_interval takes
    the binomial worst case at the mean score, this takes it at the four shares: it is not a point
    where the two agree on every sample (a percentile bootstrap of the differences is [0, 0] there,
    and held a difference of 1 point in 36% of 15-sample draws), and wider than it need be where
    the differences are small and graded (docs/bench.md). Empty -> (None, None, None)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    _paired(x, y)
    if x.size == 0:
        return None, None, None
    for name, v in (("a", x), ("b", y)):
        if ((v < -CORRECT_EPS) | (v > 1.0 + CORRECT_EPS)).any():
            raise ValueError(f"paired scores must lie in [0, 1]; {name} runs from {v.min()} to {v.max()}")
    x, y = np.clip(x, 0.0, 1.0), np.clip(y, 0.0, 1.0)
    low, high = np.minimum(x, y), np.maximum(x, y)
    both, a_only, b_only = math.fsum(low), math.fsum(x - low), math.fsum(y - low)
    return newcombe_interval(both, a_only, b_only, max(0.0, x.size - both - a_only - b_only), confidence)


def newcombe_interval(both: float, a_only: float, b_only: float, neither: float,
                      confidence: float = 0.95) -> tuple[float, float, float]:
    """(a - b, lo, hi) from the paired counts: Newcombe's square-and-add interval (Statist. Med.
    1998, 17:2635, method 10; as Fagerland, Lydersen and Laake's contingencytables computes it),
    the two Wilson intervals combined with their estimated correlation. Unlike a bootstrap of the
    differences, it is not a point at 0 when the methods agree on every sample (25 agreements:
    about [-13, 13] points). The counts may be fractional: paired_score_diff's shares."""
    n = both + a_only + b_only + neither
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    (l1, u1), (l2, u2) = wilson(both + a_only, n, confidence), wilson(both + b_only, n, confidence)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    # the correlation of the two proportions, continuity-corrected toward 0 as Newcombe's method 10
    phi = 0.0 if margins == 0 else (cross - n / 2 if cross > n / 2 else min(cross, 0)) / math.sqrt(margins)
    lo = (p1 - p2) - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    hi = (p1 - p2) + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return p1 - p2, lo, hi


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Wilcoxon signed-rank p-value of paired graded scores (two-sided). Ties at zero are split
    between the signs (zero_method="zsplit"): samples where both methods agree count, which keeps
    the test conservative. 1.0 when there is no difference at all (or no samples).

    The p is scipy's (method "auto"): exact over every sign flip for up to EXACT_MAX_N samples,
    scipy's exact or normal approximation above. The small case is computed here, vectorised, as
    scipy's permutation test defines it; scipy runs it one flip at a time (seconds per test, an
    hour for a 49-method report at 13 samples)."""
    d = _paired(a, b)
    if d.size == 0 or np.all(d == 0):
        return 1.0
    return _wilcoxon(tuple(np.sort(d).tolist()))


EXACT_MAX_N = 13  # scipy enumerates all 2**n sign flips up to here (2**13 < its 9999 resamples)


@lru_cache(maxsize=4096)
def _wilcoxon(d: tuple) -> float:
    """Cached on the sorted differences (the test ignores their order): pairs of methods that
    agree on most samples repeat the same few multisets."""
    if len(d) <= EXACT_MAX_N:
        return signed_rank_exact_p(np.asarray(d))
    p = float(_st().wilcoxon(d, zero_method="zsplit").pvalue)
    return p if math.isfinite(p) else 1.0


def signed_rank_exact_p(d: np.ndarray) -> float:
    """Two-sided p of the zero-split signed-rank sum R+ under all sign flips of d (the exact
    permutation null, ties and zeros included; scipy.stats.permutation_test's counting and
    tolerance). A zero's rank counts half to R+ whatever its sign, so only the others flip."""
    ranks = _st().rankdata(np.abs(d))
    zero = d == 0
    half_zeros = ranks[zero].sum() / 2
    observed = ranks[d > 0].sum() + half_zeros
    m = int(np.count_nonzero(~zero))
    positive = (np.arange(2**m)[:, None] >> np.arange(m)) & 1
    null = positive @ ranks[~zero] + half_zeros
    gamma = abs(np.finfo(float).eps * 100 * observed)
    less = np.count_nonzero(null <= observed + gamma) / 2**m
    greater = np.count_nonzero(null >= observed - gamma) / 2**m
    return float(min(1.0, 2 * min(less, greater)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values tested together, in their given order: the
    i-th smallest is multiplied by m - i + 1, kept non-decreasing, capped at 1. Rejecting where
    the adjusted p < alpha holds the chance of any false win at alpha (with 48 methods each
    tested at 0.05, about 2.4 would be "significant" by chance alone)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


# --------------------------------------------------------------------------------------------
# compare: every pair of methods on their shared samples


def correct(score) -> bool:
    """Fully correct (what McNemar and acc_a / acc_b count): score >= 1 - CORRECT_EPS."""
    return score is not None and float(score) >= 1.0 - CORRECT_EPS


def partial_of(r: dict):
    v = r.get("partial")
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _compare_pair(ra: list[dict], rb: list[dict], confidence: float) -> dict:
    """The comparison fields of two methods' records, paired position by position."""
    ca = [correct(r.get("score")) for r in ra]
    cb = [correct(r.get("score")) for r in rb]
    a_only = sum(x and not y for x, y in zip(ca, cb))
    b_only = sum(y and not x for x, y in zip(ca, cb))
    n = len(ra)
    both = sum(x and y for x, y in zip(ca, cb))
    diff, lo, hi = newcombe_interval(both, a_only, b_only, n - both - a_only - b_only, confidence)
    row = {"n": n, "acc_a": 100.0 * sum(ca) / n, "acc_b": 100.0 * sum(cb) / n, "a_only": a_only, "b_only": b_only,
           "mcnemar_p": mcnemar_exact(a_only, b_only), "acc_diff": _pct(diff), "acc_diff_lo": _pct(lo),
           "acc_diff_hi": _pct(hi), "partial_a": None, "partial_b": None, "partial_diff": None,
           "partial_diff_lo": None, "partial_diff_hi": None, "wilcoxon_p": None}
    pa, pb = [partial_of(r) for r in ra], [partial_of(r) for r in rb]
    if None not in pa and None not in pb:
        diff, lo, hi = paired_score_diff(pa, pb, confidence)
        row.update(partial_a=_pct(float(np.mean(pa))), partial_b=_pct(float(np.mean(pb))), partial_diff=_pct(diff),
                   partial_diff_lo=_pct(lo), partial_diff_hi=_pct(hi), wilcoxon_p=wilcoxon_p(pa, pb))
    return row


def _pair_rows(task, length, by_method: dict[tuple, dict], rank: dict, confidence: float) -> list[dict]:
    """One row per unordered pair of methods with at least one shared sample key (a before b in rank)."""
    rows = []
    for (ma, ba), (mb, bb) in combinations(sorted(by_method, key=rank.__getitem__), 2):
        da, db = by_method[(ma, ba)], by_method[(mb, bb)]
        shared = [k for k in da if k in db]
        if not shared:
            continue
        row = {"task": task, "length": length, "method_a": ma, "budget_a": ba, "method_b": mb, "budget_b": bb}
        row.update(_compare_pair([da[k] for k in shared], [db[k] for k in shared], confidence))
        rows.append(row)
    return rows


def compare(records, confidence: float = 0.95) -> list[dict]:
    """Paired comparison of every pair of methods (a method is its label and budget; budget may
    be None) on the samples both ran, per (task, length), plus a pooled task "all" row per
    (length, pair) pairing over every sample of every task. Fields: COMPARISON_FIELDS.

    acc_a / acc_b are the % of samples *fully correct* (score >= 1 - 1e-9), and a_only / b_only
    / mcnemar_p count the same binarisation: McNemar needs right/wrong outcomes, so a fractional
    score (ruler_all with several references) counts as wrong. acc_diff: acc_a - acc_b in points,
    with Newcombe's paired interval (acc_diff_lo / acc_diff_hi; newcombe_interval). The graded
    comparison is in partial_*: means x100, the paired interval of a - b (paired_score_diff), and Wilcoxon's p. They are None
    unless every paired record has a ``partial`` (older records lack it).

    Samples are matched by ``id`` (and task for "all"); a sample only one method ran is left out.
    Row order: tasks in first-appearance order then "all", lengths ascending, pairs in
    first-appearance order of the methods.
    """
    cells: dict[tuple, dict[tuple, dict]] = {}   # (task, length) -> method -> id -> record
    pooled: dict = {}                            # length -> method -> (task, id) -> record
    rank: dict[tuple, int] = {}                  # method -> first appearance
    for r in records:
        task, length, method = r.get("task"), r.get("length"), (r.get("method"), r.get("budget"))
        if task == ALL_TASKS:
            continue
        rank.setdefault(method, len(rank))
        cells.setdefault((task, length), {}).setdefault(method, {})[r.get("id")] = r
        pooled.setdefault(length, {}).setdefault(method, {})[(task, r.get("id"))] = r

    task_rank = {t: i for i, t in enumerate(dict.fromkeys(t for t, _ in cells))}
    rows: list[dict] = []
    for task, length in sorted(cells, key=lambda k: (task_rank[k[0]], _length_key(k[1]))):
        rows += _pair_rows(task, length, cells[(task, length)], rank, confidence)
    for length in sorted(pooled, key=_length_key):
        rows += _pair_rows(ALL_TASKS, length, pooled[length], rank, confidence)
    return rows


def _length_key(x):
    try:
        return (0, float(x))
    except (TypeError, ValueError):
        return (1, 0.0)
