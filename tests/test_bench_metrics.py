"""asl.bench.tasks.scoring.partial: the graded score on known strings."""
import pytest

from asl.bench.tasks.scoring import METRICS, partial, score


def test_partial_examples_from_the_docstring():
    assert partial("The value is a1b2-c9", ["a1b2-c3d4"]) == pytest.approx(6 / 9)
    assert partial("71439", ["71432"]) == pytest.approx(4 / 5)


def test_partial_exact_and_nothing():
    assert partial("the answer is 12345.", ["12345"]) == 1.0
    assert partial("12345", ["12345"]) == 1.0
    assert partial("no digits here", ["12345"]) == 0.0
    assert partial("", ["12345"]) == 0.0
    assert partial("anything", []) == 0.0


def test_partial_is_case_insensitive():
    assert partial("UUID: 9F1C-AB", ["9f1c-ab77"]) == pytest.approx(7 / 9)
    assert partial("uuid: 9f1c-ab77", ["9F1C-AB77"]) == 1.0


def test_partial_averages_references():
    # "apple" fully, "banana" as "ban" (3/6), "cherry" not at all
    assert partial("apple and ban", ["apple", "banana", "cherry"]) == pytest.approx((1 + 0.5 + 0) / 3)


def test_partial_reference_at_the_end_and_best_occurrence():
    assert partial("the key is 8841", ["8841"]) == 1.0
    assert partial("xx 88", ["8841"]) == pytest.approx(2 / 4)   # cut short by the end of the prediction
    # several partial occurrences: the longest run of leading characters wins
    assert partial("ab... abc... a... abcd-", ["abcdef"]) == pytest.approx(4 / 6)
    assert partial("abcd-x abx", ["abcdef"]) == pytest.approx(4 / 6)
    # only leading characters count: the tail of the reference alone scores nothing
    assert partial("cdef", ["abcdef"]) == 0.0


def test_partial_accepts_a_string_and_numbers():
    assert partial("42", "42") == 1.0
    assert partial("answer 4", [42]) == pytest.approx(0.5)


def test_score_and_metrics_unchanged():
    assert set(METRICS) == {"ruler_all", "ruler_part", "infinitebench_number", "infinitebench_kv"}
    assert score("ruler_all", "a1b2-c9", ["a1b2-c3d4"]) == 0.0
