"""KVgrad (kvpress's KVgradPress; openreview cg1wTCJjjk): KVzip's replay, each entry weighted by
how much what it writes moves the model's last hidden states (input x gradient attribution).
docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.decoder import attend
from .kvzip import KVzip, replay_attention


@dataclass
class KVgrad(KVzip):
    """KVzip's replay and cut, with entry c of layer l scoring
    `max_{p, group head} A_pc * ||v_c W_O|| * ||d Phi / d a_p||`: A the replay's attention as in
    KVzip, `v_c W_O` the value times the head's slice of the output projection (what the entry
    writes into the residual stream), `a_p` the layer's attention output at replay token p and
    `Phi = sum_p ||h_p||^2` over the last layer's output (before the final norm). One forward
    and one backward pass per chunk of `chunk` tokens (kvpress's default 512); the gradient is
    asked of the attention outputs alone (`torch.autograd.grad`), so the weights and the stored
    cache are only read and one model serves many threads."""

    chunk: int = 512

    def chunk_scores(self, model, prompt: list, replay: torch.Tensor, start: int, end: int) -> torch.Tensor:
        n, m = prompt[0][0].shape[2], replay.shape[1]
        read, written = [], []  # per layer: the replay's queries and keys; its attention outputs
        with torch.inference_mode(False), torch.enable_grad():  # the cache and weights read only: the
            h, rope = model.embed(replay.clone(), torch.arange(n, n + m, device=replay.device)[None])  # graph holds
            h = h.detach().requires_grad_(True)  # the activations, and grad() asks for the written outputs only
            sees = torch.ones(m, n + m, dtype=torch.bool, device=h.device).tril(n)[None, None]
            for i, layer in enumerate(model.layers):
                q, k, v = layer.project(h, *rope)
                keys, values = torch.cat([prompt[i][0].clone(), k], 2), torch.cat([prompt[i][1].clone(), v], 2)
                read.append((q.detach(), keys.detach()))
                out = attend(q, keys, values, sees, layer.self_attn.softcap)
                written.append(layer.self_attn.o_proj(out.transpose(1, 2).reshape(1, m, -1)))
                h = layer.after_attention(h, written[-1])
            gradients = torch.autograd.grad(h.float().square().sum(), written)
        scores = []
        with torch.no_grad():
            for i, layer in enumerate(model.layers):
                q, keys = read[i]
                sensitivity = gradients[i][0].float().norm(dim=-1)  # [m]: ||dPhi/da_p||
                _, attention = replay_attention(q, keys, None, n, start, end, min(self.n_sink, start),
                                                row_scale=sensitivity)  # [G, group, len]: max_p A_pc ||dPhi/da_p||
                g, group = attention.shape[:2]
                weight = layer.self_attn.o_proj.weight.float()
                projection = weight.view(weight.shape[0], g, group, -1)  # [D, G, group, d]
                values = prompt[i][1][0, :, start:end].float()  # [G, len, d]
                written_norm = torch.einsum("jhgi,hti->hgtj", projection, values).norm(dim=-1)  # [G, group, len]
                scores.append((attention * written_norm).amax(dim=1))  # ||v W_O|| does not depend on p
        return torch.stack(scores)
