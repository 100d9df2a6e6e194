"""Build our Decoder from a Hugging Face style folder (config.json + *.safetensors)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ModelConfig
from .decoder import Decoder


def decoder_from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], dtype, device) -> Decoder:
    """Our Decoder holding `state` (HF parameter names), cast to dtype, on device."""
    with torch.device("meta"):
        model = Decoder(config)
    model.to_empty(device=device)
    model.build_rope(device)  # its tables were made on meta
    if config.tie_word_embeddings:  # to_empty() gives every module its own storage: tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    state = stack_experts(config, {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")})
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


LEGACY_EXPERTS = {  # one tensor per expert, as the hub's checkpoints store them: (block, gate, up, down)
    "mixtral": ("block_sparse_moe", "w1", "w3", "w2"),
    "qwen3_moe": ("mlp", "gate_proj", "up_proj", "down_proj"),
}


def stack_experts(config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MoE checkpoint with one tensor per expert (Mixtral's `block_sparse_moe.experts.{i}.w1`,
    Qwen3-MoE's `mlp.experts.{i}.gate_proj`) in transformers 5's 3-D layout: `mlp.experts.gate_up_proj`
    [E, 2I, D] (gate then up), `mlp.experts.down_proj` [E, D, I], `mlp.gate.weight`. A state already
    in that layout passes as it is."""
    if config.model_type not in LEGACY_EXPERTS:
        return state
    block, gate, up, down = LEGACY_EXPERTS[config.model_type]
    state = dict(state)
    for layer in range(config.num_layers):
        old, new = f"model.layers.{layer}.{block}.", f"model.layers.{layer}.mlp."
        if f"{old}experts.0.{gate}.weight" not in state:
            continue
        take = lambda name: [state.pop(f"{old}experts.{i}.{name}.weight") for i in range(config.num_experts)]  # noqa: E731
        state[f"{new}experts.gate_up_proj"] = torch.stack([torch.cat(pair) for pair in zip(take(gate), take(up))])
        state[f"{new}experts.down_proj"] = torch.stack(take(down))
        state[f"{new}gate.weight"] = state.pop(f"{old}gate.weight")
    return state


def decoder_from_folder(folder: Path, dtype=torch.float32, device="cpu") -> Decoder:
    """Our Decoder from a checkpoint folder, its weights checked before and after they are read:
    only the files the index names (or exactly model.safetensors) are read, the tensors' names,
    shapes and kinds must match the config before anything is allocated, and every weight must
    be finite."""
    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    files = weight_files(folder)
    check_shapes(config, files)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f, device=str(device)))
    bad = [name for name, t in state.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{folder}: weights with NaN or infinite values: {', '.join(bad[:5])}"
                         f"{' ...' if len(bad) > 5 else ''}")
    return decoder_from_state_dict(config, state, dtype, device)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a checkpoint consists of: those its index names, else exactly
    model.safetensors, else its one *.safetensors. A file besides them would override tensors
    silently if read, so it is refused by name."""
    present = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            named = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not a safetensors index with a weight_map ({e})") from None
        missing = [p.name for p in named if not p.is_file()]
        if missing:
            raise ValueError(f"{index} names {', '.join(missing)}, which {folder} lacks")
    elif (folder / "model.safetensors").is_file():
        named = [folder / "model.safetensors"]
    elif len(present) == 1:
        named = present
    else:
        raise ValueError(f"{folder}: {len(present)} *.safetensors files and no model.safetensors.index.json to say "
                         f"which are the model: {', '.join(p.name for p in present) or 'none'}")
    stray = [p.name for p in present if p not in named]
    if stray:
        raise ValueError(f"{folder}: {', '.join(stray)} {'is' if len(stray) == 1 else 'are'} not part of the model "
                         f"({'its index names' if index.is_file() else 'it is'} {', '.join(p.name for p in named)}); "
                         "remove or move them: they would override its tensors")
    return named


_FLOATS = {"F64", "F32", "F16", "BF16"}


def check_shapes(config: ModelConfig, files: list[Path]) -> None:
    """The files' tensors against what the config builds (names, shapes, floating point),
    read from their headers, before any weight or module is allocated."""
    from safetensors import safe_open

    stored: dict[str, tuple[list[int], str]] = {}
    for f in files:
        with safe_open(str(f), "pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                stored[name] = (piece.get_shape(), piece.get_dtype())
    layers = {int(n.split(".")[2]) for n in stored if n.startswith("model.layers.")}
    if layers and max(layers) + 1 != config.num_layers:
        raise ValueError(f"config num_hidden_layers is {config.num_layers}, the weights hold {max(layers) + 1} layers")
    kinds = sorted({f"{n} ({dt})" for n, (_, dt) in stored.items() if dt not in _FLOATS})
    if kinds:
        raise ValueError(f"weights must be floating point; not: {', '.join(kinds[:5])}")
    with torch.device("meta"):
        expected = {n: list(p.shape) for n, p in Decoder(config).named_parameters()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        if "model.embed_tokens.weight" not in stored and "lm_head.weight" in stored:
            stored["model.embed_tokens.weight"] = stored.pop("lm_head.weight")
    wrong = [f"{n}: {stored[n][0]} in the file, {shape} from the config" for n, shape in expected.items()
             if n in stored and stored[n][0] != shape]
    if wrong:
        raise ValueError(f"the weights do not fit the config: {'; '.join(wrong[:3])}")
