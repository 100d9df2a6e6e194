"""preset="paper": every method as the ASL authors' scripts set it, each value with its source."""
import pytest

import asl
from asl.bench.cli import main as bench_main
from asl.presets import PAPER, paper_settings, sources


def test_the_authors_values_on_their_models_and_scaled_on_others():
    on_theirs = paper_settings("fastkv", 28, "qwen2", "Qwen/Qwen2.5-7B-Instruct-1M")
    assert on_theirs == {"layer": 15, "select_tokens": 2048, "window": 32, "kernel": 7, "pooling": "avg"}  # literal
    assert paper_settings("asl", 32, "llama") == {"tau": 0.3, "l_min": 10, "l_obs": 8, "select_tokens": 2048,
                                                  "window": 32, "kernel": 7, "pooling": "avg"}
    assert paper_settings("asl", 24, "qwen2")["l_min"] == 8 and paper_settings("fastkv", 24, "qwen2")["layer"] == 11
    assert paper_settings("gemfilter", 30, "llama") == {"layer": 12, "select_tokens": 2048, "kernel": 5,
                                                        "answer_tokens": 51}
    assert paper_settings("snapkv", 30, "llama")["keep_first_layers"] == 5  # their Llama SnapKV baseline
    assert "keep_first_layers" not in paper_settings("snapkv", 24, "qwen2")


def test_every_value_names_where_it_comes_from():
    rows = sources()
    assert len(rows) == sum(len(fields) for fields in PAPER.values())
    assert all(".sh:" in where or ".py:" in where or ".json" in where for _, _, _, where in rows)


def test_the_api_builds_the_presets_policies():
    policies = asl.preset("paper", "smollm2-135m")
    assert policies["asl"] == asl.ASL(tau=0.3, l_min=9, l_obs=8, select_tokens=2048, window=32, kernel=7,
                                      pooling="avg")
    assert policies["snapkv"].keep_first_layers == 5 and policies["gemfilter"].answer_tokens == 51
    with pytest.raises(ValueError, match="preset must be one of paper"):
        asl.preset("fast", "smollm2-135m")


def test_the_bench_dry_run_shows_the_authors_values_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert bench_main(["--model", "smollm2-135m", "--preset", "paper", "--dry-run", "--lengths", "4096",
                       "--methods", "asl,fastkv+snapkv,gemfilter", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "asl @ 2048: tau=0.3, l_min=9, l_obs=8, select_tokens=2048, window=32, kernel=7, pooling='avg'" in printed
    assert "fastkv+snapkv @ 2048: select_tokens=2048, window=32, layer=14" in printed and "keep_first_layers=5" in printed
    assert "gemfilter @ 2048: layer=12, select_tokens=2048, kernel=5, keep_last=False, answer_tokens=51" in printed
    assert not out.exists()
    assert bench_main(["--model", "smollm2-135m", "--preset", "paper", "--dry-run", "--budget", "1024",
                       "--methods", "snapkv"]) == 0
    assert "snapkv @ 1024: budget=1024," in capsys.readouterr().out  # the run's budget stays the run's


def test_calibration_takes_the_paper_preset():
    from asl.bench.calibrate import parse

    assert parse(["--model", "smollm2-135m", "--preset", "paper"]).select_tokens == 2048  # the authors' select_k
    assert parse(["--model", "smollm2-135m"]).select_tokens == 512
    assert parse(["--model", "smollm2-135m", "--preset", "paper", "--select-tokens", "1024"]).select_tokens == 1024


def test_the_kvpress_preset_has_kvpress_defaults_each_with_its_source(capsys):
    import asl
    from asl.presets import sources

    policies = asl.preset("kvpress")
    assert (policies["snapkv"].window, policies["snapkv"].kernel, policies["snapkv"].pooling) == (64, 5, "avg")
    assert policies["knorm"].window == policies["observed-attention"].window == 0 and policies["tova"].window == 1
    assert policies["streaming"].sink == 4 and not policies["streaming"].rolling
    assert all("kvpress 0.5.5" in where for *_, where in sources("kvpress"))
    with pytest.raises(ValueError, match="the paper preset scales its layers to a model"):
        asl.preset("paper")
    assert bench_main(["--model", "smollm2-135m", "--preset", "kvpress", "--dry-run", "--methods",
                       "snapkv,knorm(ratio=0.5)"]) == 0
    printed = capsys.readouterr().out
    assert "snapkv @ 512: budget=512, window=64" in printed and "knorm(ratio=0.5) @ None: budget=512, window=0" in printed
