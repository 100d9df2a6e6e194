"""asl.bench.report.stats on hand-made inputs, against values computed independently of scipy."""
import itertools
import math
import statistics

import numpy as np

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asl.bench.report.stats import (
    COMPARISON_FIELDS,
    bootstrap_mean_ci,
    compare,
    holm,
    mcnemar_exact,
    mean_interval,
    newcombe_interval,
    paired_bootstrap_diff,
    paired_proportion_diff,
    paired_score_diff,
    signed_rank_exact_p,
    wilcoxon_p,
    wilson,
)

Z = {0.95: 1.959963984540054, 0.90: 1.6448536269514722}  # standard normal quantiles


def wilson_by_hand(k, n, z):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def mcnemar_by_hand(b, c):
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (7, 10), (10, 10), (17, 50), (81, 263)])
@pytest.mark.parametrize("conf", [0.95, 0.90])
def test_wilson_matches_the_formula(k, n, conf):
    lo, hi = wilson(k, n, conf)
    elo, ehi = wilson_by_hand(k, n, Z[conf])
    assert lo == pytest.approx(max(0.0, elo), abs=1e-9) and hi == pytest.approx(min(1.0, ehi), abs=1e-9)


def test_wilson_textbook_values_and_edges():
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson score)
    for (k, n), (elo, ehi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                               (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        lo, hi = wilson(k, n)
        assert (round(lo, 4), round(hi, 4)) == (elo, ehi)
    assert wilson(0, 0) == (None, None)
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (0, 5), (0, 6), (3, 7), (10, 2), (5, 5), (1, 20), (12, 30)])
def test_mcnemar_matches_binomial_sums(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(mcnemar_by_hand(b, c), rel=1e-12)
    assert mcnemar_exact(b, c) == pytest.approx(mcnemar_exact(c, b), rel=1e-12)


def test_mcnemar_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(4, 4) == 1.0
    # all discordant pairs one way: 5 are not enough at the 5% level, 6 are
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_bootstrap_mean_ci():
    vals = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75, 0.0, 0.5, 1.0, 0.25]
    a = bootstrap_mean_ci(vals)
    assert a == bootstrap_mean_ci(vals, seed=0)  # deterministic by seed
    assert a != bootstrap_mean_ci(vals, seed=1)
    lo, hi = a
    assert 0.0 <= lo < statistics.fmean(vals) < hi <= 1.0
    lo90, hi90 = bootstrap_mean_ci(vals, confidence=0.90)
    assert lo <= lo90 and hi90 <= hi
    assert bootstrap_mean_ci([]) == (None, None)
    assert bootstrap_mean_ci([0.4] * 7) == (0.4, 0.4)
    assert bootstrap_mean_ci([0.3]) == (0.3, 0.3)


def test_the_interval_of_a_mean_score_is_wilsons_at_the_mean():
    """A cell's interval: Wilson's with the mean score as the proportion (the binomial worst case
    of a mean in [0, 1]); on 0/1 scores, Wilson on the count. Equal scores do not make it a point."""
    z = Z[0.95]
    assert mean_interval([1, 0, 1, 1]) == pytest.approx(wilson_by_hand(3, 4, z))
    assert mean_interval([0.25] * 15) == pytest.approx(wilson_by_hand(3.75, 15, z))
    lo, hi = mean_interval([0.25] * 15)
    assert lo < 0.11 and hi > 0.49
    assert mean_interval([0.5, 1.0, 0.0, 0.75], confidence=0.90) == pytest.approx(wilson_by_hand(2.25, 4, Z[0.90]))
    assert mean_interval([]) == (None, None)
    assert mean_interval([1 + 1e-12, -1e-12]) == pytest.approx(wilson_by_hand(1, 2, z))  # rounding, not an error
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\] for mean_interval; got -0.5 to 1.0"):
        mean_interval([1.0, -0.5])


def test_the_interval_of_a_mean_score_covers_where_a_bootstrap_does_not():
    """Fifteen scores, each 1.0 with probability 0.95 and 0.75 otherwise (a task whose answers are
    all right or miss one of four parts): the percentile bootstrap's 95% interval held the true
    mean in about half of 400 draws (it shrinks to a point when the 0.75 is not drawn); Wilson's
    at the mean, in at least 95%. Seeded: the counts are exact for this seed."""
    rng = np.random.default_rng(7)
    truth = 0.95 + 0.05 * 0.75
    draws = [np.where(rng.random(15) < 0.95, 1.0, 0.75) for _ in range(400)]
    wilson_cover = sum(lo <= truth <= hi for lo, hi in map(mean_interval, draws)) / 400
    boot_cover = sum(lo <= truth <= hi for lo, hi in (bootstrap_mean_ci(d) for d in draws)) / 400
    assert wilson_cover >= 0.95 and boot_cover < 0.7, (wilson_cover, boot_cover)


def test_bootstrap_agrees_with_the_normal_approximation_on_large_samples():
    vals = [1.0] * 300 + [0.0] * 700
    lo, hi = bootstrap_mean_ci(vals, resamples=4000)
    half = 1.959963984540054 * math.sqrt(0.3 * 0.7 / 1000)
    assert lo == pytest.approx(0.3 - half, abs=0.006) and hi == pytest.approx(0.3 + half, abs=0.006)


def test_paired_bootstrap_diff():
    a = [0.9, 0.5, 1.0, 0.2, 0.7, 0.3]
    b = [0.4, 0.5, 0.8, 0.0, 0.7, 0.1]
    diff, lo, hi = paired_bootstrap_diff(a, b)
    assert diff == pytest.approx(statistics.fmean(x - y for x, y in zip(a, b)))
    assert 0.0 <= lo <= diff <= hi
    assert (diff, lo, hi) == paired_bootstrap_diff(a, b)
    # a constant shift is known exactly: pairing removes the per-sample spread
    shifted = paired_bootstrap_diff([x + 0.25 for x in a], a)
    assert shifted == pytest.approx((0.25, 0.25, 0.25))
    assert paired_bootstrap_diff([], []) == (None, None, None)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0, 0.0], [1.0])


def test_paired_score_diff_is_newcombe_on_each_pairs_four_shares():
    a, b = [1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 1, 0, 0, 1]
    assert paired_score_diff(a, b) == pytest.approx(paired_proportion_diff(a, b))  # 0/1: the counts
    assert paired_score_diff(a, b) == pytest.approx(newcombe_interval(3, 2, 1, 2))
    # graded: (0.5, 0.25) is both 0.25, a alone 0.25, neither 0.5; (0.75, 1) both 0.75, b alone 0.25
    assert paired_score_diff([0.5, 0.75], [0.25, 1.0]) == pytest.approx(newcombe_interval(1.0, 0.25, 0.25, 0.5))
    # agreeing on every sample is not certainty of no difference
    diff, lo, hi = paired_score_diff([0.25, 0.5, 1.0] * 5, [0.25, 0.5, 1.0] * 5)
    assert diff == 0 and lo < -0.05 and hi > 0.05
    assert paired_score_diff([], []) == (None, None, None)
    with pytest.raises(ValueError, match=r"paired scores must lie in \[0, 1\]; b runs from -0.5 to 1.0"):
        paired_score_diff([1.0, 0.0], [1.0, -0.5])
    with pytest.raises(ValueError, match="for graded scores use paired_score_diff"):
        paired_proportion_diff([1.0, 0.5], [1.0, 0.0])


def test_the_paired_score_interval_covers_a_rare_graded_difference_the_bootstrap_misses():
    """Fifteen pairs, scores 0.5, 0.75 or 1, the second method a quarter lower on 10% of them (a
    true difference of 2.5 points): the bootstrap's interval is [0, 0] whenever no such pair is
    drawn and held the difference in 80% of 400 draws; paired_score_diff's in at least 95%.
    Seeded: the counts are exact for this seed."""
    rng = np.random.default_rng(7)
    draws = []
    for _ in range(400):
        a = rng.choice([0.5, 0.75, 1.0], 15)
        draws.append((a, np.where(rng.random(15) < 0.1, a - 0.25, a)))
    truth = 0.1 * 0.25
    ours = sum(lo <= truth <= hi for _, lo, hi in (paired_score_diff(a, b) for a, b in draws)) / 400
    boot = sum(lo <= truth <= hi for _, lo, hi in (paired_bootstrap_diff(a, b) for a, b in draws)) / 400
    assert ours >= 0.95 and boot < 0.85, (ours, boot)


def test_wilcoxon_p():
    assert wilcoxon_p([0.5, 1.0, 0.0], [0.5, 1.0, 0.0]) == 1.0  # no difference at all
    assert wilcoxon_p([], []) == 1.0
    # six positive differences, no ties: exact two-sided p = 2 / 2**6
    a, b = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.0] * 6
    assert wilcoxon_p(a, b) == pytest.approx(2 / 64)
    assert wilcoxon_p(b, a) == pytest.approx(wilcoxon_p(a, b))
    p = wilcoxon_p([0.9, 0.1, 0.5, 0.5], [0.1, 0.9, 0.5, 0.4])
    assert 0.0 < p <= 1.0


def signed_rank_p_by_hand(d):
    """Every sign flip of the non-zero differences, R+ with average ranks of |d| and half of each
    zero's rank, two-sided p = 2 * the smaller tail (capped at 1)."""
    ad = [abs(x) for x in d]
    rank = [sum(y < x for y in ad) + (sum(y == x for y in ad) + 1) / 2 for x in ad]
    half_zeros = sum(r for r, x in zip(rank, d) if x == 0) / 2
    observed = sum(r for r, x in zip(rank, d) if x > 0) + half_zeros
    null = [half_zeros + sum(r for r, x, s in zip(rank, d, signs) if x != 0 and s)
            for signs in itertools.product([0, 1], repeat=len(d))]
    less = sum(v <= observed + 1e-9 for v in null) / len(null)
    greater = sum(v >= observed - 1e-9 for v in null) / len(null)
    return min(1.0, 2 * min(less, greater))


def test_signed_rank_exact_p_on_a_hand_worked_case():
    # d = (0, 1, 2, 3): ranks 1..4, R+ = 2 + 3 + 4 + 1/2 = 9.5; the flips of (2, 3, 4) give
    # 0.5 + {0, 2, 3, 4, 5, 6, 7, 9}: only 9.5 reaches 9.5, so p = 2 * 1/8
    assert signed_rank_exact_p(np.array([0.0, 1.0, 2.0, 3.0])) == pytest.approx(0.25)
    assert wilcoxon_p([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.25)


@given(st.lists(st.sampled_from([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]), min_size=1, max_size=10))
def test_signed_rank_exact_p_is_the_sign_flip_enumeration(d):
    # small value sets force ties and zeros, the case scipy answers by permutation
    assert signed_rank_exact_p(np.array(d)) == pytest.approx(signed_rank_p_by_hand(d), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_wilcoxon_p_small_samples_match_scipy_permutation_test(seed):
    # what scipy's method "auto" returns for n <= 13 with ties or zeros, one flip at a time
    from scipy import stats

    rng = np.random.default_rng(seed)
    d = np.round(rng.normal(size=9 + seed), 1)
    d[0] = 0.0
    expected = stats.wilcoxon(d, zero_method="zsplit", method=stats.PermutationMethod()).pvalue
    assert wilcoxon_p(d, np.zeros_like(d)) == pytest.approx(expected, abs=1e-12)


def test_wilcoxon_p_small_samples_do_not_run_scipys_flip_by_flip_permutation(monkeypatch):
    # scipy takes seconds per such test (a 49-method report at 13 samples: about an hour)
    from scipy import stats

    def refuse(*args, **kwargs):
        raise AssertionError("scipy.stats.wilcoxon called for a small sample")

    monkeypatch.setattr(stats, "wilcoxon", refuse)
    d = [0.0, 0.0, 0.1, 0.1, -0.2, 0.3, 0.3, 0.3, -0.4, 0.5, 0.6, 0.6, 0.7]  # 13, zeros and ties
    assert wilcoxon_p(d, [0.0] * len(d)) == pytest.approx(signed_rank_p_by_hand(d), abs=1e-12)

# --------------------------------------------------------------------------------------------
# compare


def _r(task, length, i, method, budget, score, partial=None):
    r = {"id": f"{task}/{length}/{i}", "task": task, "length": length, "method": method, "budget": budget,
         "score": score}
    if partial is not None:
        r["partial"] = partial
    return r


A, B, C = ("full", None), ("asl", 64), ("fastkv", 64)


def make_records():
    recs = []
    for i in range(10):  # t1/100: full misses 9; asl misses 6..9; fastkv ran 0..7 only, half credit on 4..7
        recs.append(_r("t1", 100, i, *A, float(i != 9), 1.0 if i != 9 else 0.5))
        recs.append(_r("t1", 100, i, *B, float(i < 6), 1.0 if i < 6 else 0.25))
        if i < 8:
            recs.append(_r("t1", 100, i, *C, 1.0 if i < 4 else 0.5))  # no partial: an older record
    recs.append(_r("t1", 100, 99, *C, 1.0))  # a sample only fastkv ran
    for i in range(2):
        recs.append(_r("t1", 200, i, *A, 1.0, 1.0))
        recs.append(_r("t1", 200, i, *B, 0.0, 0.0))
    for i in range(5):  # t2/100: full always wrong, asl always right
        recs.append(_r("t2", 100, i, *A, 0.0, 0.0))
        recs.append(_r("t2", 100, i, *B, 1.0, 1.0))
    recs.append(dict(_r("all", 100, 0, *A, 1.0), id="all/100/0"))  # an "all" record is no task: ignored
    return recs


def _find(rows, task, length, a, b):
    found = [r for r in rows if (r["task"], r["length"], (r["method_a"], r["budget_a"]),
                                 (r["method_b"], r["budget_b"])) == (task, length, a, b)]
    assert len(found) == 1, (task, length, a, b)
    return found[0]


def test_compare_rows_and_order():
    rows = compare(make_records())
    assert all(list(r) == COMPARISON_FIELDS for r in rows)
    keys = [(r["task"], r["length"], r["method_a"], r["method_b"]) for r in rows]
    assert keys == [("t1", 100, "full", "asl"), ("t1", 100, "full", "fastkv"), ("t1", 100, "asl", "fastkv"),
                    ("t1", 200, "full", "asl"), ("t2", 100, "full", "asl"),
                    ("all", 100, "full", "asl"), ("all", 100, "full", "fastkv"), ("all", 100, "asl", "fastkv"),
                    ("all", 200, "full", "asl")]


def test_compare_counts_and_tests():
    rows = compare(make_records())
    ab = _find(rows, "t1", 100, A, B)
    assert (ab["n"], ab["a_only"], ab["b_only"]) == (10, 3, 0)
    assert (ab["acc_a"], ab["acc_b"]) == (pytest.approx(90.0), pytest.approx(60.0))
    assert ab["mcnemar_p"] == pytest.approx(mcnemar_by_hand(3, 0))
    newcombe = paired_proportion_diff([1] * 9 + [0], [1] * 6 + [0] * 4)  # 6 both, 3 a only, 1 neither
    assert (ab["acc_diff"], ab["acc_diff_lo"], ab["acc_diff_hi"]) == pytest.approx(tuple(100 * x for x in newcombe))
    # 3 / 0 of 10 is no sure gain (McNemar p 0.25)
    assert ab["acc_diff"] == pytest.approx(30.0) and ab["acc_diff_lo"] < 0
    pa = [1.0] * 9 + [0.5]
    pb = [1.0] * 6 + [0.25] * 4
    assert ab["partial_a"] == pytest.approx(100 * statistics.fmean(pa))
    assert ab["partial_b"] == pytest.approx(100 * statistics.fmean(pb))
    assert ab["partial_diff"] == pytest.approx(ab["partial_a"] - ab["partial_b"])
    # the four shares by hand: 6 pairs (1, 1); 3 pairs (1, .25): both .25, a alone .75; (.5, .25): both
    # .25, a alone .25, neither .5
    shares = newcombe_interval(6 + 3 * 0.25 + 0.25, 3 * 0.75 + 0.25, 0.0, 0.5)
    assert (ab["partial_diff"], ab["partial_diff_lo"], ab["partial_diff_hi"]) == pytest.approx(
        tuple(100 * x for x in shares))
    assert ab["wilcoxon_p"] == pytest.approx(wilcoxon_p(pa, pb))

    # unpaired samples are left out (fastkv's 8, 9 missing, its 99 alone); fractional = not fully correct
    ac = _find(rows, "t1", 100, A, C)
    assert (ac["n"], ac["a_only"], ac["b_only"], ac["acc_b"]) == (8, 4, 0, pytest.approx(50.0))
    assert all(ac[k] is None for k in ("partial_a", "partial_b", "partial_diff", "partial_diff_lo",
                                       "partial_diff_hi", "wilcoxon_p"))
    bc = _find(rows, "t1", 100, B, C)
    assert (bc["n"], bc["a_only"], bc["b_only"]) == (8, 2, 0)

    t2 = _find(rows, "t2", 100, A, B)
    assert (t2["n"], t2["a_only"], t2["b_only"], t2["mcnemar_p"]) == (5, 0, 5, pytest.approx(2 / 32))
    # 0/1 partial scores: the accuracy's interval, not the bootstrap's point [-100, -100]
    assert (t2["partial_diff"], t2["partial_diff_lo"], t2["partial_diff_hi"]) == pytest.approx(
        (t2["acc_diff"], t2["acc_diff_lo"], t2["acc_diff_hi"]))
    assert t2["partial_diff"] == pytest.approx(-100.0) and t2["partial_diff_hi"] > -60


def test_compare_pooled_all_rows():
    rows = compare(make_records())
    ab = _find(rows, "all", 100, A, B)  # t1 and t2 at length 100, not length 200
    assert (ab["n"], ab["a_only"], ab["b_only"]) == (15, 3, 5)
    assert ab["mcnemar_p"] == pytest.approx(mcnemar_by_hand(3, 5))
    assert ab["acc_a"] == pytest.approx(100 * 9 / 15) and ab["acc_b"] == pytest.approx(100 * 11 / 15)
    assert _find(rows, "all", 100, A, C)["n"] == 8
    assert _find(rows, "all", 200, A, B)["n"] == 2
    assert compare([]) == []


def test_compare_pairs_on_ids_not_positions():
    recs = [_r("t", 10, i, *A, float(i % 2)) for i in range(4)]
    recs += [_r("t", 10, i, *B, float(i % 2)) for i in reversed(range(4))]  # same outcomes, other order
    (row,) = [r for r in compare(recs) if r["task"] == "t"]
    assert (row["n"], row["a_only"], row["b_only"], row["mcnemar_p"]) == (4, 0, 0, 1.0)


def test_holm_hand_worked():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept non-decreasing: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped
    assert holm([]) == [] and holm([0.03]) == [0.03]


@given(st.lists(st.floats(0, 1), max_size=30))
def test_holm_never_lowers_a_p_and_keeps_their_order(ps):
    adjusted = holm(ps)
    assert all(p <= a <= 1 for p, a in zip(ps, adjusted))
    assert all(adjusted[i] <= adjusted[j] for i in range(len(ps)) for j in range(len(ps)) if ps[i] < ps[j])
    # Holm rejects at least what Bonferroni (every p times m) rejects
    assert sum(a < 0.05 for a in adjusted) >= sum(p * len(ps) < 0.05 for p in ps)


def test_the_paired_accuracy_difference_is_newcombes():
    """Newcombe's square-and-add interval for paired proportions, against the published example
    (Cavo et al. 2012 in Fagerland, Lydersen and Laake, Statistical Analysis of Contingency
    Tables, ch. 8: both right 59, first only 6, second only 16, neither 80 -> -0.0621 [-0.1186,
    -0.0046]); agreement on every sample is an interval around 0, not a point."""
    a = [1] * 59 + [1] * 6 + [0] * 16 + [0] * 80
    b = [1] * 59 + [0] * 6 + [1] * 16 + [0] * 80
    diff, lo, hi = paired_proportion_diff(a, b)
    assert (round(diff, 4), round(lo, 4), round(hi, 4)) == (-0.0621, -0.1186, -0.0046)
    rdiff, rlo, rhi = paired_proportion_diff(b, a)  # the order swapped: the interval mirrored
    assert (rdiff, rlo, rhi) == pytest.approx((-diff, -hi, -lo))
    same, lo, hi = paired_proportion_diff([1] * 20 + [0] * 5, [1] * 20 + [0] * 5)
    assert same == 0 and -0.2 < lo < -0.05 and hi == pytest.approx(-lo)
    assert paired_proportion_diff([], []) == (None, None, None)
    with pytest.raises(ValueError, match="0/1 outcomes"):
        paired_proportion_diff([0.5, 1], [1, 1])


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_the_paired_accuracy_interval_holds_its_estimate_inside_minus_one_to_one(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    diff, lo, hi = paired_proportion_diff(a, b)
    assert -1 - 1e-12 <= lo <= diff <= hi <= 1 + 1e-12
    assert diff == pytest.approx((sum(a) - sum(b)) / len(a))
