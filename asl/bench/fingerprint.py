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

PACKAGE = pathlib.Path(asl.__file__).resolve().parent
# Files of asl/bench that only read records (their changes never change a result).
READ_ONLY = {"report.py", "plots.py", "stats.py", "cli.py", "session.py", "store.py", "dist.py", "__main__.py", "fingerprint.py",
             "vs_oracle.py", "calibrate.py", "args.py"}


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
    files = [p for p in PACKAGE.rglob("*.py")
             if not (p.parent.name == "bench" and p.name in READ_ONLY) and "__pycache__" not in p.parts]
    csrc = PACKAGE.parent / "csrc"
    if csrc.is_dir():
        files += [p for p in csrc.rglob("*") if p.suffix in {".cpp", ".cu", ".h"}]
    return files


def code_hash() -> str:
    return _hash_files(result_files())


def class_source_hash(cls: type) -> str | None:
    """A hash of the source files of `cls` and its bases outside the library (None: all inside,
    covered by code_hash)."""
    files = set()
    for klass in inspect.getmro(cls):
        module = inspect.getmodule(klass)
        if module is None or module.__name__.split(".")[0] in ("asl", "builtins", "abc", "typing"):
            continue
        try:
            files.add(pathlib.Path(inspect.getsourcefile(klass)).resolve())
        except (TypeError, OSError):
            continue
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
