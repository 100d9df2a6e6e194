"""InfiniteBench-style retrieval tasks (passkey, number_string, kv_retrieval)."""
from __future__ import annotations

import random

from asl.bench.haystack import TaskPlan, Tokens, UnitPool, _slot, noise_context, random_uuid

_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
          "memorize it. I will quiz you about the important information there.\n\n")


def _noise_retrieval(rng: random.Random, tk: Tokens, needle: str, question: str, prefix: str,
                     answer: str, max_new_tokens: int) -> TaskPlan:
    depth = round(rng.random(), 2)

    def render(n: int):
        return noise_context(tk, n, [(depth, needle)])[0], depth

    return TaskPlan(head=_INTRO, tail=f"\n\n{question}", answer_prefix=prefix, answers=(answer,),
                    metric="infinitebench_number", max_new_tokens=max_new_tokens, stop=("\n",),
                    render=render, per_unit=sum(tk.noise_lens) / 5, fixed=tk.lens([needle])[0])


def passkey(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    key = str(rng.randint(10000, 99999))
    return _noise_retrieval(rng, tk, f"The pass key is {key}. Remember it. {key} is the pass key.",
                            "What is the pass key?", "The pass key is", key, 8)


def number_string(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    digits = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(9))
    return _noise_retrieval(
        rng, tk, f"The sequence of digits is {digits}. Remember it. {digits} is the sequence of digits.",
        "What is the sequence of digits?", "The sequence of digits is", digits, 16)


def kv_retrieval(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    key, value = random_uuid(rng), random_uuid(rng)
    target = rng.random()
    pool = UnitPool(tk, lambda r: f'"{random_uuid(r)}": "{random_uuid(r)}"', rng.getrandbits(64), ", ")
    pair = f'"{key}": "{value}"'
    pair_len = tk.lens([", " + pair])[0]

    def render(budget: int):
        idx = pool.pick(budget - pair_len - 2)
        units = [pool.units[i] for i in idx]
        cum = [0]
        for i in idx:
            cum.append(cum[-1] + pool.lens[i])
        # whole pairs are coarse (~40-80 tokens) at short lengths: a spaced colon in a few
        # pairs (still valid JSON) takes up the slack a token at a time
        slack = budget - pair_len - 2 - cum[-1]
        for k in range(max(len(units) - slack, 0), len(units)):
            units[k] = units[k].replace('": "', '" : "', 1)
        at = _slot(cum, target)
        units.insert(at, pair)
        return "{" + ", ".join(units) + "}", round(cum[at] / max(cum[-1], 1), 4)

    return TaskPlan(
        head="Extract the value corresponding to the specified key in the JSON object below.\n\n",
        tail=f'\n\nKey: "{key}"', answer_prefix="The value associated with the specified key is:",
        answers=(value,), metric="infinitebench_kv", max_new_tokens=50, stop=("\n",),
        render=render, per_unit=1.0, fixed=0)


INFINITE_TASKS = {  # name -> (generator, minimum length)
    "passkey": (passkey, 256),
    "number_string": (number_string, 256),
    "kv_retrieval": (kv_retrieval, 512),
}
