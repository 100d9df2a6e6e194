"""Offline long-context material: prose that ships with Python, and a passkey prompt."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def prose() -> str:
    """Python's own documentation topics, joined (about 400k characters)."""
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics))


def prose_tokens(tokenizer, n_tokens: int) -> list[int]:
    """The first n_tokens of the prose in the model's own tokens (repeated if short)."""
    ids = tokenizer(prose(), add_special_tokens=False)["input_ids"]
    while len(ids) < n_tokens:
        ids = ids + ids
    return ids[:n_tokens]


def passkey_prompt(tokenizer, n_tokens: int, key: str, depth: float = 0.5) -> str:
    """About n_tokens of prose with a pass key hidden at `depth`, then the question."""
    filler = tokenizer.decode(prose_tokens(tokenizer, max(n_tokens - 60, 1)))
    cut = int(len(filler) * depth)
    needle = f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
    return filler[:cut] + needle + filler[cut:] + "\nWhat is the pass key? The pass key is"
