"""python -m asl.verify: rehash every file of the converted-model cache (or of the named
bundled models) against the record written with it. Loading checks sizes always and rehashes
a file whose size, mtime or inode moved; this catches what keeps all three (a write in place
that restored the mtime, a failing disk). `--repair` removes damaged entries: the next load
converts them again."""
from __future__ import annotations

import argparse
import shutil
import sys

from .models.loading import BUNDLED, cache_folder, cache_dir, cache_entries, cache_problem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m asl.verify", description=__doc__)
    ap.add_argument("names", nargs="*", help=f"bundled models to verify ({', '.join(BUNDLED)}); default: every entry")
    ap.add_argument("--repair", action="store_true", help="remove damaged entries (rebuilt on next use)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BUNDLED]
    if unknown:
        print(f"python -m asl.verify: error: {', '.join(unknown)}: not a bundled model ({', '.join(BUNDLED)})",
              file=sys.stderr)
        return 2
    folders = [cache_folder(n, BUNDLED[n].sha256) for n in args.names] if args.names else cache_entries()
    if not folders:
        print(f"asl.verify: no converted model in {cache_dir()}")
    damaged = 0
    for folder in folders:
        problem = cache_problem(folder, full=True) if folder.is_dir() else "not converted yet"
        print(f"{folder.name}: {'ok' if problem is None else problem}", flush=True)
        if problem is not None and folder.is_dir():
            damaged += 1
            if args.repair:
                shutil.rmtree(folder)
                print(f"  removed {folder}; the next load converts it again")
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
