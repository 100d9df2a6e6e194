"""Offline long-context material: prose that ships with Python, a passkey prompt, and the
haystack building blocks of the synthetic tasks in asl.bench.tasks."""
from __future__ import annotations

import bisect
import dataclasses
import random
import re
import weakref
from collections.abc import Callable, Sequence
from functools import cache, lru_cache


@lru_cache(maxsize=1)
def prose() -> str:
    """Python's own documentation topics, joined (about 400k characters)."""
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics))


@lru_cache(maxsize=1)
def essay() -> str:
    """The prose as RULER reads its essays: every run of whitespace one space (niah.py:
    re.sub(r'\\s+', " ", essay)), the stand-in for its Paul Graham essays offline."""
    return re.sub(r"\s+", " ", prose()).strip()


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


# --- building blocks for the synthetic long-context tasks (asl.bench.tasks) -------------

NOISE_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.",
                   "Here we go.", "There and back again.")
NOISE = " ".join(NOISE_SENTENCES)  # RULER's and InfiniteBench's noise haystack, one per line


class Tokens:
    """Per-tokenizer measuring helper with the costly pieces cached (use tokens_for())."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._prose: tuple[list[int], list[int]] | None = None  # (ids, sentence boundaries)
        self._prose_complete = False
        # tokens of a noise line of the first k + 1 sentences, with the newline before it
        self.block_lens = self.lens(["\n" + " ".join(NOISE_SENTENCES[:k]) for k in range(1, 6)])

    def lens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of each text on its own, no special tokens."""
        if not texts:
            return []
        return [len(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def count(self, text: str) -> int:
        """Length of the model input for `text` (special tokens as the tokenizer adds them)."""
        return len(self.tokenizer(text)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)

    def prose(self, n: int) -> tuple[list[int], list[int]]:
        """At least n token ids of essay() (repeated if it is short) and the sorted token
        indices where a sentence ends just before (insertion points)."""
        if self._prose is None or (len(self._prose[0]) < n and not self._prose_complete):
            text = essay()
            chars = min(len(text), max(65536, 8 * n))
            self._prose_complete = chars == len(text)
            enc = self.tokenizer(text[:chars], add_special_tokens=False, return_offsets_mapping=True)
            ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
            if not self._prose_complete:  # the cut may split the last words
                ids, offs = ids[:-8], offs[:-8]
            bounds = [i for i in range(1, len(ids)) if _sentence_end(text, offs[i - 1][1])]
            self._prose = (ids, bounds)
        ids, bounds = self._prose
        if len(ids) >= n:
            return ids, bounds
        reps = -(-n // len(ids))
        return ids * reps, [b + k * len(ids) for k in range(reps) for b in [0] + bounds][1:]


def _sentence_end(text: str, end: int) -> bool:
    """Whether text[:end] ends a sentence ('.' before whitespace) or a paragraph."""
    return end >= 2 and ((text[end - 1] == "." and text[end:end + 1].isspace())
                         or text[end - 2:end] == "\n\n")


_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokens_for(tokenizer) -> Tokens:
    try:
        tk = _TOKENS.get(tokenizer)
        if tk is None:
            tk = _TOKENS[tokenizer] = Tokens(tokenizer)
        return tk
    except TypeError:  # not weak-referenceable: no caching
        return Tokens(tokenizer)


def slot(cum: Sequence[int], frac: float) -> int:
    """Index i (0..len(cum)-1) with cum[i] (tokens before slot i) closest to frac * total."""
    goal = frac * cum[-1]
    i = bisect.bisect_left(cum, goal)
    if i >= len(cum):
        return len(cum) - 1
    if i > 0 and goal - cum[i - 1] <= cum[i] - goal:
        return i - 1
    return i


def _join(pieces: Sequence[tuple[str, bool]], sep: str) -> str:
    """Join (text, is_insert) pieces: haystack pieces with a space, inserts with `sep`
    (whitespace already at a seam is kept instead)."""
    out: list[str] = []
    prev_insert = False
    for text, is_insert in pieces:
        if not text:
            continue
        if out:
            s = sep if (is_insert or prev_insert) else " "
            if s == " " and (out[-1][-1:].isspace() or text[:1].isspace()) or s != " " and (out[-1].endswith(s) or text.startswith(s)):
                s = ""
            out.append(s)
        out.append(text)
        prev_insert = is_insert
    return "".join(out)


def noise_lines(tk: Tokens, n: int, inserts: Sequence[tuple[float, str]], *, end: str = "",
                before_noise: bool = True, distinct: bool = False) -> tuple[str, list[float]]:
    """The noise haystack as RULER (niah.py, variable_tracking.py) and InfiniteBench
    (construct_synthetic_dataset.py) build it: NOISE, the five sentences, once per line, lines
    joined with newlines (InfiniteBench ends every line with one: end="\n").  n counts noise
    sentences, so the last line may hold only the first n % 5 of them (fine sizing).

    Each (fraction, text) insert becomes a line of its own at the line boundary nearest that
    fraction of the noise tokens; before_noise keeps it before a noise line, as RULER inserts
    (never after the last one); distinct spreads the inserts over different boundaries when
    there are enough lines (RULER's chains take distinct positions).  Returns the text and
    the achieved fractions."""
    full, part = divmod(max(n, 0), 5)
    sizes = [5] * full + ([part] if part else [])
    cum = [0]
    for k in sizes:
        cum.append(cum[-1] + tk.block_lens[k - 1])
    last = len(sizes) - 1 if before_noise and sizes else len(sizes)
    slots = [min(slot(cum, f), last) for f, _ in inserts]
    if distinct and len(inserts) <= last + 1:
        for k in range(1, len(slots)):
            slots[k] = max(slots[k], slots[k - 1] + 1)
        for k in range(len(slots) - 1, -1, -1):
            slots[k] = min(slots[k], last - (len(slots) - 1 - k))
    lines, k = [], 0
    for i in range(len(sizes) + 1):
        while k < len(inserts) and slots[k] <= i:
            lines.append(inserts[k][1])
            k += 1
        if i < len(sizes):
            lines.append(NOISE if sizes[i] == 5 else " ".join(NOISE_SENTENCES[:sizes[i]]))
    return "\n".join(lines) + end, [cum[s] / max(cum[-1], 1) for s in slots]


def prose_context(tk: Tokens, n: int, inserts: Sequence[tuple[float, str]]) -> tuple[str, list[float]]:
    """n prose tokens with each (fraction, text) insert at a sentence end near that
    fraction of the prose tokens (the exact token position when no sentence ends close by)."""
    ids, bounds = tk.prose(n)
    window = max(8, int(0.03 * n))
    cuts = []
    for f, _ in inserts:
        goal = round(f * n)
        j = bisect.bisect_left(bounds, goal)
        near = [b for b in bounds[max(j - 1, 0):j + 1] if abs(b - goal) <= window and b <= n]
        cuts.append(min(near, key=lambda b: abs(b - goal)) if near else goal)
    cuts = [max(c, prev) for prev, c in zip([0] + cuts, cuts)]  # keep the inserts in order
    pieces, last = [], 0
    for c, (_, text) in zip(cuts, inserts):
        pieces.append((tk.decode(ids[last:c]), False))
        pieces.append((text, True))
        last = c
    pieces.append((tk.decode(ids[last:n]), False))
    return _join(pieces, " "), [c / max(n, 1) for c in cuts]


class UnitPool:
    """A lazily grown, deterministic stream of random haystack units (lines, JSON pairs),
    each measured in tokens, from which a token budget is filled closely."""

    SPARES = 256

    def __init__(self, tk: Tokens, make: Callable[[random.Random], str], seed: int, measure_prefix: str = " "):
        self.tk, self.make, self.rng, self.prefix = tk, make, random.Random(seed), measure_prefix
        self.units: list[str] = []
        self.lens: list[int] = []

    def _grow(self, total: int, count: int) -> None:
        while sum(self.lens) < total or len(self.units) < count:
            new = [self.make(self.rng) for _ in range(max(64, len(self.units) // 2))]
            self.units += new
            self.lens += self.tk.lens([self.prefix + u for u in new])

    def pick(self, budget: int) -> list[int]:
        """Indices of units whose token lengths sum to at most `budget`, as close as the
        pool allows: the first k units (and k + 1), then swaps with spare units."""
        budget = max(budget, 0)
        self._grow(budget + 1, 0)
        total, k = 0, 0
        while total + self.lens[k] <= budget:
            total += self.lens[k]
            k += 1
            self._grow(0, k + 1)
        self._grow(0, k + 1 + self.SPARES)
        best = None
        for m in (k, k + 1):
            chosen, total = self._adjust(list(range(m)), list(range(m, m + self.SPARES)), budget)
            if total <= budget and (best is None or total > best[1]):
                best = (chosen, total)
        return best[0] if best else list(range(k))

    def _adjust(self, chosen: list[int], spares: list[int], budget: int) -> tuple[list[int], int]:
        """Swap chosen units for spares to bring the total to the budget from either side."""
        total = sum(self.lens[i] for i in chosen)
        for _ in range(64):
            if total == budget:
                break
            have: dict[int, int] = {}
            for pos, c in enumerate(chosen):
                have.setdefault(self.lens[c], pos)
            spare: dict[int, int] = {}
            for j in spares:
                spare.setdefault(self.lens[j], j)
            best = None  # (rank, pos, j, new total)
            for a, pos in have.items():
                for b, j in spare.items():
                    new = total + b - a
                    if total < budget and not total < new <= budget:
                        continue
                    rank = new if new <= budget else -new
                    if total > budget and new >= total:
                        continue
                    if best is None or rank > best[0]:
                        best = (rank, pos, j, new)
            if best is None:
                break
            _, pos, j, total = best
            spares.remove(j)
            spares.append(chosen[pos])
            chosen[pos] = j
        return chosen, total

def random_uuid(rng: random.Random) -> str:
    """A uuid4-formatted string drawn from `rng` (never the system entropy)."""
    import uuid

    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def wordlist(kind: str) -> tuple[str, ...]:
    """wonderwords' bundled 'noun', 'adjective' or 'verb' list: lower-case alphabetic
    entries, profanity removed, sorted (loaded from the files, not its RNG)."""
    return _wordlist(kind)


@cache
def _wordlist(kind: str) -> tuple[str, ...]:
    from importlib.resources import files

    def read(name: str) -> set[str]:
        text = files("wonderwords.assets").joinpath(f"{name}list.txt").read_text(encoding="utf-8")
        return {w.strip().lower() for w in text.splitlines()
                if w.strip().isascii() and w.strip().isalpha()}

    return tuple(sorted(read(kind) - read("profanity")))


@dataclasses.dataclass
class TaskPlan:
    """What a task generator hands to asl.bench.tasks.make_sample: the fixed text around
    the context, and render(knob) -> (context, depth) whose size grows with the knob."""

    head: str
    tail: str
    answer_prefix: str  # opens the model's turn (after the chat template's generation prompt)
    answers: tuple[str, ...]
    metric: str
    max_new_tokens: int
    stop: tuple[str, ...]
    render: Callable[[int], tuple[str, float | None]]
    per_unit: float = 1.0  # context tokens per knob step (first guess)
    fixed: int = 0  # context tokens the knob does not control (needles)
    knob_min: int = 0
    prefix_sep: str = "\n"  # between tail and answer_prefix when there is no chat template
