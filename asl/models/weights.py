"""Build our Decoder from a Hugging Face style folder (config.json + *.safetensors)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ModelConfig
from .decoder import Decoder
from .rope import Rope


def decoder_from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], dtype, device) -> Decoder:
    """Our Decoder holding `state` (HF parameter names), cast to dtype, on device."""
    with torch.device("meta"):
        model = Decoder(config)
    model.to_empty(device=device)
    model.rope = Rope(config).to(device)  # its tables were made on meta
    if config.tie_word_embeddings:  # to_empty() gives every module its own storage: tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:  # a tied checkpoint may store either name (transformers 5 keeps lm_head's)
        head = state.pop("lm_head.weight", None)
        if head is not None:
            state.setdefault("model.embed_tokens.weight", head)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the {config.model_type} decoder: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.to(dtype=dtype).eval()


def decoder_from_folder(folder: Path, dtype=torch.float32, device="cpu") -> Decoder:
    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f, device=str(device)))
    return decoder_from_state_dict(config, state, dtype, device)
