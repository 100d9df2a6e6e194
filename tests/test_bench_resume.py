"""A run folder holds one run: a rerun with other settings, code or policy source is refused
(or discarded with --force), two processes cannot share it, and --report-only only reads."""
import json
import os
import pathlib
import textwrap

import pytest

from asl.bench.run import fingerprint, store
from asl.bench.cli import main

pytestmark = pytest.mark.slow  # bench runs on the real model (make test-fast leaves them out)

BASE = ["--model", "smollm2-135m", "--tasks", "passkey", "--lengths", "512", "--budget", "64", "--samples", "1",
        "--threads", "1", "--no-plots", "--dtype", "float32"]


def lines(out) -> list[dict]:
    return store.read_jsonl(pathlib.Path(out) / "samples.jsonl")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """One finished run of the full cache and SnapKV (a few seconds on smollm2 at 512 tokens)."""
    out = tmp_path_factory.mktemp("bench") / "run"
    assert main([*BASE, "--methods", "full,snapkv", "--out", str(out)]) == 0
    return out


def test_the_config_records_the_dtype_and_why(done_run):
    config = json.loads((done_run / "config.json").read_text())
    assert config["run"]["dtype"] == "float32" and config["dtype_reason"] == "asked for explicitly"


def refused(capsys, argv, out) -> str:
    def files():
        return {p.name: p.read_bytes() for p in pathlib.Path(out).iterdir() if p.is_file() and p.name != ".lock"}

    before = files()
    assert main([*argv, "--out", str(out)]) == 2
    after = files()
    assert after == before  # nothing written, nothing lost
    return capsys.readouterr().err


@pytest.mark.parametrize("extra, changed", [
    (["--threads", "2"], "run.threads: 1 -> 2"),
    (["--dtype", "bfloat16"], "run.dtype: 'float32' -> 'bfloat16'"),
    (["--seed", "3"], "run.seed: 0 -> 3"),
    (["--compile"], "run.compile: False -> True"),
    (["--select-tokens", "48"], "snapkv @ 64"),
])
def test_a_rerun_with_other_settings_is_refused_naming_them(done_run, capsys, extra, changed):
    argv = [*BASE, "--methods", "full,snapkv", *extra]
    if changed.startswith("snapkv"):  # --select-tokens changes nothing of SnapKV: resumes; asl's would change
        assert main([*argv, "--out", str(done_run)]) == 0
        return
    err = refused(capsys, argv, done_run)
    assert changed in err and "give another --out, or add --force" in err


def test_changed_code_is_refused(done_run, capsys, monkeypatch):
    monkeypatch.setattr(fingerprint, "code_hash", lambda: "0" * 16)
    err = refused(capsys, [*BASE, "--methods", "full,snapkv"], done_run)
    assert "run.code:" in err and "-> '0000000000000000'" in err


def test_a_changed_default_of_a_method_is_refused(done_run, capsys, monkeypatch):
    from asl.bench import methods

    monkeypatch.setitem(methods.SCORING, "kernel", 5)  # a default edited between two runs
    err = refused(capsys, [*BASE, "--methods", "full,snapkv"], done_run)
    assert "snapkv @ 64: SnapKV.fields.kernel: 7 -> 5" in err


def test_custom_policy_with_other_select_tokens_or_source_is_refused(tmp_path, capsys, monkeypatch):
    module = tmp_path / "mypol.py"
    source = textwrap.dedent('''
        from dataclasses import dataclass
        import asl

        @dataclass
        class Keep(asl.SelectionPolicy):
            """Selects nothing: a stand-in for a researcher's policy."""
            select_tokens: int = 256

            def after_layer(self, layer, view):
                return None
        ''')
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = [*BASE, "--methods", "mypol:Keep"]
    assert main([*argv, "--out", str(out)]) == 0
    assert main([*argv, "--out", str(out)]) == 0 and len(lines(out)) == 1  # the same run resumes
    err = refused(capsys, [*argv, "--select-tokens", "48"], out)
    assert "mypol:Keep @ 64: Keep.fields.select_tokens: 64 -> 48" in err
    module.write_text(source.replace("return None", "return None  # a comment"))
    assert main([*argv, "--out", str(out)]) == 0  # a comment changes no result: resumes
    module.write_text(source.replace("return None", "view = view\n        return None"))  # code: refused
    err = refused(capsys, argv, out)
    assert "mypol:Keep @ 64: Keep.source:" in err
    assert main([*argv, "--out", str(out), "--force"]) == 0  # discards the old results and runs anew
    assert "--force: removed samples.jsonl, summary.csv, summary.json, comparisons.csv, comparisons.json" in (
        capsys.readouterr().err)
    config = json.loads((out / "config.json").read_text())
    assert config["policies"]["mypol:Keep @ 64"][0]["source"] == fingerprint.class_source_hash(
        __import__("mypol").Keep)
    assert len(lines(out)) == 1


def test_a_changed_helper_module_of_a_custom_policy_is_refused(tmp_path, capsys, monkeypatch):
    """The policy's own file is unchanged; a module of the user's package that it imports is
    not (issue 34: such a resume mixed two versions under one label)."""
    package = tmp_path / "lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "util.py").write_text("def never(layer):\n    return False\n")
    (package / "policy.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import asl
        from .util import never

        @dataclass
        class Keep(asl.SelectionPolicy):
            select_tokens: int = 256

            def after_layer(self, layer, view):
                return None if not never(layer) else None
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = [*BASE, "--methods", "lab.policy:Keep"]
    assert main([*argv, "--out", str(out)]) == 0
    assert main([*argv, "--out", str(out)]) == 0  # unchanged: resumes
    (package / "util.py").write_text("def never(layer):\n    return layer < 0\n")
    err = refused(capsys, argv, out)
    assert "lab.policy:Keep @ 64: Keep.source:" in err
    closure = {p.name for p in fingerprint.source_closure("lab.policy")}
    assert closure == {"policy.py", "util.py"}  # the user's modules, not dataclasses or asl


def test_a_model_whose_files_changed_behind_the_same_path_is_refused(done_run, capsys, monkeypatch):
    monkeypatch.setattr(fingerprint, "model_hash", lambda folder: "f" * 16)
    err = refused(capsys, [*BASE, "--methods", "full,snapkv"], done_run)
    assert "run.model_files:" in err and "-> 'ffffffffffffffff'" in err


def test_another_calibration_file_is_refused(done_run, capsys, tmp_path):
    calibration = tmp_path / "calibration.json"
    calibration.write_text((fingerprint.PACKAGE / "calibration" / "smollm2-135m.json").read_text())
    err = refused(capsys, [*BASE, "--methods", "full,snapkv", "--calibration", str(calibration)], done_run)
    assert "run.calibration: None -> '" in err  # recorded by content, not by path


def test_the_model_hash_follows_the_bytes_and_is_cached_by_file_identity(tmp_path, monkeypatch):
    from asl.models import loading

    monkeypatch.setenv("ASL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "README.md").write_text("not part of the model")
    first = fingerprint.model_hash(folder)
    hashed = []
    real = loading.sha256_files
    monkeypatch.setattr(loading, "sha256_files", lambda paths, out=None: hashed.append(paths) or real(paths, out))
    assert fingerprint.model_hash(folder) == first and hashed == []  # known files: nothing rehashed
    (folder / "README.md").write_text("edited")
    assert fingerprint.model_hash(folder) == first  # not a model file
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    weights.write_bytes(b"\1" + b"\0" * 63)  # same size, new bytes, a new mtime (set: clocks are coarse)
    os.utime(weights, ns=(before + 10**9, before + 10**9))
    assert fingerprint.model_hash(folder) != first and len(hashed) == 1


def test_a_second_process_on_the_same_out_fails_at_once(done_run, capsys):
    with store.FolderLock(done_run):
        err = refused(capsys, [*BASE, "--methods", "full,snapkv"], done_run)
    assert "is in use by asl.bench pid" in err


def test_a_rerun_of_a_policy_with_a_tuple_field_resumes(tmp_path):
    """LazyLLM's `pruning` is a tuple, which config.json holds as a list: the rerun must still
    be the same run (it was refused, so a long LazyLLM run could not resume)."""
    out = tmp_path / "run"
    args = [*BASE, "--methods", "lazyllm", "--out", str(out)]
    assert main(args) == 0
    assert isinstance(json.loads((out / "config.json").read_text())["policies"]["lazyllm @ 64"][0]["fields"]["pruning"],
                      list)
    before = lines(out)
    assert main(args) == 0
    assert lines(out) == before


def test_added_methods_extend_the_configuration_and_the_report(done_run, capsys):
    assert main([*BASE, "--methods", "full,streaming", "--out", str(done_run)]) == 0
    config = json.loads((done_run / "config.json").read_text())
    assert config["methods"] == ["full", "snapkv", "streaming"]
    assert set(config["policies"]) == {"full @ None", "snapkv @ 64", "streaming @ 64"}
    summary = json.loads((done_run / "summary.json").read_text())
    assert {r["method"] for r in summary} == {"full", "snapkv", "streaming"}  # every method present


def test_report_only_reads_the_folder_and_writes_only_the_summaries(done_run, capsys):
    config, samples = (done_run / "config.json").read_bytes(), (done_run / "samples.jsonl").read_bytes()
    (done_run / "summary.json").unlink()
    assert main(["--out", str(done_run), "--report-only", "--no-plots"]) == 0  # no other flag needed
    n = len(lines(done_run))
    assert f"{n} runs in {done_run} ({n} of the {n} planned" in capsys.readouterr().out
    assert (done_run / "config.json").read_bytes() == config and (done_run / "samples.jsonl").read_bytes() == samples
    summary = json.loads((done_run / "summary.json").read_text())
    assert {r["method"] for r in summary} >= {"full", "snapkv"}
    assert (done_run / "comparisons.csv").exists()


def test_report_only_says_which_lines_of_a_damaged_folder_it_skips_or_overrides(done_run, capsys):
    """A record line lost in the middle (a bad merge, an edit) and a record written twice with
    different results are named on stderr, before the figures, and the report still runs."""
    path = done_run / "samples.jsonl"
    text = path.read_text().splitlines()
    again = json.dumps(dict(json.loads(text[0]), score=1 - json.loads(text[0])["score"]))
    path.write_text("\n".join([text[0], "<<<<<<< HEAD", *text[1:], again]) + "\n")
    assert main(["--out", str(done_run), "--report-only", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "samples.jsonl line 2 holds no record; skipped" in err
    assert f"samples.jsonl line {len(text) + 2} repeats the key" in err and "of line 1: a different record" in err


def test_report_only_on_a_folder_without_a_run_creates_nothing(tmp_path, capsys):
    out = tmp_path / "empty"
    assert main(["--out", str(out), "--report-only"]) == 2
    assert "holds no config.json" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("suffix, same, other", [
    (".py", ('def f(x):\n    """Why."""\n    return x + 1\n',
             'def f(x):  # a comment\n    """Another why."""\n\n    return x + 1\n'),
     'def f(x):\n    """Why."""\n    return x + 2\n'),
    (".cpp", ('int f(int x) { return x + 1; }  // why\nconst char* s = "a // b";\n',
              '/* a longer\n   why */\nint f(int x) {\n  return x + 1;\n}\nconst char* s = "a // b";\n'),
     'int f(int x) { return x + 1; }\nconst char* s = "a // c";\n'),
])
def test_the_code_hash_sees_code_not_comments_or_docstrings(tmp_path, suffix, same, other):
    a, b, c = (tmp_path / f"{n}{suffix}" for n in "abc")
    for path, text in zip((a, b, c), (*same, other)):
        path.write_text(text)
    code = fingerprint._code_of
    assert code(a) == code(b) and code(a) != code(c)
    assert fingerprint.code_hash() == fingerprint.code_hash() and len(fingerprint.code_hash()) == 16


@pytest.mark.parametrize("content, message", [
    ('{"model_type": "llama", "num_hidden_layers": 2}', "its config.json was not written by asl.bench"),
    ("not json {", "config.json is not valid JSON"),
])
@pytest.mark.parametrize("force", [False, True])
def test_a_foreign_or_broken_config_in_out_is_refused_even_with_force(tmp_path, capsys, content, message, force):
    """A model folder given as --out (issue 34: --force overwrote its config.json and deleted
    plots/): nothing is written or removed, and --force is not suggested."""
    out = tmp_path / "run"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "mine.png").write_bytes(b"png")
    (out / "config.json").write_text(content)
    assert main([*BASE, "--methods", "full", "--out", str(out), *(["--force"] if force else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and "never touches a folder the bench did not write" in err
    assert (out / "config.json").read_text() == content and (out / "plots" / "mine.png").exists()
    assert not (out / "samples.jsonl").exists()


def test_bench_files_without_a_bench_config_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.csv").write_text("somebody's table")
    assert main([*BASE, "--methods", "full", "--out", str(out), "--force"]) == 2
    assert "holds summary.csv but no config.json of asl.bench" in capsys.readouterr().err
    assert (out / "summary.csv").read_text() == "somebody's table"


def test_an_out_that_cannot_be_created_fails_cleanly(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main([*BASE, "--methods", "full", "--out", str(blocker / "run")]) == 2
    assert "python -m asl.bench: error:" in capsys.readouterr().err


def test_repeats_time_each_call_several_times_and_score_the_first(tmp_path):
    out = tmp_path / "run"
    assert main([*BASE, "--methods", "full", "--repeats", "3", "--out", str(out)]) == 0
    (r,) = lines(out)
    assert len(r["ttft_runs"]) == 3 and r["ttft_s"] == sorted(r["ttft_runs"])[1]  # the median
    assert len(r["tpot_runs"]) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["repeats"] == 3


def test_list_shows_each_method_with_its_parameters_on_the_model(capsys):
    assert main(["--list", "--model", "smollm2-135m"]) == 0
    text = capsys.readouterr().out
    assert "\n  fastkv                selection at a fixed layer" in text  # names aligned in one column
    assert "\n  pyramidinfer-prefill  selection after every layer" in text
    assert "select_tokens=512, layer=14, window=32, kernel=7, pooling='avg'" in text  # 15 of 32 -> 14 of 30
    assert "kv_retrieval     InfiniteBench  >= 512 tokens" in text


def test_lengths_not_above_the_budget_warn_and_help_shows_defaults(tmp_path, capsys):
    from asl.bench.cli import parser

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    main([*BASE[:4], "--lengths", "256", "--budget", "512", "--methods", "full", "--out", str(blocker / "x")])
    assert "--lengths [256] are not above the budget 512: there every method keeps every token" in capsys.readouterr().err
    help_text = " ".join(parser().format_help().split())
    assert "(default: 10)" in help_text  # --samples; the budget says its two defaults itself:
    assert "comma-separated for several (default 512; 2048 with --preset paper)" in help_text


def test_the_code_hash_leaves_out_exactly_the_read_only_bench_files():
    """Reporting code never changes a result, so it is not in the code hash; everything that
    runs a method is (a moved or renamed file must not slip out, or stay out)."""
    bench = fingerprint.PACKAGE / "bench"
    assert all((bench / name).exists() for name in fingerprint.READ_ONLY)
    hashed = {p.relative_to(bench).as_posix() for p in fingerprint.result_files() if p.is_relative_to(bench)}
    assert {"methods.py", "run/runner.py", "run/oracle.py", "run/memory.py", "tasks/__init__.py",
            "tasks/scoring.py", "tasks/ruler.py"} <= hashed
    assert not any(h.startswith("report/") or h in ("cli.py", "run/session.py") for h in hashed)


def test_force_discards_every_file_the_report_writes(tmp_path):
    """--force leaves no file of an old report behind to be read with the new one's: each file
    the report writes (vs_reference.md included) is one the discard removes."""
    from asl.bench.report import report
    from asl.bench.run.session import bench_files, discard

    recs = [{"id": f"kv/100/{i}", "task": "kv", "length": 100, "index": i, "method": m, "budget": 64,
             "score": float(i % 2), "partial": 0.5, "ttft_s": 0.1, "tpot_s": 0.01, "kv_bytes": 1000,
             "peak_mem_bytes": None, "selection_layer": None, "ratios": []}
            for i in range(4) for m in ("asl", "fastkv")]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    whole = {"planned": 8, "done": 8, "samples_planned": 4, "samples_whole": 4}
    report(recs, tmp_path, {}, plots=False, coverage=whole)
    written = {p.name for p in tmp_path.iterdir()}
    assert {"vs_reference.md", "coverage.json"} <= written
    assert {p.name for p in bench_files(tmp_path)} == written
    discard(tmp_path)
    assert list(tmp_path.iterdir()) == []
