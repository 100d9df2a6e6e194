"""Choosing ASL's threshold from per-prompt measurements: the layer each prompt needed (the
oracle's) and ASL's variance ratios per layer (one recorded run). Which layer ASL would pick
at a threshold follows from the ratios alone, so every candidate costs no model call; plain
Python, so the choice is deterministic (docs/algorithms.md section 14)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptMeasure:
    """One prompt. `needed`: the oracle layer (num_layers - 1 when no candidate layer kept the
    full cache's answer: only not selecting does); `matches`: per candidate layer, whether
    selection there keeps that answer; `ratios`: per l_min, ASL's ratio per evaluated layer."""

    needed: int
    matches: dict[int, bool]
    ratios: dict[int, dict[int, float]]


@dataclass(frozen=True)
class Outcome:
    """A candidate (l_min, tau) over the prompts: the share selected before the layer they
    needed, the share whose answer would differ from the full cache's, and the mean number of
    layers selected later than needed (the time lost)."""

    l_min: int
    tau: float
    n: int
    too_early: float
    mismatch: float
    layers_lost: float


def picked_layer(ratios: dict[int, float], tau: float, l_min: int, last: int) -> int:
    """The layer ASL selects at: the first from l_min whose ratio is below tau; `last` (no
    selection, the full cache) when none is."""
    return next((layer for layer in sorted(ratios) if layer >= l_min and ratios[layer] < tau), last)


def evaluate(measures: list[PromptMeasure], l_min: int, tau: float, num_layers: int) -> Outcome:
    last = num_layers - 1
    early = wrong = lost = 0
    for m in measures:
        layer = picked_layer(m.ratios[l_min], tau, l_min, last)
        early += layer < m.needed
        wrong += not m.matches.get(layer, True)  # the last layer, or no selection: the full answer
        lost += max(0, layer - m.needed)
    n = len(measures)
    return Outcome(l_min, tau, n, early / n, wrong / n, lost / n)


def check_grid(taus, l_mins, target, num_layers: int) -> None:
    """Raises ValueError naming the parameter when the search space is not one."""
    if not taus or any(not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0
                       for t in taus):
        raise ValueError(f"--taus must be finite numbers >= 0, got {taus!r}")
    if not l_mins or any(not isinstance(v, int) or not 0 <= v < num_layers for v in l_mins):
        raise ValueError(f"--l-min must be layers of the model (0..{num_layers - 1}), got {l_mins!r}")
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 <= target <= 1:
        raise ValueError(f"--target must be a share in [0, 1], got {target!r}")


def choose(measures: list[PromptMeasure], taus, l_mins, target: float,
           num_layers: int) -> tuple[Outcome, list[Outcome], bool]:
    """(the chosen candidate, every candidate, whether it meets the target).

    Among the candidates with at most `target` of the prompts selected too early: the fewest
    layers lost, then fewer too early, fewer wrong answers, the smaller tau (it fires later on
    unseen prompts) and the smaller l_min. When none meets the target: the fewest too early."""
    check_grid(taus, l_mins, target, num_layers)
    if not measures:
        raise ValueError("calibration needs at least one prompt")
    sweep = [evaluate(measures, l_min, float(tau), num_layers) for l_min in sorted(set(l_mins))
             for tau in sorted(set(taus))]
    allowed = math.floor(target * len(measures) + 1e-9)  # counts, so no float noise decides
    feasible = [o for o in sweep if round(o.too_early * o.n) <= allowed]
    if feasible:
        best = min(feasible, key=lambda o: (o.layers_lost, o.too_early, o.mismatch, o.tau, o.l_min))
    else:
        best = min(sweep, key=lambda o: (o.too_early, o.layers_lost, o.mismatch, o.tau, o.l_min))
    return best, sweep, bool(feasible)
