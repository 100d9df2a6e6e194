"""Method specs, per-model defaults, the stop rule answers rely on, and the peak-memory probe."""
import pytest
import torch

import asl
from asl.bench.memory import PeakMemory, cpu_peak_supported
from asl.bench.methods import build, default_params, parse_method, parse_methods, scaled_layer
from asl.generation import _cut_at_stop


def test_parse_methods_with_arguments_and_custom_classes():
    specs = parse_methods("full, asl(tau=0.5,l_min=8) ,bench_custom_policy:HalfwayTopK(fraction=0.25)")
    assert [s.name for s in specs] == ["full", "asl", "bench_custom_policy:HalfwayTopK"]
    assert specs[1].kwargs == {"tau": 0.5, "l_min": 8} and specs[1].label == "asl(tau=0.5,l_min=8)"
    assert specs[2].custom and specs[2].kwargs == {"fraction": 0.25}


@pytest.mark.parametrize("text, message", [
    ("fast", "unknown method 'fast'"), ("asl(0.5)", "key=value"), ("asl(tau=x)", "Python literals"),
    ("asl(tau=0.5", "must end with ')'"), ("full,full", "listed twice"), ("", "at least one"),
])
def test_bad_method_specs(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_methods(text)


def test_layers_scale_from_the_32_layer_settings():
    assert scaled_layer(15, 32) == 15 and scaled_layer(15, 24) == 11 and scaled_layer(13, 30) == 12
    assert scaled_layer(15, 4) == 2 and scaled_layer(40, 24) == 23
    p = default_params(parse_method("asl"), "qwen2.5-0.5b", 24, 1024, 512)
    assert p == {"tau": 0.7, "l_min": 8, "l_obs": 8, "select_tokens": 512, "budget": 1024}
    p = default_params(parse_method("asl(tau=0.3,l_min=4)"), "other", 24, 1024, 512)
    assert p["tau"] == 0.3 and p["l_min"] == 4 and p["l_obs"] == 5  # l_obs clipped to l_min + 1


@pytest.mark.parametrize("name, selection, eviction", [
    ("full", None, None), ("snapkv", None, asl.SnapKV), ("streaming", None, asl.StreamingLLM),
    ("fastkv", asl.FastKV, asl.SnapKV), ("asl", asl.ASL, asl.SnapKV), ("asl-2pass", asl.ASLTwoPass, None),
    ("gemfilter", asl.GemFilter, None),
])
def test_every_method_runs_at_the_budget_and_selection_size(name, selection, eviction):
    spec = parse_method(name)
    sel, ev = build(spec, default_params(spec, "smollm2-135m", 30, 256, 128), 256, 128)
    assert type(sel) is selection if selection else sel is None
    assert type(ev) is eviction if eviction else ev is None
    if sel is not None:
        assert sel.select_tokens == 128
    if ev is not None and hasattr(ev, "budget"):
        assert ev.budget == 256


@pytest.mark.parametrize("text, cut", [
    (":\n\n1. 3759968\nmore", ":\n\n1. 3759968"),  # an answer may start on a new line
    (" 62797. The\n", " 62797. The"),
    ("```json\n{}", "```json"),
    ("no stop here", "no stop here"),
])
def test_a_stop_counts_after_the_first_word(text, cut):
    assert _cut_at_stop(text, ["\n"]) == cut


PROBE = """
import torch
from asl.bench.memory import PeakMemory
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
