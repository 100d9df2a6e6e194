"""python -m asl.bench end to end on smollm2 at short lengths: bad arguments, a custom
policy through --methods, resume after an interruption, and torchrun sharding."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from asl.bench.run import runner, store
from asl.bench.cli import main

pytestmark = pytest.mark.slow  # python -m asl.bench end to end (make test-fast leaves them out)

TESTS = pathlib.Path(__file__).parent
BASE = ["--model", "smollm2-135m", "--tasks", "passkey,kv_retrieval", "--lengths", "512", "--budget", "64",
        "--threads", "1", "--no-plots", "--dtype", "float32"]  # float32: the same numbers on every CPU
TIMING = {"ttft_s", "tpot_s", "peak_mem_bytes", "policy_s"}


def records(out) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(out) / "samples.jsonl").read_text().splitlines()]


def without_timing(rs):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rs]


def test_a_samples_file_replaced_mid_run_loses_no_record(tmp_path, monkeypatch):
    """What `git stash` and `pop` of a committed run folder did to a running bench: the file was
    replaced, the run went on appending to the unlinked one it held, and its kill lost them."""
    out = tmp_path / "run"
    path = out / "samples.jsonl"
    args = [*BASE, "--methods", "full,snapkv", "--samples", "2", "--out", str(out)]
    real_run_job, state = runner.run_job, {"replaced": False, "after": 0}

    def replaced_then_interrupted(*a, **kw):
        done = store.read_jsonl(path)
        if not state["replaced"] and len(done) >= 2:
            tmp = out / "older.jsonl"
            tmp.write_text(json.dumps(done[0]) + "\n")
            os.replace(tmp, path)  # an older copy, a new file, as git writes it
            state["replaced"] = True
        elif state["replaced"]:
            state["after"] += 1
            if state["after"] == 3:
                raise KeyboardInterrupt
        return real_run_job(*a, **kw)

    monkeypatch.setattr(runner, "run_job", replaced_then_interrupted)
    with pytest.warns(UserWarning, match="appended again the 1 of the 2 records"):
        assert main(args) == 130
    kept = records(out)
    assert len(kept) == 5 and len({(r["id"], r["method"]) for r in kept}) == 5
    monkeypatch.setattr(runner, "run_job", real_run_job)
    assert main(args) == 0
    rs = records(out)
    assert len(rs) == 2 * 2 * 2 and all(r in rs for r in kept)  # resumed: the five kept, not rerun

@pytest.mark.parametrize("argv, message", [
    (["--tasks", "passkey,nope"], "--tasks: unknown task(s) nope; allowed: passkey"),
    (["--methods", "full,fastest"], "--methods: unknown method 'fastest'; allowed: full, snapkv"),
    (["--model", "no-such-model"], "--model: cannot resolve checkpoint 'no-such-model'"),
    (["--lengths", "2048,100000"], "--lengths: [100000] exceed what smollm2-135m can take"),
    (["--budget", "16"], "--budget 16"),
    (["--methods", "asl(tau=-1)"], "tau must be a finite number >= 0"),
    (["--device", "cuda"], "--device cuda: this torch"),
    (["--methods", "json:JSONDecoder"], "is not a SelectionPolicy or EvictionPolicy"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--reference", "snapkv(budget=9)"], "--reference 'snapkv(budget=9)' is not one of --methods: full, fastkv"),
    (["--seed", str(2**70)], "--seed must be in [0, 2**63), got 1180591620717411303424"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main([*BASE, "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_custom_policy_interrupt_and_resume(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    methods = ["--methods", "full,asl+snapkv,bench_custom_policy:HalfwayTopK(fraction=0.25)+snapkv"]
    real_run_job, calls = runner.run_job, []

    def interrupted_after_four(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 + 5:  # 3 warm-up runs, then 4 scored runs
            raise KeyboardInterrupt
        return real_run_job(*args, **kwargs)

    monkeypatch.setattr(runner, "run_job", interrupted_after_four)
    assert main([*BASE, *methods, "--samples", "1", "--out", out]) == 130
    partial = records(out)
    assert len(partial) == 4
    with open(pathlib.Path(out) / "samples.jsonl", "a") as f:
        f.write('{"id": "cut short by a kil')  # what a kill mid-write leaves
    monkeypatch.setattr(runner, "run_job", real_run_job)

    assert main([*BASE, *methods, "--samples", "2", "--out", out]) == 0
    rs = records(out)
    assert len(rs) == 2 * 2 * 3 and len({(r["id"], r["method"]) for r in rs}) == 12
    for old in partial:  # kept as they were, not rerun
        assert old in rs
    custom = [r for r in rs if r["method"].startswith("bench_custom_policy:HalfwayTopK")]
    assert len(custom) == 4
    for r in custom:
        assert r["selection_layer"] == 7  # int(30 layers * 0.25)
        assert max(r["kv_tokens"]) <= 64 and r["prompt_tokens"] <= 512
    summary = json.loads((pathlib.Path(out) / "summary.json").read_text())
    cells = {(s["task"], s["method"]) for s in summary}
    assert ("kv_retrieval", "asl+snapkv") in cells and all(s["n"] == 2 for s in summary if s["task"] != "all")
    assert "HalfwayTopK" in capsys.readouterr().out  # the table names it

    (pathlib.Path(out) / "summary.json").unlink()
    monkeypatch.setattr(runner, "run_job", None)  # --report-only must run nothing
    assert main([*BASE, *methods, "--samples", "2", "--out", out, "--report-only"]) == 0
    assert json.loads((pathlib.Path(out) / "summary.json").read_text()) == summary
    assert records(out) == rs


def _bench(args, out, nproc=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    launcher = [sys.executable, "-m", "asl.bench"] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", "29517",
        "-m", "asl.bench"]
    done = subprocess.run([*launcher, *args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return records(out)


def test_two_processes_equal_one(tmp_path):
    args = [*BASE, "--methods", "full,snapkv,fastkv", "--samples", "1"]  # two tasks: one per process
    one = _bench(args, tmp_path / "one")
    two = _bench(args, tmp_path / "two", nproc=2)
    assert len(one) == 2 * 1 * 3
    assert without_timing(two) == without_timing(one)
    assert not list((tmp_path / "two").glob("samples.rank*.jsonl"))
