"""A researcher's own policy, outside the library, benched through `--methods module:Class`."""
from dataclasses import dataclass

import torch

import asl


@dataclass
class HalfwayTopK(asl.SelectionPolicy):
    """Select the most attended tokens once, at a fixed fraction of the model's depth."""

    select_tokens: int = 256  # kept, window included
    window: int = 32
    fraction: float = 0.5

    def begin(self, prefill):
        self.at, self.batch, self.done = int(prefill.num_layers * self.fraction), prefill.batch_size, False

    def after_layer(self, layer, view):
        scores = view.token_scores(self.window)
        k = self.select_tokens - self.window
        if self.done or layer != self.at or scores.shape[-1] <= k:
            return None
        self.done = True
        keep = view.with_window(scores.topk(k, dim=-1).indices.sort(-1).values, self.window)
        return asl.Selection(keep=keep, active=torch.ones(self.batch, dtype=torch.bool))

    def report(self):
        return [{"selection_layer": self.at if self.done else None}] * self.batch
