"""An answer's text: where it stops (stop strings) and how close it is to a reference (the
graded partial score). Generation, the oracle and the bench all read answers this way.
"""
from __future__ import annotations

from collections.abc import Sequence

_LEAD = " \t\r\n:.,;-*`\"'"  # what an answer may start with before its first word


def stop_index(text: str, stop: list[str] | None) -> int | None:
    """Where the earliest stop string starts, looking only after the text's leading
    whitespace and punctuation (so a stop of "\n" lets an answer begin on a new line)."""
    start = len(text) - len(text.lstrip(_LEAD))
    hits = [i for i in (text.find(s, start) for s in stop or ()) if i >= 0]
    return min(hits) if hits else None


def hits_stop(tokenizer, ids: list[int], stop: list[str]) -> bool:
    return stop_index(tokenizer.decode(ids, skip_special_tokens=True), stop) is not None


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """The answer up to its first stop string (see stop_index)."""
    i = stop_index(text, stop)
    return text if i is None else text[:i]


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
