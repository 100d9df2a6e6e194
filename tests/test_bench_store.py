"""The run folder's appender: whole lines only, and no record lost to a samples.jsonl replaced
under a running bench (what `git stash` / `git checkout` of a committed run folder does)."""
import json
import os
import pathlib
import warnings

import pytest

from asl.bench.run import store


def rec(i: int) -> dict:
    return {"id": f"s{i}", "method": "snapkv", "budget": 64, "score": 1.0}


def keys(path) -> list[tuple]:
    return [store.record_key(r) for r in store.read_jsonl(path)]


def replace_with(path, records) -> None:
    """A new file (new inode) at the path, as git writes one."""
    tmp = path.with_suffix(".new")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def test_appends_whole_lines_and_cuts_a_partial_last_one(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + '{"id": "cut short')
    appender = store.Appender(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was replaced: no warning
        appender.write(rec(1))
        appender.write(rec(2))
    appender.close()
    assert path.read_text().endswith("\n")
    assert keys(path) == [store.record_key(rec(i)) for i in range(3)]


def test_a_file_replaced_by_an_older_copy_gets_back_the_records_it_lacks(tmp_path):
    path = tmp_path / "samples.jsonl"
    replace_with(path, [rec(0)])  # committed before the run
    appender = store.Appender(path)
    for i in (1, 2, 3):
        appender.write(rec(i))
    replace_with(path, [rec(1)])  # another file holding record 1 alone: record 0, from before the run, too comes back
    with pytest.warns(UserWarning, match="appended again the 3 of the 4 records"):
        appender.write(rec(4))
    appender.write(rec(5))
    appender.close()
    assert keys(path) == [store.record_key(rec(i)) for i in (1, 0, 2, 3, 4, 5)]  # each once


@pytest.mark.parametrize("change, lacked", [
    (lambda path: replace_with(path, [rec(0)]), 0),  # git stash and pop: the same content, another file
    (lambda path: path.unlink(), 1),
])
def test_a_stash_and_pop_or_a_removed_file_loses_nothing(tmp_path, change, lacked):
    path = tmp_path / "samples.jsonl"
    appender = store.Appender(path)
    appender.write(rec(0))
    change(path)
    with pytest.warns(UserWarning, match=f"appended again the {lacked} of the 1 records"):
        appender.write(rec(1))
    appender.close()
    assert keys(path) == [store.record_key(rec(0)), store.record_key(rec(1))]


def test_a_removed_folder_stops_the_run_naming_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    appender = store.Appender(out / "samples.jsonl")
    appender.write(rec(0))
    (out / "samples.jsonl").unlink()
    out.rmdir()
    with pytest.raises(ValueError, match=f"--out {out} was removed"):
        appender.write(rec(1))
    assert not out.exists()  # not re-created
    appender.close()


def test_damage_names_each_line_a_reader_skips_or_overrides_but_not_a_cut_last_line(tmp_path):
    """A reader drops a line that holds no record and keeps the later of two records with one
    key, silently: damage() names them, line by line, so a hand-edited, badly merged or
    truncated-in-the-middle file is caught before its figures are quoted. The last line a kill
    cut short is what a run leaves, not damage; a clean file has none."""
    path = tmp_path / "samples.jsonl"
    lines = [json.dumps(rec(0)), json.dumps(rec(1)), '{"id": "s2", "meth', json.dumps(rec(0)), "[1, 2]",
             json.dumps(dict(rec(1), score=0.0)), json.dumps({"id": "s9"})]
    path.write_text("\n".join(lines) + "\n" + '{"id": "cut short')
    assert store.damage(tmp_path) == [
        "samples.jsonl line 3 holds no record; skipped",
        "samples.jsonl line 4 repeats the key ('s0', 'snapkv', 64) of line 1: the same record",
        "samples.jsonl line 5 holds no record; skipped",
        "samples.jsonl line 6 repeats the key ('s1', 'snapkv', 64) of line 2: a different record; the later one is "
        "used",
        "samples.jsonl line 7 holds no record; skipped"]
    assert [r["score"] for r in store.load_done(tmp_path).values()] == [1.0, 0.0]  # what the reader does
    (tmp_path / "samples.rank1.jsonl").write_text(json.dumps(rec(3)) + "\nnot json\n")
    assert store.damage(tmp_path)[-1] == "samples.rank1.jsonl line 2 holds no record; skipped"
    path.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(3)) + '{"id": "cut')
    (tmp_path / "samples.rank1.jsonl").unlink()
    assert store.damage(tmp_path) == [] and store.damage(tmp_path / "absent") == []


def test_every_committed_run_folder_reads_whole():
    """The results and checkpoints in the repository: no record line lost or written twice,
    so their figures come from every record they hold."""
    root = pathlib.Path(__file__).resolve().parents[1]
    folders = sorted({p.parent for top in ("docs/results", "benchmarks") for p in (root / top).rglob("samples.jsonl")})
    assert folders
    for folder in folders:
        assert store.damage(folder) == [], folder
