"""benchmarks/peers.py's bookkeeping: the run log resumes, keeps the last try of a repeat,
refuses other settings; the summary's ratios are to transformers; lengths fit the context."""
import json
import pathlib
import sys
import types

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))

import peers

SETTING = {"device": "CPU, 2 threads", "random_weights": False, "threads": 2, "dtype": "bfloat16", "budget": 64}


def sample(task="passkey", length=512, index=0, answer="68172"):
    return types.SimpleNamespace(id=f"{task}/{length}/{index}", task=task, length=length, prompt_tokens=length,
                                 metric="infinitebench_number", answers=(answer,))


def run(prediction, ttft, tpot=0.01, peak=100, kv=10):
    return {"prediction": prediction, "ttft_s": ttft, "tpot_s": tpot, "peak_mem_bytes": peak, "kv_bytes": kv}


def test_log_resumes_and_the_last_try_of_a_repeat_counts(tmp_path):
    log = peers.RunLog(tmp_path, SETTING)
    s = sample()
    log.add("m", s, "transformers", 0, run("68172", 2.0))
    log.add("m", s, "asl-full", 0, run("no", 9.0))
    log.add("m", s, "asl-full", 0, run("68172", 1.0))  # the repeat ran again after a crash
    again = peers.RunLog(tmp_path, SETTING)
    assert again.done("m", s.id, "asl-full", 0) and not again.done("m", s.id, "asl-full", 1)
    rows = {r["method"]: r for r in again.rows()}
    assert rows["asl-full"]["ttft_s"] == [1.0] and rows["asl-full"]["score"] == 1.0
    summary = {x["method"]: x for x in peers.summarize(again.rows())}
    assert summary["asl-full"]["ttft_s_vs_hf"] == pytest.approx(0.5)
    assert summary["transformers"]["accuracy"] == 100.0
    assert "| asl-full | 1 | 100.0 | 1.000 | 0.50 |" in peers.tables(list(summary.values()), markdown=True)


def test_log_refuses_a_folder_made_with_other_settings(tmp_path):
    peers.RunLog(tmp_path, SETTING)
    with pytest.raises(SystemExit, match="other --out|use another --out"):
        peers.RunLog(tmp_path, {**SETTING, "budget": 128})
    assert json.loads((tmp_path / "settings.json").read_text()) == SETTING


def test_random_weights_report_no_accuracy(tmp_path):
    log = peers.RunLog(tmp_path, {**SETTING, "random_weights": True})
    log.add("m", sample(), "transformers", 0, run("68172", 1.0))
    (row,) = log.rows()
    assert row["score"] is None
    assert peers.summarize([row])[0]["accuracy"] is None


def test_lengths_are_cut_to_the_context_less_the_answer_room(capsys):
    model = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=8192))
    assert peers.fitting_lengths("2048,8192,16384", model, "m") == [2048, 7936]
    assert "8192 tokens -> 7936" in capsys.readouterr().out


def test_peaks_come_from_the_memory_pass_for_each_length(tmp_path):
    timed = peers.RunLog(tmp_path, SETTING)
    a, b, longer = sample(index=0), sample(task="kv_retrieval", index=1), sample(length=1024)
    for s in (a, b, longer):
        timed.add("m", s, "asl-full", 0, run("68172", 1.0, peak=999))
    peers.RunLog(tmp_path, SETTING, "memory.jsonl").add("m", a, "asl-full", 0, run("68172", 5.0, peak=123))
    rows = {r["id"]: r for r in peers.with_exact_peaks(timed.rows(), tmp_path, SETTING)}
    assert rows[a.id]["peak_mem_bytes"] == [123] and rows[a.id]["ttft_s"] == [1.0]
    assert rows[b.id]["peak_mem_bytes"] == [123]  # same length, another task: the same peak
    assert rows[longer.id]["peak_mem_bytes"] == [999]  # no memory-pass run at this length


@pytest.mark.slow
def test_transformers_worker_answers_as_our_full_cache_does(tmp_path):
    """The transformers peer runs in a process of its own, every repeat, and greedy-decodes
    the same answer as our full cache on the real smollm2-135m."""
    import asl
    from asl.bench.tasks import make_sample
    from asl.models.loading import resolve_checkpoint

    folder = resolve_checkpoint("smollm2-135m")
    model, tok = asl.load(folder, dtype="float32")  # as the worker runs
    s = make_sample("passkey", tok, 512, 0, seed=0)
    args = types.SimpleNamespace(repeats=2, threads=2, dtype="float32", device="cpu", memory_pass=False,
                                 no_kvpress=True)
    (method, cmd), = peers.workers(folder, args)
    got, versions = peers.worker_runs(cmd, [s], args)
    assert method == "transformers" and versions["transformers"]
    first, second = got[s.id]
    assert (first["repeat"], second["repeat"]) == (0, 1) and first["prediction"] == second["prediction"]
    ours = asl.generate(model, tok, s.prompt, max_new_tokens=s.max_new_tokens, stop=list(s.stop))
    assert first["prediction"] == ours.text
    c = model.config
    assert first["kv_bytes"] == 2 * c.num_layers * c.num_kv_heads * s.prompt_tokens * c.head_dim * 4
    assert first["ttft_s"] > 0 and first["new_tokens"] >= 1
