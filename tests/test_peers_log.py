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
    assert "| asl-full | 1 | 100 | 1.000 | 0.50 |" in peers.markdown(list(summary.values()))


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


def test_peaks_come_from_the_memory_pass_where_it_has_them(tmp_path):
    timed = peers.RunLog(tmp_path, SETTING)
    a, b = sample(index=0), sample(index=1)
    for s in (a, b):
        timed.add("m", s, "asl-full", 0, run("68172", 1.0, peak=999))
    peers.RunLog(tmp_path, SETTING, "memory.jsonl").add("m", a, "asl-full", 0, run("68172", 5.0, peak=123))
    rows = {r["id"]: r for r in peers.with_exact_peaks(timed.rows(), tmp_path, SETTING)}
    assert rows[a.id]["peak_mem_bytes"] == [123] and rows[a.id]["ttft_s"] == [1.0]
    assert rows[b.id]["peak_mem_bytes"] == [999]
