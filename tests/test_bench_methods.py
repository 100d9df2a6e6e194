"""Method specs, per-model defaults, the stop rule answers rely on, and the peak-memory probe."""
import re

import pytest
from bench_custom_policy import HalfwayTopK

import asl
from asl.bench.run.memory import cpu_peak_supported
from asl.bench.methods import Method, build, default_params, effective_fields, model_defaults, parse_methods, scaled_layer
from asl.answers import cut_at_stop


def defaults(model: str, layers: int) -> dict:
    return model_defaults(model, layers)[0]


def resolved(spec, params) -> Method:
    return Method(spec, None, *build(spec, params))


def test_parse_methods_with_arguments_and_custom_classes():
    specs = parse_methods("full, asl(tau=0.5,l_min=8) ,bench_custom_policy:HalfwayTopK(fraction=0.25)")
    assert [s.family for s in specs] == ["full", "asl", "bench_custom_policy:HalfwayTopK"]
    assert specs[1].parts[0].kwargs == {"tau": 0.5, "l_min": 8} and specs[1].label == "asl(tau=0.5,l_min=8)"
    assert specs[2].parts[0].custom and specs[2].parts[0].kwargs == {"fraction": 0.25}


@pytest.mark.parametrize("text, message", [
    ("fast", "unknown method 'fast'"), ("asl(0.5)", "key=value"), ("asl(tau=x)", "Python literals"),
    ("asl(tau=0.5", "must end with ')'"), ("full,full", "listed twice"), ("", "at least one"),
    ("snapkv+asl", "composes eviction with selection; allowed: full, an eviction"),
    ("asl+fastkv", "composes selection with selection"),
    ("asl+snapkv+fastkv", "composes selection with eviction with selection"), ("asl+full", "full composes with nothing"),
    ("asl(tau=[])", "the list for tau is empty"), ("asl(tau=[0.3,0.3])", "listed twice: asl(tau=0.3)"),
    ("asl+nope", "unknown method 'nope' in 'asl+nope'"),
    ("asl(tau=0.5,tau=0.6)", "'asl(tau=0.5,tau=0.6)': tau given more than once"),  # was: the last silently won
    ("adakv", "adakv wraps a scorer eviction: adakv(snapkv)"), ("pyramidkv(snapkv,snapkv)", "pyramidkv wraps a scorer"),
    ("adakv(asl)", "wraps asl, which is not a scorer eviction"), ("adakv(snapkv)+asl", "composes eviction with selection"),
])
def test_bad_method_specs(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_methods(text)


def test_evictions_in_a_row_build_a_chain_and_refuse_one_that_would_never_cut():
    (spec,) = parse_methods("fastkv+snapkv(ratio=0.5)+knorm(budget=64)")
    sel, ev = build(spec, default_params(spec, defaults("smollm2-135m", 30), 256, 128))
    assert type(sel) is asl.FastKV and type(ev) is asl.Chain
    assert (type(ev.first), ev.first.ratio, type(ev.second), ev.second.budget) == (asl.SnapKV, 0.5, asl.KNorm, 64)
    (spec,) = parse_methods("snapkv+knorm")  # both at --budget: the second would keep all the first kept
    with pytest.raises(ValueError, match=re.escape("second's budget (256) must be below first's (256)")):
        build(spec, default_params(spec, defaults("smollm2-135m", 30), 256, 128))
    (spec,) = parse_methods("snapkv(budget=128)+streaming")  # StreamingLLM rolls while decoding
    with pytest.raises(ValueError, match="does more than cut the prefill"):
        build(spec, default_params(spec, defaults("smollm2-135m", 30), 64, 128))


@pytest.mark.parametrize("text, selection, eviction", [
    ("full", None, None), ("snapkv", None, asl.SnapKV), ("streaming", None, asl.StreamingLLM),
    ("fastkv", asl.FastKV, None), ("asl", asl.ASL, None), ("asl-2pass", asl.ASLTwoPass, None),
    ("gemfilter", asl.GemFilter, None), ("asl+snapkv", asl.ASL, asl.SnapKV), ("fastkv+snapkv", asl.FastKV, asl.SnapKV),
    ("fastkv+streaming", asl.FastKV, asl.StreamingLLM), ("gemfilter+snapkv", asl.GemFilter, asl.SnapKV),
    ("asl-2pass+streaming", asl.ASLTwoPass, asl.StreamingLLM),
    ("bench_custom_policy:HalfwayTopK", HalfwayTopK, None), ("bench_custom_policy:HalfwayTopK+snapkv", HalfwayTopK, asl.SnapKV),
])
def test_every_composition_builds_its_policies_at_the_budget_and_selection_size(text, selection, eviction):
    (spec,) = parse_methods(text)
    sel, ev = build(spec, default_params(spec, defaults("smollm2-135m", 30), 256, 128))
    assert type(sel) is selection if selection else sel is None
    assert type(ev) is eviction if eviction else ev is None
    if sel is not None:
        assert sel.select_tokens == 128
    if ev is not None:
        assert ev.budget == 256
    assert spec.label == text and spec.family == text


def test_lists_expand_into_one_method_per_value_and_their_product():
    specs = parse_methods("asl(tau=[0.3,0.5,0.7]),fastkv(layer=[4,8])+snapkv(budget=[64,128]),full")
    assert [s.label for s in specs] == [
        "asl(tau=0.3)", "asl(tau=0.5)", "asl(tau=0.7)",
        "fastkv(layer=4)+snapkv(budget=64)", "fastkv(layer=4)+snapkv(budget=128)",
        "fastkv(layer=8)+snapkv(budget=64)", "fastkv(layer=8)+snapkv(budget=128)", "full"]
    assert {s.family for s in specs[:3]} == {"asl"} and {s.family for s in specs[3:7]} == {"fastkv+snapkv"}
    sel, ev = build(specs[4], default_params(specs[4], defaults("smollm2-135m", 30), 512, 256))
    assert sel.layer == 4 and ev.budget == 128  # the user's budget beats the run's


def test_baselines_score_like_asl_and_the_papers_settings_stay_one_argument_away():
    (fastkv,) = parse_methods("fastkv+snapkv")
    sel, ev = build(fastkv, default_params(fastkv, defaults("qwen2.5-0.5b", 24), 1024, 512))
    assert (sel.layer, sel.window, sel.kernel, sel.pooling) == (11, 32, 7, "avg")  # the ASL paper's comparison
    assert (ev.window, ev.kernel, ev.pooling) == (32, 7, "avg")
    (own,) = parse_methods('fastkv(window=8,pooling="max")+snapkv')
    sel, ev = build(own, default_params(own, defaults("qwen2.5-0.5b", 24), 1024, 512))
    assert (sel.window, sel.pooling) == (8, "max") and (ev.window, ev.pooling) == (8, "max")  # TSP and its eviction agree
    (gem,) = parse_methods("gemfilter")
    sel, _ = build(gem, default_params(gem, defaults("qwen2.5-0.5b", 24), 1024, 512))
    assert (sel.layer, sel.select_tokens, sel.kernel) == (10, 512, 5)


def test_a_selection_given_a_budget_says_what_to_compose():
    (spec,) = parse_methods("asl(budget=256)")
    with pytest.raises(ValueError, match=re.escape("asl selects tokens only: give the budget to an eviction, e.g. asl+snapkv")):
        build(spec, default_params(spec, defaults("smollm2-135m", 30), 512, 512))


def test_layers_scale_from_the_32_layer_settings():
    assert scaled_layer(15, 32) == 15 and scaled_layer(15, 24) == 11 and scaled_layer(13, 30) == 12
    assert scaled_layer(15, 4) == 2 and scaled_layer(40, 24) == 23
    from asl.calibration import bundled_file, read

    (spec,) = parse_methods("asl+snapkv")
    tau = read(bundled_file("qwen2.5-0.5b"))["asl"]["tau"]
    assert default_params(spec, defaults("qwen2.5-0.5b", 24), 1024, 512) == [  # asl/calibration/qwen2.5-0.5b.json
        {"select_tokens": 512, "tau": tau, "l_min": 8, "l_obs": 8, "window": 32, "kernel": 7, "pooling": "avg"},
        {"budget": 1024, "window": 32, "kernel": 7, "pooling": "avg"}]
    (spec,) = parse_methods("asl(tau=0.3,l_min=4)")
    (p,) = default_params(spec, defaults("other", 24), 1024, 512)
    assert p["tau"] == 0.3 and p["l_min"] == 4 and p["l_obs"] == 5  # l_obs clipped to l_min + 1


def test_effective_fields_record_defaults_and_custom_sources():
    (spec,) = parse_methods("asl+snapkv")
    fields = effective_fields(resolved(spec, default_params(spec, defaults("smollm2-135m", 30), 256, 128)))
    assert [f["class"] for f in fields] == ["asl.policies.asl.ASL", "asl.policies.snapkv.SnapKV"]
    assert fields[0]["fields"]["window"] == 32 and fields[0]["fields"]["l_max"] is None  # defaults included
    assert "source" not in fields[0]
    (custom,) = parse_methods("bench_custom_policy:HalfwayTopK")
    (entry,) = effective_fields(resolved(custom, default_params(custom, defaults("smollm2-135m", 30), 256, 128)))
    assert entry["fields"] == {"select_tokens": 128, "window": 32, "fraction": 0.5} and len(entry["source"]) == 16


@pytest.mark.parametrize("text, cut", [
    (":\n\n1. 3759968\nmore", ":\n\n1. 3759968"),  # an answer may start on a new line
    (" 62797. The\n", " 62797. The"),
    ("```json\n{}", "```json"),
    ("no stop here", "no stop here"),
])
def test_a_stop_counts_after_the_first_word(text, cut):
    assert cut_at_stop(text, ["\n"]) == cut


PROBE = """
import torch
from asl.bench.run.memory import PeakMemory
with PeakMemory("cpu") as m:
    x = torch.ones(96 * 2**20 // 4)
    del x
print(m.bytes)
"""


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs /proc/self/clear_refs")
def test_peak_memory_sees_a_freed_allocation():
    # A fresh process: what earlier tests left in the allocator must not hide the allocation.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert 90 * 2**20 <= int(out.stdout.split()[-1]) <= 128 * 2**20


def test_a_method_with_its_own_budget_is_recorded_at_it_and_run_once(capsys):
    from asl.bench.cli import parse, resolve

    args = parse(["--model", "smollm2-135m", "--lengths", "1024", "--budget", "256,384",
                  "--methods", "full,fastkv(layer=8)+snapkv(budget=512),snapkv"])
    _, _, methods = resolve(args)
    assert sorted((m.label, m.budget) for m in methods) == sorted([("full", None), ("fastkv(layer=8)+snapkv(budget=512)", 512),
                                                                  ("snapkv", 256), ("snapkv", 384)], key=str)
    assert next(m for m in methods if m.budget == 512).eviction.budget == 512
    assert "runs at its own budget 512, whatever --budget" in capsys.readouterr().err


def test_allocators_wrap_a_scorer_as_values():
    specs = parse_methods("adakv(snapkv(window=[16,32]),alpha_safeguard=0.3),fastkv+pyramidkv(snapkv)")
    assert [s.label for s in specs] == ["adakv(snapkv(window=16),alpha_safeguard=0.3)",
                                        "adakv(snapkv(window=32),alpha_safeguard=0.3)", "fastkv+pyramidkv(snapkv)"]
    assert [s.family for s in specs] == ["adakv(snapkv)", "adakv(snapkv)", "fastkv+pyramidkv(snapkv)"]
    (params,) = default_params(specs[0], defaults("smollm2-135m", 30), 256, 256)
    assert params == {"alpha_safeguard": 0.3, "scorer": {"budget": 256, "window": 16, "kernel": 7, "pooling": "avg"}}
    _, ev = build(specs[0], [params])
    assert ev == asl.AdaKV(asl.SnapKV(budget=256, window=16), alpha_safeguard=0.3)
    sel, ev = build(specs[2], default_params(specs[2], defaults("smollm2-135m", 30), 256, 256))
    assert isinstance(sel, asl.FastKV) and ev == asl.PyramidKV(asl.SnapKV(budget=256, window=32))
    (entry,) = effective_fields(resolved(specs[0], [params]))
    assert entry["fields"]["scorer"]["window"] == 16  # config.json records the scorer's fields too
    from asl.bench.methods import kept_budget

    assert kept_budget([params], 512) == 256  # the allocator's budget is its scorer's
    with pytest.raises(ValueError, match="AdaKV wraps a scorer eviction"):
        build(parse_methods("adakv(streaming)")[0], default_params(parse_methods("adakv(streaming)")[0],
                                                                   defaults("smollm2-135m", 30), 256, 256))


def test_a_wrapper_that_is_a_scorer_nests_and_hyphenated_scorers_stay_one_name():
    from asl.bench.methods import kept_budget, with_ratio

    (spec,) = parse_methods("adakv(criticalkv(observed-attention(chunk=64)),alpha_safeguard=0.1)")
    params = default_params(spec, defaults("smollm2-135m", 30), 256, 256)
    _, ev = build(spec, params)
    assert ev == asl.AdaKV(asl.CriticalKV(asl.ObservedAttention(budget=256, window=32, chunk=64)), alpha_safeguard=0.1)
    assert kept_budget(params, 512) == 256
    (spec,) = parse_methods("chunkkv(criticalkv(expected-attention(use_vnorm=False)),chunk=8)")
    sized = with_ratio(spec, 0.5)
    assert sized.label == "chunkkv(criticalkv(expected-attention(use_vnorm=False,ratio=0.5)),chunk=8)"
    params = default_params(sized, defaults("smollm2-135m", 30), None, None)
    _, ev = build(sized, params)
    assert ev.scorer.scorer == asl.ExpectedAttention(window=32, ratio=0.5, use_vnorm=False) and ev.scorer.ratio == 0.5
    assert kept_budget(params, 512) is None
    with pytest.raises(ValueError, match=r"adakv\(criticalkv\(knorm\(budget=512\)\)\)"):
        with_ratio(parse_methods("adakv(criticalkv(knorm))")[0], 0.5)


def test_the_bench_says_when_asl_selects_another_size_than_it_was_calibrated_at(capsys):
    from asl.bench.cli import parse, resolve

    resolve(parse(["--model", "smollm2-135m", "--lengths", "2048", "--budget", "512", "--methods", "asl"]))
    assert "calibrated selecting 1024 tokens, this run selects 512" in capsys.readouterr().err
    resolve(parse(["--model", "smollm2-135m", "--lengths", "2048", "--budget", "512", "--select-tokens", "1024",
                   "--methods", "asl"]))
    assert "calibrated selecting" not in capsys.readouterr().err


def test_gemfilter_can_cap_its_answers_as_the_authors_harness():
    from asl.bench.run.runner import answer_limit
    from asl.bench.tasks import Sample

    sample = Sample(task="qa", length=2048, index=0, prompt="p", answers=("a",), metric="string_match_all",
                    max_new_tokens=128, stop=(), depth=None, prompt_tokens=10)
    (spec,) = parse_methods("gemfilter(answer_tokens=51)")
    selection, _ = build(spec, default_params(spec, defaults("qwen2.5-0.5b", 24), 1024, 1024))
    assert answer_limit(sample, selection) == 51
    assert answer_limit(sample, asl.GemFilter()) == 128 and answer_limit(sample, None) == 128
    with pytest.raises(ValueError, match="answer_tokens must be an integer >= 1"):
        asl.GemFilter(answer_tokens=0)


def test_a_method_sized_by_a_ratio_runs_once_with_no_budget(capsys):
    from asl.bench.cli import parse, resolve

    args = parse(["--model", "smollm2-135m", "--lengths", "1024", "--budget", "256,384",
                  "--methods", "knorm(ratio=0.75,window=0),tova"])
    _, _, methods = resolve(args)
    assert sorted((m.label, m.budget) for m in methods if m.label != "tova") == [("knorm(ratio=0.75,window=0)", None)]
    assert [m.budget for m in methods if m.label == "tova"] == [256, 384]
    assert isinstance(methods[0].eviction, asl.KNorm) and methods[0].eviction.ratio == 0.75
    assert "runs at a share of each layer's tokens, whatever --budget" in capsys.readouterr().err


def test_ratio_sizes_every_eviction_and_leaves_the_rest(capsys):
    from asl.bench.cli import parse, resolve

    args = parse(["--model", "smollm2-135m", "--lengths", "1024", "--ratio", "0.5,0.75",
                  "--methods", "full,snapkv,chunkkv(knorm),fastkv+tova,asl,snapkv(budget=100)"])
    labels = [s.label for s in args.methods]
    assert labels == ["full", "snapkv(ratio=0.5)", "snapkv(ratio=0.75)", "chunkkv(knorm(ratio=0.5))",
                      "chunkkv(knorm(ratio=0.75))", "fastkv+tova(ratio=0.5)", "fastkv+tova(ratio=0.75)", "asl",
                      "snapkv(budget=100)"]
    _, _, methods = resolve(args)
    assert {m.label: m.budget for m in methods}["snapkv(ratio=0.75)"] is None
    assert next(m for m in methods if m.label == "fastkv+tova(ratio=0.5)").eviction.ratio == 0.5
    assert "share of each layer" not in capsys.readouterr().err  # --ratio said so already
    with pytest.raises(ValueError, match=r"--ratio: adakv\(snapkv\) has no ratio form .* adakv\(snapkv\(budget=512\)\)"):
        parse(["--ratio", "0.5", "--methods", "adakv(snapkv)"])
    with pytest.raises(ValueError, match="--ratio: 'x' is not a number in"):
        parse(["--ratio", "x"])


def test_the_methods_protocol_names_only_methods_that_resolve(tmp_path):
    """benchmarks/methods_protocol.sh's --dry-run resolves every method of its list (on the
    tests' model, whose wheel CI installs), so a misspelt method or argument fails here, not
    hours into a run."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "DRY": "1", "SAMPLES": "1", "PYTHONPATH": str(root),
           "MODEL": "smollm2-135m"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "methods_protocol.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(re.findall(r"^  \S.* @ ", done.stdout, re.M)) == 49  # every method, each resolved
    assert "entropy-stop(threshold=0.5) @ 1024" in done.stdout and "fastkv(layer=20) @ 1024" in done.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
