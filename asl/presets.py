"""`preset="paper"`: every method configured as the ASL authors' scripts configure it
(TANIGUCHIREI/ASL at 9e1ec0c), each value with the file and line it comes from.
`preset="kvpress"`: the methods kvpress 0.5.5 ships, with its defaults (its file and line).

The authors run one script for all their models (`eval/ruler/run_ruler.sh` lists
Llama-3.1-8B, Llama-3.1-8B-UltraLong, Qwen2.5-7B-1M and Qwen2.5-14B-1M as its choices) with
one set of values, layers included: those models get them literally. Any other model gets
them by the same rule, the layers at the same relative depth of a 32-layer model (FastKV's
15, GemFilter's 13 and ASL's minimum 10 were chosen for 32-layer Llama). docs/algorithms.md
section 17.
"""
from __future__ import annotations

from .calibration.defaults import scaled_layer

RULER = "eval/ruler/run_ruler.sh"
PER_TASK = "eval/ruler/run_ruler_per_task.sh"

# name -> (value, where it comes from)
SCORING = {"window": (32, f"{PER_TASK}:44 window_size=32"), "kernel": (7, f"{PER_TASK}:43 kernel_size=7"),
           "pooling": ("avg", f"{PER_TASK}:45 pooling=avgpool")}
PAPER: dict[str, dict[str, tuple]] = {
    "asl": {"tau": (0.3, f"{RULER}:20 tau=0.3"), "l_min": (10, f"{RULER}:19 L_min=10"),
            "l_obs": (8, f"{PER_TASK}:42 use_layer_num=8"),
            "select_tokens": (2048, f"{RULER}:21 select_k=2048"), **SCORING},
    "fastkv": {"layer": (15, f"{RULER}:10 tsp_layer=15"), "select_tokens": (2048, f"{RULER}:11 select_k=2048"),
               **SCORING},
    "gemfilter": {"layer": (13, f"{RULER}:15 filter_layer=13"),
                  "select_tokens": (2048, f"{RULER}:16 gemfilter_select_k=2048"),
                  "kernel": (5, "baseline/gemfilter/gemfilter_utils.py:13 kernel_size=5"),
                  "answer_tokens": (51, "baseline/gemfilter/gemfilter_utils.py:151 max_gen_len=50, plus the first token")},
    "snapkv": {"budget": (2048, f"{RULER}:12 KV_Budget=2048"), **SCORING},
    "pyramidinfer-prefill": {"r": (0.9, "baseline/pyramidinfer/configs/llama3.1_8b.json prefill_decay_ratio"),
                             "recent_ratio": (0.2, "configs/llama3.1_8b.json recent_ratio"),
                             "min_context": (64, "configs/llama3.1_8b.json min_context_length"),
                             "sink": (4, "configs/llama3.1_8b.json streamingllm_sink_len"),
                             "distance_weight": (1.2, "configs/llama3.1_8b.json distance_weight"),
                             "interval": (1, "configs/llama3.1_8b.json layerwise_downsample_interval")},
    "pyramidinfer-decode": {"gen_decay": (0.1, "configs/llama3.1_8b.json gen_decay_ratio"),
                            "gen_compress": (0.9, "configs/llama3.1_8b.json gen_compress_ratio"),
                            "exceed": (16, "configs/llama3.1_8b.json exceed_length_to_compress"),
                            "distance_weight": (1.2, "configs/llama3.1_8b.json distance_weight")},
}
PAPER["asl-2pass"] = dict(PAPER["asl"])
PRESSES = "kvpress 0.5.5 kvpress/presses"
WHOLE = (0, f"{PRESSES}/scorer_press.py:18 ScorerPress scores every entry (no window)")
KVPRESS: dict[str, dict[str, tuple]] = {
    "snapkv": {"window": (64, f"{PRESSES}/snapkv_press.py:38 window_size=64"),
               "kernel": (5, f"{PRESSES}/snapkv_press.py:39 kernel_size=5"),
               "pooling": ("avg", f"{PRESSES}/snapkv_press.py:96 F.avg_pool1d")},
    "streaming": {"sink": (4, f"{PRESSES}/streaming_llm_press.py:36 n_sink=4"),
                  "rolling": (False, f"{PRESSES}/streaming_llm_press.py: a prefill press, no eviction while decoding")},
    "knorm": {"window": WHOLE}, "keydiff": {"window": WHOLE}, "random": {"window": WHOLE},
    "observed-attention": {"window": WHOLE},
    "lagkv": {"window": WHOLE, "sink": (4, f"{PRESSES}/lagkv_press.py:41 n_sink=4"),
              "lag": (128, f"{PRESSES}/lagkv_press.py:42 lag_size=128")},
    "tova": {"window": (1, f"{PRESSES}/tova_press.py:59 the last token padded with the top score")},
    "expected-attention": {"window": WHOLE,
                           "n_future_positions": (512, f"{PRESSES}/expected_attention_press.py:56 n_future_positions=512"),
                           "n_sink": (4, f"{PRESSES}/expected_attention_press.py:57 n_sink=4")},
    "leverage": {"window": WHOLE, "sketch_dimension": (48, f"{PRESSES}/leverage_press.py:44 sketch_dimension=48")},
    "non-causal-attention": {"window": WHOLE,
                             "chunk_size": (256, f"{PRESSES}/non_causal_attention_press.py:44 chunk_size=256")},
    "compactor": {"window": WHOLE, "sink_size_start": (8, f"{PRESSES}/compactor_press.py:55 sink_size_start=8"),
                  "sink_size_end": (4, f"{PRESSES}/compactor_press.py:56 sink_size_end=4"),
                  "chunk_size": (256, f"{PRESSES}/compactor_press.py:57 chunk_size=256")},
    "cur": {"window": WHOLE, "num_sinks": (4, f"{PRESSES}/cur_press.py:28 num_sinks=4"),
            "local_window_size": (16, f"{PRESSES}/cur_press.py:32 local_window_size=16")},
}
LAYER_FIELDS = ("layer", "l_min")
# The models the authors' script names: they get the values literally.
PAPER_MODELS = ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct",
                "nvidia/Llama-3.1-8B-UltraLong-1M-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct-1M",
                "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-14B-Instruct-1M")
PRESETS = ("paper", "kvpress")


def paper_settings(method: str, num_layers: int, model_type: str | None = None, model_name: str | None = None) -> dict:
    """The keyword arguments of a method under the paper preset on this model (layers scaled
    to its depth unless it is one of the authors' models; SnapKV on a Llama keeps layers 0-4,
    as the authors' Llama SnapKV baseline does: baseline/vanilla/modeling_llama.py:519)."""
    values = {k: v for k, (v, _) in PAPER.get(method, {}).items()}
    if model_name not in PAPER_MODELS:
        values.update({k: scaled_layer(values[k], num_layers) for k in LAYER_FIELDS if k in values})
    if method in ("asl", "asl-2pass"):
        values["l_obs"] = min(values["l_obs"], values["l_min"] + 1)
    if method == "snapkv" and model_type == "llama":
        values["keep_first_layers"] = 5
    return values


def kvpress_settings(method: str) -> dict:
    """The keyword arguments of a method under the kvpress preset (its budget, or `ratio`,
    stays the caller's)."""
    return {k: v for k, (v, _) in KVPRESS.get(method, {}).items()}


def preset(name: str, model=None) -> dict:
    """{"asl": ASL(...), "fastkv": FastKV(...), ...}: the policies of a preset for `model` (a
    bundled name, a checkpoint path, a ModelConfig or a model with a .config; "kvpress" needs
    none: {"snapkv": SnapKV(window=64, kernel=5), "knorm": KNorm(window=0), ...})."""
    from . import policies
    from .calibration.defaults import config_of
    from .models.config import ModelConfig

    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    if name == "kvpress":
        pressed = {"snapkv": policies.SnapKV, "streaming": policies.StreamingLLM, "knorm": policies.KNorm,
                   "keydiff": policies.KeyDiff, "random": policies.RandomScores, "tova": policies.TOVA,
                   "observed-attention": policies.ObservedAttention, "lagkv": policies.LagKV}
        return {method: cls(**kvpress_settings(method)) for method, cls in pressed.items()}
    if model is None:
        raise ValueError("preset(\"paper\", model): the paper preset scales its layers to a model; give one")
    model_name = model if isinstance(model, str) else None
    config = config_of(model) if isinstance(model, str) else getattr(model, "config", model)
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_hf(config)
    classes = {"asl": policies.ASL, "asl-2pass": policies.ASLTwoPass, "fastkv": policies.FastKV,
               "gemfilter": policies.GemFilter, "snapkv": policies.SnapKV,
               "pyramidinfer-prefill": policies.PyramidInfer, "pyramidinfer-decode": policies.PyramidInferDecode}
    return {method: cls(**paper_settings(method, config.num_layers, config.model_type, model_name))
            for method, cls in classes.items()}


def sources(name: str = "paper") -> list[tuple[str, str, object, str]]:
    """(method, field, value, where it comes from) for every value of a preset."""
    table = PAPER if name == "paper" else KVPRESS
    return [(m, k, v, where) for m, fields in table.items() for k, (v, where) in fields.items()]

