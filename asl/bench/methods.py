"""Methods for the benchmark: a selection policy, an eviction policy, or a selection composed
with an eviction (docs/algorithms.md section 10, the two regimes), with per-model defaults.

Spec syntax (`--methods`, comma-separated):

    full                          the full cache
    oracle                        the selection-layer oracle: per sample, selection at the earliest
                                  layer that keeps the full cache's answer (a measurement in
                                  hindsight; its TTFT is the search's cost)
    snapkv, streaming             eviction only
    pyramidinfer                  pyramidinfer-prefill+pyramidinfer-decode (its paper's method)
    asl, fastkv, gemfilter, asl-2pass, mypkg.mod:MySelection
                                  selection only: the layers before the selection keep the KV of
                                  the whole prompt, later layers that of the selected tokens (the
                                  ASL authors' one-shot regime, `cache_k=None`)
    asl+snapkv, fastkv+streaming, mypkg.mod:MySel+snapkv(window=16)
                                  selection, then every layer keeps at most the budget by the
                                  eviction's rule (`cache_k = budget`)
    adakv(snapkv), pyramidkv(snapkv(window=16),beta=10), fastkv+adakv("mypkg.mod:MyScorer")
                                  an allocator wrapping a scorer eviction (its budget shared
                                  among the heads, or spread over the layers): an eviction
    snapkv(ratio=0.5)+knorm(ratio=0.5), asl+snapkv(budget=1024)+knorm(budget=512)
                                  evictions in a row (asl.Chain, kvpress's ComposedPress): each cuts
                                  what the one before kept; --ratio sizes each that has no size

Arguments are Python literals: `asl(tau=0.5,l_min=8)`. A list expands into one method per
value: `asl(tau=[0.3,0.5])` is `asl(tau=0.3)` and `asl(tau=0.5)`; several lists expand into
their product. `select_tokens` and `budget` default to the run's (--select-tokens, --budget).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import itertools
from dataclasses import dataclass, field

from asl.bench.run.oracle import Oracle
from asl.calibration import SCORING, asl_settings, calibration_file, rule_settings, scaled_layer
from asl.presets import KVPRESS, PAPER, kvpress_settings, paper_settings
from asl.policies.base import check_policies
from asl.policies import (ASL, CAM, CAMDecoding, CUR, TOVA, LazyLLM, Compactor, Leverage, NonCausalAttention, AdaKV, ChunkKV, PerChunk, Merging, Blockwise, Chain, KVzip, KVgrad, KVCompose, ThinK, CapKV, EntropyGatedChunkKV, CriticalKV, DecodingEviction, ExpectedAttention, Finch, KeyRerotation, PerLayerRatio, ThresholdEviction, SimLayerKV, ASLTwoPass, EntropyStop, EvictionPolicy, FastKV, Full, GemFilter, JaccardStop,
                          KeyDiff, KNorm, LagKV, ObservedAttention, Proportional, PyramidInfer, PyramidInferDecode, PyramidKV,
                          RandomScores, ScorerEviction, SelectionPolicy, SnapKV, SqueezedAttention, StreamingLLM, TopP)

SELECTIONS = {"fastkv": FastKV, "asl": ASL, "gemfilter": GemFilter, "asl-2pass": ASLTwoPass,
              "pyramidinfer-prefill": PyramidInfer, "jaccard-stop": JaccardStop, "entropy-stop": EntropyStop,
              "lazyllm": LazyLLM}
EVICTIONS = {"snapkv": SnapKV, "streaming": StreamingLLM, "topp": TopP, "pyramidinfer-decode": PyramidInferDecode,
             "knorm": KNorm, "keydiff": KeyDiff, "random": RandomScores, "tova": TOVA,
             "observed-attention": ObservedAttention, "lagkv": LagKV, "expected-attention": ExpectedAttention,
             "cur": CUR, "simlayerkv": SimLayerKV, "finch": Finch, "leverage": Leverage,
             "non-causal-attention": NonCausalAttention, "compactor": Compactor, "capkv": CapKV, "squeezed": SqueezedAttention, "kvzip": KVzip, "kvgrad": KVgrad, "kvcompose": KVCompose}
# Allocators: an eviction that wraps a scorer eviction, written name(scorer, key=value...)
WRAPPERS = {"adakv": AdaKV, "pyramidkv": PyramidKV, "proportional": Proportional, "chunkkv": ChunkKV, "perchunk": PerChunk, "merging": Merging, "blockwise": Blockwise, "think": ThinK, "entropy-chunkkv": EntropyGatedChunkKV,
            "criticalkv": CriticalKV, "keyrerotation": KeyRerotation,
            "decoding": DecodingEviction, "perlayer": PerLayerRatio, "dms": ThresholdEviction, "cam": CAM,
            "cam-decoding": CAMDecoding}
# A method that is a selection and an eviction in one paper: its name stands for both (its
# arguments go to the first).
ALIASES = {"pyramidinfer": ("pyramidinfer-prefill", "pyramidinfer-decode")}
BUILTIN = ("full", "snapkv", "streaming", "topp", "knorm", "keydiff", "random", "tova", "observed-attention", "lagkv", "expected-attention", "cur", "leverage", "non-causal-attention", "compactor", "capkv", "squeezed", "kvzip", "kvgrad", "kvcompose", "finch", "simlayerkv", "adakv", "pyramidkv", "proportional", "chunkkv", "perchunk", "merging", "blockwise", "think", "entropy-chunkkv", "criticalkv", "keyrerotation", "decoding", "perlayer", "dms", "cam", "cam-decoding", "fastkv", "asl", "gemfilter", "asl-2pass",
           "jaccard-stop", "entropy-stop", "lazyllm", "pyramidinfer", "pyramidinfer-prefill", "pyramidinfer-decode", "oracle")
DESCRIPTIONS = {
    "full": "the full cache (no selection, no eviction)",
    "oracle": "in hindsight: selection at the earliest layer that keeps the full cache's answer (asl.oracle_layer)",
    "snapkv": "eviction: per layer and KV head, the most attended prefix entries plus the window",
    "streaming": "eviction: the first `sink` tokens plus the most recent (rolling while decoding)",
    "topp": "eviction: per KV head the fewest tokens holding p of the window's attention (the ASL authors' top-p KV)",
    "knorm": "eviction: per KV head the keys of lowest L2 norm (Devoto et al. 2024; kvpress's KnormPress)",
    "keydiff": "eviction: per KV head the keys least like their mean direction (KeyDiff, Park et al. 2025)",
    "random": "eviction: random entries, seeded (the baseline; kvpress's RandomPress)",
    "tova": "eviction: the entries the last query attends to most, over all heads (TOVA, Oren et al. 2024)",
    "observed-attention": "eviction: attention received from every later query, averaged (H2O, Zhang et al. 2023)",
    "lagkv": "eviction: per partition of `lag` tokens, the keys and values that vary most against the next "
             "partition (LagKV, Liang et al. 2025)",
    "expected-attention": "eviction: the attention future queries are expected to pay, from the prompt's query "
                          "statistics and RoPE (Devoto et al. 2025; kvpress's ExpectedAttentionPress)",
    "cur": "eviction: per KV head the keys and values of highest leverage (CurDKV, Sengupta et al. 2025)",
    "leverage": "eviction: per KV head the pre-RoPE keys of highest (sketched) statistical leverage (Compactor's "
                "query-agnostic half, Chari and Van Durme 2025; kvpress's LeverageScorePress)",
    "non-causal-attention": "eviction: attention from every query of the entry's chunk, no causal mask, times the "
                            "value's norm (Compactor's attention half; kvpress's NonCausalAttnPress)",
    "compactor": "eviction: leverage blended with non-causal chunked attention, sinks kept (Compactor, Chari and Van "
                 "Durme 2025; kvpress's CompactorPress)",
    "finch": "eviction: SnapKV's score with the question as the window, normalised by the keys each question token "
             "sees, the kept keys re-rotated (Finch, Corallo and Papotti 2024; kvpress's FinchPress)",
    "capkv": "eviction: per KV head the values that add most capacity, weighted by how their keys align with the "
             "queries' RoPE-averaged mean (CAPKV; kvpress's CapPress)",
    "squeezed": "retrieval: every entry kept; each generated token attends to the keys of the clusters (k-means of "
                "the keys, per layer and head) whose estimated attention passes one threshold set from the window "
                "(Squeezed Attention, Hooper et al. 2024); squeezed(percentile=0.7) attends to fewer",
    "simlayerkv": "eviction: a lazy layer (its last query attends to the first and recent tokens) keeps only "
                  "those, the others everything (SimLayerKV, Zhang et al. 2024)",
    "keyrerotation": "wrapper around a scorer eviction, keyrerotation(knorm): the kept keys re-rotated to positions "
                     "0, 1, ... and what follows numbered after them (kvpress's KeyRerotationPress)",
    "decoding": "wrapper around a scorer eviction, decoding(knorm,every=64,budget=512): while generating, every "
                "`every` tokens each layer cut back to `budget` by the scorer (kvpress's DecodingPress); ratio=0.5 "
                "keeps that share of the tokens seen (CompressionRatioDecodingPress)",
    "perlayer": "wrapper around a scorer eviction, perlayer(knorm,ratios=(0.5,0.7,...)): a ratio per layer, a tuple "
                "of one per layer (kvpress's PerLayerCompressionPress)",
    "dms": "wrapper around a scorer eviction, dms(knorm,threshold=-5,sliding_window=128): entries scoring below the "
           "threshold evicted, the recent ones kept (DMS with a dense prefill, no trained evictor; kvpress's DMSPress; "
           "decoding=True goes on while generating)",
    "criticalkv": "wrapper around a scorer eviction, criticalkv(snapkv): half kept by the score, the rest by the score "
                  "times the value's norm through the output projection (CriticalKV, Feng et al. 2025)",
    "cam": "wrapper around a scorer eviction, cam(knorm,merge_budget=32): each evicted value merged into the kept "
           "entries after it, with probability from the attention it gets (CaM, Zhang et al. 2024; kvpress's CAMPress)",
    "cam-decoding": "wrapper around a scorer eviction, cam-decoding(knorm,every=64,budget=512): CaM while generating, "
                    "as kvpress's CAMPress: every `every` tokens a layer cut to `budget` by the scorer averaged over "
                    "its heads, the best evicted merged into the kept after them by the attention they received",
    "adakv": "allocator around a scorer eviction, adakv(snapkv): the layer's budget shared among its heads by score",
    "pyramidkv": "allocator around a scorer eviction, pyramidkv(snapkv): the budget falling linearly over the layers",
    "proportional": "allocator around a scorer eviction, proportional(snapkv,rate=0.1): each layer keeps a share of "
                    "its tokens (FastKV's proportional KV)",
    "chunkkv": "wrapper around a scorer eviction, chunkkv(snapkv,chunk=20): whole chunks of tokens kept, the same "
               "for every head (ChunkKV, Liu et al. 2025)",
    "perchunk": "wrapper around a scorer eviction, perchunk(snapkv,chunk=1024): the scorer sees each chunk of the "
                "prompt alone and every chunk keeps its own share (kvpress's ChunkPress)",
    "merging": "wrapper around a scorer eviction, merging(knorm,merge_fraction=0.75): each evicted value folded into "
               "the kept entry with the most similar key, weighted by similarity and value norms (kvpress's "
               "MergingPress)",
    "entropy-chunkkv": "wrapper around a scorer eviction, entropy-chunkkv(snapkv,chunk=10): ChunkKV, but an important "
                       "chunk whose scores sit on a few tokens keeps only its best few (kvpress's "
                       "EntropyGatedChunkKVPress)",
    "blockwise": "wrapper around a scorer eviction, blockwise(keydiff,block=128): the prompt read in blocks, only "
                 "the budget's best of the kept and the new block staying after each (kvpress's BlockPress)",
    "kvzip": "after the prefill the model repeats the context over its cache; the entries its queries attend to "
             "least go, over all layers and heads together, kvzip(ratio=0.5) (KVzip, Kim et al. 2025; kvpress's "
             "KVzipPress); about one more prefill of time",
    "kvgrad": "KVzip's replay, each entry's attention weighted by what it writes (||v W_O||) and how much the last "
              "hidden states move with the attention output (a gradient), kvgrad(ratio=0.5) (KVgrad; kvpress's "
              "KVgradPress); a forward and a backward pass per chunk of 512",
    "kvcompose": "the prompt read again over its cache; entries scored by the attention it pays them, each layer's "
                 "count from composite tokens ranked over all layers, kvcompose(ratio=0.5) (KVCompose, Akulov et al. "
                 "2025; kvpress's KVComposePress)",
    "think": "wrapper around an eviction, think(snapkv,key_channel_ratio=0.5): the key channels the latest queries "
             "use least zeroed in the stored keys, per KV head (ThinK, Xu et al. 2024; kvpress's ThinKPress, composed "
             "after the scorer as its ComposedPress)",
    "fastkv": "selection at a fixed layer (FastKV's token-selective propagation)",
    "asl": "selection at the first layer where the rank variance settles below tau (ASL)",
    "gemfilter": "selection from the last query at a layer, then a second pass on the kept tokens",
    "asl-2pass": "ASL's choice of tokens, then a second pass on them like GemFilter",
    "jaccard-stop": "selection at the first layer where the top-k set stops changing (Jaccard >= threshold)",
    "entropy-stop": "selection at the first layer where the window's attention is focused (entropy <= threshold)",
    "lazyllm": "progressive selection at a few layers by the last token's attention, pruned tokens revived from "
               "their hidden states when a later step selects them (LazyLLM, Fu et al. 2024); revive=False: static",
    "pyramidinfer": "PyramidInfer as its paper runs it: pyramidinfer-prefill+pyramidinfer-decode",
    "pyramidinfer-prefill": "selection after every layer: the context the recent queries attend to most",
    "pyramidinfer-decode": "eviction while decoding: the entries before the recent window, recompressed",
}
# ASL's tau, l_min and l_obs per model come from its calibration file (asl.calibration; hand-set
# values until one exists). Every method scores tokens as the ASL paper's comparison does
# (SCORING: window 32, kernel 7, average pooling); FastKV's own paper uses window 8 and max
# pooling: `fastkv(window=8,pooling="max")`.


@dataclass(frozen=True)
class PolicySpec:
    """One policy of a method: a built-in name or `module:Class`, with the user's arguments."""

    name: str
    kwargs: dict = field(default_factory=dict)
    inner: PolicySpec | None = None  # what an allocator (adakv, pyramidkv) wraps

    @property
    def label(self) -> str:
        args = ([self.inner.label] if self.inner else []) + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({','.join(args)})" if args else self.name

    @property
    def family(self) -> str:
        """The policy without its arguments (an allocator keeps its scorer's name)."""
        return f"{self.name}({self.inner.family})" if self.inner else self.name

    @property
    def custom(self) -> bool:
        return ":" in self.name

    def policy_class(self) -> type:
        if self.name in SELECTIONS:
            return SELECTIONS[self.name]
        if self.name in EVICTIONS:
            return EVICTIONS[self.name]
        if self.name in WRAPPERS:
            return WRAPPERS[self.name]
        if self.name == "full":
            return Full
        if self.name == "oracle":
            return Oracle
        return load_class(self.name)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed `--methods` entry: `full`, one policy, or a selection and evictions joined by `+`."""

    parts: tuple[PolicySpec, ...]

    @property
    def label(self) -> str:
        """What names the method in every output (its arguments included)."""
        return "+".join(p.label for p in self.parts)

    @property
    def family(self) -> str:
        """The method without its arguments: the points of a sweep share it."""
        return "+".join(p.family for p in self.parts)

    @property
    def name(self) -> str:
        return self.family

    @property
    def is_full(self) -> bool:
        return self.parts == (PolicySpec("full"),)

    @property
    def is_oracle(self) -> bool:
        return len(self.parts) == 1 and self.parts[0].name == "oracle"


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets: `asl(tau=[0.3,0.5]),full` -> two entries."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_policy(text: str, whole: str) -> PolicySpec:
    name, _, rest = text.partition("(")
    name = name.strip()
    if name not in BUILTIN and ":" not in name:
        where = "" if text.strip() == whole.strip() else f" in {whole!r}"
        raise ValueError(f"--methods: unknown method {name!r}{where}; allowed: {', '.join(BUILTIN)}, "
                         "module:Class, or selection+eviction (e.g. asl+snapkv)")
    kwargs = {}
    if rest:
        if not rest.endswith(")"):
            raise ValueError(f"--methods: {text!r} must end with ')' (syntax: name(key=value,...))")
        try:
            source = f"f({rest}"
            call = ast.parse(source, mode="eval").body
        except SyntaxError as e:
            raise ValueError(f"--methods: cannot parse the arguments of {text!r}: {e.msg}") from None
        if name in WRAPPERS:
            inner = _wrapped(call, source, text, whole)
        elif call.args:
            raise ValueError(f"--methods: {text!r}: arguments must be given as key=value")
        names = [kw.arg for kw in call.keywords]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"--methods: {text!r}: {', '.join(repeated)} given more than once")
        try:
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except ValueError:
            raise ValueError(f"--methods: {text!r}: values must be Python literals (numbers, strings, None, "
                             "or a [list] to sweep)") from None
        empty = [k for k, v in kwargs.items() if isinstance(v, list) and not v]
        if empty:
            raise ValueError(f"--methods: {text!r}: the list for {empty[0]} is empty")
    elif name in WRAPPERS:
        inner = None
    if name in WRAPPERS and inner is None:
        raise ValueError(f"--methods: {text!r}: {name} wraps a scorer eviction: {name}(snapkv), "
                         f"{name}(snapkv(window=16)) or {name}(\"mypkg.mod:MyScorer\")")
    return PolicySpec(name, kwargs, inner if name in WRAPPERS else None)


def _wrapped(call: ast.Call, source: str, text: str, whole: str) -> PolicySpec | None:
    """An allocator's one positional argument: the scorer it wraps (a name, a call, or a string
    naming a module:Class), which must be an eviction; read as written in `source`, so a
    hyphenated name (`observed-attention`) stays one name."""
    if len(call.args) != 1:
        return None
    arg = call.args[0]
    inner_text = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else \
        ast.get_source_segment(source, arg)
    inner = _parse_policy(inner_text, whole)
    wrapper_scorer = inner.inner is not None and issubclass(WRAPPERS[inner.name], ScorerEviction)  # criticalkv(...)
    if role(inner) != "eviction" or inner.inner is not None and not wrapper_scorer:
        raise ValueError(f"--methods: {text!r}: wraps {inner.name}, which is not a scorer eviction (snapkv, or a "
                         "ScorerEviction of your own)")
    return inner


def _expand(policy: PolicySpec) -> list[PolicySpec]:
    """One PolicySpec per combination of the list-valued arguments (an allocator's scorer's too)."""
    keys = list(policy.kwargs)
    values = [v if isinstance(v, list) else [v] for v in policy.kwargs.values()]
    inners = _expand(policy.inner) if policy.inner is not None else [None]
    return [PolicySpec(policy.name, dict(zip(keys, combo)), inner)
            for inner in inners for combo in itertools.product(*values)]


def role(policy: PolicySpec) -> str:
    """"selection", "eviction", "full" or "oracle" (custom classes are imported to find out)."""
    if policy.name in ("full", "oracle"):
        return policy.name
    if policy.name in SELECTIONS:
        return "selection"
    if policy.name in EVICTIONS or policy.name in WRAPPERS:
        return "eviction"
    return "selection" if issubclass(load_class(policy.name), SelectionPolicy) else "eviction"


def _check_composition(parts: list[PolicySpec], text: str) -> None:
    roles = [role(p) for p in parts]
    allowed = ("full, an eviction (snapkv), a selection (asl), selection+eviction (asl+snapkv), or evictions in a "
               "row, each cutting what the one before kept (snapkv(ratio=0.5)+knorm(ratio=0.5), asl.Chain)")
    evictions = roles[1:] if roles[0] == "selection" else roles
    if len(parts) == 1 or evictions and all(r == "eviction" for r in evictions):
        return
    raise ValueError(f"--methods: {text!r} composes {' with '.join(roles)}; allowed: {allowed}")


def parse_method(text: str) -> list[MethodSpec]:
    """One `--methods` entry, its sweeps expanded."""
    parts = [_parse_policy(p, text) for p in split_top_level(text, "+")]
    parts = [PolicySpec(name, p.kwargs, p.inner) if i == 0 else PolicySpec(name) for p in parts
             for i, name in enumerate(ALIASES.get(p.name, (p.name,)))]
    if not parts:
        raise ValueError(f"--methods: {text!r} names no policy")
    if any(p.name == "full" for p in parts) and len(parts) > 1:
        raise ValueError(f"--methods: {text!r}: full composes with nothing (a selection alone already keeps "
                         "the KV of every layer it ran on)")
    if any(p.name == "oracle" for p in parts) and len(parts) > 1:
        raise ValueError(f"--methods: {text!r}: oracle composes with nothing (it is selection alone, tried at "
                         "every layer)")
    _check_composition(parts, text)
    return [MethodSpec(combo) for combo in itertools.product(*(_expand(p) for p in parts))]


def parse_methods(text: str) -> list[MethodSpec]:
    specs = [spec for entry in split_top_level(text) for spec in parse_method(entry)]
    if not specs:
        raise ValueError("--methods: give at least one method")
    labels = [s.label for s in specs]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"--methods: a method is listed twice: {', '.join(twice)}")
    return specs


def _budgeted(policy: PolicySpec) -> str:
    """An example of the policy sized by a budget: `adakv(criticalkv(knorm(budget=512)))`."""
    return f"{policy.name}({_budgeted(policy.inner)})" if policy.inner else f"{policy.name}(budget=512)"


def with_ratio(spec: MethodSpec, ratio: float) -> MethodSpec:
    """The method with its eviction sized by `ratio` (--ratio): `snapkv` -> `snapkv(ratio=0.5)`,
    `chunkkv(criticalkv(knorm))` -> `chunkkv(criticalkv(knorm(ratio=0.5)))` (a wrapper that does
    not size the layers itself passes it to its scorer). A method without an eviction, or whose
    eviction already has a budget or ratio of its own, stays as it is; an eviction with no ratio
    form (an allocator, StreamingLLM, a decoding-time one) is refused, naming it."""
    parts = []
    for policy in spec.parts:
        path = [policy]  # down through the wrappers that pass a ratio on to their scorer
        while path[-1].name in WRAPPERS and not WRAPPERS[path[-1].name].sizes_layers and path[-1].inner is not None:
            path.append(path[-1].inner)
        target = path[-1]
        if role(policy) != "eviction" or {"budget", "ratio"} & set(target.kwargs):
            parts.append(policy)
            continue
        cls = target.policy_class()
        ratio_field = dataclasses.is_dataclass(cls) and "ratio" in {f.name for f in dataclasses.fields(cls)}
        if target.name in WRAPPERS or not (isinstance(cls, type) and (issubclass(cls, ScorerEviction) or ratio_field)):
            raise ValueError(f"--ratio: {spec.label} has no ratio form ({target.name} keeps a count or sizes the "
                             f"layers itself): give it a budget, e.g. {_budgeted(policy)}, or leave it out")
        sized = PolicySpec(target.name, {**target.kwargs, "ratio": ratio}, target.inner)
        for outer in reversed(path[:-1]):
            sized = PolicySpec(outer.name, outer.kwargs, sized)
        parts.append(sized)
    return MethodSpec(tuple(parts))


# GemFilter's own filter layers (`select_layer_idx` in its repository), by family and depth.
GEMFILTER_LAYERS = {("llama", 32): 13, ("mistral", 40): 19}


def gemfilter_layer(model_type: str | None, num_layers: int) -> tuple[int, str]:
    """GemFilter's layer on this model, and where it comes from (the bench says so)."""
    own = GEMFILTER_LAYERS.get((model_type, num_layers))
    if own is not None:
        return own, f"GemFilter's own layer for {model_type} with {num_layers} layers"
    return scaled_layer(13, num_layers), f"GemFilter's 13 of 32 layers (Llama-3.1-8B) scaled to {num_layers} layers"


def model_defaults(model_name: str, num_layers: int, config=None, calibration=None,
                   preset: str | None = None) -> tuple[dict[str, dict], str, int | None]:
    """Every built-in policy's keyword arguments on this model, where ASL's come from, and the
    selection size ASL's tau was calibrated at (None: not calibrated). ASL's, and the stopping
    rules' thresholds where the file has them, come from the `calibration` file when one is
    given, else the bundled one of this name or, from the model's `config` (a ModelConfig), of
    this architecture, else the hand-set values: the file is read here, once per run."""
    model_type = getattr(config, "model_type", None)
    found = calibration_file(model_name, num_layers, calibration, config)
    settings, why = asl_settings(model_name, num_layers, calibration, config, found=found)
    rules = rule_settings(found[0])
    if rules:
        why += "; the stopping rules calibrated there: " + ", ".join(
            f"{name} threshold {r['threshold']:g}" for name, r in rules.items())
    asl = {k: settings[k] for k in ("tau", "l_min", "l_obs", *SCORING)}
    table = {
        "full": {}, "oracle": dict(SCORING), "snapkv": dict(SCORING), "streaming": {},
        **{name: {"window": SCORING["window"]} for name in ("knorm", "keydiff", "random", "tova", "observed-attention", "lagkv",
                                                         "expected-attention", "cur", "finch", "leverage",
                                                         "non-causal-attention", "compactor", "capkv")},
        "topp": {"window": SCORING["window"]},
        "asl": asl, "asl-2pass": asl,
        "fastkv": {"layer": scaled_layer(15, num_layers), **SCORING},
        "gemfilter": {"layer": gemfilter_layer(model_type, num_layers)[0]},
        "jaccard-stop": {"l_min": scaled_layer(10, num_layers), **SCORING, **rules.get("jaccard-stop", {})},
        "entropy-stop": {"l_min": scaled_layer(10, num_layers), **SCORING, **rules.get("entropy-stop", {})},
        "pyramidinfer-prefill": {}, "pyramidinfer-decode": {}, "simlayerkv": {}, "lazyllm": {}, "squeezed": {}, "kvzip": {}, "kvgrad": {}, "kvcompose": {},
    }
    if preset == "paper":  # the run's budget and selection size stay the run's
        for name in PAPER:
            fields = paper_settings(name, num_layers, model_type, model_name)
            table[name] = {k: v for k, v in fields.items() if k not in ("budget", "select_tokens")}
        why = "the ASL authors' scripts (--preset paper)"
    if preset == "kvpress":  # kvpress's windows and kernels; ASL and the selections keep the library's
        for name in KVPRESS:
            table[name] = {**table[name], **kvpress_settings(name)}
    for name in ("fastkv", "gemfilter"):  # a model with sliding-window layers: its nearest global layer
        table[name]["layer"] = nearest_global_layer(table[name]["layer"], config)
    return table, why, settings.get("select_tokens")


def nearest_global_layer(layer: int, config=None) -> int:
    """`layer`, or where it is a sliding-window layer of `config` (Gemma), the global layer nearest to
    it, the later on a tie: a fixed selection layer's scores are taken at a global layer
    (docs/algorithms.md section 20)."""
    if config is None or config.window(layer) is None or not config.global_layers:
        return layer
    return min(config.global_layers, key=lambda g: (abs(g - layer), -g))


def _fill(policy: PolicySpec, defaults: dict, budget: int | None, select_tokens: int | None) -> dict:
    """The policy's keyword arguments: the run's budget and selection size where it has those
    fields, then the defaults, then the user's arguments."""
    cls = policy.policy_class()
    names = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else set()
    kwargs = {}
    if "select_tokens" in names and select_tokens is not None:
        kwargs["select_tokens"] = select_tokens
    if "budget" in names and budget is not None:
        kwargs["budget"] = budget
    kwargs.update({k: v for k, v in defaults.items() if k in names})
    kwargs.update(policy.kwargs)
    if cls in (ASL, ASLTwoPass) and "l_obs" not in policy.kwargs:
        kwargs["l_obs"] = min(kwargs.get("l_obs", 8), kwargs.get("l_min", 10) + 1)
    return kwargs


def default_params(spec: MethodSpec, defaults: dict[str, dict], budget: int | None,
                   select_tokens: int | None) -> list[dict]:
    """Per policy of the method, the keyword arguments it runs with: the run's budget and
    selection size, the model's `defaults` (model_defaults), the user's arguments."""
    out, previous = [], {}
    for policy in spec.parts:
        scorer = policy
        while scorer.inner is not None:  # a wrapper's defaults are its (innermost) scorer's
            scorer = scorer.inner
        own = {} if scorer.custom else dict(defaults[scorer.name])
        if role(policy) == "eviction":  # an eviction scores tokens like the selection before it
            own.update({k: previous[k] for k in SCORING if k in previous})
        previous = _fill(scorer, own, budget, select_tokens)
        out.append(_wrapping(policy, previous, budget))
    return out


def _wrapping(policy: PolicySpec, scorer: dict, budget: int | None) -> dict:
    """A wrapper's keyword arguments around its scorer's: {..., "scorer": {...}}, nested as
    written; a wrapper with a budget of its own (DecodingEviction's, while decoding) takes the run's."""
    if policy.inner is None:
        return scorer
    return {**_fill(policy, {}, budget, None), "scorer": _wrapping(policy.inner, scorer, budget)}


def _construct(policy: PolicySpec, kwargs: dict):
    """The policy object, a wrapper's scorer built first."""
    if policy.inner is not None:
        kwargs = {**kwargs, "scorer": _construct(policy.inner, kwargs["scorer"])}
    return policy.policy_class()(**kwargs)


def build(spec: MethodSpec, params: list[dict]) -> tuple[SelectionPolicy | None, EvictionPolicy | None]:
    """The method's policy objects from their keyword arguments (their checks run here)."""
    selection = eviction = None
    for policy, kwargs in zip(spec.parts, params):
        if policy.name == "full":
            continue
        try:
            obj = _construct(policy, kwargs)
        except TypeError as e:
            hint = ""
            if "budget" in kwargs and role(policy) == "selection":
                hint = f"; {policy.name} selects tokens only: give the budget to an eviction, e.g. {policy.name}+snapkv"
            raise ValueError(f"{policy.label}: {e}{hint}") from None
        if isinstance(obj, (SelectionPolicy, Oracle)):  # the oracle stands where a selection would
            selection = obj
        else:  # a second eviction cuts what the one before kept
            eviction = obj if eviction is None else Chain(eviction, obj)
    if not isinstance(selection, Oracle):
        check_policies(selection, eviction)  # the pair (LazyLLM's revival takes no eviction), before any run
    return selection, eviction


def kept_budget(params: list[dict], budget: int | None) -> int | None:
    """The budget a method really runs at, from its resolved policies: its eviction's (a
    `budget=` in --methods wins over --budget); None for an eviction sized by a share of each
    layer's tokens (`ratio=`, proportional(...)); a selection alone is recorded at --budget
    (what it selects is recorded beside it, as select_tokens)."""
    for fields in reversed(params):
        inner = fields
        while "scorer" in inner and "budget" not in inner:  # a wrapper's budget is its scorer's, unless its own
            inner = inner["scorer"]
        sized_by_input = "scorer" in fields and (bool({"rate", "ratios", "threshold"} & set(fields))
                                                 or fields.get("ratio") is not None)  # no count
        keeps_all = "percentile" in fields  # a retrieval (squeezed) stores every entry
        if sized_by_input or keeps_all or inner.get("ratio") is not None:
            return None
        if isinstance(inner.get("budget"), int):
            return inner["budget"]
    return budget


@dataclass(frozen=True)
class Method:
    """A method resolved on one model at one budget: its policies built, and so checked, once.
    Policies hold per-prompt state, so every run takes `fresh()` copies of them."""

    spec: MethodSpec
    budget: int | None  # the budget it keeps (an eviction's own `budget=` wins over --budget)
    selection: SelectionPolicy | Oracle | None
    eviction: EvictionPolicy | None

    @classmethod
    def resolve(cls, spec: MethodSpec, defaults: dict[str, dict], budget: int | None,
                select_tokens: int | None) -> Method:
        params = default_params(spec, defaults, budget, select_tokens)
        return cls(spec, kept_budget(params, budget), *build(spec, params))

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def select_tokens(self) -> int | None:
        """What the selection keeps (recorded beside the budget), if it has a size."""
        return getattr(self.selection, "select_tokens", None)

    def fresh(self) -> tuple[SelectionPolicy | Oracle | None, EvictionPolicy | None]:
        return copy.deepcopy((self.selection, self.eviction))

    def policies(self) -> list:
        return [p for p in (self.selection, self.eviction) if p is not None]

    def describe(self, skip: tuple[str, ...] = ()) -> str:
        """Its policies' fields, as `key=value`, one group per policy ("-": none)."""
        return " + ".join(", ".join(f"{k}={v!r}" for k, v in _fields(p).items() if k not in skip) or "-"
                          for p in self.policies()) or "-"


def _fields(obj) -> dict:
    fields = ({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.repr}
              if dataclasses.is_dataclass(obj) else dict(vars(obj)))
    return {k: (_fields(v) if isinstance(v, EvictionPolicy) else v) for k, v in fields.items() if not k.startswith("_")}


def effective_fields(method: Method) -> list[dict]:
    """Every field of every policy the method builds, defaults included: what config.json
    records so that a rerun with other effective settings is refused; a class from outside
    the library also records a hash of its source."""
    from asl.bench.run.fingerprint import class_source_hash

    out = []
    for obj in method.policies():
        fields = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj))
        entry = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}",
                 "fields": {k: v for k, v in fields.items() if not k.startswith("_")}}
        source = class_source_hash(type(obj))
        if source is not None:
            entry["source"] = source
        inner = getattr(obj, "scorer", None)
        if inner is not None and class_source_hash(type(inner)) is not None:
            entry["scorer_source"] = class_source_hash(type(inner))
        out.append(entry)
    return out


def load_class(name: str):
    module, _, cls = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--methods: cannot import {name!r} ({e}); give an importable module:Class") from None
    if not (isinstance(obj, type) and issubclass(obj, (SelectionPolicy, EvictionPolicy))):
        raise ValueError(f"--methods: {name} is not a SelectionPolicy or EvictionPolicy subclass")  # noqa: TRY004 - an argument error, reported like the others
    return obj
