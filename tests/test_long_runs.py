"""benchmarks/long_run.sh and benchmarks/checkpoints/resume.sh: a long run resumes from a frozen
worktree of the commit it started at (its folder refuses other library code), so each commit
resume.sh names must exist, and long_run.sh must run the command there with this checkout's
python and paths."""
import pathlib
import re
import shutil
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESUME = ROOT / "benchmarks" / "checkpoints" / "resume.sh"


def git(*args, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


needs_git = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                               reason="needs the project's git history")


@needs_git
def test_every_commit_resume_names_is_in_the_history():
    """resume.sh may name no run (none unfinished); each it names must resume from a real commit."""
    script = RESUME.read_text()
    commits = re.findall(r"long_run\.sh ([0-9a-f]{7,40}) ", script)
    for commit in commits:
        assert git("cat-file", "-t", commit) == "commit", commit
    if not commits:  # nothing to resume: it says so, and starts nothing, on any CPU
        done = subprocess.run(["bash", str(RESUME)], capture_output=True, text=True)
        assert done.returncode == 0 and "no unfinished run" in done.stdout, done


@needs_git
def test_a_long_run_runs_in_a_worktree_of_its_commit(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)], check=True)
    head = git("rev-parse", "HEAD")
    git("checkout", "-q", head, cwd=clone)
    shutil.copy(ROOT / "benchmarks" / "long_run.sh", clone / "benchmarks" / "long_run.sh")  # this checkout's
    first = git("rev-list", "--max-parents=0", "HEAD", cwd=clone).splitlines()[0][:12]
    log = tmp_path / "run.log"
    out = subprocess.run(["bash", "benchmarks/long_run.sh", first, str(log),
                          "echo pwd=$PWD root=$ROOT py=$PY; git rev-parse HEAD"],
                         cwd=clone, capture_output=True, text=True, check=True).stdout
    assert f"runs/wt-{first}" in out
    for _ in range(100):  # it runs in the background
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    lines = log.read_text().splitlines()
    assert lines[0] == f"pwd={clone}/runs/wt-{first} root={clone} py={clone}/.venv/bin/python", lines
    assert lines[1].startswith(first)


def test_a_long_run_without_its_arguments_says_how_to_call_it():
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "long_run.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: bash benchmarks/long_run.sh COMMIT LOG command" in r.stderr
