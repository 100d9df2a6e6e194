"""Weights checked before use (issue 34): only the model's own files are read, their tensors must
fit the config before anything is allocated, and every weight must be a finite float."""
import json
import time

import pytest
import safetensors.torch
import torch

from asl.models.weights import decoder_from_folder
from test_interop import hf_model


@pytest.fixture
def folder(tmp_path):
    hf_model("llama").save_pretrained(tmp_path)  # config.json + model.safetensors
    return tmp_path


def state(folder):
    return safetensors.torch.load_file(folder / "model.safetensors")


def save(folder, tensors, name="model.safetensors"):
    safetensors.torch.save_file(tensors, str(folder / name), metadata={"format": "pt"})


def test_a_clean_folder_loads(folder):
    assert decoder_from_folder(folder).config.num_layers == 4


def test_a_stray_safetensors_file_is_refused_by_name(folder):
    save(folder, {"model.norm.weight": torch.zeros(64)}, "extra.safetensors")  # it would override the norm
    with pytest.raises(ValueError, match="extra.safetensors is not part of the model .it is model.safetensors."):
        decoder_from_folder(folder)


def test_only_the_files_the_index_names_are_read(folder):
    tensors = state(folder)
    names = sorted(tensors)
    save(folder, {k: tensors[k] for k in names[:10]}, "part-1.safetensors")
    save(folder, {k: tensors[k] for k in names[10:]}, "part-2.safetensors")
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {k: "part-1.safetensors" if i < 10 else "part-2.safetensors" for i, k in enumerate(names)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert decoder_from_folder(folder).config.num_layers == 4
    save(folder, {"model.norm.weight": torch.zeros(64)}, "old.safetensors")
    with pytest.raises(ValueError, match="old.safetensors is not part of the model .its index names part-1"):
        decoder_from_folder(folder)


@pytest.mark.parametrize("spoil, message", [
    (lambda t: t["model.layers.0.mlp.up_proj.weight"].view(-1).__setitem__(3, float("nan")),
     "weights with NaN or infinite values: model.layers.0.mlp.up_proj.weight"),
    (lambda t: t["model.norm.weight"].__setitem__(0, float("inf")), "NaN or infinite values: model.norm.weight"),
    (lambda t: t.__setitem__("model.norm.weight", t["model.norm.weight"].long()),
     r"weights must be floating point; not: model.norm.weight \(I64\)"),
])
def test_non_finite_or_non_float_weights_are_refused(folder, spoil, message):
    tensors = state(folder)
    spoil(tensors)
    save(folder, tensors)
    with pytest.raises(ValueError, match=message):
        decoder_from_folder(folder)


def test_a_config_that_does_not_fit_the_weights_fails_before_allocating(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 100_000}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="config num_hidden_layers is 100000, the weights hold 4 layers"):
        decoder_from_folder(folder)
    assert time.perf_counter() - start < 5  # was 102 s of allocation before failing
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    with pytest.raises(ValueError, match=r"the weights do not fit the config: .*\[96, 64\] in the file, \[80, 64\]"):
        decoder_from_folder(folder)
