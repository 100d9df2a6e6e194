"""Rotary position embeddings with the scaling variants our model families use.

Frequencies follow transformers' `modeling_rope_utils` exactly (the logit tests hold us to
it). Positions are explicit per token, because after a token selection the surviving
tokens keep their original, gappy positions.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn(theta: float, dim: int, p: dict, max_pos: int) -> tuple[torch.Tensor, float]:
    factor = p.get("factor") or max_pos / p["original_max_position_embeddings"]
    orig = p["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attention_factor = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attention_factor


def _longrope_attention_factor(p: dict, max_pos: int) -> float:
    """transformers' `_compute_longrope_parameters`: the given factor, else from the ratio of the
    model's positions to its pretraining's."""
    if p.get("attention_factor") is not None:
        return float(p["attention_factor"])
    orig = p["original_max_position_embeddings"]
    factor = p.get("factor") or max_pos / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


class Rope(nn.Module):
    """cos/sin tables for arbitrary position ids ([B, n] -> [B, n, rotary_dim]; the head's
    first rotary_dim dims turn, all of them but with a partial rotary factor)."""

    def __init__(self, config: ModelConfig, params: dict | None = None):
        """`params`: other rope parameters than the config's (a Gemma 3's sliding layers')."""
        super().__init__()
        p, dim = params or config.rope, config.rotary_dim
        self.rope_type = p["rope_type"]
        self.theta, self.dim = float(p["rope_theta"]), dim
        self.max_pos = config.max_position_embeddings
        self.factor = float(p.get("factor") or 1.0)
        self.attention_factor = 1.0
        inv_freq = _base_inv_freq(self.theta, dim)
        if self.rope_type == "linear":
            inv_freq = inv_freq / self.factor
        elif self.rope_type == "llama3":
            inv_freq = _llama3(inv_freq, p)
        elif self.rope_type == "yarn":
            inv_freq, self.attention_factor = _yarn(self.theta, dim, p, self.max_pos)
        self.long_inv_freq = None
        if self.rope_type == "longrope":  # short factors within the pretraining length, long past it
            shape = self.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
            inv_freq = 1.0 / (torch.tensor(p["short_factor"], dtype=torch.float32) * shape)
            self.long_inv_freq = 1.0 / (torch.tensor(p["long_factor"], dtype=torch.float32) * shape)
            self.original_max = p["original_max_position_embeddings"]
            self.attention_factor = _longrope_attention_factor(p, self.max_pos)
        self.inv_freq = inv_freq  # a plain attribute: fp32 whatever dtype the model is cast to

    def _apply(self, fn, recurse=True):
        """Follow the model to its device (model.to, .cuda()), keeping the frequencies fp32, so
        no step copies them from the host (which would also keep CUDA graphs from capturing)."""
        super()._apply(fn, recurse)
        if not self.inv_freq.is_meta:  # one built on meta is rebuilt by whoever loads the weights
            self.inv_freq = self.inv_freq.to(fn(torch.empty(0)).device)
            if self.long_inv_freq is not None:
                self.long_inv_freq = self.long_inv_freq.to(self.inv_freq.device)
        return self

    def _dynamic_inv_freq(self, positions: torch.Tensor) -> torch.Tensor:
        """Dynamic NTK: the base grows with the longest position seen (transformers' rule)."""
        seq_len = torch.clamp(positions.max() + 1, min=self.max_pos).float()
        base = self.theta * ((self.factor * seq_len / self.max_pos) - (self.factor - 1)) ** (self.dim / (self.dim - 2))
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=positions.device).float() / self.dim
        return 1.0 / (base ** exponents)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self._dynamic_inv_freq(positions) if self.rope_type == "dynamic" else self.inv_freq
        if self.long_inv_freq is not None:  # transformers' rule: the pass's longest position picks the set
            inv_freq = torch.where(positions.max() + 1 > self.original_max, self.long_inv_freq, inv_freq)
        freqs = positions.float()[..., None] * inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_factor, emb.sin() * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


    def rotate_by(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Keys x [B, G, n, d] already rotated to their positions, moved by `delta` [B, G, n]
        positions (RoPE rotations add up). Exact for every RoPE type but dynamic NTK and LongRoPE
        past their original length, whose frequencies depend on the longest position."""
        freqs = delta.float()[..., None] * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return turn(x.float(), emb.cos(), emb.sin()).to(x.dtype)


def turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation of x [..., d] by cos/sin [..., r]: the first r dims turn in rotate-half
    pairs (i, i + r/2), the rest pass (a partial rotary factor); cos/sin broadcast against x."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat([turn(x[..., :r], cos, sin), x[..., r:]], dim=-1)
    half = r // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, n, d]; cos/sin: [B, n, r] (r = d, or the turned part of a partial rotary)."""
    return turn(x, cos[:, None], sin[:, None])
