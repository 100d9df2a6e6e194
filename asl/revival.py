"""LazyLLM's decoding (asl.LazyLLM with revive=True; docs/algorithms.md section 21).

Every step selects again, from every token so far, at the pruning layers, by the new token's
attention (averaged over the query heads, the same score the prefill used). At each layer the
new token attends to the tokens selected at the last pruning layer before it (to all of them
before the first); a selected token that was never computed at a layer (pruned there by the
prefill or by an earlier step) is computed there now, from its hidden state in the aux cache
(the output of the layer before), together with the new token, attending causally to the same
selected tokens; then it stays computed, so no token is computed twice at a layer. A token a
step does not select at a pruning layer stops there for this step, its latest hidden state kept.

Eager and one sequence at a time: the set of tokens a layer computes changes every step. The
KV a layer holds only grows (LazyLLM saves prefill compute, not memory).
"""
from __future__ import annotations

import torch

from .models.decoder import prefill_attention
from .policies.lazyllm import LazyLLM, top_share


class Revival:
    """The per-sequence state of LazyLLM's decoding, built from its prefill; `step` is the
    decode loop's step function (the static cache it is given is not used)."""

    def __init__(self, model, pre, policy: LazyLLM):
        self.policy = policy
        self.shares = {layer: policy.share(i) for i, layer in enumerate(policy.pruning)}
        self.layers = []  # [B][L] (keys [G, m, d], values [G, m, d], positions [m]) of the tokens computed there
        for b in range(len(pre.alive_tokens)):
            rows = []
            for cache in pre.cache.layers:
                real = cache.valid[b, 0, : cache.filled]  # a selection alone: every KV head holds the same tokens
                rows.append((cache.k[b, :, : cache.filled][:, real], cache.v[b, :, : cache.filled][:, real],
                             cache.index[b, 0, : cache.filled][real].long()))
            self.layers.append(rows)

    def kv_tokens(self) -> list[list[int]]:
        """[B][L] entries each layer holds now (they only grow: the peak)."""
        return [[held.shape[0] for _, _, held in rows] for rows in self.layers]

    @torch.inference_mode()
    def step(self, model, tokens, positions, slots, caches, *extra) -> torch.Tensor:
        """Feed tokens [B] at positions [B] (each sequence's own prompt index: its positions run
        0.. over its real tokens); returns logits [B, V]."""
        return model.logits(torch.cat([self._one(model, b, tokens[b], int(positions[b]))
                                       for b in range(tokens.shape[0])]))

    def _one(self, model, b: int, token: torch.Tensor, position: int) -> torch.Tensor:
        aux, layers = self.policy.aux[b], self.layers[b]
        device = token.device
        h, _ = model.embed(token.view(1, 1), torch.tensor([[position]], device=device))
        selected = None  # positions the new token attends to; None: every token
        for j, layer in enumerate(model.layers):
            keys, values, held = layers[j]
            resumed = [] if selected is None else [p for p in selected[~torch.isin(selected, held)].tolist()
                                                     if p != position]
            if any(aux[p][0] != j - 1 for p in resumed):
                raise RuntimeError(f"LazyLLM: a token resumed at layer {j} from another layer's hidden state")
            rows = torch.cat([torch.stack([aux[p][1] for p in resumed]).to(h.dtype)[None], h], 1) if resumed else h
            at = torch.tensor([resumed + [position]], device=device)
            q, k, v = layer.project(rows, *model.tables(at, rows.dtype))
            keys, values, held = torch.cat([keys, k[0]], 1), torch.cat([values, v[0]], 1), torch.cat([held, at[0]])
            layers[j] = (keys, values, held)
            seen = torch.ones_like(held, dtype=torch.bool) if selected is None else \
                torch.isin(held, selected) | (held == position)
            mask = seen[None, :] & (held[None, :] <= at[0][:, None])  # [r + 1, m]: selected, causal
            rows = layer.finish(rows, prefill_attention(q, keys[None], values[None], mask[None, None],
                                                        layer.self_attn.softcap))
            for i, p in enumerate(resumed):  # computed here now; its output is where it resumes from next
                aux[p] = (j, rows[0, i])
            self.policy.revived[b] += len(resumed)
            h = rows[:, -1:]
            if j in self.shares:
                selected = self._select(q[0, :, -1], keys, held, mask[-1], position, self.shares[j])
        return h[:, -1]

    @staticmethod
    def _select(q_last, keys, held, seen, position: int, share: float) -> torch.Tensor:
        """The positions the new token's attention keeps (the paper's score: probabilities
        averaged over the query heads; the new token always stays), ascending."""
        h, g = q_last.shape[0], keys.shape[0]
        logits = torch.einsum("hd,hmd->hm", q_last.float(), keys.float().repeat_interleave(h // g, 0))
        probs = torch.softmax((logits / q_last.shape[-1] ** 0.5).masked_fill(~seen, float("-inf")), -1).mean(0)
        order = held[seen].argsort()  # candidates by position, so ties go to the earlier token
        candidates, scores = held[seen][order], probs[seen][order]
        scores[candidates == position] = float("inf")
        return candidates[top_share(scores, share)]

