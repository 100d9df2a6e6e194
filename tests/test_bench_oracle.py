"""The bench method `oracle` end to end on a tiny model: its record has the store's format,
answers as the full cache where a layer keeps that answer, and with ASL on the same samples
the report and the scatter plot compare their layers."""
import random

import pytest

from asl.bench.methods import Method, model_defaults, parse_methods
from asl.bench.report.plots import make_plots
from asl.bench.report import format_table, summarize
from asl.bench.run.runner import Job, run_job
from asl.bench.tasks import Sample
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
LAYERS = 8
SELECT = 48


@pytest.fixture(scope="module")
def model():
    return tiny_pair("qwen2", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


def sample(task: str, index: int) -> Sample:
    text = random_text(random.Random(f"{task}{index}"), 150)
    return Sample(task, 150, index, text, ("abc",), "ruler_all", 6, (), None, len(text))


def record(model, s: Sample, method: str) -> dict:
    (spec,) = parse_methods(method)
    budget = None if spec.is_full else SELECT
    method = Method.resolve(spec, model_defaults("tiny", LAYERS)[0], budget, budget)
    return run_job(model, TOK, s, Job(s.task, s.length, s.index, 0, method))


@pytest.fixture(scope="module")
def records(model):
    out = []
    for task in ("t1", "t2"):
        for index in range(3):
            s = sample(task, index)
            out += [record(model, s, m) for m in ("full", "asl(tau=0.9)", "oracle")]
    return out


def test_the_oracle_record_has_the_stores_format_and_the_full_answer(records):
    full = {r["id"]: r for r in records if r["method"] == "full"}
    oracles = [r for r in records if r["method"] == "oracle"]
    assert len(oracles) == 6
    for r in oracles:
        assert set(full[r["id"]]) <= set(r)  # every field the other methods write
        assert r["selection_layer"] == (LAYERS - 2 if r["oracle_layer"] is None else r["oracle_layer"])
        if r["oracle_layer"] is not None:
            assert r["prediction"] == full[r["id"]]["prediction"] and r["oracle_layer"] in r["oracle_matching"]
        assert len(r["kv_tokens"]) == LAYERS and r["kv_tokens"][0] == r["prompt_tokens"]
        assert r["kv_tokens"][-1] == (r["prompt_tokens"] if r["selection_layer"] == LAYERS - 1 else SELECT)
        assert r["oracle_cost"] > 1 and r["ttft_s"] > 0 and r["kv_bytes"] > 0


def test_the_report_and_the_plot_compare_asl_with_the_oracle(records, tmp_path):
    summary = summarize(records)
    row = next(r for r in summary if r["task"] == "all" and r["method"] == "asl(tau=0.9)")
    assert row["oracle_n"] == 6
    assert 0 <= row["oracle_too_early"] + row["oracle_later"] <= 100 and row["oracle_layers_lost"] >= 0
    full = {r["id"]: r["prediction"] for r in records if r["method"] == "full"}
    mine = [r for r in records if r["method"] == "asl(tau=0.9)"]
    assert row["oracle_same_answer"] == 100.0 * sum(r["prediction"] == full[r["id"]] for r in mine) / len(mine)
    assert next(r for r in summary if r["task"] == "all" and r["method"] == "oracle")["oracle_cost"] > 1
    assert "selection layer vs the oracle" in format_table(summary) and "the full cache's answer on" in format_table(summary)
    paths = make_plots(records, summary, tmp_path)
    assert (tmp_path / "plots" / "vs_oracle_asl_tau_0.9.png") in paths


def test_oracle_composes_with_nothing():
    with pytest.raises(ValueError, match="oracle composes with nothing"):
        parse_methods("oracle+snapkv")
