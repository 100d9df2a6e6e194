"""Scoring of generated answers: RULER's string matches and InfiniteBench's retrieval checks.

    score("ruler_all", prediction, answers) -> float in [0, 1]
    partial(prediction, answers) -> float in [0, 1]   (graded, metric-independent)
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from asl.answers import partial

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
