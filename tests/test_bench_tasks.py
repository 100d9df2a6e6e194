"""asl.bench.tasks / asl.bench.metrics on the real SmolLM2 tokenizer (no model weights)."""
import collections
import re

import pytest

from asl.bench.haystack import tokens_for
from asl.bench.metrics import METRICS, score
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
        listed = collections.Counter(re.findall(r"\d+\. ([a-z]+)", s.prompt))
        common = sorted(listed, key=lambda w: -listed[w])[:10]
        assert set(common) == set(s.answers)
        assert min(listed[w] for w in s.answers) > max(c for w, c in listed.items() if w not in s.answers)
        s = sample(tok, cache, "fwe", length)
        text = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
        counts = collections.Counter(w for w in text.split() if w != "...")
        top = [w for w, _ in counts.most_common()]
        assert top[:3] == list(s.answers) and counts[top[2]] > counts[top[3]]
        s = sample(tok, cache, "vt", length)
        value = re.search(r"assigned the value (\d+) in", s.prompt).group(1)
        assert f"VAR {s.answers[0]} = {value}\n" in s.prompt
        for a, b in zip(s.answers, s.answers[1:]):
            assert f"VAR {b} = VAR {a}\n" in s.prompt


def test_plain_prompt_without_chat_template():
    tok = load_tokenizer(resolve_checkpoint("smollm2-135m"))
    tok.chat_template = None
    s = make_sample("passkey", tok, 512, 0, 0)
    assert s.prompt.startswith("There is an important info hidden")
    assert s.prompt.endswith("What is the pass key?\nThe pass key is")
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
    assert s.prompt.startswith("User: Some special magic")
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
