"""asl.export: write a model as a Hugging Face folder that transformers (and every tool that
reads one) loads: a bundled model's dequantised checkpoint, or the weights of a Decoder as
they are now (after a user's own edits)."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

from ..atomic import user_mode
from .decoder import Decoder
from .interop import is_transformers_model

_MARKER = "complete.json"  # the cache's own record, not part of a checkpoint


def export(model, folder: str | os.PathLike, tokenizer=None) -> pathlib.Path:
    """Write `model` into `folder` (new, or an empty folder) as config.json, model.safetensors
    and, where known, the tokenizer's files. `model` is a bundled name, a checkpoint path or
    hub id as `asl.load` takes, an asl Decoder, or a transformers model. The folder appears
    whole or not at all (written beside it, then renamed)."""
    out = pathlib.Path(folder).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"folder {out} exists and is not empty: export writes a new folder (or an empty one)")
    if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
        raise ValueError(f"tokenizer must be a transformers tokenizer or None, got {type(tokenizer).__name__}")
    if isinstance(model, (str, os.PathLike)):
        from .loading import resolve_checkpoint

        write = _copier(resolve_checkpoint(model))
    elif isinstance(model, Decoder):
        write = _decoder_writer(model)
    elif is_transformers_model(model):
        def write(tmp):
            model.save_pretrained(tmp)
    else:
        raise ValueError(f"model must be a bundled name, a checkpoint path, an asl Decoder or a transformers model, "
                         f"got {type(model).__name__}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-export-"))
    try:
        write(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.chmod(tmp, user_mode(0o777))  # mkdtemp makes it private
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _copier(source: pathlib.Path):
    from .weights import weight_files

    weights = set(weight_files(source))  # refuses a folder with stray weight files

    def write(tmp: pathlib.Path) -> None:
        for f in sorted(source.iterdir()):
            if f.is_file() and f.name != _MARKER and (f.suffix != ".safetensors" or f in weights):
                shutil.copyfile(f, tmp / f.name)
    return write


def _decoder_writer(model: Decoder):
    config = dict(model.config.hf)
    if not config:
        raise ValueError("this Decoder's config was not read from a Hugging Face config (ModelConfig.from_hf): "
                         "there is no config.json to write")

    def write(tmp: pathlib.Path) -> None:
        from safetensors.torch import save_file

        dtype = model.lm_head.weight.dtype
        config["torch_dtype" if "torch_dtype" in config or "dtype" not in config else "dtype"] = str(dtype).split(".")[-1]
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # transformers ties it to the embedding again
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return write
