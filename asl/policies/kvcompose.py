"""KVCompose (Akulov et al., *KVCompose: Efficient Structured KV Cache Compression with Composite
Tokens*, arXiv 2509.05165; kvpress's KVComposePress): the prompt is read again over its own cache;
each entry scores by the attention that second reading pays it, and the layers' budgets come from
"composite tokens", each head's scores in rank order averaged across heads, ranked over all layers
together. docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .base import EvictionPolicy, LayerView, check_positive_int, is_number, keep_from_mask
from .kvzip import check_global_attention, per_sequence, replay_attention


@dataclass
class KVCompose(EvictionPolicy):
    """After the prefill the whole prompt runs again at the positions after it, over the cache
    and causally over itself. Per layer and query head an entry scores the most any query of that
    second reading pays it (softmax over everything it sees); the group's query heads are averaged
    (per KV head), then each layer's heads get the mean over its KV heads added
    (`add_mean_across_heads`), and `add_v_norm` multiplies by the value's norm first. Composite
    tokens: per KV head the scores sorted descending, then per layer the mean over its KV heads at
    each rank; layer 0's composite is the most of every layer's at that rank. The
    `max(1, int(L n (1 - ratio)))` best composite tokens of all layers decide how many entries each
    layer keeps (at least `max(1, keep_token_lower_bound)`; the first that many ranks always
    count), and each KV head keeps its own best that many (`structured`, one count per layer, the
    cache stays rectangular), or, `structured=False`, the counts come per head from the heads'
    own sorted scores ranked over all layers and heads. Ties: the earlier layer, head and entry."""

    ratio: float = 0.5  # the share of the prompt's entries evicted, over all layers
    structured: bool = True
    add_v_norm: bool = False
    add_mean_across_heads: bool = True
    keep_token_lower_bound: int = 0

    def _check(self) -> None:
        if not is_number(self.ratio) or not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be a number in (0, 1) (the share of entries evicted), got {self.ratio!r}")
        for name in ("structured", "add_v_norm", "add_mean_across_heads"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_positive_int("keep_token_lower_bound", self.keep_token_lower_bound, 0)

    def keep(self, layer: int, view: LayerView) -> None:
        return None  # every entry, until the second reading has scored them all

    def after_prefill(self, model, tokens, cache, tokenizer) -> list[torch.Tensor]:
        check_global_attention(model, type(self).__name__)
        longest = int(tokens.valid.sum(-1).max())
        if 2 * longest > model.config.max_position_embeddings:
            raise ValueError(f"KVCompose reads the prompt again after it: {2 * longest} positions, past the model's "
                             f"{model.config.max_position_embeddings}")
        return per_sequence(tokens, lambda b, ids, pad: self.kept(self.scores(model, cache, b, ids[None], pad)))

    def scores(self, model, cache, b: int, ids: torch.Tensor, pad: int) -> torch.Tensor:
        """[L, G, n] sequence b's scores (its prompt `ids` [1, n], after `pad` columns of left
        padding in the cache), after `add_v_norm` and `add_mean_across_heads`."""
        n = ids.shape[1]
        h, rope = model.embed(ids, torch.arange(n, 2 * n, device=ids.device)[None])
        scores = []
        for i, layer in enumerate(model.layers):
            q, k, v = layer.project(h, *rope)
            stored = cache.layers[i]
            prompt_values = stored.v[b:b + 1, :, pad:pad + n]
            keys, values = torch.cat([stored.k[b:b + 1, :, pad:pad + n], k], 2), torch.cat([prompt_values, v], 2)
            out, best = replay_attention(q, keys, values, n, 0, n, 0, subset=False)
            layer_scores = best.mean(1)  # [G, n]: the group's query heads averaged
            if self.add_v_norm:
                layer_scores = layer_scores * prompt_values[0].float().norm(dim=-1)
            if self.add_mean_across_heads:
                layer_scores = layer_scores + layer_scores.mean(0, keepdim=True)
            scores.append(layer_scores)
            if i < len(model.layers) - 1:
                h = layer.finish(h, out.to(h.dtype).transpose(1, 2).reshape(1, n, -1))
        return torch.stack(scores)

    def kept(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, [G, k] the kept columns of one sequence's scores [L, G, n] (-1 pads)."""
        count, g, n = scores.shape
        ranked = scores.sort(dim=-1, descending=True).values  # [L, G, n] each head's scores, best first
        floor = max(1, self.keep_token_lower_bound)
        total = max(1, int(scores.numel() // g * (1 - self.ratio)))
        if self.structured:
            composite = ranked.mean(1)  # [L, n]
            composite[0] = composite.max(0).values  # layer 0 is never the smallest
            composite[:, : self.keep_token_lower_bound] += 1e9
            best = ops.stable_descending_order(composite.reshape(1, -1))[0, :total]
            counts = torch.bincount(best // n, minlength=count).clamp(min=floor)[:, None].expand(count, g)
        else:
            per_head = ranked.clone()
            per_head[..., : self.keep_token_lower_bound] += 1e9
            best = ops.stable_descending_order(per_head.reshape(1, -1))[0, : max(1, int(scores.numel() * (1 - self.ratio)))]
            counts = torch.bincount(best // n, minlength=count * g).view(count, g)
        order = ops.stable_descending_order(scores)  # [L, G, n] each head's entries, best first
        kept = []
        for i in range(count):
            mask = torch.zeros(g, n, dtype=torch.bool, device=scores.device)
            for j in range(g):
                mask[j, order[i, j, : int(counts[i, j])]] = True
            kept.append(keep_from_mask(mask))
        return kept
