"""Choosing ASL's threshold from per-prompt measurements: for every candidate layer, whether
selecting there keeps the full cache's answer (the oracle's outcomes), and ASL's variance
ratios per layer (one recorded run). Which layer ASL would pick at a threshold follows from
the ratios alone, so every candidate costs no model call; plain Python, so the choice is
deterministic (docs/algorithms.md section 14).

The objective is the one a user cares about: answers equal to the full cache's, at the least
KV. A candidate is chosen on the tuning prompts (the cheapest whose agreement reaches the
target) and judged on the held-out prompts: `target_met` only where their agreement reaches
it. The oracle's matches need not be monotone in the layer (a prompt may match at layer 5,
differ at 9, match again at 14), so a candidate is scored by the outcome at the very layer it
picks, never by its distance from the earliest matching layer."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..interval import wilson


@dataclass(frozen=True)
class PromptMeasure:
    """One prompt. `matches`: per candidate layer, whether selection there keeps the full
    cache's answer; `ratios`: per l_min, ASL's ratio per evaluated layer; `prompt_tokens` its
    length; `held_out`: judged, not tuned on; `signals`: per layer, the other adaptive rules'
    signals (asl.policies.adaptive); `label`: where it came from (task/length/sample)."""

    matches: dict[int, bool]
    ratios: dict[int, dict[int, float]]
    prompt_tokens: int
    held_out: bool = False
    signals: dict[int, dict[str, float]] = field(default_factory=dict)
    label: str = ""

    def as_json(self) -> dict:
        return {"label": self.label, "prompt_tokens": self.prompt_tokens, "held_out": self.held_out,
                "matches": {str(k): v for k, v in self.matches.items()},
                "ratios": {str(lm): {str(k): r for k, r in rs.items()} for lm, rs in self.ratios.items()},
                "signals": {str(k): v for k, v in self.signals.items()}}

    @classmethod
    def from_json(cls, item: dict) -> PromptMeasure:
        return cls({int(k): bool(v) for k, v in item["matches"].items()},
                   {int(lm): {int(k): float(r) for k, r in rs.items()} for lm, rs in item["ratios"].items()},
                   int(item["prompt_tokens"]), bool(item["held_out"]),
                   {int(k): {n: float(x) for n, x in v.items()} for k, v in item.get("signals", {}).items()},
                   str(item.get("label", "")))

    @property
    def earliest(self) -> int | None:
        return earliest_match(self.matches)

    @property
    def stable(self) -> int | None:
        return stable_match(self.matches)


def earliest_match(matches: dict[int, bool]) -> int | None:
    """The earliest candidate layer whose selection keeps the full cache's answer (None: none)."""
    return next((layer for layer in sorted(matches) if matches[layer]), None)


def stable_match(matches: dict[int, bool]) -> int | None:
    """The earliest candidate layer from which every later candidate keeps the answer too."""
    found = None
    for layer in sorted(matches, reverse=True):
        if not matches[layer]:
            break
        found = layer
    return found


@dataclass(frozen=True)
class Outcome:
    """A candidate (l_min, tau) over some prompts: how many answers equal the full cache's, the
    mean KV share (1 = the full cache), and, for reading, the share selected before the
    earliest matching layer and the mean layers selected after the stable one."""

    l_min: int
    tau: float  # the candidate's threshold: ASL's tau, or a stopping rule's (choose_rule)
    n: int
    agree: int
    kv: float
    too_early: float
    layers_lost: float

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else float("nan")


def first_layer(values: dict, passes, l_min: int, last: int) -> int:
    """The first layer from l_min whose recorded value passes; `last` (no selection, the full
    cache) when none does. What a rule that decides layer by layer picks, replayed."""
    return next((layer for layer in sorted(values) if layer >= l_min and passes(values[layer])), last)


def picked_layer(ratios: dict[int, float], tau: float, l_min: int, last: int) -> int:
    """The layer ASL selects at: the first from l_min whose ratio is below tau."""
    return first_layer(ratios, lambda ratio: ratio < tau, l_min, last)


def kv_share(layer: int, prompt_tokens: int, select_tokens: int, num_layers: int) -> float:
    """KV stored by selection alone after `layer`, as a share of the full cache: layers up to it
    keep the prompt, deeper ones the selected tokens (selecting at the last layer: the full)."""
    kept = min(select_tokens, prompt_tokens)
    return ((layer + 1) * prompt_tokens + (num_layers - 1 - layer) * kept) / (num_layers * prompt_tokens)


def evaluate(measures: list[PromptMeasure], l_min: int, tau: float, num_layers: int, select_tokens: int) -> Outcome:
    last = num_layers - 1
    return outcome(measures, lambda m: picked_layer(m.ratios[l_min], tau, l_min, last), l_min, tau, num_layers,
                   select_tokens)


def outcome(measures: list[PromptMeasure], layer_of, l_min: int, value: float, num_layers: int,
            select_tokens: int) -> Outcome:
    """A candidate over `measures`, from the layer it picks on each (`layer_of(m)`)."""
    last = num_layers - 1
    agree = early = lost = 0
    kv = 0.0
    for m in measures:
        layer = layer_of(m)
        agree += m.matches.get(layer, True)  # the last layer, or no selection: the full answer
        kv += kv_share(layer, m.prompt_tokens, select_tokens, num_layers)
        earliest, stable = m.earliest, m.stable
        early += earliest is None and layer < last or earliest is not None and layer < earliest
        lost += max(0, layer - (last if stable is None else stable))
    n = len(measures)
    return Outcome(l_min, value, n, agree, kv / n if n else float("nan"), early / n if n else 0.0,
                   lost / n if n else 0.0)


def check_grid(taus, l_mins, target, num_layers: int) -> None:
    """Raises ValueError naming the parameter when the search space is not one."""
    if not taus or any(not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0
                       for t in taus):
        raise ValueError(f"--taus must be finite numbers >= 0, got {taus!r}")
    if not l_mins or any(not isinstance(v, int) or not 0 <= v < num_layers for v in l_mins):
        raise ValueError(f"--l-min must be layers of the model (0..{num_layers - 1}), got {l_mins!r}")
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 <= target <= 1:
        raise ValueError(f"--agreement must be a share in [0, 1], got {target!r}")


@dataclass(frozen=True)
class Choice:
    best: Outcome  # on the tuning prompts
    sweep: list[Outcome]  # every candidate on the tuning prompts
    held: Outcome | None  # the chosen candidate on the held-out prompts (None: there are none)
    interval: tuple[float | None, float | None]  # Wilson 95% of the held-out agreement
    tuned: bool  # some candidate reached the target on the tuning prompts
    met: bool  # the held-out agreement reaches the target


def choose(measures: list[PromptMeasure], taus, l_mins, target: float, num_layers: int,
           select_tokens: int) -> Choice:
    """The cheapest candidate (least mean KV share) whose agreement on the tuning prompts is at
    least `target`; ties to the higher agreement, the smaller tau (it fires later on unseen
    prompts), the smaller l_min. When none reaches it: the highest agreement, then the cheapest.
    `met` only where the held-out prompts' agreement reaches `target` too."""
    check_grid(taus, l_mins, target, num_layers)
    tune = [m for m in measures if not m.held_out]
    held = [m for m in measures if m.held_out]
    if not tune:
        raise ValueError("calibration needs at least one tuning prompt (held_out false)")
    sweep = [evaluate(tune, l_min, float(tau), num_layers, select_tokens) for l_min in sorted(set(l_mins))
             for tau in sorted(set(taus))]
    return _judge(sweep, tune, held, target, lambda o: (o.tau, o.l_min),
                  lambda o, prompts: evaluate(prompts, o.l_min, o.tau, num_layers, select_tokens))


def _judge(sweep: list[Outcome], tune, held, target: float, later, judge) -> Choice:
    """The cheapest candidate of `sweep` (on the tuning prompts) that reaches `target`, ties to
    the higher agreement, then to `later` (the candidate that fires later on unseen prompts);
    else the highest agreement, then the cheapest. `judge(best, held)` scores it held out."""
    needed = math.ceil(target * len(tune) - 1e-9)  # counts, so no float noise decides
    feasible = [o for o in sweep if o.agree >= needed]
    if feasible:
        best = min(feasible, key=lambda o: (o.kv, -o.agree, later(o)))
    else:
        best = min(sweep, key=lambda o: (-o.agree, o.kv, later(o)))
    judged = judge(best, held) if held else None
    met = bool(feasible) and judged is not None and judged.agree >= math.ceil(target * judged.n - 1e-9)
    interval = wilson(judged.agree, judged.n) if judged is not None else (None, None)
    return Choice(best, sweep, judged, interval, bool(feasible), met)


RULE_THRESHOLDS = [round(0.05 * i, 2) for i in range(2, 20)]  # 0.10 .. 0.95, a rule's grid


def rule_layer(rule, m: PromptMeasure, l_min: int, last: int) -> int:
    """The layer a stopping rule (asl.policies.adaptive) picks on prompt m, replayed on its
    recorded signals with the rule's own `fires`, so the choice applies exactly the rule that runs."""
    import torch

    def passes(row: dict[str, float]) -> bool:
        return bool(rule.fires({k: torch.tensor([v], dtype=torch.float64) for k, v in row.items()})[0])
    return first_layer(m.signals, passes, l_min, last)


def choose_rule(measures: list[PromptMeasure], make_rule, thresholds, l_min: int, target: float, num_layers: int,
                select_tokens: int) -> Choice:
    """A stopping rule's threshold, chosen as ASL's tau is: the cheapest on the tuning prompts
    whose agreement reaches `target`, judged on the held-out ones. `make_rule(threshold)` builds
    the rule; `thresholds` run from the one that fires latest, which wins ties."""
    tune = [m for m in measures if not m.held_out]
    held = [m for m in measures if m.held_out]
    if not tune:
        raise ValueError("calibration needs at least one tuning prompt (held_out false)")
    last = num_layers - 1
    order = {t: i for i, t in enumerate(thresholds)}

    def judge(t: float, prompts) -> Outcome:
        rule = make_rule(t)
        return outcome(prompts, lambda m: rule_layer(rule, m, l_min, last), l_min, t, num_layers, select_tokens)
    sweep = [judge(t, tune) for t in thresholds]
    return _judge(sweep, tune, held, target, lambda o: order[o.tau], lambda o, prompts: judge(o.tau, prompts))
