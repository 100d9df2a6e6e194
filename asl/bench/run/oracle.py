"""The bench method `oracle`: per sample, `asl.oracle_layer` with ASL's scoring at the run's
selection size, answering as selection at the oracle layer would (docs/calibration.md). A
measurement in hindsight, not a deployable method: its TTFT is the search's prefill work,
and the record says how many prefills that was."""
from __future__ import annotations

from dataclasses import dataclass

import asl
from asl.answers import cut_at_stop
from asl.policies import FastKV


@dataclass
class Oracle:
    """The oracle's settings; the same checks as the FastKV it stands for at every layer."""

    select_tokens: int = 2048
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"

    def __post_init__(self):
        FastKV(layer=0, select_tokens=self.select_tokens, window=self.window, kernel=self.kernel, pooling=self.pooling)


def measure(model, tokenizer, sample, oracle: Oracle) -> dict:
    """The sample's record fields: the answer of the oracle layer (the full cache's when a layer
    keeps it, else the deepest candidate's), its KV, and the oracle's own figures."""
    c = model.config
    result = asl.oracle_layer(model, tokenizer, sample.prompt, select_tokens=oracle.select_tokens,
                              max_new_tokens=sample.max_new_tokens, window=oracle.window, kernel=oracle.kernel,
                              pooling=oracle.pooling, stop=list(sample.stop) or None, partials=False)
    found = result.oracle_layer
    chosen = next(o for o in result.layers if o.layer == found) if found is not None else result.layers[-1]
    n, layer = result.prompt_tokens, chosen.layer
    deeper = c.num_layers - layer - 1
    kept = (chosen.kv_tokens - (layer + 1) * n) // deeper if deeper else n
    per_layer = [n] * (layer + 1) + [kept] * deeper  # selection alone: every KV head alike
    entry = 2 * c.head_dim * model.lm_head.weight.element_size()
    return {
        "prediction": cut_at_stop(chosen.text, list(sample.stop) or None),
        "ttft_s": result.prefill_s + result.candidates_s, "tpot_s": None, "new_tokens": len(chosen.tokens),
        "kv_tokens": per_layer, "kv_bytes": sum(per_layer) * c.num_kv_heads * entry,
        "selection_layer": layer, "ratios": [], "alive_tokens": per_layer,
        "peak_kv_tokens": [k + max(len(chosen.tokens) - 1, 0) for k in per_layer], "revived_token_layers": 0,
        "attended_share": None, "policy_s": 0.0,
        "compile_s": 0.0, "compiles": 0,
        "oracle_layer": found, "oracle_needed": c.num_layers - 1 if found is None else found,
        "oracle_stable_layer": result.stable_layer, "oracle_cost": result.cost, "num_layers": c.num_layers,
        "oracle_matching": [o.layer for o in result.layers if o.matches],
    }
