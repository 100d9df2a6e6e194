"""Argument helpers the bench's commands share: every check names the flag and what it allows."""
from __future__ import annotations

import argparse
import sys


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def ints(text: str, name: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise ValueError(f"--{name} must be integers >= {minimum}, got {text!r}")
    return sorted(set(values))


def parse_tasks(tasks_text: str, lengths_text: str) -> tuple[list[str], list[int]]:
    """--tasks and --lengths, checked against each other (every task fits the shortest length)."""
    from asl.bench.tasks import TASKS

    tasks = [t.strip() for t in tasks_text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; allowed: {', '.join(TASKS)}")
    tasks = list(dict.fromkeys(tasks))
    lengths = ints(lengths_text, "lengths")
    short = [f"{t} needs >= {TASKS[t].min_length}" for t in tasks if TASKS[t].min_length > lengths[0]]
    if short:
        raise ValueError(f"--lengths {lengths[0]} is too short: {'; '.join(short)}")
    return tasks, lengths


def model_config(model: str, lengths: list[int]):
    """(checkpoint folder, ModelConfig) of --model, checked to take prompts of --lengths."""
    from asl.calibration import config_of
    from asl.models.loading import resolve_checkpoint

    try:
        folder = resolve_checkpoint(model)
        config = config_of(str(folder))
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None
    limit = config.max_position_embeddings - 256  # room for the answer
    too_long = [n for n in lengths if n > limit]
    if too_long:
        raise ValueError(f"--lengths: {too_long} exceed what {model} can take ({config.max_position_embeddings} "
                         f"positions, so at most {limit} prompt tokens)")
    return folder, config


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu")


def add_dtype(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="auto: bfloat16 where the device computes it natively (CUDA with bf16; a CPU with avx512_bf16 "
                         "or amx_bf16 at torch capability AVX512 or wider), else float32 (asl.resolve_dtype)")


def resolve_dtype_flag(args, prog: str) -> None:
    """--dtype made concrete for --device: args.dtype becomes the name it resolves to and
    args.dtype_reason says why; an explicit bfloat16 that this CPU emulates gets a one-line warning."""
    import sys

    from asl.models.dtype import resolve_dtype, slow_bf16_warning

    resolved = resolve_dtype(args.dtype, args.device, warn=False)
    args.dtype, args.dtype_reason = resolved.name, resolved.reason
    if resolved.slow:
        print(f"{prog}: warning: {slow_bf16_warning(resolved.reason.split(': ', 1)[-1])}", file=sys.stderr)


def os_error(e: OSError) -> str:
    """An OSError in one line: what failed, on which file."""
    return f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"


def one_line_errors(program: str, run) -> int:
    """`run()`, with bad input (ValueError) and a failing disk or folder (OSError: full, read
    only) reported as one line naming the culprit, exit status 2, no traceback."""
    try:
        return run()
    except ValueError as e:
        print(f"{program}: error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"{program}: error: {os_error(e)}", file=sys.stderr)
    return 2
