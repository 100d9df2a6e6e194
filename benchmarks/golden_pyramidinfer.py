"""Golden traces of PyramidInfer from the original code, prefill and decoding, written to
tests/golden/pyramidinfer.json for tests/test_golden_pyramidinfer.py. Nothing is fetched at
run time: point --originals at local snapshots (git folders) of the repositories.

    python benchmarks/golden_pyramidinfer.py --originals /work/.mirror

Source: TANIGUCHIREI/ASL 9e1ec0c, baseline/pyramidinfer/models/modeling_qwen2_pyramidinfer.py
(`Qwen2Model.forward`; the llama file has the same blocks), its settings from
baseline/pyramidinfer/configs/qwen2.5_7b.json at the same commit. PyramidInfer is not a
function there but blocks inline in the model's forward, so the file's text is read from the
snapshot's git objects, three blocks are cut out of it as text (found by how their first and
last lines start, dedented) and executed with `exec`, compiled under the file's name and line
numbers (a traceback points into the original). What runs as is:

- INIT, lines 990-1007: from `seq_length_with_past = ...` to `min_context_length = min(...)`:
  the settings read from `self.config`, `recent_length`, `min_context_length`,
  `selected_position_ids`. It runs at the start of every forward call, the prompt's and each
  decode step's, as in the original: `recent_length` is recomputed at every step from
  `1 + layer 0's cache length`.
- PREFILL, lines 1052-1086: from `if prefill_decay_strategy == "linear":` to
  `recent_attn_weights.append(attn_weights[:, -(1 + recent_length):])`: the schedule, the block
  from `if (idx % layerwise_downsample_interval) == 0:` to `hidden_states = torch.cat(
  [compressed_hidden_states, ...])`, and the two appends that keep each layer's cache length
  and its recent attention rows (weighted in place by the block) for the decoding.
- GENERATION, lines 1088-1139: from `### generation stage ###` to `recent_attn_weights[idx] =
  attn_weights[:, -(1 + recent_length):]`: the stored rows get a zero column and the step's
  row, the schedule, the trigger, the in-place weighting, topk, the gather of keys, values, rows.

What is transcribed or stands in (the harness, not PyramidInfer's logic), line by line:
- `next_decoder_cache = layer_outputs[2]` (line 1046), set before GENERATION.
- The branch `if past_key_values.get_seq_length(0) <= inputs_embeds.shape[1]:` (line 1050, its
  `else` line 1087): the harness runs PREFILL in the prompt's forward and GENERATION in each
  step's, and asserts that this test, evaluated on its cache, picks the branch it ran.
- The config: `self.config` holds the json's `prefill_stage` and `generation_stage` settings
  (as the authors' load_pyramid_config sets them), a case's variants over them, and
  `num_hidden_layers`. The forward's inputs for INIT: `inputs_embeds`, `input_ids` and
  `position_ids` of the right shapes (their values are never read).
- The model around the blocks: per layer `layer_outputs = (hidden_states, attn_weights, cache)`.
  The attention module is plain causal softmax(q k^T / sqrt(d)) in float32 over the layer's
  cached tokens, keys repeated over the query heads (repeat_kv): the weights [B, H, q, kv] that
  the original's eager attention returns (there in the model dtype). q and k are seeded uniform
  draws per layer and token (`inputs`), not a model's. The hidden states are one number per
  token, its position, so the rows the prefill block gathers name the tokens it keeps (checked
  against `selected_position_ids`); the cached values carry their position the same way.
- The cache: a stand-in for the authors' DynamicCache (baseline/asl/customized_cache.py):
  `key_cache` / `value_cache` per layer, each layer's entry appended as its attention's
  `update` does, `seen_tokens` (the tokens layer 0 took: prompt plus steps) and
  `get_seq_length(layer)` (transformers': 0 for a layer not yet there, -1 the last one).

Recorded per case: `prefill_pruned[l]`, the prompt positions that layer l - 1 ran on and layer
l does not (so layer l ran on, and cached, the prompt less prefill_pruned[0..l]); for the decoding
(step s = 1 feeds the first generated token, at position n) the steps that compressed a
recorded layer, with the positions dropped (kept = the cache before, plus the step's token,
minus those), `recent_length` per step, and
`differences`: which of three behaviours of the original's decoding the case exercises (this
comparison first found PyramidInferDecode without them; tests/test_golden_pyramidinfer.py
says what each is): `recent_length` (it
moved during the steps), `prefill_rows` (a recorded compression ranked with rows stored by
the prefill, which the prefill block weighted in place), `short_span` (a recorded compression
found fewer than `exceed_length_to_compress` entries before the recent window). The cases
with none use a small `recent_ratio` (a recent window that stays the same size) and stop
before a recorded layer's span runs short. `min_margin`: the smallest relative gap, at any cut
the case made, between the last kept score and the first dropped one, so far above float
rounding (ours against theirs, AVX2 against AVX-512) that the test asks for the same choices
exactly.

With `layerwise_downsample_interval` above 1 the original's decoding fails at its first step:
a layer that did not score appends the previous layer's `attn_weights` (over that layer's
tokens) as its rows, and line 1092's `torch.cat` raises "Sizes of tensors must match". The
interval case is a prefill case.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import textwrap
import types

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "pyramidinfer.json"
FOLDER, COMMIT = "TANIGUCHIREI+ASL", "9e1ec0c"
PATH = "baseline/pyramidinfer/models/modeling_qwen2_pyramidinfer.py"
CONFIG = "baseline/pyramidinfer/configs/qwen2.5_7b.json"
HEADS, GROUPS, DIM = 4, 2, 16
BLOCKS = {  # name: (how its first line starts, how its last line starts), stripped; the first found once
    "init": ("seq_length_with_past = inputs_embeds.shape[1] + past_key_values.get_seq_length()",
             "min_context_length = min(min_context_length, seq_length_with_past - 1 - recent_length)"),
    "prefill": ('if prefill_decay_strategy == "linear":',
                "recent_attn_weights.append(attn_weights[:, -(1 + recent_length):])"),
    "generation": ("### generation stage ###",
                   "recent_attn_weights[idx] = attn_weights[:, -(1 + recent_length):]"),
}

# name, seed, prompt n, layers, decode steps, recorded decode layers, settings over the json's
CASES = [
    ("json", 0, 160, 8, 60, [0, 4, 7], {}),  # the qwen2.5_7b.json settings as they are
    ("r0.5", 1, 180, 8, 40, [3, 6], {"prefill_decay_ratio": 0.5, "min_context_length": 8}),
    # prefill only: with an interval over 1 the original's decoding fails (see above)
    ("r0.5-interval2", 2, 150, 6, 0, [], {"prefill_decay_ratio": 0.5, "min_context_length": 8,
                                          "layerwise_downsample_interval": 2}),
    # a recent window that keeps its size over the steps: int(0.01 * (1 + 200 + ...)) = 2
    ("window2", 5, 200, 8, 95, [0, 1, 2], {"recent_ratio": 0.01, "min_context_length": 16}),
    ("window3-r0.8-exceed8", 6, 150, 8, 60, [0, 1, 2, 3],
     {"recent_ratio": 0.02, "prefill_decay_ratio": 0.8, "min_context_length": 8, "exceed_length_to_compress": 8,
      "gen_decay_ratio": 0.3}),
]


def git_show(originals: pathlib.Path, path: str) -> str:
    git_dir = originals / FOLDER / "repo"
    return subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{COMMIT}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def cut_block(text: str, first: str, last: str) -> tuple[str, int]:
    """The lines from the one that starts with `first` to the next that starts with `last`
    (stripped), dedented; and the first one's line number."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(first)]
    assert len(starts) == 1, (first, len(starts))
    start = starts[0]
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith(last))
    return textwrap.dedent("\n".join(lines[start: end + 1])) + "\n", start + 1


def load_blocks(originals: pathlib.Path):
    """{name: code object} compiled under the file's name and line numbers, the source, the json."""
    text = git_show(originals, PATH)
    code = {}
    for name, (first, last) in BLOCKS.items():
        block, line = cut_block(text, first, last)
        code[name] = compile("\n" * (line - 1) + block, f"{FOLDER}@{COMMIT}:{PATH}", "exec")
    config = json.loads(git_show(originals, CONFIG))
    return code, f"{FOLDER.replace('+', '/')}@{COMMIT}:{PATH}", config


def inputs(seed: int, layers: int, n: int, steps: int, heads: int = HEADS, groups: int = GROUPS, d: int = DIM) -> dict:
    """Per layer, queries and keys of the n prompt tokens and of the `steps` generated ones,
    from uniform draws (the same bits on every CPU), so the test rebuilds them from the seed."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda *shape: (torch.rand(*shape, generator=g) - 0.5) * 4  # noqa: E731
    return {"q": draw(layers, 1, heads, n, d), "k": draw(layers, 1, groups, n, d),
            "q_new": draw(layers, 1, heads, steps, d), "k_new": draw(layers, 1, groups, steps, d)}


def attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The attention module's weights (not PyramidInfer's logic): causal softmax(q k^T / sqrt(d))
    in float32, keys repeated over the query heads. q [1, H, m, d] are the last m of the kv
    tokens of k [1, G, kv, d]; returns [1, H, m, kv]."""
    heads, m, kv = q.shape[1], q.shape[2], k.shape[2]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    sees = torch.arange(kv)[None, :] <= torch.arange(kv - m, kv)[:, None]
    return logits.masked_fill(~sees, float("-inf")).softmax(-1, dtype=torch.float32)


class Cache:
    """A stand-in for the DynamicCache the blocks read: key/value per layer, seen_tokens."""

    def __init__(self):
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.key_cache[layer_idx].shape[-2] if len(self.key_cache) > layer_idx else 0


def margin(scores: torch.Tensor, k: int) -> float:
    """Relative gap between the k-th and (k+1)-th largest scores (inf when nothing is cut)."""
    top = scores.double().sort(descending=True).values
    return math.inf if k >= len(top) else float((top[k - 1] - top[k]) / top[k - 1].abs())


def run_case(code, config: dict, seed: int, n: int, layers: int, steps: int, record: list[int],
             settings: dict) -> dict:
    x = inputs(seed, layers, n, steps)
    cfg = types.SimpleNamespace(num_hidden_layers=layers)
    for stage in ("prefill_stage", "generation_stage"):  # as load_pyramid_config sets them
        for key, value in config[stage].items():
            setattr(cfg, key, value)
    for key, value in settings.items():
        setattr(cfg, key, value)
    cache = Cache()
    ns = {"torch": torch, "math": math, "self": types.SimpleNamespace(config=cfg),
          "past_kv_seq_lens": [], "recent_attn_weights": []}

    def forward_start(tokens: int, first_position: int) -> None:
        """The forward's set-up: the inputs' shapes, then INIT as is."""
        ns.update(inputs_embeds=torch.zeros(1, tokens, 1), input_ids=torch.zeros(1, tokens, dtype=torch.long),
                  position_ids=torch.arange(first_position, first_position + tokens)[None], past_key_values=cache)
        exec(code["init"], ns)

    cut_margins = []
    # -- the prefill: one forward over the prompt
    forward_start(n, 0)
    recent_length = ns["recent_length"]
    hidden = torch.arange(n, dtype=torch.float32)[None, :, None]
    ran_on = []
    for idx in range(layers):
        alive = ns["selected_position_ids"][0].clone()
        assert torch.equal(hidden[0, :, 0].long(), alive)  # the rows are the tokens the ids name
        ran_on.append(alive.tolist())
        k = x["k"][idx][:, :, alive]
        cache.key_cache.append(k)  # the layer's update: its cache is the tokens it ran on
        cache.value_cache.append(alive.float()[None, None, :, None].expand(1, GROUPS, -1, DIM).clone())
        if idx == 0:
            cache.seen_tokens += n
        attn = attention(x["q"][idx][:, :, alive], k)
        assert cache.get_seq_length(0) <= ns["inputs_embeds"].shape[1]  # the original takes the prefill branch
        ns.update(idx=idx, hidden_states=hidden, layer_outputs=(hidden, attn, cache))
        exec(code["prefill"], ns)
        hidden = ns["hidden_states"]
        if hidden.shape[1] < len(alive):  # a cut: its margin, over the scores it ranked
            cut_margins.append(margin(ns["recent2context_attn_weights"][0], hidden.shape[1] - 1 - recent_length))
    assert ns["past_kv_seq_lens"] == [len(a) for a in ran_on]

    # -- the decoding: one forward per generated token, token s - 1 at position n + s - 1
    compressions, recents, differences = [], [], set()
    for s in range(1, steps + 1):
        forward_start(1, n + s - 1)
        recents.append(ns["recent_length"])
        cache.seen_tokens += 1
        for idx in range(layers):
            position = n + s - 1
            cache.key_cache[idx] = torch.cat([cache.key_cache[idx], x["k_new"][idx][:, :, s - 1: s]], dim=-2)
            value = torch.full((1, GROUPS, 1, DIM), float(position))  # the value names its token
            cache.value_cache[idx] = torch.cat([cache.value_cache[idx], value], dim=-2)
            attn = attention(x["q_new"][idx][:, :, s - 1: s], cache.key_cache[idx])
            assert not cache.get_seq_length(0) <= ns["inputs_embeds"].shape[1]  # the generation branch
            before = cache.value_cache[idx][0, 0, :, 0].long().tolist()
            ns.update(idx=idx, layer_outputs=(None, attn, cache), next_decoder_cache=cache,
                      recent2context_topk_indices=None)
            exec(code["generation"], ns)
            chosen = ns["recent2context_topk_indices"]
            if chosen is None:
                continue
            cut_margins.append(margin(ns["recent2context_attn_weights"][0], chosen.shape[-1]))
            after = cache.value_cache[idx][0, 0, :, 0].long().tolist()
            assert after == sorted(after) and set(after) <= set(before)
            if idx in record:
                compressions.append({"layer": idx, "step": s, "dropped": sorted(set(before) - set(after))})
                if ns["recent2context_attn_weights"].shape[-1] < ns["exceed_length_to_compress"]:
                    differences.add("short_span")  # fewer entries before the window than exceed
                if s <= ns["recent_length"]:
                    differences.add("prefill_rows")  # rows stored by the prefill among those it ranks with
    if set(recents) - {recent_length}:
        differences.add("recent_length")  # recomputed each step from layer 0's cache: it moved
    for idx in record:  # what the compressions recorded, replayed, is the layer's cache
        kept = set(ran_on[idx]) | set(range(n, n + steps))
        kept -= {p for c in compressions if c["layer"] == idx for p in c["dropped"]}
        assert sorted(kept) == cache.value_cache[idx][0, 0, :, 0].long().tolist()
    pruned = [sorted(set(a) - set(b)) for a, b in zip([list(range(n))] + ran_on, ran_on)]
    return {"seed": seed, "n": n, "layers": layers, "steps": steps, "heads": HEADS, "groups": GROUPS, "dim": DIM,
            "q_sum": float(x["q"].sum() + x["q_new"].sum()), "k_sum": float(x["k"].sum() + x["k_new"].sum()),
            "config": {key: getattr(cfg, key) for key in sorted(vars(cfg))}, "recent_length": recent_length,
            "prefill_pruned": pruned, "record": record, "compressions": compressions,
            "recent_lengths": recents, "differences": sorted(differences), "min_margin": min(cut_margins)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--originals", type=pathlib.Path, required=True, help="folder of <owner>+<name>/repo snapshots")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest (the margins make the result not depend on it)
    code, source, config = load_blocks(args.originals)
    cases = []
    for name, seed, n, layers, steps, record, settings in CASES:
        case = {"name": name, **run_case(code, config, seed, n, layers, steps, record, settings)}
        cases.append(case)
        print(f"{name}: {len(case['compressions'])} compressions recorded, min margin {case['min_margin']:.2e}, "
              f"recent_length {sorted(set(case['recent_lengths']))}, differences {case['differences']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"source": source, "config": f"{FOLDER.replace('+', '/')}@{COMMIT}:{CONFIG}",
                               "torch": torch.__version__, "cases": cases}) + "\n")
    print(f"{OUT}: {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
