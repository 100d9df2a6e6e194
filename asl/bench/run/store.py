"""The run folder: per-sample records in JSON lines, written one whole line at a time so an
interrupted run leaves valid files and a rerun picks up where it stopped.

Each rank appends to its own file while running (`samples.jsonl` alone, `samples.rankR.jsonl`
under torchrun); rank 0 folds everything into `samples.jsonl` in a canonical order.
"""
from __future__ import annotations

import json
import os
import pathlib
import warnings

from asl.atomic import write_atomic

SAMPLES = "samples.jsonl"
CONFIG = "config.json"


def record_key(r: dict) -> tuple:
    """What identifies a result: the sample, the method and its budget."""
    return (r["id"], r["method"], r["budget"])


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """Whole lines only: a line cut short by a kill is ignored (and dropped on the next append)."""
    return parse_jsonl(path.read_text()) if path.exists() else []


def _record(line: str) -> dict | None:
    """The record on `line`, or None where it holds none (cut short, or not JSON of a record)."""
    try:
        r = json.loads(line)
        record_key(r)
    except (ValueError, KeyError, TypeError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return r


def parse_jsonl(text: str) -> list[dict]:
    return [r for r in map(_record, text.splitlines()) if r is not None]


def damage(out: pathlib.Path) -> list[str]:
    """What a reader of the run's files skips or overrides without a word, line by line: a whole
    line that holds no record (a line a kill cut short, at the end, is not damage: the run
    leaves it), and a record whose key an earlier line had (the later one is used). A file
    damaged by hand, a bad merge or a copy is then said to be so before its figures are read."""
    problems = []
    for path in [out / SAMPLES, *shard_files(out)]:
        if not path.exists():
            continue
        *lines, _cut = path.read_text().split("\n")
        seen: dict[tuple, tuple[int, str]] = {}
        for n, line in enumerate(lines, 1):
            r = _record(line)
            if r is None:
                problems.append(f"{path.name} line {n} holds no record; skipped")
                continue
            key = record_key(r)
            if key in seen:
                first, text = seen[key]
                what = "the same record" if text == line else "a different record; the later one is used"
                problems.append(f"{path.name} line {n} repeats the key {key} of line {first}: {what}")
            seen[key] = (n, line)
    return problems


def shard_files(out: pathlib.Path) -> list[pathlib.Path]:
    return sorted(out.glob("samples.rank*.jsonl"))


def load_done(out: pathlib.Path) -> dict[tuple, dict]:
    done = {}
    for path in [out / SAMPLES, *shard_files(out)]:
        for r in read_jsonl(path):
            done[record_key(r)] = r
    return done


class Appender:
    """Appends records durably: flush + fsync per line, after cutting any partial last line.

    The file is held open across appends, so one replaced under the run (a `git stash` or
    `checkout` of a committed run folder) would take every later record into the unlinked old
    file, silently lost at the run's end or kill. Before each append the path is checked to
    still name the open file; if not, the new file gets the old one's records it lacks."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._f = self._open()

    def _open(self):
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        return open(self.path, "a+")  # noqa: SIM115 - held open across appends, closed in close(); read by _rejoin

    def _replaced(self) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return True
        held = os.fstat(self._f.fileno())
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def _rejoin(self) -> None:
        """Reopen the path and append the records of the held (old) file that it lacks (by record_key)."""
        if not self.path.parent.is_dir():
            raise ValueError(f"--out {self.path.parent} was removed while the run wrote {self.path.name}; stopped")
        self._f.seek(0)
        old = parse_jsonl(self._f.read())
        self._f.close()
        present = {record_key(r) for r in read_jsonl(self.path)}
        self._f = self._open()
        missing = [r for r in old if record_key(r) not in present]
        for r in missing:
            self._f.write(json.dumps(r) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        warnings.warn(f"{self.path} was replaced or removed while the run wrote it (a git stash or checkout of the "
                      f"run folder?); appended again the {len(missing)} of the {len(old)} records it had that the "
                      "new file lacked", stacklevel=3)

    def write(self, record: dict) -> None:
        if self._replaced():
            self._rejoin()
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def consolidate(out: pathlib.Path, order: dict[tuple, int], extra: list[dict] = ()) -> list[dict]:
    """Fold shard files (and records gathered from other ranks) into samples.jsonl, sorted by
    `order` (the run's work order; unknown keys last, by key). Returns all records."""
    done = load_done(out)
    for r in extra:
        done[record_key(r)] = r
    records = sorted(done.values(), key=lambda r: (order.get(record_key(r), len(order)), str(record_key(r))))
    write_atomic(out / SAMPLES, "".join(json.dumps(r) + "\n" for r in records))
    for path in shard_files(out):
        path.unlink()
    return records


def load_settings(out: pathlib.Path) -> dict | None:
    """The run's settings (config.json: what it ran, with which code), or None when absent."""
    path = out / CONFIG
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"--out {out}: {CONFIG} is not valid JSON ({e or 'nested too deeply'}), so not a run folder the bench can "
                         "recognise; give another --out (--force never touches a folder the bench did not write)"
                         ) from None


def is_bench_config(data) -> bool:
    """Whether a config.json is one the bench wrote (a model's config.json is not)."""
    return (isinstance(data, dict) and isinstance(data.get("format"), int) and isinstance(data.get("run"), dict)
            and isinstance(data.get("policies"), dict))


def write_settings(out: pathlib.Path, settings: dict) -> None:
    write_atomic(out / CONFIG, json.dumps(settings, indent=2) + "\n")


class FolderLock:
    """One bench process per run folder: a second one on the same --out fails at once
    (two plans appending to and consolidating one samples.jsonl would lose records).
    `name`/`target`: a lock file of another name beside what it guards (calibrate's --out file)."""

    def __init__(self, out: pathlib.Path, name: str = ".lock", target: pathlib.Path | None = None,
                 program: str = "asl.bench"):
        self.path = out / name
        self.target = target if target is not None else out
        self.program = program
        self._f = None

    def __enter__(self):
        import fcntl

        self._f = open(self.path, "a+")  # noqa: SIM115 - held for the run, closed in __exit__
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            holder = self._f.read().strip() or "another process"
            self._f.close()
            raise ValueError(f"--out {self.target} is in use by {holder}; wait for it to finish or give "
                             "another --out") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"{self.program} pid {os.getpid()}\n")
        self._f.flush()
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False
