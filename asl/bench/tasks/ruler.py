"""RULER-style synthetic tasks (NVIDIA/RULER scripts/data/synthetic): needle in a haystack
variants, variable tracking, common and frequent words extraction.

Templates, answer prefixes and tokens_to_generate are RULER's scripts/data/synthetic/constants.py;
each task's settings are scripts/synthetic.yaml; the singular wording, the one-shot demonstrations
and the repetition counts are those of niah.py, variable_tracking.py and common_words_extraction.py.
Where we differ (offline haystack, sizing in the model's tokens): docs/bench_tasks.md.
"""
from __future__ import annotations

import hashlib
import heapq
import random
import string

from asl.bench.tasks.haystack import TaskPlan, Tokens, UnitPool, slot, noise_lines, prose_context, random_uuid, wordlist

NIAH_DEPTHS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))
_RULER_DEPTHS = tuple(sorted({round(i * 100 / 39) / 100 for i in range(40)}))  # RULER's 40-point grid

# constants.py, TASKS[...]["tokens_to_generate"]
MAX_NEW_TOKENS = {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
                  "freq_words_extraction": 50}

# constants.py: TASKS["niah"] template and answer_prefix; niah.py: the needle
_NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to "
                  "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all "
                  "the special magic {type_needle_v} for {query} mentioned in the provided text?")
_NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."


def niah_wording(type_needle_v: str, num_v: int, num_q: int) -> tuple[str, str, str]:
    """(template, answer prefix, type_needle_v) as niah.py words them: with one query and one
    value ("num_needle_q * num_needle_v == 1") the singular, by its own replacements."""
    template, prefix = _NIAH_TEMPLATE, _NIAH_PREFIX
    if num_q * num_v == 1:
        template, prefix = (t.replace("Some", "A").replace("are all", "is").replace("are", "is")
                            .replace("answers", "answer") for t in (template, prefix))
        type_needle_v = type_needle_v[:-1]  # remove "s"
    return template, prefix, type_needle_v


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
    num_k = max(num_k, num_q)
    taken: set = set()
    keys = _distinct(rng, make_key, num_k, taken)
    values = [_distinct(rng, make_value, num_v, taken) for _ in keys]
    needles = [_NEEDLE.format(type_needle_v=value, key=k, value=x) for k, vs in zip(keys, values) for x in vs]
    rng.shuffle(needles)
    queried = rng.sample(range(num_k), num_q)
    answers = tuple(x for i in queried for x in values[i])
    names = [keys[i] for i in queried]
    query = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]
    template, prefix, v = niah_wording(value, num_v, num_q)
    head, tail = template.split("{context}")
    fixed = sum(tk.lens(["\n" + s for s in needles]))
    per_unit = 1.0
    if haystack == "noise":  # noise lines; the needles at random line positions
        per_unit = tk.block_lens[4] / 5
        fracs = sorted(rng.random() for _ in needles)
        inserts = list(zip(fracs, needles))

        def render(n):
            text, at = noise_lines(tk, n, inserts, distinct=True)
            return text, round(at[0], 4)
    elif haystack == "prose":  # the essay haystack: the needles at RULER's depth grid
        depths = [depth] * len(needles) if depth is not None else sorted(rng.sample(_RULER_DEPTHS, len(needles)))
        inserts = list(zip(depths, needles))

        def render(n):
            return prose_context(tk, n, inserts)[0], depths[0]
    else:  # a haystack of distractor needles, RULER's "needle" haystack
        fracs = sorted(rng.random() for _ in needles)
        pool = UnitPool(tk, lambda r: _NEEDLE.format(type_needle_v=value, key=_distinct(r, make_key, 1, taken)[0],
                                                     value=make_value(r)), rng.getrandbits(64), "\n")
        per_noise = tk.block_lens[4] / 5

        def render(budget):
            idx = pool.pick(budget - fixed)
            lines = [pool.units[i] for i in idx]
            cum = [0]
            for i in idx:
                cum.append(cum[-1] + pool.lens[i])
            slack = budget - fixed - cum[-1]
            if slack >= 3:  # whole lines are too coarse at short lengths: pad with noise
                lines.append(noise_lines(tk, round(slack / per_noise), [])[0])
                cum.append(cum[-1] + slack)
            slots = [slot(cum[:len(idx) + 1], f) for f in fracs]
            for s, needle in reversed(list(zip(slots, needles))):
                lines.insert(s, needle)
            return "\n".join(lines), round(cum[slots[0]] / max(cum[-1], 1), 4)
    plan_fixed = fixed if haystack != "needle" else 0  # the needle haystack's knob is its total
    return TaskPlan(head=head.format(type_needle_v=v), tail=tail.format(type_needle_v=v, query=query),
                    answer_prefix=prefix.format(type_needle_v=v, query=query), prefix_sep="",
                    answers=answers, metric="ruler_all", max_new_tokens=MAX_NEW_TOKENS["niah"],
                    stop=() if len(answers) > 1 else ("\n",), render=render, per_unit=per_unit, fixed=plan_fixed)


def _niah_task(**kw):
    def build(rng, tk, length, index):
        return _niah(rng, tk, **kw)
    return build


def niah(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """The depth grid: niah_single_2 with the needle at NIAH_DEPTHS[index % 11]."""
    return _niah(rng, tk, haystack="prose", depth=NIAH_DEPTHS[index % len(NIAH_DEPTHS)])


# constants.py: TASKS["variable_tracking"]
_VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.")
_VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
              "are assigned the value {query}, they are: ")
VT_DEMO_TOKENS = 500  # variable_tracking.py sizes its example to max_seq_length=500


def demo_budget(length: int) -> int:
    """The most tokens a one-shot example may take: a third of the prompt (RULER's run at
    4096 tokens and more, where its examples take an eighth to a third)."""
    return length // 3


def _vt_chain(rng: random.Random, letters: int, value: str, taken: set) -> tuple[list[str], list[str]]:
    """generate_chains: one chain of 4 hops ('VAR B = VAR A ' keeps RULER's trailing space)."""
    names = _distinct(rng, lambda r: "".join(r.choices(string.ascii_uppercase, k=letters)), 5, taken)
    return names, [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4)]


def _vt_text(context: str, value: str) -> str:
    head, tail = _VT_TEMPLATE.split("{context}")
    return head + context + tail.format(query=value) + _VT_PREFIX.format(num_v=5, query=value)


def _vt_demo(rng: random.Random, tk: Tokens, budget: int, value: str, taken: set) -> str:
    """RULER's one-shot example: a chain of 3-letter variables in noise lines, the whole
    template and answer prefix, then ' ' + the answer and a newline; its input (without the
    answer) fills at most `budget` tokens.  '' when even no noise lines would not fit."""
    demo_value = value
    while demo_value == value:
        demo_value = str(rng.randrange(10000, 99999))
    names, chain = _vt_chain(rng, 3, demo_value, taken)
    inserts = list(zip(sorted(rng.random() for _ in chain), chain))

    def text(m: int) -> str:
        return _vt_text(noise_lines(tk, 5 * m, inserts, distinct=True)[0], demo_value)

    def size(m: int) -> int:
        return tk.lens([text(m)])[0]

    base = size(0)
    if base > budget:
        return ""
    m = max((budget - base) // tk.block_lens[4], 0)
    while m > 0 and size(m) > budget:
        m -= 1
    while size(m + 1) <= budget:
        m += 1
    return text(m) + " " + " ".join(names) + "\n"


def vt(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """Variable tracking: one chain of 4 hops in noise lines, after RULER's one-shot example
    (at most min(500, demo_budget(length)) tokens; left out where even its chain and template
    would not fit, below about 440 tokens)."""
    taken: set = set()
    value = str(rng.randrange(10000, 99999))
    names, chain = _vt_chain(rng, 5, value, taken)
    fracs = sorted(rng.random() for _ in chain)
    inserts = list(zip(fracs, chain))
    demo = _vt_demo(rng, tk, min(VT_DEMO_TOKENS, demo_budget(length)), value, taken)

    def render(n):
        text, at = noise_lines(tk, n, inserts, distinct=True)
        return text, round(at[0], 4)

    head, tail = _VT_TEMPLATE.split("{context}")
    return TaskPlan(
        head=(demo + "\n" if demo else "") + head, tail=tail.format(query=value),
        answer_prefix=_VT_PREFIX.format(num_v=len(names), query=value), prefix_sep="",
        answers=tuple(names), metric="ruler_all", max_new_tokens=MAX_NEW_TOKENS["variable_tracking"], stop=(),
        render=render, per_unit=tk.block_lens[4] / 5, fixed=sum(tk.lens(["\n" + c for c in chain])))


# constants.py: TASKS["common_words_extraction"]
_CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                 "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common "
                 "words in the above list?")
_CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
CWE_NUM_CW = 10  # synthetic.yaml cwe: num_cw


def cwe_counts(length: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """common_words_extraction.py's generate_input_output: the example's (words, common
    repeats, uncommon repeats) and the task's (common repeats, uncommon repeats); below 4096
    tokens its short setting.  The task's word count is what fills the length."""
    if length < 4096:
        return (20, 3, 1), (6, 1)
    return (40, 10, 3), (30, 3)  # synthetic.yaml cwe: freq_cw 30, freq_ucw 3


def _numbered(words) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe(rng: random.Random, tk: Tokens, length: int, index: int) -> TaskPlan:
    """Common words extraction: 10 words repeated often in a numbered list of rarer ones,
    after RULER's one-shot example where it takes at most demo_budget(length) tokens (from
    about 1000 tokens on: its 20 words take ~330)."""
    (n_demo, demo_c, demo_u), (rep_c, rep_u) = cwe_counts(length)
    words = sorted(set(wordlist("noun")) | set(wordlist("adjective")) | set(wordlist("verb")))
    rng.shuffle(words)
    demo_words, words = words[:n_demo], words[n_demo:]  # the example's words are not the task's
    demo_list = demo_words[:CWE_NUM_CW] * demo_c + demo_words[CWE_NUM_CW:] * demo_u
    rng.shuffle(demo_list)
    demo = (_CWE_TEMPLATE.format(context=_numbered(demo_list)) + _CWE_PREFIX + " "
            + _numbered(demo_words[:CWE_NUM_CW]) + "\n")
    if tk.lens([demo])[0] > demo_budget(length):
        demo = ""
    common, rare = words[:CWE_NUM_CW], words[CWE_NUM_CW:]
    sub = rng.getrandbits(64)

    def render(n_rare):
        listed = [(w, j) for w in common for j in range(rep_c)]
        listed += [(rare[(i // rep_u) % len(rare)], i) for i in range(n_rare)]
        listed = [w for _, w in sorted((_key(sub, w, j), w) for w, j in listed)]
        return _numbered(listed), None

    per_entry = sum(tk.lens([f" {100 + i}. {w}" for i, w in enumerate(common)])) / len(common)
    head, tail = _CWE_TEMPLATE.split("{context}")
    return TaskPlan(
        head=demo + head, tail=tail, answer_prefix=_CWE_PREFIX, prefix_sep="",
        answers=tuple(common), metric="ruler_all", max_new_tokens=MAX_NEW_TOKENS["common_words_extraction"],
        stop=(), render=render, per_unit=per_entry, fixed=round(per_entry * CWE_NUM_CW * rep_c))


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
        answer_prefix=" Answer: According to the coded text above, the three most frequently appeared words are:",
        prefix_sep="", answers=tuple(vocab[1:4]), metric="ruler_all",
        max_new_tokens=MAX_NEW_TOKENS["freq_words_extraction"], stop=(), render=render, per_unit=2.5, knob_min=40)


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
