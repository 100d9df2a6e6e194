"""Adaptive rules besides ASL's rank variance: when is the ranking of the prefix settled enough
to select? Each rule reads cheap signals of the layer's window scores (the ones ASL and FastKV
rank by, computed once per layer and shared) and decides per sequence; the tokens are then
chosen as ASL and FastKV choose them (`ScorerSelection`). docs/algorithms.md section 18.

- `JaccardStop`: the top-k set stopped changing (Jaccard of consecutive layers' sets).
- `EntropyStop`: the window's attention over the prefix is focused (normalised entropy).
- `FittedStop`: a logistic rule on (depth, Jaccard, entropy) fitted on the oracle's outcomes
  (`FittedStop.fit`), selecting where it predicts the full cache's answer is kept.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field

import torch

from .base import LayerView, PrefillInfo, check_global_layer, check_kernel, check_layer, check_pooling, check_positive_int, is_number, \
    top_prefix
from .scorer import ScorerSelection

SIGNALS = ("depth", "jaccard", "entropy")


@dataclass
class _Stopping(ScorerSelection):
    """What the rules share: per layer and sequence the signals (recorded in the trace as
    `signals`), a decision from `l_min` on, and `l_max` (select there at the latest; None:
    a sequence the rule never fires on keeps every token). The signals are computed from layer
    `l_min - 1` on (Jaccard needs the layer before), and read to the host only for the trace."""

    select_tokens: int = 2048
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"
    l_min: int = 8
    l_max: int | None = None
    local_layers: bool = False  # also look at sliding-window layers (docs/algorithms.md section 20)

    def _check(self) -> None:
        super()._check()
        check_kernel(self.kernel)
        check_pooling(self.pooling)
        check_positive_int("l_min", self.l_min, 0)
        if self.l_max is not None:
            check_positive_int("l_max", self.l_max, 0)
            if self.l_max < self.l_min:
                raise ValueError(f"l_max ({self.l_max}) must be >= l_min ({self.l_min})")

    def begin(self, prefill: PrefillInfo) -> None:
        check_layer("l_min", self.l_min, prefill.num_layers)
        if self.l_max is not None:
            check_layer("l_max", self.l_max, prefill.num_layers)
            check_global_layer("l_max", self.l_max, prefill, self.local_layers)
        super().begin(prefill)
        self._num_layers = prefill.num_layers
        self._width = max(prefill.prompt_lengths) + 1  # membership by prompt index (+1: a pad slot)
        self._previous: torch.Tensor | None = None  # [B, width] the last layer's top-k, by prompt index
        self._signals: dict[int, torch.Tensor] = {}  # layer -> [B, len(SIGNALS)], on the device

    def score(self, view: LayerView) -> torch.Tensor:
        return view.window_scores(self.window, self.kernel, self.pooling)

    def signals(self, layer: int, view: LayerView) -> dict[str, torch.Tensor]:
        """[B] per signal: depth (layer / (L - 1)), Jaccard of this layer's top-k prefix set with
        the previous layer's (0 at the first layer looked at), entropy of the window's summed
        attention over the alive prefix, normalised by log of its length (1 = uniform)."""
        scores = view.token_scores(self.window, self.kernel, self.pooling)  # [B, m], -inf on padding
        b, m = scores.shape
        top = top_prefix(scores, self.prefix_counts(view).clamp(max=m))
        pad = self._width - 1
        where = torch.where(top >= 0, view.index.gather(1, top.clamp(min=0)), pad)  # prompt indices
        member = torch.zeros(b, self._width, dtype=torch.bool, device=scores.device).scatter_(1, where, True)
        member[:, pad] = False
        if self._previous is None:  # the first layer looked at
            jaccard = torch.zeros(b, device=scores.device)
        else:
            union = (member | self._previous).sum(-1).clamp(min=1)
            jaccard = (member & self._previous).sum(-1) / union
        self._previous = member
        mass = scores.clamp(min=0).nan_to_num(0.0)
        p = mass / mass.sum(-1, keepdim=True).clamp(min=1e-30)
        entropy = -(p * p.clamp(min=1e-30).log()).sum(-1)
        alive_prefix = (view.alive - self.window).clamp(min=2).float()
        depth = torch.full((b,), layer / max(self._num_layers - 1, 1), device=scores.device)
        return {"depth": depth, "jaccard": jaccard.float(), "entropy": entropy / alive_prefix.log()}

    @abstractmethod
    def fires(self, signals: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B] bool: whether the rule would select now, from the layer's signals."""

    def selects_at(self, layer: int, view: LayerView) -> torch.Tensor | bool:
        if layer < self.l_min - 1 or all(at is not None for at in self._layers):  # not yet, or all selected
            return False
        signals = self.signals(layer, view)
        self._signals[layer] = torch.stack([signals[name] for name in SIGNALS], -1)
        fire = self.fires(signals) & (layer >= self.l_min)
        if self.l_max is not None and layer >= self.l_max:
            fire = torch.ones_like(fire)
        return fire

    def report(self) -> list[dict]:
        rows = {layer: values.tolist() for layer, values in self._signals.items()}  # one read per layer, at the end
        return [{**r, "signals": {layer: dict(zip(SIGNALS, values[b])) for layer, values in rows.items()}}
                for b, r in enumerate(super().report())]


@dataclass
class _Threshold(_Stopping):
    """A rule that compares one signal with `threshold`, a share in [0, 1]."""

    threshold: float = 0.5

    def _check(self) -> None:
        super()._check()
        if not is_number(self.threshold) or not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1], got {self.threshold!r}")


@dataclass
class JaccardStop(_Threshold):
    """Select once the top-k prefix set is stable: its Jaccard similarity with the previous
    layer's set is at least `threshold` (the set stopped changing)."""

    threshold: float = 0.9

    def fires(self, signals):
        return signals["jaccard"] >= self.threshold


@dataclass
class EntropyStop(_Threshold):
    """Select once the window's attention over the prefix is focused: its entropy, normalised
    by log of the prefix length (1 = uniform), is at most `threshold`."""

    threshold: float = 0.8

    def fires(self, signals):
        return signals["entropy"] <= self.threshold


@dataclass
class FittedStop(_Stopping):
    """Select where a logistic rule on the signals predicts that selecting keeps the full
    cache's answer with probability at least `confidence`: `sigmoid(weights . (depth,
    jaccard, entropy) + bias)`. `FittedStop.fit` learns the weights from oracle outcomes."""

    weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bias: float = 0.0
    confidence: float = 0.9
    fitted_on: dict = field(default_factory=dict)  # what fit() saw (prompts, layers, agreement)

    def _check(self) -> None:
        super()._check()
        if (not isinstance(self.weights, (tuple, list)) or len(self.weights) != len(SIGNALS)
                or not all(is_number(w) for w in self.weights)):
            raise ValueError(f"weights must be {len(SIGNALS)} numbers (for {', '.join(SIGNALS)}), got {self.weights!r}")
        if not is_number(self.bias):
            raise ValueError(f"bias must be a number, got {self.bias!r}")
        if not is_number(self.confidence) or not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be a number in (0, 1), got {self.confidence!r}")

    def fires(self, signals):
        x = torch.stack([signals[name] for name in SIGNALS], -1).double()
        logit = x @ torch.tensor(self.weights, dtype=torch.float64, device=x.device) + self.bias
        return logit >= math.log(self.confidence / (1 - self.confidence))

    @classmethod
    def fit(cls, rows: list[tuple[dict[int, dict[str, float]], dict[int, bool]]], l2: float = 1e-2,
            **fields) -> FittedStop:
        """From prompts' (signals per layer, whether selecting at that layer keeps the full
        cache's answer): a logistic regression of the outcome on the signals over every (prompt,
        layer) pair seen, L2-regularised (Newton's method, float64, deterministic)."""
        xs, ys = [], []
        for signals, matches in rows:
            for layer, row in signals.items():
                if layer in matches:
                    xs.append([row[name] for name in SIGNALS])
                    ys.append(float(matches[layer]))
        if not xs or len(set(ys)) < 2:
            raise ValueError("FittedStop.fit needs (prompt, layer) pairs of both outcomes, kept and changed answers")
        x = torch.tensor(xs, dtype=torch.float64)
        x = torch.cat([x, torch.ones(len(xs), 1, dtype=torch.float64)], 1)
        y = torch.tensor(ys, dtype=torch.float64)
        w = torch.zeros(x.shape[1], dtype=torch.float64)
        ridge = torch.eye(x.shape[1], dtype=torch.float64) * l2
        ridge[-1, -1] = 0.0  # the bias is not shrunk
        for _ in range(50):
            p = torch.sigmoid(x @ w)
            grad = x.T @ (p - y) + ridge @ w
            hess = x.T @ (x * (p * (1 - p))[:, None]) + ridge
            step = torch.linalg.solve(hess, grad)
            w -= step
            if float(step.abs().max()) < 1e-10:
                break
        seen = {"prompts": len(rows), "pairs": len(xs), "kept_share": float(y.mean())}
        return cls(weights=tuple(float(v) for v in w[:-1]), bias=float(w[-1]), fitted_on=seen, **fields)
