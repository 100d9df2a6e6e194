"""Full-cache vs token-selection prefill at long context on a GPU, on a model's architecture.

    python benchmarks/gpu_prefill.py benchmarks/configs/qwen2.5-0.5b.json [--tokens 32768]

The weights are random (the real ones cannot travel to the GPU machine), so ASL's layer is
forced with `l_max`: the compute is exactly that of a real selection at that layer.
bf16, median of 3 after a warm-up, CUDA-synchronised. `model_shape`, `random_decoder` and
`methods` are shared with benchmarks/gpu_suite.py.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch

import asl
from asl import ops
from asl.bench.methods import SCORING, gemfilter_layer, scaled_layer
from asl.models.config import ModelConfig
from asl.models.decoder import Decoder
from asl.prefill import prefill


def model_shape(path: str, layers: int | None = None, positions: int | None = None) -> dict:
    """The HF config.json at `path` as a dict, for random weights: no EOS ids (random weights
    must decode as many tokens as asked), the first `layers` layers only (a dry run), and at
    least `positions` positions (the prompt plus its new tokens; RoPE's scaling is unchanged)."""
    raw = json.loads(pathlib.Path(path).read_text())
    raw["eos_token_id"] = None
    if layers is not None:
        if not 2 <= layers <= raw["num_hidden_layers"]:
            raise ValueError(f"--layers must be in [2, {raw['num_hidden_layers']}] for {path}, got {layers}")
        raw["num_hidden_layers"] = layers
        if "layer_types" in raw:
            raw["layer_types"] = raw["layer_types"][:layers]
    if positions is not None and positions > raw.get("max_position_embeddings", 0):
        raw["max_position_embeddings"] = positions
    return raw


def random_decoder(raw: dict, device: str, dtype=torch.bfloat16) -> Decoder:
    """Our Decoder on the shape `raw` (an HF config dict) with random weights made on `device`."""
    torch.manual_seed(0)
    with torch.device(device):
        return Decoder(ModelConfig.from_hf(raw)).to(dtype).eval()


def methods(num_layers: int, k: int, layer: int | None = None, model_type: str | None = None,
            restarts: bool = False) -> dict[str, tuple]:
    """name -> (selection, eviction), fresh policies: full, SnapKV k, FastKV at `layer` (default:
    15 of 32 scaled to this depth) + SnapKV, ASL forced there (`tau=0`, `l_max`) + SnapKV; with
    `restarts`, GemFilter (its own layer) and ASL two-pass forced at `layer` too. Scoring as the
    bench's (window 32, kernel 7, avg)."""
    layer = scaled_layer(15, num_layers) if layer is None else layer
    l_min = min(scaled_layer(10, num_layers), layer)
    forced = dict(tau=0.0, l_min=l_min, l_obs=max(2, min(8, l_min + 1)), select_tokens=k, l_max=layer, **SCORING)
    table = {
        "full": (None, None),
        "snapkv": (None, asl.SnapKV(k, **SCORING)),
        "fastkv+snapkv": (asl.FastKV(layer=layer, select_tokens=k, **SCORING), asl.SnapKV(k, **SCORING)),
        "asl+snapkv": (asl.ASL(**forced), asl.SnapKV(k, **SCORING)),
    }
    if restarts:
        table["gemfilter"] = (asl.GemFilter(layer=gemfilter_layer(model_type, num_layers)[0], select_tokens=k), None)
        table["asl-2pass"] = (asl.ASLTwoPass(**forced), None)
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--select-tokens", type=int, default=2048)
    args = ap.parse_args()
    raw = model_shape(args.config)
    model = random_decoder(raw, "cuda")
    c = model.config
    ids = torch.randint(0, c.vocab_size, (1, args.tokens), device="cuda")
    valid = torch.ones_like(ids, dtype=torch.bool)
    rows, layer = {}, c.num_layers // 2
    print(f"FastKV and ASL (forced) select at layer {layer} of {c.num_layers}")
    for name, (sel, ev) in methods(c.num_layers, args.select_tokens, layer).items():
        times, shares = [], []
        for _ in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = prefill(model, ids, valid, 1, sel, ev)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            shares.append(out.policy_s)
        rows[name] = {"prefill_s": statistics.median(times[1:]), "policy_s": statistics.median(shares[1:]),
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        torch.cuda.reset_peak_memory_stats()
    full = rows["full"]["prefill_s"]
    print(f"{torch.cuda.get_device_name()}, {args.config}, {args.tokens} tokens, bf16, ops backend {ops.backend()}")
    for name, r in rows.items():
        print(f"{name:34} {r['prefill_s'] * 1e3:9.1f} ms  x{r['prefill_s'] / full:5.2f} of full  "
              f"policy {r['policy_s'] / r['prefill_s']:6.1%}  peak {r['peak_gib']:.1f} GiB")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
