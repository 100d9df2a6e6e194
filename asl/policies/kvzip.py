"""KVzip (Kim et al., *KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction*,
arXiv 2505.23416; kvpress's KVzipPress): after the prefill the model is asked to repeat the
context, chunk by chunk, over its own cache; an entry matters as much as the most any repeating
query attends to it, and the least-attended entries of all layers and heads together are
evicted. docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .base import EvictionPolicy, LayerView, check_positive_int, is_number, keep_from_mask

REPEAT_FIRST = "\n\nRepeat the previous context exactly."
REPEAT_NEXT = "\n\nRepeat the part of the previous context exactly, starting with"
POSTFIX = 8  # tokens of the previous chunk quoted after REPEAT_NEXT (kvpress's prev_postfix_size)


@dataclass
class KVzip(EvictionPolicy):
    """Every layer stores the whole prompt; then, per sequence and per chunk of `chunk` prompt
    tokens, the repeat prompt (REPEAT_FIRST, or REPEAT_NEXT and the previous chunk's last 8
    tokens), the chat template's assistant opening ("\\n" without a template) and the chunk run
    through the model at the positions after the prompt, attending to the whole cache. Entry j
    of the chunk scores, per layer and KV head, the largest softmax weight any of those queries
    of its group gives it, the softmax taken over the first `n_sink` entries, the chunk and the
    replay itself (causally), as kvpress computes it. The `n_sink` first entries score above
    all. Then `int(L * G * n * ratio)` entries with the lowest scores go, over all layers and
    heads together (`layerwise=True`: `int(G * n * ratio)` per layer), so layers and heads keep
    different counts. A prompt that opens with the chat template's own preamble has those
    tokens unscored (0; kvpress assumes every context does). Its `keep` keeps everything: the
    cut comes from `after_prefill`, which needs the tokenizer (asl.generate and asl.compress
    pass it). Not for sliding-window models (kvpress: not Gemma 3); no selection before it.
    kvpress's KVzip+ normalisation (`kvzip_plus_normalization`) is not included."""

    ratio: float = 0.5  # the share of the prompt's entries evicted, over all layers and heads
    n_sink: int = 4
    chunk: int = 2048  # prompt tokens repeated per replay (kvpress's chunk_size)
    layerwise: bool = False

    def _check(self) -> None:
        if not is_number(self.ratio) or not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be a number in (0, 1) (the share of entries evicted), got {self.ratio!r}")
        check_positive_int("n_sink", self.n_sink, 0)
        check_positive_int("chunk", self.chunk)
        if not isinstance(self.layerwise, bool):
            raise ValueError(f"layerwise must be True or False, got {self.layerwise!r}")

    def keep(self, layer: int, view: LayerView) -> None:
        return None  # every entry, until the replay has scored them all

    def after_prefill(self, model, tokens, cache, tokenizer) -> list[torch.Tensor]:
        if tokenizer is None:
            raise ValueError("KVzip writes a repeat prompt, so it needs the tokenizer: run it through asl.generate or "
                             "asl.compress with one")
        check_global_attention(model, type(self).__name__)
        texts = replay_texts(tokenizer)
        return per_sequence(tokens, lambda b, ids, pad: self._kept(self.scores(model, cache, b, ids.tolist(), pad, texts)))

    def scores(self, model, cache, b: int, ids: list[int], pad: int, texts: dict) -> torch.Tensor:
        """[L, G, n] the replay's scores of sequence b's entries (its prompt `ids`, after `pad`
        columns of left padding in the cache)."""
        n = len(ids)
        prompt = [(layer.k[b:b + 1, :, pad:pad + n], layer.v[b:b + 1, :, pad:pad + n]) for layer in cache.layers]
        scores = torch.zeros(len(model.layers), model.config.num_kv_heads, n, dtype=torch.float32,
                             device=cache.layers[0].k.device)
        first = len(texts["prefix"]) if ids[: len(texts["prefix"])] == texts["prefix"] else 0
        for start in range(first, n, self.chunk):
            end = min(start + self.chunk, n)
            ask = texts["first"] if start == first else texts["next"] + ids[max(start - POSTFIX, start - self.chunk):start]
            replay = torch.tensor([ask + texts["suffix"] + ids[start:end]], device=scores.device)
            if n + replay.shape[1] > model.config.max_position_embeddings:
                raise ValueError(f"{type(self).__name__}: the replay of prompt tokens {start}-{end} runs to position "
                                 f"{n + replay.shape[1]}, past the model's {model.config.max_position_embeddings}: "
                                 "give a smaller chunk")
            scores[:, :, start:end] = self.chunk_scores(model, prompt, replay, start, end)
        return scores

    def chunk_scores(self, model, prompt: list, replay: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """[L, G, end - start]: the scores of the chunk [start, end) from its replay [1, m];
        `prompt` holds each layer's stored keys and values [1, G, n, d]."""
        n, m = prompt[0][0].shape[2], replay.shape[1]
        h, rope = model.embed(replay, torch.arange(n, n + m, device=replay.device)[None])
        scores = []
        for i, layer in enumerate(model.layers):
            q, k, v = layer.project(h, *rope)
            keys, values = torch.cat([prompt[i][0], k], 2), torch.cat([prompt[i][1], v], 2)
            out, best = replay_attention(q, keys, values, n, start, end, min(self.n_sink, start))
            scores.append(best.amax(1))  # the most of the group's query heads
            if i < len(model.layers) - 1:
                h = layer.finish(h, out.to(h.dtype).transpose(1, 2).reshape(1, m, -1))
        return torch.stack(scores)

    def _kept(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, [G, k] the kept columns of one sequence's scores [L, G, n] (-1 pads)."""
        count, g, n = scores.shape
        scores[..., : self.n_sink] = scores.max() + 1
        if self.layerwise:
            pruned = [int(g * n * self.ratio)] * count
        else:
            lowest = ops.stable_descending_order(-scores.reshape(1, -1))[0, : int(scores.numel() * self.ratio)]
            pruned = torch.bincount(lowest // (g * n), minlength=count).tolist()
        kept = []
        for i, drop in enumerate(pruned):
            mask = torch.ones(g * n, dtype=torch.bool, device=scores.device)
            mask[ops.stable_descending_order(-scores[i].reshape(1, -1))[0, :drop]] = False  # ties: the earlier go
            kept.append(keep_from_mask(mask.view(g, n)))
        return kept


def replay_attention(q, keys, values, n: int, start: int, end: int, sink: int, rows: int = 16, subset: bool = True,
                     row_scale: torch.Tensor | None = None):
    """The replay's attention and its scores, from one set of logits. q [1, H, m, d] the replay's
    queries; keys, values [1, G, n + m, d] the prompt's entries then the replay's own, which it
    sees causally. Returns the attention output [1, H, m, d] (float32) and, per query head (as
    [G, group, end - start]), the most any replay query gives each entry of [start, end) when the
    softmax is taken over the first `sink` entries, those and the replay only (KVzip's), or
    with `subset=False` over everything it sees (KVCompose's); each query's weights times
    `row_scale` [m] first, where given (KVgrad's gradient norms). `values=None`: no output (None).
    In blocks of `rows` queries, so that the logits [H, rows, n + m] stay in the CPU's cache
    between their passes (16 rows: 1.6x faster at 4,096 tokens than 256, the same numbers)."""
    _, heads, m, d = q.shape
    g = keys.shape[1]
    group = heads // g
    k = keys[0].float().transpose(1, 2)  # [G, d, n + m]
    v = None if values is None else values[0].float()
    out = None if values is None else torch.empty(1, heads, m, d, dtype=torch.float32, device=q.device)
    best = torch.zeros(g, group, end - start, dtype=torch.float32, device=q.device)
    replay = torch.arange(m, device=q.device)
    for r in range(0, m, rows):
        part = q[0, :, r:r + rows].float()  # [H, b, d]
        b = part.shape[1]
        logits = torch.matmul(part.reshape(g, group * b, d), k).mul_(d ** -0.5).view(g, group, b, n + m)
        logits[..., n:].masked_fill_(replay[None, :] > replay[r:r + b, None], float("-inf"))  # causal in the replay
        weights = logits.sub_(logits.amax(-1, keepdim=True)).exp_()  # unnormalised
        total = weights.sum(-1, keepdim=True)
        if out is not None:
            out[0, :, r:r + b] = torch.matmul(weights.view(g, group * b, n + m), v).view(heads, b, d) \
                / total.view(heads, b, 1)
        if subset:
            total = weights[..., :sink].sum(-1, keepdim=True) + weights[..., start:end].sum(-1, keepdim=True) \
                + weights[..., n:].sum(-1, keepdim=True)
        chunk = weights[..., start:end] / total
        if row_scale is not None:
            chunk = chunk * row_scale[r:r + b, None].float()
        best = torch.maximum(best, chunk.amax(dim=2))
    return out, best


def check_global_attention(model, who: str) -> None:
    """A second reading scores plain softmax attention: refused on sliding-window layers or capped logits."""
    if any(layer.window is not None or layer.self_attn.softcap for layer in model.layers):
        raise ValueError(f"{who}: {model.config.model_type} has sliding-window layers or capped logits, which its "
                         "second reading of the prompt does not score (kvpress refuses Gemma 3 likewise)")


def per_sequence(tokens, kept_of) -> list[torch.Tensor]:
    """Per layer, [B, G, k] the cache's kept columns (-1 pads): `kept_of(b, ids, pad)` gives one
    sequence's per-layer [G, k_b] columns of its own prompt `ids` (after `pad` columns of left
    padding); they are moved past the padding and stacked."""
    width = tokens.valid.shape[1]
    rows = []
    for b in range(tokens.ids.shape[0]):
        pad = width - int(tokens.valid[b].sum())
        rows.append([torch.where(cols >= 0, cols + pad, -1) for cols in kept_of(b, tokens.ids[b, pad:], pad)])
    return [keep_rows([row[i] for row in rows]) for i in range(len(rows[0]))]


def keep_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Sequences' [G, k_b] kept columns (-1 pads) as one [B, G, k] tensor."""
    k = max(r.shape[-1] for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, k - r.shape[-1]), value=-1) for r in rows])


def template_parts(tokenizer) -> tuple[str, str]:
    """kvpress's reading of the chat template: the text before a user message (its preamble) and
    after it up to the assistant's answer; ("", "\n") without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return "", "\n"
    dummy = "dummy context"
    separator = "\n" + "#" * len(dummy)
    text = tokenizer.apply_chat_template([{"role": "user", "content": dummy + separator}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    context, suffix = text.split(separator)
    return context.split(dummy)[0], suffix


def replay_texts(tokenizer) -> dict:
    """The replay's token ids: the two repeat prompts, the template's preamble and its assistant opening."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] if text else []  # noqa: E731
    prefix, suffix = template_parts(tokenizer)
    return {"first": encode(REPEAT_FIRST), "next": encode(REPEAT_NEXT), "prefix": encode(prefix),
            "suffix": encode(suffix)}
