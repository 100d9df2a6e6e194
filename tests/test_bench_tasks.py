"""asl.bench.tasks / asl.bench.tasks.scoring on the real SmolLM2 tokenizer (no model weights)."""
import collections
import re

import pytest

from asl.bench.tasks.haystack import tokens_for
from asl.bench.tasks.scoring import METRICS, score
from asl.bench.tasks import NIAH_DEPTHS, TASKS, Sample, make_sample, task_rng
from asl.models.loading import load_tokenizer, resolve_checkpoint

NAMES = ["passkey", "number_string", "kv_retrieval", "niah_single_1", "niah_single_2", "niah_single_3",
         "niah_multikey_1", "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery",
         "vt", "cwe", "fwe", "niah"]
NEEDLE_TASKS = [t for t in NAMES if t.startswith("niah")]
DEPTH_TASKS = ["passkey", "number_string", "kv_retrieval", "niah_single_1", "niah_single_2",
               "niah_single_3", "niah"]


@pytest.fixture(scope="module")
def tok():
    try:
        return load_tokenizer(resolve_checkpoint("smollm2-135m"))
    except (FileNotFoundError, ValueError) as e:  # bundled model not installed
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def cache():
    return {}


def sample(tok, cache, task, length, index=0, seed=0):
    key = (task, length, index, seed)
    if key not in cache:
        cache[key] = make_sample(task, tok, length, index, seed)
    return cache[key]


def plan(tok, s: Sample, seed=0):
    return TASKS[s.task](task_rng(seed, s.task, s.length, s.index), tokens_for(tok), s.length, s.index)


def context_depth(tok, s: Sample, start: int, end: int, seed=0) -> float:
    """Fraction of the haystack tokens (context minus the needle) before prompt[start:end]."""
    p = plan(tok, s, seed)
    c0 = s.prompt.index(p.head) + len(p.head)
    c1 = s.prompt.rindex(p.tail)
    offs = tok(s.prompt, return_offsets_mapping=True)["offset_mapping"]

    def at(c):  # tokens starting before character c
        return sum(1 for a, b in offs if b > a and a < c)
    needle = at(end) - at(start)
    return (at(start) - at(c0)) / (at(c1) - at(c0) - needle)


def test_registry():
    assert list(TASKS) == NAMES
    assert NIAH_DEPTHS == tuple(i / 10 for i in range(11))
    assert set(METRICS) == {"ruler_all", "ruler_part", "infinitebench_number", "infinitebench_kv"}


@pytest.mark.parametrize("length", [512, 2048])
@pytest.mark.parametrize("task", NAMES)
def test_sample(tok, cache, task, length):
    s = sample(tok, cache, task, length)
    assert s.task == task and s.length == length and s.index == 0 and s.id == f"{task}/{length}/0"
    assert make_sample(task, tok, length, 0, 0) == s  # deterministic
    other = sample(tok, cache, task, length, 1)
    assert other.prompt != s.prompt
    assert make_sample(task, tok, length, 0, 1).prompt != s.prompt  # the seed matters
    # sizing
    assert s.prompt_tokens == len(tok(s.prompt)["input_ids"])
    assert length - max(8, length // 100) <= s.prompt_tokens <= length
    assert s.metric in METRICS and s.answers and s.max_new_tokens > 0
    assert s.prompt.startswith("<|im_start|>system") and s.prompt.endswith(plan(tok, s).answer_prefix)
    # every answer is in the prompt; the right answer scores 1, a wrong one 0
    for a in s.answers:
        assert a in s.prompt
    assert score(s.metric, " " + ", ".join(s.answers) + ".", s.answers) == 1.0
    assert score(s.metric, " 42 nothing", s.answers) == 0.0
    if s.depth is not None:
        assert 0.0 <= s.depth <= 1.0
    assert (s.depth is None) == (task in ("cwe", "fwe"))


@pytest.mark.parametrize("length", [512, 2048])
@pytest.mark.parametrize("task", NEEDLE_TASKS)
def test_needles_once(tok, cache, task, length):
    s = sample(tok, cache, task, length)
    kind = "uuids" if task in ("niah_single_3", "niah_multikey_3") else "numbers"
    found = re.findall(rf"One of the special magic {kind} for (\S+) is: (\S+)\.(?:\s|$)", s.prompt)
    keys = collections.Counter(k for k, _ in found)
    values = {v for _, v in found}
    assert set(s.answers) <= values
    for a in s.answers:
        assert s.prompt.count(a) == 1
        key = next(k for k, v in found if v == a)
        assert keys[key] == (4 if task == "niah_multivalue" else 1)
        assert f"One of the special magic {kind} for {key} is: {a}." in s.prompt
    if task in ("niah_multikey_2", "niah_multikey_3"):
        assert len(found) > 3  # a haystack of distractor needles
    elif task == "niah_multikey_1":
        assert len(found) == 4
    elif task == "niah_multiquery":
        assert len(keys) == 4 and all(k in s.prompt.rsplit("What are", 1)[1] for k in keys)


@pytest.mark.parametrize("length", [512, 2048])
@pytest.mark.parametrize("task", DEPTH_TASKS)
def test_depth(tok, cache, task, length):
    for index in (0, 1, 2):
        s = sample(tok, cache, task, length, index)
        if task == "kv_retrieval":
            key = re.search(r'Key: "(.+)"', plan(tok, s).tail).group(1)
            start = s.prompt.index(f'"{key}"')
            end = s.prompt.index(s.answers[0], start) + len(s.answers[0]) + 1
            assert s.prompt.count(key) == 2 and s.prompt.count(s.answers[0]) == 1
        else:
            end = s.prompt.index(s.answers[0]) + len(s.answers[0]) + 1
            start = s.prompt.rindex("One of" if task.startswith("niah") else "The ", 0, end)
            if task in ("passkey", "number_string"):
                assert s.prompt.count(s.answers[0]) == 2  # "... is {key}. Remember it. {key} is ..."
                end = s.prompt.index(" is the ", end) + len(" is the pass key.")
        assert abs(context_depth(tok, s, start, end) - s.depth) <= 0.05, (s.id, s.depth)


def test_niah_grid(tok, cache):
    for index in range(0, 23, 2):
        s = sample(tok, cache, "niah", 512, index)
        assert s.depth == NIAH_DEPTHS[index % len(NIAH_DEPTHS)]
        end = s.prompt.index(s.answers[0]) + len(s.answers[0]) + 1
        start = s.prompt.rindex("One of", 0, end)
        assert abs(context_depth(tok, s, start, end) - s.depth) <= 0.05, s.id


def test_aggregation_answers(tok, cache):
    for length in (512, 2048):
        s = sample(tok, cache, "cwe", length)
        task = s.prompt.rsplit("Below is a numbered list", 1)[1]  # after the one-shot example
        listed = collections.Counter(re.findall(r"\d+\. ([a-z]+)", task.split("\nQuestion:")[0]))
        common = sorted(listed, key=lambda w: -listed[w])[:10]
        assert set(common) == set(s.answers)
        assert min(listed[w] for w in s.answers) > max(c for w, c in listed.items() if w not in s.answers)
        s = sample(tok, cache, "fwe", length)
        text = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
        counts = collections.Counter(w for w in text.split() if w != "...")
        top = [w for w, _ in counts.most_common()]
        assert top[:3] == list(s.answers) and counts[top[2]] > counts[top[3]]
        s = sample(tok, cache, "vt", length)
        task = s.prompt.rsplit("Memorize and track", 1)[1]  # after the one-shot example
        value = re.search(r"assigned the value (\d+) in", task).group(1)
        assert f"VAR {s.answers[0]} = {value}\n" in task
        for a, b in zip(s.answers, s.answers[1:]):
            assert f"VAR {b} = VAR {a} \n" in task  # RULER's hop lines end with a space


def test_plain_prompt_without_chat_template():
    tok = load_tokenizer(resolve_checkpoint("smollm2-135m"))
    tok.chat_template = None
    s = make_sample("passkey", tok, 512, 0, 0)
    assert s.prompt.startswith("There is an important info hidden")
    assert s.prompt.endswith("What is the pass key?\n\nThe pass key is")  # InfiniteBench's blank line
    assert "<|im_start|>" not in s.prompt
    assert 504 <= s.prompt_tokens == len(tok(s.prompt)["input_ids"]) <= 512


class _BosTokenizer:
    """The SmolLM2 tokenizer made to add a BOS itself, with a template that writes one too."""

    def __init__(self, tok):
        self.tok, self.bos_token, self.bos_token_id = tok, "<|endoftext|>", tok.convert_tokens_to_ids("<|endoftext|>")
        self.chat_template = "x"

    def __call__(self, text, add_special_tokens=True, **kw):
        enc = self.tok(text, add_special_tokens=False, **kw)
        if add_special_tokens:
            if isinstance(text, str):
                enc["input_ids"] = [self.bos_token_id] + enc["input_ids"]
            else:
                enc["input_ids"] = [[self.bos_token_id] + x for x in enc["input_ids"]]
        return enc

    def decode(self, ids, **kw):
        return self.tok.decode(ids, **kw)

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return self.bos_token + "User: " + messages[0]["content"] + "\nAssistant: "


def test_bos_not_doubled(tok):
    s = make_sample("niah_single_1", _BosTokenizer(tok), 512, 0, 0)
    assert s.prompt.startswith("User: A special magic number is hidden")  # RULER's singular
    assert 504 <= s.prompt_tokens <= 512


def test_errors(tok):
    with pytest.raises(ValueError, match="task.*passkey.*niah"):
        make_sample("nope", tok, 1024, 0, 0)
    for task, spec in TASKS.items():
        with pytest.raises(ValueError, match=f"length.*minimum is {spec.min_length}"):
            make_sample(task, tok, spec.min_length - 1, 0, 0)
    with pytest.raises(ValueError, match="metric.*ruler_all"):
        score("bleu", "x", ["x"])


def test_metrics():
    assert score("ruler_all", "The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert score("ruler_all", "The numbers are 123 and 789.", ["123", "456"]) == 0.5
    assert score("ruler_all", "nothing", ["123", "456"]) == 0.0
    assert score("ruler_all", "APPLE pie", ["apple"]) == 1.0
    assert score("ruler_part", "The numbers are 123 and 789.", ["123", "456"]) == 1.0
    assert score("ruler_part", "none", ["123", "456"]) == 0.0
    assert score("infinitebench_number", " 71432. Remember it.", ["71432"]) == 1.0
    assert score("infinitebench_number", " 1 and 71432", ["71432"]) == 0.0
    assert score("infinitebench_number", "no digits", ["71432"]) == 0.0
    assert score("infinitebench_number", "7143", ["71432"]) == 0.0
    uid = "8154dcc6-f69b-49bc-9916-c63b29448775"
    assert score("infinitebench_kv", f' "{uid}".', [uid]) == 1.0
    assert score("infinitebench_kv", f'{{"{uid}"}}\n', [uid]) == 1.0
    assert score("infinitebench_kv", f"x{uid}", [uid]) == 0.0
    assert score("infinitebench_kv", uid, "8154dcc6-f69b-49bc-9916-c63b29448775") == 1.0


# --- the originals' wording -----------------------------------------------------------------
# Literals copied from the originals (read at NVIDIA/RULER c3f5e3b and OpenBMB/InfiniteBench 88b3daa);
# each sample must be exactly the original template with the sample's values filled in.

# NVIDIA/RULER scripts/data/synthetic/constants.py
RULER_CONSTANTS = {
    'niah': {
        'tokens_to_generate': 128,
        'template': """Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?""",  # noqa: E501
        'answer_prefix': """ The special magic {type_needle_v} for {query} mentioned in the provided text are"""
    },
    'variable_tracking': {
        'tokens_to_generate': 30,
        'template': """Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.""",  # noqa: E501
        'answer_prefix': """ Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: """  # noqa: E501
    },
    'common_words_extraction': {
        'tokens_to_generate': 120,
        'template': """Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?""",  # noqa: E501
        'answer_prefix': """ Answer: The top 10 words that appear most often in the list are:"""
    },
    'freq_words_extraction': {
        'tokens_to_generate': 50,
        'template': """Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?""",  # noqa: E501
        'answer_prefix': """ Answer: According to the coded text above, the three most frequently appeared words are:"""
    },
}
# NVIDIA/RULER scripts/synthetic.yaml: task -> RULER_CONSTANTS key and niah's num_needle_v, num_needle_q
RULER_YAML = {"niah_single_1": ("niah", 1, 1), "niah_single_2": ("niah", 1, 1), "niah_single_3": ("niah", 1, 1),
              "niah_multikey_1": ("niah", 1, 1), "niah_multikey_2": ("niah", 1, 1),
              "niah_multikey_3": ("niah", 1, 1), "niah_multivalue": ("niah", 4, 1),
              "niah_multiquery": ("niah", 1, 4), "vt": ("variable_tracking", None, None),
              "cwe": ("common_words_extraction", None, None), "fwe": ("freq_words_extraction", None, None),
              "niah": ("niah", 1, 1)}  # ours: niah_single_2 on a depth grid
# NVIDIA/RULER scripts/data/synthetic/niah.py (and variable_tracking.py: the same noise)
RULER_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
RULER_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def ruler_niah_template(template, type_needle_v, num_needle_q, num_needle_v):
    """NVIDIA/RULER scripts/data/synthetic/niah.py, generate_input_output (copied)."""
    if num_needle_q * num_needle_v == 1:
        template = template.replace('Some', 'A')
        template = template.replace('are all', 'is')
        template = template.replace('are', 'is')
        template = template.replace('answers', 'answer')
        type_needle_v = type_needle_v[:-1]  # remove "s"
    return template, type_needle_v


# OpenBMB/InfiniteBench src/prompt.py: yarn_mistral_templates (its open models' prompts)
INFINITE_TEMPLATES = {
    "passkey": "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information.\n\n{context}\n\n{input}\n\nThe pass key is",  # noqa
    "number_string": "There is an important info hidden inside a lot of irrelevant text. Find it. I will quiz you about the important information there.\n\n{context}\n\n{input}\n\nThe sequence of digits is",  # noqa
    "kv_retrieval": "Extract the value corresponding to the specified key in the JSON object below.\n\n{context}\n\n{input}",  # noqa
}
# OpenBMB/InfiniteBench data/construct_synthetic_dataset.py: build_passkey / build_number_string
INFINITE_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
INFINITE_ANS = {"passkey": "The pass key is {key}. Remember it. {key} is the pass key.\n",
                "number_string": "The sequence of digits is {key}. Remember it. {key} is the sequence of digits.\n"}
INFINITE_QUESTION = {"passkey": "What is the pass key?", "number_string": "What is the sequence of digits?"}
# OpenBMB/InfiniteBench src/eval_utils.py: DATA_NAME_TO_MAX_NEW_TOKENS
INFINITE_MAX_NEW_TOKENS = {"passkey": 6, "number_string": 12, "kv_retrieval": 50}


def infinite_number_string_key(random):
    """OpenBMB/InfiniteBench data/construct_synthetic_dataset.py, build_number_string (copied;
    `random` is a random.Random here)."""
    keys = []
    for k in range(5):
        keys.append(str(random.randint(0,9)))
    for k in range(5):
        pos = random.randint(0,5+k-1)
        keys.insert(pos, keys[pos])
    key_t = "".join(keys)
    return key_t


CHAT_TURN = "<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's template between the user text and the answer


@pytest.fixture(scope="module")
def plain_tok():
    t = load_tokenizer(resolve_checkpoint("smollm2-135m"))
    t.chat_template = None
    return t


def niah_values(s: Sample) -> tuple[str, str]:
    """(type_needle_v, query) of a niah sample: the queried keys, in the answers' order."""
    kind = "uuids" if "-" in s.answers[0] else "numbers"
    keys = []
    for a in s.answers:
        key = re.search(rf"One of the special magic {kind} for (\S+) is: {re.escape(a)}\.", s.prompt).group(1)
        if key not in keys:
            keys.append(key)
    query = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    return kind, query


def ruler_frame(task: str, s: Sample) -> tuple[str, str, str]:
    """RULER's text before {context}, after it, and the answer prefix, with s's values."""
    name, num_v, num_q = RULER_YAML[task]
    template, prefix = RULER_CONSTANTS[name]["template"], RULER_CONSTANTS[name]["answer_prefix"]
    values = {}
    if name == "niah":
        kind, query = niah_values(s)
        # niah.py runs its replacements on the whole template, answer prefix included
        both, v = ruler_niah_template(template + "\x01" + prefix, kind, num_q, num_v)
        template, prefix = both.split("\x01")
        values = {"type_needle_v": v, "query": query}
    elif name == "variable_tracking":
        value = re.findall(r"assigned the value (\d+) in the text above", s.prompt)[-1]
        values = {"query": value, "num_v": 5}
    head, tail = template.split("{context}")
    return head.format(**values), tail.format(**values), prefix.format(**values)


def test_max_new_tokens(tok, cache):
    for task in NAMES:
        s = sample(tok, cache, task, 512)
        want = (INFINITE_MAX_NEW_TOKENS[task] if TASKS[task].source == "InfiniteBench"
                else RULER_CONSTANTS[RULER_YAML[task][0]]["tokens_to_generate"])
        assert s.max_new_tokens == want, task
    assert {t: sample(tok, cache, t, 512).max_new_tokens for t in NAMES} == {
        "passkey": 6, "number_string": 12, "kv_retrieval": 50, **{t: 128 for t in NEEDLE_TASKS},
        "vt": 30, "cwe": 120, "fwe": 50}


@pytest.mark.parametrize("length", [512, 2048])
@pytest.mark.parametrize("task", [t for t in NAMES if TASKS[t].source == "RULER"])
def test_ruler_templates(tok, plain_tok, cache, task, length):
    # chat template: RULER's text in the user turn, its answer prefix opening the assistant's
    s = sample(tok, cache, task, length)
    head, tail, prefix = ruler_frame(task, s)
    assert head in s.prompt
    assert s.prompt.endswith(tail + CHAT_TURN + prefix)
    # no chat template: RULER's 'base' model template, exactly "{task_template}" + answer_prefix
    p = make_sample(task, plain_tok, length, 0, 0)
    head, tail, prefix = ruler_frame(task, p)
    assert p.prompt.endswith(tail + prefix)
    assert 0 < p.prompt.rindex(tail) - p.prompt.rindex(head) - len(head)
    assert p.prompt.startswith(head)  # vt, cwe: the one-shot example opens with it too
    assert p.prompt.count(head) == (2 if task == "vt" or task == "cwe" and length >= 1024 else 1)


def test_niah_singular_plural(tok, cache):
    singular = {"A special magic number is hidden within the following text. Make sure to memorize it. "
                "I will quiz you about the number afterwards.\n": "numbers",
                "A special magic uuid is hidden within the following text. Make sure to memorize it. "
                "I will quiz you about the uuid afterwards.\n": "uuids"}
    for task in NEEDLE_TASKS:
        s = sample(tok, cache, task, 2048)
        kind, query = niah_values(s)
        one = RULER_YAML[task][1] * RULER_YAML[task][2] == 1
        assert one == (task not in ("niah_multivalue", "niah_multiquery"))
        v = kind[:-1] if one else kind
        if one:
            assert any(h in s.prompt and k == kind for h, k in singular.items()), task
            assert f"\nWhat is the special magic {v} for {query} mentioned in the provided text?" in s.prompt
            assert s.prompt.endswith(f" The special magic {v} for {query} mentioned in the provided text is")
            assert "Some special magic" not in s.prompt and "What are all" not in s.prompt
        else:
            assert (f"Some special magic {kind} are hidden within the following text. Make sure to memorize "
                    f"it. I will quiz you about the {kind} afterwards.\n") in s.prompt
            assert f"\nWhat are all the special magic {kind} for {query} mentioned in the provided text?" in s.prompt
            assert s.prompt.endswith(f" The special magic {kind} for {query} mentioned in the provided text are")
        # the needles keep the plural (niah.py formats them with args.type_needle_v)
        for a in s.answers:
            assert RULER_NEEDLE.format(type_needle_v=kind, key=re.search(
                rf"for (\S+) is: {re.escape(a)}\.", s.prompt).group(1), value=a) in s.prompt


def noise_context(p: Sample, head: str, tail: str) -> str:
    return p.prompt[p.prompt.rindex(head) + len(head):p.prompt.rindex(tail)]


@pytest.mark.parametrize("length", [512, 2048])
def test_noise_haystack_lines(plain_tok, length):
    """RULER: '\\n'.join of whole noise strings and the inserted lines (niah.py,
    variable_tracking.py); only our last noise line may stop after fewer sentences."""
    for task in ("niah_single_1", "vt"):
        p = make_sample(task, plain_tok, length, 0, 0)
        head, tail, _ = ruler_frame(task, p)
        lines = noise_context(p, head, tail).split("\n")
        noise = [i for i, line in enumerate(lines) if line.startswith("The grass")]
        assert len(noise) > 3
        assert all(lines[i] == RULER_NOISE for i in noise[:-1])
        assert RULER_NOISE.startswith(lines[noise[-1]])
        inserted = [line for i, line in enumerate(lines) if i not in noise]
        if task == "vt":
            names = p.answers
            value = re.findall(r"assigned the value (\d+) in", p.prompt)[-1]
            assert inserted == [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} "
                                                               for j in range(4)]
        else:
            kind, query = niah_values(p)
            assert inserted == [RULER_NEEDLE.format(type_needle_v=kind, key=query, value=p.answers[0])]
        assert max(noise) > max(i for i in range(len(lines)) if i not in noise)  # RULER inserts before noise


@pytest.mark.parametrize("length", [512, 2048])
def test_vt_demonstration(plain_tok, length):
    """variable_tracking.py: the example (3-letter variables, the whole template and answer
    prefix, ' ' + its answer and '\\n') and a newline before the task."""
    p = make_sample("vt", plain_tok, length, 0, 0)
    tmpl, prefix = (RULER_CONSTANTS["variable_tracking"][k] for k in ("template", "answer_prefix"))
    head = tmpl.split("{context}")[0]
    demo, task = p.prompt[:p.prompt.rindex(head)], p.prompt[p.prompt.rindex(head):]
    assert demo.startswith(head) and demo.endswith("\n\n")
    value = re.search(r"assigned the value (\d+) in the text above", demo).group(1)
    names = re.search(r"they are:  ([A-Z]{3}(?: [A-Z]{3}){4})\n\n$", demo).group(1).split()
    context = demo[len(head):demo.index("\nQuestion: ")]
    assert demo == tmpl.format(context=context, query=value) + prefix.format(num_v=5, query=value) + " " + \
        " ".join(names) + "\n" + "\n"
    lines = context.split("\n")
    assert [x for x in lines if x != RULER_NOISE] == [f"VAR {names[0]} = {value}"] + [
        f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4)]
    assert value not in task and not set(names) & set(p.answers)
    example_input = demo[:demo.rindex("they are: ") + len("they are: ")]  # RULER sizes it without the answer
    assert min(500, length // 3) - 30 <= len(plain_tok(example_input)["input_ids"]) <= min(500, length // 3)
    assert make_sample("vt", plain_tok, 256, 0, 0).prompt.startswith(head)  # too short: no example
    assert make_sample("vt", plain_tok, 256, 0, 0).prompt.count(head) == 1


@pytest.mark.parametrize("length", [512, 2048, 4096])
def test_cwe_demonstration_and_counts(plain_tok, length):
    """common_words_extraction.py: below 4096 tokens an example of 20 words (3 / 1 repeats)
    and the task's words 6 / 1 times; from 4096 on 40 words (10 / 3) and freq_cw 30, freq_ucw 3
    (synthetic.yaml).  The example is left out where it would take over a third of the prompt."""
    p = make_sample("cwe", plain_tok, length, 0, 0)
    tmpl, prefix = (RULER_CONSTANTS["common_words_extraction"][k] for k in ("template", "answer_prefix"))
    head, tail = tmpl.split("{context}")
    at = p.prompt.rindex(head)
    demo, task = p.prompt[:at], p.prompt[at:]
    assert task == tmpl.format(context=task[len(head):task.rindex(tail)]) + prefix
    entries = re.findall(r"(\d+)\. ([a-z]+)", task[len(head):task.rindex(tail)])
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
    counts = collections.Counter(w for _, w in entries)
    freq_cw, freq_ucw = (6, 1) if length < 4096 else (30, 3)
    assert {counts[w] for w in p.answers} == {freq_cw} and len(p.answers) == 10
    rare = [c for w, c in counts.items() if w not in p.answers]
    assert rare and max(rare) <= freq_ucw and sorted(rare)[len(rare) // 2] == freq_ucw  # the last may be cut
    if length == 512:
        assert demo == ""
        return
    n, cw, ucw = (20, 3, 1) if length < 4096 else (40, 10, 3)
    assert demo.endswith("\n")
    dctx = demo[len(head):demo.index(tail)]
    answer = demo[demo.index(prefix) + len(prefix) + 1:-1]
    dcounts = collections.Counter(re.findall(r"\d+\. ([a-z]+)", dctx))
    common = re.findall(r"\d+\. ([a-z]+)", answer)
    assert answer == " ".join(f"{i + 1}. {w}" for i, w in enumerate(common)) and len(common) == 10
    assert demo == tmpl.format(context=dctx) + prefix + " " + answer + "\n"
    assert len(dcounts) == n and {dcounts[w] for w in common} == {cw}
    assert {c for w, c in dcounts.items() if w not in common} == {ucw}
    assert not set(dcounts) & set(counts)


@pytest.mark.parametrize("task", ["passkey", "number_string"])
@pytest.mark.parametrize("length", [512, 2048])
def test_infinitebench_noise_tasks(tok, plain_tok, cache, task, length):
    """The template filled with InfiniteBench's context 'noise * j + ans + noise * (N - j)'
    (our last noise line may stop after fewer sentences) and input, the question."""
    p = make_sample(task, plain_tok, length, 0, 0)
    intro, rest = INFINITE_TEMPLATES[task].split("{context}")
    key = p.answers[0]
    context = p.prompt[len(intro):p.prompt.rindex("\n\n" + INFINITE_QUESTION[task])]
    assert p.prompt == INFINITE_TEMPLATES[task].format(context=context, input=INFINITE_QUESTION[task])
    ans = INFINITE_ANS[task].format(key=key)
    before, after = context.split(ans)
    assert before == INFINITE_NOISE * (len(before) // len(INFINITE_NOISE))
    j = len(after) // len(INFINITE_NOISE)
    assert after[:j * len(INFINITE_NOISE)] == INFINITE_NOISE * j
    tail = after[j * len(INFINITE_NOISE):]
    assert tail == "" or (tail.endswith("\n") and INFINITE_NOISE.startswith(tail[:-1] + " "))
    assert re.fullmatch(r"\d{5}" if task == "passkey" else r"\d{10}", key)
    # with the chat template: the same text in the user turn, the answer prefix opening the reply
    s = sample(tok, cache, task, length)
    assert INFINITE_ANS[task].format(key=s.answers[0]) in s.prompt
    assert s.prompt.endswith("\n\n" + INFINITE_QUESTION[task] + CHAT_TURN + rest.rsplit("\n\n", 1)[1])


def test_number_string_digits():
    import random

    from asl.bench.tasks.infinite import digit_string
    for seed in range(50):
        assert digit_string(random.Random(seed)) == infinite_number_string_key(random.Random(seed))


@pytest.mark.parametrize("length", [512, 2048])
def test_kv_retrieval_template(tok, plain_tok, cache, length):
    """build_kv_retrieval: context 'JSON data:\\n{...}', input '\\nKey: "k"\\nThe value
    associated with the specified key is: ', in yarn_mistral_templates['kv_retrieval']."""
    import json

    p = make_sample("kv_retrieval", plain_tok, length, 0, 0)
    key = re.search(r'\nKey: "([0-9a-f-]{36})"\n', p.prompt).group(1)
    question = "\nKey: \"" + key + "\"\nThe value associated with the specified key is: "
    intro = INFINITE_TEMPLATES["kv_retrieval"].split("{context}")[0]
    context = p.prompt[len(intro):p.prompt.rindex("\n\n" + question)]
    assert p.prompt == INFINITE_TEMPLATES["kv_retrieval"].format(context=context, input=question)
    assert context.startswith("JSON data:\n{") and context.endswith("}")
    assert json.loads(context[len("JSON data:\n"):])[key] == p.answers[0]
    s = sample(tok, cache, "kv_retrieval", length)
    assert s.prompt.endswith(CHAT_TURN + "The value associated with the specified key is: ")
