"""Next-token choice: greedy, or temperature sampling with optional top-k / top-p, after the
logits processors transformers users expect (repetition penalty, a minimum of new tokens)."""
from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits [B, V] (fp32) -> token ids [B]."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Sampler:
    """One generation's token choice, step after step, as transformers orders it: the
    repetition penalty (every token of the prompt and of the answer so far: a positive logit
    divided by it, a negative one multiplied), then EOS forbidden until `min_new_tokens` were
    produced, then greedy or sampling."""

    def __init__(self, settings, generator: torch.Generator | None, prompts: list[list[int]], eos: torch.Tensor,
                 vocab_size: int):
        self.settings, self.generator, self.eos, self.produced = settings, generator, eos, 0
        self.seen = None
        if settings.repetition_penalty != 1.0:
            self.seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=eos.device)
            for row, ids in enumerate(prompts):
                self.seen[row, torch.tensor(ids, dtype=torch.long, device=eos.device)] = True

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if self.seen is not None:
            penalised = torch.where(logits < 0, logits * s.repetition_penalty, logits / s.repetition_penalty)
            logits = torch.where(self.seen, penalised, logits)
        if self.produced < s.min_new_tokens and self.eos.numel():
            logits = logits.index_fill(-1, self.eos, float("-inf"))
        tokens = sample(logits, s.temperature, s.top_k, s.top_p, self.generator)
        if self.seen is not None:
            self.seen[torch.arange(len(tokens), device=tokens.device), tokens] = True
        self.produced += 1
        return tokens
