"""Golden traces from the original code: each original's own scoring and selection functions
run on fixed random inputs, their kept indices written to tests/golden/*.json, which
tests/test_golden.py compares our policies with. Nothing is fetched at run time: point
--originals at local snapshots (git folders) of the repositories, at the commits below.

    python benchmarks/golden_traces.py --originals /work/.mirror

What runs, and what is transcribed (the only lines not the originals' own):
- SnapKV (FasterDecoding/SnapKV e216ddc, snapkv/monkeypatch/snapkv_utils.py): SnapKVCluster.update_kv
  as it is, on keys already repeated to the query heads (its llama hijack repeats them first).
  It returns the compressed keys and values; the kept indices are read back from values
  that carry their own position.
- FastKV (dongwonjo/FastKV b978769, baselines/fastkv/utils.py): FastKVCluster.update_kv as it
  is (per-KV-head compression and, at the TSP layer, the propagated token indices), in both
  forms: a count (`max_capacity_prompt`, `tsp_length`) and proportional (`retain_rate`,
  `tsp_rate`, and the next layer's `retain_rate / tsp_rate` as compress_fastkv sets it, run
  on the propagated tokens).
- ASL (TANIGUCHIREI/ASL 9e1ec0c, baseline/asl/adaptive_select_layer_utils.py):
  get_rank_descending and relative_normalized_variance as they are (the module's top-level
  `flash_attn` import is stubbed: the two functions do not use it). The decision of
  customized_cache.py's `selecting_select_layer` (lines 299-322) is transcribed into
  `asl_select` below, line for line, without the cache object around it.
- GemFilter (as the ASL authors run it, baseline/gemfilter/gemfilter_utils.py at 9e1ec0c):
  standard_dis_index as it is, called as its find_context calls it (lines 36-38: keys repeated,
  the last query, pool=True, sum_over_heads=True). The file does not parse (a `def` line
  appears twice, lines 151-152), so the function's own text is cut out of it and run alone.
- ASL on queries and keys (baseline/asl/customized_cache.py at 9e1ec0c): the authors'
  DynamicCache itself, `set_cache_kwargs` then `prefilling_score_update` layer by layer (their
  window scores, pooling, ranks and `selecting_select_layer`, all as they are), on per-layer
  queries and keys that settle. Where no layer meets the threshold, ASL two-pass falls back
  to gemfilter_utils.py's get_layer_context_asl lines 79-86 (the last layer's top-k plus the
  window), transcribed into `asl_two_pass_fallback` (that function runs a whole model).
- Top-p (the same file): DynamicCache.compress_kv as it is, with `cache_p` set (its top-p
  branch and get_top_p_indices), called on a namespace holding the fields it reads.
- StreamingLLM (mit-han-lab/streaming-llm 2e50426, streaming_llm/kv_cache.py):
  StartRecentKVCache as it is, `__call__` after the prompt and `evict_for_space(past, 1)`
  before every new token, on caches whose values carry their positions.
- PyramidInfer: benchmarks/golden_pyramidinfer.py (its blocks are inline in a model forward).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import types

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden"
SOURCES = {
    "snapkv": ("FasterDecoding+SnapKV", "e216ddc", "snapkv/monkeypatch/snapkv_utils.py"),
    "fastkv": ("dongwonjo+FastKV", "b978769", "baselines/fastkv/utils.py"),
    "asl": ("TANIGUCHIREI+ASL", "9e1ec0c", "baseline/asl/adaptive_select_layer_utils.py"),
    "gemfilter": ("TANIGUCHIREI+ASL", "9e1ec0c", "baseline/gemfilter/gemfilter_utils.py"),
    "asl_cache": ("TANIGUCHIREI+ASL", "9e1ec0c", "baseline/asl/customized_cache.py"),
    "topp": ("TANIGUCHIREI+ASL", "9e1ec0c", "baseline/asl/customized_cache.py"),
    "streaming": ("mit-han-lab+streaming-llm", "2e50426", "streaming_llm/kv_cache.py"),
}


def load_original(originals: pathlib.Path, name: str):
    """The original module, read from the snapshot's git objects at its commit."""
    folder, commit, path = SOURCES[name]
    git_dir = originals / folder / "repo"
    text = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    if name == "asl":  # a GPU-only import the two functions we call never use
        sys.modules.setdefault("flash_attn", types.ModuleType("flash_attn"))
        stub = types.ModuleType("flash_attn.flash_attn_interface")
        stub.flash_attn_varlen_func = None
        sys.modules.setdefault("flash_attn.flash_attn_interface", stub)
    if name in ("asl_cache", "topp"):  # it imports the ASL utilities by their package path
        utils, _ = load_original(originals, "asl")
        for package in ("baseline", "baseline.asl"):
            sys.modules.setdefault(package, types.ModuleType(package))
        sys.modules["baseline.asl.adaptive_select_layer_utils"] = utils
    if name == "gemfilter":  # the file does not parse: its one function we need, cut out whole
        start = text.index("def standard_dis_index")
        text = ("import torch\nimport torch.nn.functional as F\n"
                "from transformers.models.llama.modeling_llama import repeat_kv\n\n"
                + text[start: text.index("\ndef ", start + 1)])
    file = pathlib.Path(tempfile.mkdtemp()) / f"original_{name}.py"
    file.write_text(text)
    spec = importlib.util.spec_from_file_location(f"original_{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for stub in ("flash_attn.flash_attn_interface", "flash_attn"):  # gone again: transformers probes for it
        if sys.modules.get(stub) is not None and getattr(sys.modules[stub], "__spec__", None) is None:
            del sys.modules[stub]
    return module, f"{folder.replace('+', '/')}@{commit}:{path}"


def inputs(seed: int, heads: int = 4, groups: int = 2, n: int = 96, d: int = 16) -> dict:
    """Queries and keys from uniform draws (the same bits on every CPU, unlike randn's vectorised
    paths), so the tests rebuild them from the seed; their sums are recorded to check that."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.rand(1, heads, n, d, generator=g) - 0.5) * 4
    k = (torch.rand(1, groups, n, d, generator=g) - 0.5) * 4
    return {"q": q, "k": k}


def layer_scores(seed: int, layers: int = 12, m: int = 80) -> list[torch.Tensor]:
    """Per-layer prefix scores that settle: the noise falls layer by layer, so the ranks stabilise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(m, generator=g)
    return [base + torch.rand(m, generator=g) * (0.9 ** (3 * layer)) for layer in range(layers)]


def kept_from_values(values: torch.Tensor) -> list[list[int]]:
    """The positions a compressed value tensor holds (each value row carries its position)."""
    return [sorted(int(v) for v in row[:, 0].tolist()) for row in values[0]]


def snapkv_cases(module, seed: int) -> list[dict]:
    x = inputs(seed)
    q, k = x["q"], x["k"]
    heads, groups, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    keys = module.repeat_kv(k, heads // groups)
    values = torch.arange(n, dtype=torch.float32)[None, None, :, None].expand(1, heads, n, d).clone()
    cases = []
    for window, budget, kernel, pooling in ((8, 40, 5, "avgpool"), (16, 48, 7, "avgpool"), (8, 40, 7, "maxpool")):
        cluster = module.SnapKVCluster(window_size=window, max_capacity_prompt=budget, kernel_size=kernel,
                                       pooling=pooling)
        _, v = cluster.update_kv(keys, q, values, None, heads // groups)
        cases.append({"seed": seed, "q_sum": float(q.sum()), "window": window, "budget": budget, "kernel": kernel,
                      "pooling": pooling.replace("pool", ""), "kept": kept_from_values(v)})
    return cases


def fastkv_cases(module, seed: int) -> list[dict]:
    x = inputs(seed)
    q, k = x["q"], x["k"]
    heads, groups, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    values = torch.arange(n, dtype=torch.float32)[None, None, :, None].expand(1, groups, n, d).clone()
    cases = []
    for window, budget, tsp, pooling in ((8, 40, 32, "avgpool"), (8, 56, 24, "avgpool"), (8, 40, 32, "maxpool")):
        cluster = module.FastKVCluster(window_size=window, max_capacity_prompt=budget, kernel_size=7, pooling=pooling,
                                       tsp_layer=True, tsp_length=tsp)
        _, v, tsp_indices = cluster.update_kv(k, q, values, None, heads // groups, 0)
        cases.append({"seed": seed, "q_sum": float(q.sum()), "window": window, "budget": budget, "tsp": tsp, "kernel": 7,
                      "pooling": pooling.replace("pool", ""), "kept": kept_from_values(v),
                      "propagated": tsp_indices[0].tolist()})
    for retain, share in ((0.4, 0.6), (0.25, 0.5), (0.3, 0.45)):  # its proportional form, as compress_fastkv sets it
        cluster = module.FastKVCluster(window_size=8, kernel_size=7, pooling="avgpool", tsp_layer=True,
                                       tsp_rate=share, retain_rate=retain, eviction_mode="proportional")
        _, v, tsp_indices = cluster.update_kv(k, q, values, None, heads // groups, 0)
        deeper = module.FastKVCluster(window_size=8, kernel_size=7, pooling="avgpool", tsp_rate=share,
                                      retain_rate=retain / share, eviction_mode="proportional")
        cols = tsp_indices[0]  # the next layer runs on the propagated tokens alone
        _, v_deeper, _ = deeper.update_kv(k[:, :, cols], q[:, :, cols], values[:, :, cols], None, heads // groups, 1)
        cases.append({"seed": seed, "q_sum": float(q.sum()), "window": 8, "kernel": 7, "pooling": "avg",
                      "retain_rate": retain, "tsp_rate": share, "kept": kept_from_values(v),
                      "propagated": cols.tolist(), "kept_deeper": kept_from_values(v_deeper)})
    return cases


def asl_select(module, scores: list[torch.Tensor], l_min: int, l_obs: int, select_k: int, window: int, tau: float):
    """customized_cache.py selecting_select_layer (lines 299-322), per layer from l_min on, over
    the prefix scores of each layer (`prefilling_score_cache[l][0]` holds get_rank_descending of
    them). Returns (the selected layer or None, the kept prefix indices, the ratios)."""
    cache = [module.get_rank_descending(s).to(torch.float) for s in scores]
    initial, ratios = None, {}
    for layer_idx in range(len(scores)):
        if layer_idx < l_min:
            continue
        ranks = torch.stack([cache[layer] for layer in range(layer_idx - l_obs + 1, layer_idx + 1)])
        seqlen = cache[layer_idx].shape[-1]
        k = select_k - window if seqlen > select_k - window else seqlen
        topk_idx_per_layers = torch.topk(ranks, k=int(k), dim=-1, largest=False)[1]
        latest_layer_sorted_indices = torch.unique(topk_idx_per_layers.view(-1))
        ratio, initial = module.relative_normalized_variance(ranks[-l_obs:, latest_layer_sorted_indices], initial)
        ratios[layer_idx] = ratio
        if ratio < tau:
            return layer_idx, sorted(topk_idx_per_layers[-1].tolist()), ratios
    return None, [], ratios


def asl_cases(module, seed: int) -> list[dict]:
    scores = layer_scores(seed)
    cases = []
    for l_min, l_obs, tau in ((4, 3, 0.5), (5, 5, 0.3), (3, 2, 0.8)):
        layer, kept, ratios = asl_select(module, scores, l_min, l_obs, 40, 8, tau)
        cases.append({"seed": seed, "scores_sum": float(sum(s.sum() for s in scores)), "l_min": l_min,
                      "l_obs": l_obs, "tau": tau, "select_k": 40, "window": 8, "layer": layer, "kept": kept,
                      "ratios": {str(k): v for k, v in ratios.items()}})
    return cases


def gemfilter_cases(module, seed: int) -> list[dict]:
    x = inputs(seed)
    q, k = x["q"], x["k"]
    heads, groups, n = q.shape[1], k.shape[1], q.shape[2]
    cases = []
    for topk in (24, 40, 64):
        keys = module.repeat_kv(k, heads // groups)  # find_context, lines 33-38
        _, indices = module.standard_dis_index(keys, q[:, :, -1:, :], min(topk, n), pool=True, sum_over_heads=True)
        cases.append({"seed": seed, "q_sum": float(q.sum()), "select_tokens": topk, "kernel": 5,
                      "kept": sorted(indices[0, 0].tolist())})
    return cases


def settling_layers(seed: int, layers: int = 10, heads: int = 4, groups: int = 2, n: int = 96, d: int = 16):
    """Per-layer queries and keys that settle (a shared part plus noise falling layer by layer),
    so the attention ranking stabilises and ASL selects at some layer (uniform draws)."""
    g = torch.Generator().manual_seed(seed)
    base_q = (torch.rand(1, heads, n, d, generator=g) - 0.5) * 4
    base_k = (torch.rand(1, groups, n, d, generator=g) - 0.5) * 4
    out = []
    for layer in range(layers):
        noise = 0.8 ** (2 * layer) * 4
        out.append((base_q + (torch.rand(1, heads, n, d, generator=g) - 0.5) * noise,
                    base_k + (torch.rand(1, groups, n, d, generator=g) - 0.5) * noise))
    return out


def asl_two_pass_fallback(cache, window: int) -> list[int]:
    """gemfilter_utils.py get_layer_context_asl (lines 79-86) when no layer met the threshold:
    the last layer's top-k of `prefilling_score_cache` plus the window (transcribed)."""
    mean_score = cache.prefilling_score_cache[-1]
    seqlen = mean_score.shape[-1]
    k = cache.select_k - cache.window_size if seqlen > cache.select_k - cache.window_size else seqlen
    topk_idx = torch.topk(mean_score, k=k, dim=-1, largest=False)[1]
    window_indices = torch.arange(seqlen, seqlen + window)
    return torch.cat([topk_idx[-1], window_indices]).unique().view(-1).tolist()


def asl_cache_cases(module, seed: int) -> list[dict]:
    """The authors' DynamicCache itself, layer by layer (`prefilling_score_update`: its window
    scores, pooling, ranks and `selecting_select_layer`), on settling queries and keys."""
    import contextlib
    import io

    layers = settling_layers(seed)
    cases = []
    for l_min, l_obs, tau, pooling in ((3, 3, 0.3, "avgpool"), (4, 2, 0.15, "maxpool"), (2, 2, 0.02, "avgpool"),
                                       (3, 3, 1e-9, "avgpool")):  # the last: never met, the two-pass fallback
        cache = module.DynamicCache()
        cache.set_cache_kwargs(types.SimpleNamespace(
            default_select_layer=l_min, use_layer_num=l_obs, layer_th=tau, select_k=40, window_size=8, kernel_size=7,
            pooling=pooling, cache_k=None, cache_p=None))
        layer, kept = None, None
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the layer it selects
            for idx, (q, k) in enumerate(layers):
                cache.prefilling_score_update(q, k, None, idx)
                if cache.select_idx is not None:
                    layer, kept = idx, cache.select_idx.view(-1).tolist()
                    break
        fallback = asl_two_pass_fallback(cache, 8) if layer is None else None
        cases.append({"seed": seed, "q_sum": float(layers[-1][0].sum()), "l_min": l_min, "l_obs": l_obs, "tau": tau,
                      "select_k": 40, "window": 8, "kernel": 7, "pooling": pooling.replace("pool", ""),
                      "layer": layer, "kept": kept, "two_pass_fallback": fallback})
    return cases


def topp_cases(module, seed: int) -> list[dict]:
    """The authors' DynamicCache.compress_kv with `cache_p` (its top-p branch, get_top_p_indices)."""
    x = inputs(seed)
    q, k = x["q"], x["k"]
    cases = []
    for p, window, select_k in ((0.5, 8, None), (0.8, 8, None), (0.95, 16, None), (0.8, 8, 96)):
        cache = types.SimpleNamespace(window_size=window, cache_p=p, cache_k=None, select_k=select_k, pooling="avgpool",
                                      kernel_size=7)
        kept = module.DynamicCache.compress_kv(cache, None, None, k, q)
        cases.append({"seed": seed, "q_sum": float(q.sum()), "p": p, "window": window, "select_k": select_k,
                      "kept": [sorted(int(c) for c in row) for row in kept]})
    return cases


def streaming_cases(module, seed: int) -> list[dict]:
    """StartRecentKVCache: `__call__` after the prompt, then `evict_for_space(past, 1)` before
    every new token (its rolling form), on caches whose values carry their positions."""
    import contextlib
    import io

    cases = []
    for n, start, recent, steps in ((60, 4, 20, 40), (30, 2, 40, 30), (50, 0, 16, 25)):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its sizes
            cache = module.StartRecentKVCache(start_size=start, recent_size=recent)
        values = torch.arange(n, dtype=torch.float32)[None, None, :, None]
        past = cache([[values, values]])
        kept = [past[0][1][0, 0, :, 0].long().tolist()]
        for t in range(steps):
            past = cache.evict_for_space(past, 1)
            kept.append(past[0][1][0, 0, :, 0].long().tolist())  # what the step for token n + t sees besides itself
            new = torch.full((1, 1, 1, 1), float(n + t))
            past = [[torch.cat([past[0][0], new], 2), torch.cat([past[0][1], new], 2)]]
        cases.append({"n": n, "sink": start, "budget": start + recent, "steps": steps, "kept": kept})
    return cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--originals", type=pathlib.Path, required=True, help="folder of <owner>+<name>/repo snapshots")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    makers = {"snapkv": snapkv_cases, "fastkv": fastkv_cases, "asl": asl_cases, "gemfilter": gemfilter_cases,
              "asl_cache": asl_cache_cases, "topp": topp_cases, "streaming": streaming_cases}
    for name, make in makers.items():
        module, source = load_original(args.originals, name)
        cases = [case for seed in (0, 1, 2) for case in make(module, seed)]
        (OUT / f"{name}.json").write_text(json.dumps({"source": source, "torch": torch.__version__,
                                                      "cases": cases}) + "\n")
        print(f"{name}: {len(cases)} cases from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
