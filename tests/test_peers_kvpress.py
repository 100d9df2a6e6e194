"""benchmarks/peers_kvpress.py, the kvpress worker that runs in .venv-kvpress (made by
benchmarks/peers_env.sh). The end-to-end tests are skipped where that venv is missing."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
KVPRESS_PY = ROOT / ".venv-kvpress" / "bin" / "python"
WORKER = ROOT / "benchmarks" / "peers_kvpress.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers_kvpress  # (imports only torch at module level; kvpress inside main())

BUDGET, WINDOW = 128, 32


def test_stop_strings_look_after_the_first_word():
    cut = peers_kvpress.cut_at_stop
    assert cut("\n 68172\nmore", ["\n"]) == "\n 68172"
    assert cut(': "Paris". Next', ["."]) == ': "Paris"'
    assert cut("no stop here", ["\n"]) == "no stop here"
    assert cut("a\nb", []) == "a\nb"


@pytest.mark.parametrize("n", [33, 100, 499, 500, 1000, 4097, 8192])
@pytest.mark.parametrize("budget", [1, 32, 128, 512])
def test_compression_ratio_keeps_exactly_the_budget(n, budget):
    ratio = peers_kvpress.compression_ratio(n, budget)
    assert 0 <= ratio < 1
    kept = max(1, int(n * (1 - ratio))) if ratio > 0 else n  # kvpress.utils.compute_n_kept
    assert kept == min(n, budget)


def synthetic_prompt(tokenizer, n_tokens: int = 500) -> str:
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    body = filler * 9 + "The pass key is 68172. Remember it. " + filler * 9
    while len(tokenizer(body)["input_ids"]) > n_tokens - 40:
        body = body[len(filler):]
    msgs = [{"role": "user", "content": body + "\nWhat is the pass key? The pass key is"}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not KVPRESS_PY.exists():
        pytest.skip(".venv-kvpress missing (bash benchmarks/peers_env.sh)")
    from transformers import AutoTokenizer

    from asl.models.loading import resolve_checkpoint

    folder = resolve_checkpoint("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    tmp = tmp_path_factory.mktemp("kvpress")
    samples = tmp / "samples.json"
    samples.write_text(json.dumps([{"id": "synthetic-500", "prompt": synthetic_prompt(tok), "max_new_tokens": 6,
                                    "stop": ["\n"]}]))
    out = {}
    for press in ("none", "snapkv"):
        path = tmp / f"{press}.json"
        subprocess.run([str(KVPRESS_PY), str(WORKER), "--model-dir", str(folder), "--samples", str(samples),
                        "--press", press, "--budget", str(BUDGET), "--window", str(WINDOW), "--threads", "2",
                        "--dtype", "float32", "--out", str(path)], check=True, timeout=900)
        out[press] = json.loads(path.read_text())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("press", ["none", "snapkv"])
def test_worker_json_fields(runs, press):
    data = runs[press]
    assert set(data["versions"]) == {"kvpress", "transformers", "torch"} and all(data["versions"].values())
    assert data["config"]["press"] == press and data["config"]["window_in_budget"] is True
    (r,) = data["results"]
    for key in ("id", "prediction", "prompt_tokens", "new_tokens", "ttft_s", "tpot_s", "kv_tokens",
                "peak_mem_bytes", "compression_ratio", "repeat"):
        assert key in r, key
    assert r["id"] == "synthetic-500" and isinstance(r["prediction"], str) and "\n" not in r["prediction"].strip()
    assert 400 <= r["prompt_tokens"] <= 520
    assert 1 <= r["new_tokens"] <= 6
    assert r["ttft_s"] > 0 and (r["tpot_s"] is None or r["tpot_s"] > 0)
    assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] >= 0
    assert len(r["kv_tokens"]) == 30  # smollm2-135m's layers


@pytest.mark.slow
def test_full_cache_keeps_the_prompt(runs):
    (r,) = runs["none"]["results"]
    assert r["compression_ratio"] == 0 and r["kv_tokens"] == [r["prompt_tokens"]] * 30


@pytest.mark.slow
def test_snapkv_keeps_the_budget_window_included(runs):
    # kvpress's SnapKVPress keeps int(n * (1 - ratio)) entries per KV head, the observation
    # window among them (it gets the top score), so the window adds nothing on top of the budget.
    (r,) = runs["snapkv"]["results"]
    assert 0 < r["compression_ratio"] < 1
    assert r["kv_tokens"] == [BUDGET] * 30
