"""InfiniteBench-style retrieval tasks (passkey, number_string, kv_retrieval).

The wording is InfiniteBench's (OpenBMB/InfiniteBench): the prompt templates of its open
models (src/prompt.py, yarn_mistral_templates, which Yi and ChatGLM3 use too) and the needles,
noise and JSON framing of data/construct_synthetic_dataset.py; the new-token limits are
DATA_NAME_TO_MAX_NEW_TOKENS in src/eval_utils.py.  See docs/bench_tasks.md.
"""
from __future__ import annotations

import random

from asl.bench.tasks.haystack import TaskPlan, Tokens, UnitPool, slot, noise_lines, random_uuid

# src/prompt.py, yarn_mistral_templates (the text before {context})
_PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                  "memorize it. I will quiz you about the important information.\n\n")
_NUMBER_STRING_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it. "
                        "I will quiz you about the important information there.\n\n")
_KV_INTRO = "Extract the value corresponding to the specified key in the JSON object below.\n\n"

# src/eval_utils.py, DATA_NAME_TO_MAX_NEW_TOKENS
MAX_NEW_TOKENS = {"passkey": 6, "number_string": 12, "kv_retrieval": 50}


def _noise_retrieval(rng: random.Random, tk: Tokens, intro: str, needle: str, question: str,
                     prefix: str, answer: str, max_new_tokens: int) -> TaskPlan:
    """InfiniteBench's layout: noise lines, each ending with a newline, the needle line among
    them ("noise * j + ans + noise * (N - j)"), then "\\n\\n{question}\\n\\n{prefix}"."""
    depth = rng.random()

    def render(n: int):
        text, at = noise_lines(tk, n, [(depth, needle)], end="\n", before_noise=False)
        return text, round(at[0], 4)

    return TaskPlan(head=intro, tail=f"\n\n{question}", answer_prefix=prefix, prefix_sep="\n\n",
                    answers=(answer,), metric="infinitebench_number", max_new_tokens=max_new_tokens,
                    stop=("\n",), render=render, per_unit=tk.block_lens[4] / 5,
                    fixed=tk.lens(["\n" + needle])[0])


def passkey(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    # build_passkey: five digits, each random.randint(0, 9) (a leading 0 is possible)
    key = "".join(str(rng.randint(0, 9)) for _ in range(5))
    return _noise_retrieval(rng, tk, _PASSKEY_INTRO,
                            f"The pass key is {key}. Remember it. {key} is the pass key.",
                            "What is the pass key?", "The pass key is", key, MAX_NEW_TOKENS["passkey"])


def digit_string(rng: random.Random) -> str:
    """build_number_string's key: five random digits, then five times a digit at a random
    position is doubled in place (so ten digits with repeats, e.g. '3346681880')."""
    keys = [str(rng.randint(0, 9)) for _ in range(5)]
    for k in range(5):
        pos = rng.randint(0, 5 + k - 1)
        keys.insert(pos, keys[pos])
    return "".join(keys)


def number_string(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    digits = digit_string(rng)
    return _noise_retrieval(
        rng, tk, _NUMBER_STRING_INTRO,
        f"The sequence of digits is {digits}. Remember it. {digits} is the sequence of digits.",
        "What is the sequence of digits?", "The sequence of digits is", digits,
        MAX_NEW_TOKENS["number_string"])


def kv_retrieval(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """build_kv_retrieval: 'JSON data:\\n{"k": "v", ...}' of uuid4 pairs, then the question
    '\\nKey: "k"\\nThe value associated with the specified key is: ' after the template's
    blank line."""
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
        at = slot(cum, target)
        units.insert(at, pair)
        return "{" + ", ".join(units) + "}", round(cum[at] / max(cum[-1], 1), 4)

    return TaskPlan(
        head=_KV_INTRO + "JSON data:\n", tail=f'\n\n\nKey: "{key}"',
        answer_prefix="The value associated with the specified key is: ", prefix_sep="\n",
        answers=(value,), metric="infinitebench_kv", max_new_tokens=MAX_NEW_TOKENS["kv_retrieval"],
        stop=("\n",), render=render, per_unit=1.0, fixed=0)


INFINITE_TASKS = {  # name -> (generator, minimum length)
    "passkey": (passkey, 256),
    "number_string": (number_string, 256),
    "kv_retrieval": (kv_retrieval, 512),
}
