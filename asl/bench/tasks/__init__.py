"""Deterministic synthetic long-context tasks after InfiniteBench and RULER, sized in the
model's own tokens.

    sample = make_sample("niah", tokenizer, length=8192, index=3, seed=0)
    sample.prompt          # chat template applied, answer prefix appended (docs/bench_tasks.md)
    score(sample.metric, prediction, sample.answers)   # asl.bench.tasks.scoring

A sample depends only on (task, length, index, seed) and the tokenizer.  The prompt
measures `length - max(8, length // 100) <= prompt_tokens <= length` tokens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable

from asl.bench.tasks.haystack import TaskPlan, Tokens, tokens_for
from asl.bench.tasks.infinite import INFINITE_TASKS
from asl.bench.tasks.ruler import NIAH_DEPTHS, RULER_TASKS

__all__ = ["NIAH_DEPTHS", "TASKS", "Sample", "Task", "make_sample", "task_rng"]


def sample_id(task: str, length: int, index: int) -> str:
    """What names a sample in the records (their "id"), in the run's plan and in its report."""
    return f"{task}/{length}/{index}"


@dataclasses.dataclass(frozen=True)
class Sample:
    task: str
    length: int  # target prompt length in tokens
    index: int
    prompt: str  # chat-templated, answer prefix appended; tokenizer(prompt) is the input
    answers: tuple[str, ...]
    metric: str  # a key of asl.bench.tasks.scoring.METRICS
    max_new_tokens: int
    stop: tuple[str, ...]
    depth: float | None  # fraction of the haystack tokens before the (first) needle
    prompt_tokens: int  # len(tokenizer(prompt)["input_ids"])

    @property
    def id(self) -> str:
        return sample_id(self.task, self.length, self.index)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    build: Callable[[random.Random, Tokens, int, int], TaskPlan]  # (rng, tokens, length, index)
    min_length: int
    source: str  # "InfiniteBench" or "RULER"

    def __call__(self, rng, tk, length, index) -> TaskPlan:
        return self.build(rng, tk, length, index)


TASKS: dict[str, Task] = {
    name: Task(name, build, min_length, source)
    for source, table in (("InfiniteBench", INFINITE_TASKS), ("RULER", RULER_TASKS))
    for name, (build, min_length) in table.items()
}


def task_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    """The sample's generator, seeded from a stable hash (never Python's hash())."""
    digest = hashlib.sha256(f"{seed}/{task}/{length}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def make_sample(task: str, tokenizer, length: int, index: int, seed: int) -> Sample:
    if task not in TASKS:
        raise ValueError(f"unknown task={task!r}; allowed: {', '.join(TASKS)}")
    generator = TASKS[task]
    if length < generator.min_length:
        raise ValueError(f"length={length} is too small for task {task!r}: the minimum is {generator.min_length}")
    if index < 0:
        raise ValueError(f"index={index} must be >= 0")
    tk = tokens_for(tokenizer)
    plan = generator(task_rng(seed, task, length, index), tk, length, index)
    frame = _frame(tokenizer, plan)
    overhead = tk.count(frame.format(""))
    tol = max(8, length // 100)
    budget = length - overhead
    n0 = max(plan.knob_min, round((budget - plan.fixed - tol / 2) / plan.per_unit))
    prompt, n_tok, depth = _fit(lambda n: _fill(frame, plan.render(n)), tk.count,
                                length, tol, n0, plan.per_unit, plan.knob_min, task)
    return Sample(task=task, length=length, index=index, prompt=prompt, answers=tuple(plan.answers),
                  metric=plan.metric, max_new_tokens=plan.max_new_tokens, stop=tuple(plan.stop),
                  depth=depth, prompt_tokens=n_tok)


# --- internals ---------------------------------------------------------------

_MARK = "\x00ASL-CONTEXT\x00"


class _Frame:
    """The prompt with a hole for the context (template rendered once)."""

    def __init__(self, text: str):
        self.before, self.after = text.split(_MARK)

    def format(self, context: str) -> str:
        return self.before + context + self.after


def _frame(tokenizer, plan: TaskPlan) -> _Frame:
    body = plan.head + _MARK + plan.tail
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True)
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos) and _adds_bos(tokenizer):
            text = text[len(bos):]
        return _Frame(text + plan.answer_prefix)
    return _Frame(body + plan.prefix_sep + plan.answer_prefix)


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos and \
        tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]


def _fill(frame: _Frame, rendered: tuple[str, float | None]) -> tuple[str, float | None]:
    context, depth = rendered
    return frame.format(context), depth


def _fit(render, count, length: int, tol: int, n: int, slope: float, n_min: int, task: str):
    """Find a knob value whose prompt measures within [length - tol, length] tokens
    (secant steps inside a shrinking bracket); falls back to the largest one that fits."""
    lo, hi = length - tol, length
    goal = hi - tol / 3
    below = None  # (n, tokens, prompt, depth): the largest knob known to be too short
    above = None  # the smallest knob known to be too long
    prev = None
    for _ in range(40):
        prompt, depth = render(n)
        t = count(prompt)
        if lo <= t <= hi:
            return prompt, t, depth
        if t > hi:
            above = n if above is None else min(above, n)
        elif below is None or n > below[0]:
            below = (n, t, prompt, depth)
        if prev is not None and prev[0] != n and (t - prev[1]) / (n - prev[0]) > 0:
            slope = (t - prev[1]) / (n - prev[0])
        prev = (n, t)
        first = below[0] + 1 if below else n_min
        last = above - 1 if above is not None else None
        if last is not None and first > last:
            break
        nxt = n + round((goal - t) / max(slope, 1e-3))
        if nxt == n:
            nxt = n + 1 if t < lo else n - 1
        nxt = max(nxt, first)
        n = nxt if last is None else min(nxt, last)
    if below is None:
        raise ValueError(f"length={length} is too small for task {task!r}: even the smallest "
                         f"context needs more tokens")
    return below[2], below[1], below[3]
