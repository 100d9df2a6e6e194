"""`python -m asl.bench`: see asl/bench/cli.py."""
import sys

from asl.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
