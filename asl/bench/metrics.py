"""Scoring of generated answers: RULER's string matches and InfiniteBench's retrieval checks.

    score("ruler_all", prediction, answers) -> float in [0, 1]
    partial(prediction, answers) -> float in [0, 1]   (graded, metric-independent)
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["METRICS", "infinitebench_kv", "infinitebench_number", "partial", "ruler_all", "ruler_part",
           "score"]


def ruler_all(prediction: str, answers: Sequence[str]) -> float:
    """RULER string_match_all: the fraction of references found (case-insensitive)."""
    if not answers:
        return 0.0
    pred = prediction.lower()
    return sum(a.lower() in pred for a in answers) / len(answers)


def ruler_part(prediction: str, answers: Sequence[str]) -> float:
    """RULER string_match_part: 1 if any reference is found (case-insensitive)."""
    pred = prediction.lower()
    return float(any(a.lower() in pred for a in answers))


def infinitebench_number(prediction: str, answers: Sequence[str]) -> float:
    """InfiniteBench passkey / number_string: the first integer in the prediction is the answer."""
    found = re.search(r"\d+", prediction)
    return float(bool(answers) and found is not None and found.group() == str(answers[0]))


def infinitebench_kv(prediction: str, answers: Sequence[str]) -> float:
    """InfiniteBench kv_retrieval: the answer is one of the prediction's words once
    newlines and  : " ' . , ? ! { }  are turned into spaces."""
    for c in '\n:"\'.,?!{}':
        prediction = prediction.replace(c, " ")
    return float(bool(answers) and str(answers[0]) in prediction.split())


def _longest_prefix_run(ref: str, pred: str) -> int:
    """The most leading characters of ref that occur contiguously somewhere in pred."""
    best = 0
    for i in range(len(pred)):
        if pred[i] != ref[0]:
            continue
        n = 0
        for a, b in zip(ref, pred[i:]):
            if a != b:
                break
            n += 1
        best = max(best, n)
        if best == len(ref):
            break
    return best


def partial(prediction: str, answers: Sequence[str]) -> float:
    """Graded retrieval score: per reference, the longest run of its leading characters found
    anywhere in the prediction (case-insensitive), over its length; averaged over the references.

    Why: exact match hides partial retrieval. A model that copies the first 24 of 36 UUID
    characters scores 0 like one that copies nothing; here it scores 24/36. Examples: reference
    "a1b2-c3d4" in "The value is a1b2-c9" -> 6/9; passkey "71432" predicted "71439" -> 4/5.
    No references -> 0.0; an empty reference counts as found (1.0), like ruler_all.
    """
    if isinstance(answers, str):
        answers = (answers,)
    if not answers:
        return 0.0
    pred = prediction.lower()
    total = 0.0
    for a in answers:
        ref = str(a).lower()
        total += 1.0 if not ref else _longest_prefix_run(ref, pred) / len(ref)
    return total / len(answers)


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "ruler_all": ruler_all,
    "ruler_part": ruler_part,
    "infinitebench_number": infinitebench_number,
    "infinitebench_kv": infinitebench_kv,
}


def score(metric: str, prediction: str, answers: Sequence[str]) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown metric={metric!r}; allowed: {', '.join(METRICS)}")
    if isinstance(answers, str):
        answers = (answers,)
    return METRICS[metric](prediction, answers)
