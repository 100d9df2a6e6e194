"""What a benchmark run is, so that a rerun into the same folder can be refused when it is
not the same run: hours of results must never mix two versions of the code or settings.

A run is identified by its settings (model, dtype, seed, device, threads, compile, the
versions of torch and transformers), a hash of the library's code that produces the
records (the engine, the policies, the ops, the tasks and the metrics; not the report or
the plots, which are rebuilt from the records), and per method the effective fields of
every policy it builds plus, for a policy class from outside the library, a hash of its
source.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import pathlib
import re

import asl
from asl.atomic import write_atomic

PACKAGE = pathlib.Path(asl.__file__).resolve().parent
# Files of asl/bench that only read records (their changes never change a result).
READ_ONLY = {"report", "cli.py", "run/session.py", "run/store.py", "run/dist.py", "__main__.py", "run/fingerprint.py",
             "calibrate.py", "args.py"}


def _hash_files(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        inside = path.is_relative_to(PACKAGE.parent)
        digest.update(str(path.relative_to(PACKAGE.parent) if inside else path.name).encode())
        digest.update(_code_of(path))
    return digest.hexdigest()[:16]


# C/C++ comments, or string and character literals (matched so that a "//" inside one is kept).
_C_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def _code_of(path: pathlib.Path) -> bytes:
    """What a file contributes: for Python its syntax tree without docstrings, for C++ and
    CUDA the text without comments and with white space folded (so comments, docstrings and
    formatting never invalidate a run)."""
    data = path.read_bytes()
    if path.suffix != ".py":
        text = _C_TOKENS.sub(lambda m: " " if m.group(0).startswith("/") else m.group(0), data.decode("utf-8", "replace"))
        return " ".join(text.split()).encode()
    try:
        tree = ast.parse(data)
    except SyntaxError:
        return data
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False).encode()


def result_files() -> list[pathlib.Path]:
    """The sources a record depends on: asl/ less the read-only bench files, and csrc/ when
    the package runs from a checkout (an editable install)."""
    bench = PACKAGE / "bench"
    read_only = [bench / name for name in READ_ONLY]
    files = [p for p in PACKAGE.rglob("*.py")
             if not any(p == r or p.is_relative_to(r) for r in read_only) and "__pycache__" not in p.parts]
    csrc = PACKAGE.parent / "csrc"
    if csrc.is_dir():
        files += [p for p in csrc.rglob("*") if p.suffix in {".cpp", ".cu", ".h"}]
    return files


def code_hash() -> str:
    return _hash_files(result_files())


def class_source_hash(cls: type) -> str | None:
    """A hash of the source of `cls` and its bases outside the library, and of every module of
    the user's package they import, transitively (None: all inside, covered by code_hash). A
    helper module changed between two runs changes it."""
    files = set()
    for klass in inspect.getmro(cls):
        module = inspect.getmodule(klass)
        if module is None or module.__name__.split(".")[0] in ("asl", "builtins", "abc", "typing"):
            continue
        try:
            files.add(pathlib.Path(inspect.getsourcefile(klass)).resolve())
        except (TypeError, OSError):
            continue
        files |= source_closure(module.__name__)
    return _hash_files(files) if files else None


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable `key: old -> new` lines for what differs between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def git_commit() -> str | None:
    """The checkout's commit (and "+changes" when the tree differs), where there is one."""
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")


# The files of a checkpoint folder whose bytes decide a run's results: the config, the
# tokenizer and the weights (other files in the folder, such as a README, do not).
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "*.safetensors", "*.safetensors.index.json")


def model_hash(folder: pathlib.Path) -> str:
    """A content hash of the checkpoint's config, tokenizer and weight files, so a resume
    cannot mix two models behind one path. Each file's sha256 is kept in the asl cache by its
    identity (path, size, mtime, inode): a model is hashed in full once, then on change only."""
    import json

    from asl.models.loading import cache_dir, sha256_files

    files = sorted({p.resolve() for pattern in MODEL_FILES for p in pathlib.Path(folder).glob(pattern)
                    if p.is_file()})
    store = cache_dir() / "file-hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    digest, changed = hashlib.sha256(), False
    for path in files:
        st = path.stat()
        identity = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        entry = known.get(str(path))
        if not (isinstance(entry, dict) and entry.get("identity") == identity):
            entry, changed = {"identity": identity, "sha256": sha256_files([path])}, True
            known[str(path)] = entry
        digest.update(f"{path.name}\0{entry['sha256']}\n".encode())
    if changed:
        write_atomic(store, json.dumps(known))
    return digest.hexdigest()[:16]


def _user_root(path: pathlib.Path, module_name: str) -> pathlib.Path:
    """The folder that holds the top-level package (or the lone module) `module_name` comes from."""
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    return path.parents[depth]


def _outside_environment(path: pathlib.Path) -> bool:
    """Not the standard library or an installed package: the user's own code."""
    import site
    import sysconfig

    installed = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    installed |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return not any(path.is_relative_to(pathlib.Path(p).resolve()) for p in installed if p)


def source_closure(module_name: str) -> set[pathlib.Path]:
    """The source files of `module_name` and of every module of the same user package it
    imports, transitively (imports inside functions too): what a custom policy's behaviour
    can depend on beyond the library itself."""
    import importlib.util
    import sys

    def origin(name: str) -> pathlib.Path | None:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None) if module is not None else None
        if file is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                return None
            file = spec.origin if spec is not None else None
        return pathlib.Path(file).resolve() if file and file.endswith(".py") else None

    start = origin(module_name)
    if start is None:
        return set()
    root = _user_root(start, module_name)
    seen, todo = set(), [(module_name, start)]
    while todo:
        name, path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if not target or target.split(".")[0] == "asl":
                    continue
                found = origin(target)
                if found is not None and found.is_relative_to(root) and _outside_environment(found):
                    todo.append((target, found))
    return seen
