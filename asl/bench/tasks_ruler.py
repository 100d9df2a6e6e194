"""RULER-style synthetic tasks (NVIDIA/RULER scripts/data/synthetic): needle in a haystack
variants, variable tracking, common and frequent words extraction."""
from __future__ import annotations

import hashlib
import heapq
import random
import string

from asl.bench.haystack import TaskPlan, Tokens, UnitPool, _slot, noise_context, prose_context, random_uuid, wordlist

NIAH_DEPTHS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))
_RULER_DEPTHS = tuple(sorted({round(i * 100 / 39) / 100 for i in range(40)}))  # RULER's 40-point grid

_NIAH_HEAD = ("Some special magic {v} are hidden within the following text. Make sure to memorize it. "
              "I will quiz you about the {v} afterwards.\n")
_NIAH_TAIL = "\nWhat {is_are} all the special magic {v} for {query} mentioned in the provided text?"
_NIAH_PREFIX = "The special magic {v} for {query} mentioned in the provided text {is_are}"
_NEEDLE = "One of the special magic {v} for {key} is: {value}."


def _word_key(rng: random.Random) -> str:
    return f"{rng.choice(wordlist('adjective'))}-{rng.choice(wordlist('noun'))}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(10 ** 6, 10 ** 7 - 1))


def _key(sub: int, word: str, j: int) -> bytes:
    """A stable random sort key for the j-th copy of a word: growing the list only inserts
    new copies, the others keep their order (so the token count grows smoothly)."""
    return hashlib.blake2b(f"{sub}/{word}/{j}".encode(), digest_size=8).digest()


def _distinct(rng: random.Random, make, n: int, taken: set) -> list[str]:
    out = []
    while len(out) < n:
        x = make(rng)
        if x not in taken:
            taken.add(x)
            out.append(x)
    return out


def _niah(rng: random.Random, tk: Tokens, *, haystack: str, key: str = "words", value: str = "numbers",
          num_k: int = 1, num_v: int = 1, num_q: int = 1, depth: float | None = None) -> TaskPlan:
    make_key = _word_key if key == "words" else random_uuid
    make_value = _number if value == "numbers" else random_uuid
    taken: set = set()
    keys = _distinct(rng, make_key, num_k, taken)
    values = [_distinct(rng, make_value, num_v, taken) for _ in keys]
    needles = [_NEEDLE.format(v=value, key=k, value=x) for k, vs in zip(keys, values) for x in vs]
    queried = sorted(rng.sample(range(num_k), num_q))
    answers = tuple(x for i in queried for x in values[i])
    names = [keys[i] for i in queried]
    query = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]
    fmt = {"v": value, "query": query, "is_are": "are"}  # RULER says "are" even for one value
    fixed = sum(tk.lens([" " + s for s in needles]))
    if depth is not None:
        depths = [depth] * len(needles)
    else:
        depths = sorted(rng.sample(_RULER_DEPTHS, len(needles)))
    inserts = list(zip(depths, needles))
    per_unit = 1.0
    if haystack == "noise":
        per_unit = sum(tk.noise_lens) / 5

        def render(n):
            return noise_context(tk, n, inserts)[0], depths[0]
    elif haystack == "prose":
        def render(n):
            return prose_context(tk, n, inserts)[0], depths[0]
    else:  # a haystack of distractor needles, RULER's "needle" haystack
        fracs = sorted(rng.random() for _ in needles)
        pool = UnitPool(tk, lambda r: _NEEDLE.format(v=value, key=_distinct(r, make_key, 1, taken)[0],
                                                     value=make_value(r)), rng.getrandbits(64), "\n")

        def render(budget):
            idx = pool.pick(budget - fixed)
            lines = [pool.units[i] for i in idx]
            cum = [0]
            for i in idx:
                cum.append(cum[-1] + pool.lens[i])
            slack = budget - fixed - cum[-1]
            if slack >= 3:  # whole lines are too coarse at short lengths: pad with noise
                lines.append(noise_context(tk, round(slack / per_noise), [])[0])
                cum.append(cum[-1] + slack)
            slots = [_slot(cum[:len(idx) + 1], f) for f in fracs]
            for s, needle in reversed(list(zip(slots, needles))):
                lines.insert(s, needle)
            return "\n".join(lines), round(cum[slots[0]] / max(cum[-1], 1), 4)
        per_noise = sum(tk.noise_lens) / 5
    plan_fixed = fixed if haystack != "needle" else 0  # the needle haystack's knob is its total
    many = len(answers) > 1
    return TaskPlan(head=_NIAH_HEAD.format(**fmt), tail=_NIAH_TAIL.format(**fmt),
                    answer_prefix=_NIAH_PREFIX.format(**fmt), answers=answers, metric="ruler_all",
                    max_new_tokens=64 if many else (48 if value == "uuids" else 32),
                    stop=() if many else ("\n",), render=render, per_unit=per_unit, fixed=plan_fixed)


def _niah_task(**kw):
    def build(rng, tk, length, index):
        return _niah(rng, tk, **kw)
    return build


def niah(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """The depth grid: niah_single_2 with the needle at NIAH_DEPTHS[index % 11]."""
    return _niah(rng, tk, haystack="prose", depth=NIAH_DEPTHS[index % len(NIAH_DEPTHS)])


def vt(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """Variable tracking: one chain of 4 hops hidden in the noise haystack."""
    names = _distinct(rng, lambda r: "".join(r.choices(string.ascii_uppercase, k=5)), 5, set())
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(4)]
    fracs = sorted(rng.random() for _ in chain)
    inserts = list(zip(fracs, chain))

    def render(n):
        return noise_context(tk, n, inserts, sep="\n")[0], round(fracs[0], 4)

    return TaskPlan(
        head="Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n",
        tail=f"\nQuestion: Find all variables that are assigned the value {value} in the text above.",
        answer_prefix=(f"Answer: According to the chain(s) of variable assignment in the text above, "
                       f"{len(names)} variables are assigned the value {value}, they are:"),
        answers=tuple(names), metric="ruler_all", max_new_tokens=30, stop=(), render=render,
        per_unit=sum(tk.noise_lens) / 5, fixed=sum(tk.lens(["\n" + c for c in chain])))


def cwe(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """Common words extraction: 10 words repeated often in a numbered list of rarer ones.
    RULER repeats them 30 times (others 3); shorter lists scale that down."""
    words = sorted(set(wordlist("noun")) | set(wordlist("adjective")) | set(wordlist("verb")))
    rng.shuffle(words)
    common, rare = words[:10], words[10:]
    entries = max(length - 120, 0) / 4.5
    rep_c = min(30, max(4, int(entries * 3 // 80)))
    rep_u = 3 if rep_c >= 12 else (2 if rep_c >= 8 else 1)
    sub = rng.getrandbits(64)

    def render(n_rare):
        listed = [(w, j) for w in common for j in range(rep_c)]
        listed += [(rare[(i // rep_u) % len(rare)], i) for i in range(n_rare)]
        listed = [w for _, w in sorted((_key(sub, w, j), w) for w, j in listed)]
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), None

    return TaskPlan(
        head=("Below is a numbered list of words. In these words, some appear more often than others. "
              "Memorize the ones that appear most often.\n"),
        tail="\nQuestion: What are the 10 most common words in the above list?",
        answer_prefix="Answer: The top 10 words that appear most often in the list are:",
        answers=tuple(common), metric="ruler_all", max_new_tokens=120, stop=(), render=render,
        per_unit=4.5, fixed=round(4.5 * 10 * rep_c))


def _zipf_sequence(size: int, alpha: float):
    """order(m): the ranks of the first m words when words are added one at a time, each
    to the rank most under its Zipf share (Sainte-Lague), so the counts follow m * p_k
    (RULER's int(m * k^-alpha / zeta(alpha))) yet every step adds exactly one word."""
    weights = [k ** -alpha for k in range(1, size + 1)]
    seq: list[int] = []
    heap = [(-w / 0.5, k) for k, w in enumerate(weights)]
    heapq.heapify(heap)
    counts = [0] * size

    def order(m: int) -> list[int]:
        while len(seq) < m:
            _, k = heapq.heappop(heap)
            seq.append(k)
            counts[k] += 1
            heapq.heappush(heap, (-weights[k] / (counts[k] + 0.5), k))
        return seq[:m]
    return order


def fwe(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """Frequent words extraction: coded words with Zipf(2) counts; '...' is the top-ranked noise."""
    size = max(length // 50, 8)
    vocab = _distinct(rng, lambda r: "".join(r.choices(string.ascii_lowercase, k=6)), size, set())
    vocab[0] = "..."
    sub = rng.getrandbits(64)
    order = _zipf_sequence(size, 2.0)

    def render(n_words):
        seen = [0] * size
        text = []
        for k in order(n_words):
            text.append((_key(sub, vocab[k], seen[k]), vocab[k]))
            seen[k] += 1
        return " ".join(w for _, w in sorted(text)), None

    return TaskPlan(
        head=("Read the following coded text and track the frequency of each coded word. "
              "Find the three most frequently appeared coded words. "),
        tail=("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
              "What are the three most frequently appeared words in the above coded text?"),
        answer_prefix="Answer: According to the coded text above, the three most frequently appeared words are:",
        answers=tuple(vocab[1:4]), metric="ruler_all", max_new_tokens=50, stop=(), render=render,
        per_unit=2.5, knob_min=40)


RULER_TASKS = {  # name -> (generator, minimum length)
    "niah_single_1": (_niah_task(haystack="noise"), 256),
    "niah_single_2": (_niah_task(haystack="prose"), 256),
    "niah_single_3": (_niah_task(haystack="prose", value="uuids"), 256),
    "niah_multikey_1": (_niah_task(haystack="prose", num_k=4), 256),
    "niah_multikey_2": (_niah_task(haystack="needle"), 256),
    "niah_multikey_3": (_niah_task(haystack="needle", key="uuids", value="uuids"), 256),
    "niah_multivalue": (_niah_task(haystack="prose", num_v=4), 256),
    "niah_multiquery": (_niah_task(haystack="prose", num_k=4, num_q=4), 256),
    "vt": (vt, 256),
    "cwe": (cwe, 512),
    "fwe": (fwe, 256),
    "niah": (niah, 256),
}
