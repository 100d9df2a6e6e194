"""benchmarks/gpu_suite.py's CPU dry run at a tiny size: every planned case and every target of
issue 23 comes out with a status (nothing left out silently), and the Markdown table is written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "eos_token_id": 1}
METHODS = {"full", "snapkv", "fastkv+snapkv", "asl+snapkv", "gemfilter", "asl-2pass",
           "transformers-sdpa", "transformers-static"}


def _suite(tmp_path, *flags):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--config", str(config),
           "--out", str(out), "--threads", "1", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300), out


@pytest.mark.slow  # compiles or runs the real model
def test_cpu_dry_run_records_every_case_and_target(tmp_path):
    proc, out = _suite(tmp_path, "--tokens", "256,384", "--repeats", "1", "--new-tokens", "4",
                       "--ops-repeats", "1", "--no-compile", "--step", "build=skipped:a CPU run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "suite.json").read_text())
    cases = {(c["tokens"], c["method"]): c for c in result["cases"]}
    assert set(cases) == {(n, m) for n in (256, 384) for m in METHODS}
    assert [c["tokens"] for c in result["cases"]][:len(METHODS)] == [256] * len(METHODS)  # the shortest first
    assert all(c["status"] == "ok" for c in cases.values()), [(k, c.get("reason")) for k, c in cases.items()]
    assert cases[(256, "full")]["ttft_x_full"] == 1.0 and cases[(384, "snapkv")]["kv_x_full"] < 1
    assert cases[(256, "asl+snapkv")]["selection_layer"] == 2  # forced at l_max
    ids = {(t["target"], t["issue_tokens"]) for t in result["targets"]}
    assert len(ids) == 12 and all(t["status"] in ("met", "missed", "skipped") for t in result["targets"])
    assert not [t for t in result["targets"] if t["status"] == "skipped"]  # everything ran, so all evaluate
    assert result["steps"]["build"]["status"] == "skipped" and result["steps"]["ops"]["status"] in ("ok", "skipped")
    table = (out / "suite.md").read_text()
    assert "CPU dry run" in table and "| 384 | asl-2pass | ok |" in table and "| peak-asl |" in table


def test_a_small_budget_drops_decode_then_cases_with_the_reason(tmp_path):
    # a first decode compile is guessed at 30 s on the CPU until one is timed, so in 1 s the
    # first case runs as a prefill only (its cost is unknown yet) and the rest are skipped
    proc, out = _suite(tmp_path, "--tokens", "256", "--budget-s", "1", "--ops-repeats", "0", "--no-transformers")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "suite.json").read_text())
    first, *rest = result["cases"]
    assert first["method"] == "full" and first["status"] == "ok" and not first["decode"]
    assert first["tpot_s"] is None and first["reason"].startswith("decode skipped")
    reasons = {c["method"]: c["reason"] for c in rest}
    assert all(c["status"] == "skipped" for c in rest) and reasons["transformers-sdpa"] == "--no-transformers"
    assert all(reasons[m].startswith("budget: needs") for m in METHODS - {"full", "transformers-sdpa",
                                                                           "transformers-static"})
    assert {t["status"] for t in result["targets"]} == {"skipped"}


@pytest.mark.parametrize("flags, message", [
    (["--tokens", "2k"], "--tokens: must be whole numbers"),
    (["--tokens", "256", "--select-tokens", "8"], "--select-tokens must be at least 33"),
    (["--new-tokens", "1"], "--new-tokens must be at least 2"),
    (["--layers", "1"], "--layers must be in [2, 4]"),
    (["--config", "no/such.json"], "--config: cannot read no/such.json"),
    (["--step", "build"], "--step: must be NAME=STATUS[:DETAIL]"),
])
def test_bad_flags_name_the_parameter(tmp_path, capsys, flags, message):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--device", "cpu", "--config", str(config), *flags])
    assert message in capsys.readouterr().err
