"""The run folder's appender: whole lines only, and no record lost to a samples.jsonl replaced
under a running bench (what `git stash` / `git checkout` of a committed run folder does)."""
import json
import os
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
