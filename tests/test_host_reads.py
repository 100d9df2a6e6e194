"""No host reads per layer in the prefill: on a GPU each one stalls the stream.

Counted by wrapping the Tensor methods that read a device value on the host (`item`,
`tolist`, `bool`, `int`, `float`, `index`): under `inference_mode` `tolist` and `bool` do not
reach `aten._local_scalar_dense`, so a dispatch mode would miss them. The same prompts run
on a 4- and an 8-layer model; a read in the per-layer loop shows as a count that grows.
"""
import contextlib
import random

import pytest
import torch

import asl
from asl.generation import left_pad
from asl.prefill import prefill
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counting():
    count = [0]
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(original):
        def read(self, *args, **kwargs):
            count[0] += 1
            return original(self, *args, **kwargs)
        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, wrap(original))
    try:
        yield count
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


POLICIES = {  # (selection, eviction, reads allowed per extra layer)
    "full": lambda: (None, None, 0),
    "snapkv": lambda: (None, asl.SnapKV(40, window=8), 0),
    "snapkv per query head": lambda: (None, asl.SnapKV(40, window=8, per="query_head"), 0),
    "streaming": lambda: (None, asl.StreamingLLM(40), 0),
    "fastkv+snapkv": lambda: (asl.FastKV(layer=2, select_tokens=40, window=8), asl.SnapKV(48, window=8), 0),
    "gemfilter": lambda: (asl.GemFilter(layer=2, select_tokens=40), None, 0),
    "asl (never selects)": lambda: (asl.ASL(tau=0.0, l_min=2, l_obs=2, select_tokens=40, window=8), None, 1),
    "topp": lambda: (None, asl.TopP(window=8), 1),  # its cache size is a per-layer decision
    # a selection at every layer, with the widths on the host and a loop over the batch (2 here): pinned
    "pyramidinfer": lambda: (asl.PyramidInfer(min_context=8, sink=2), None, 6),
    "pyramidinfer-decode (prefill side)": lambda: (None, asl.PyramidInferDecode(), 0),
}


def reads(layers: int, name: str) -> int:
    _, model = tiny_pair("llama", num_hidden_layers=layers, eos_token_id=None)
    rows = [TOK(random_text(random.Random(seed), n))["input_ids"] for seed, n in ((0, 150), (1, 90))]
    ids, valid = left_pad(rows, "cpu")
    selection, eviction, _ = POLICIES[name]()
    with counting() as count:
        prefill(model, ids, valid, 4, selection, eviction)
    return count[0]


@pytest.mark.parametrize("name", list(POLICIES))
def test_host_reads_do_not_grow_with_the_layers(name):
    allowed = POLICIES[name]()[2]
    few, many = reads(4, name), reads(8, name)
    assert few > 0  # the counter sees the reads there are (the final trace is read once)
    assert many - few <= allowed * 4, f"{name}: {few} host reads with 4 layers, {many} with 8"


def test_the_counter_counts():
    x = torch.ones(3)
    with counting() as count:
        x.tolist(), bool(x.any()), x.sum().item()
    assert count[0] == 3
