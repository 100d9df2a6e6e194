"""Writes an HF checkpoint folder with random weights on a real model's architecture and
tokenizer, for speed and memory runs where the real weights cannot go (the GPU machine is
offline and takes 64 MiB of files): the compute is the real model's, the answers are noise.

    python benchmarks/random_checkpoint.py benchmarks/configs/qwen2.5-0.5b.json TOKENIZER_DIR OUT_DIR

TOKENIZER_DIR holds tokenizer.json, tokenizer_config.json and (if any) chat_template.jinja.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def hf_config(raw: dict):
    """A transformers config object from a config.json dict (benchmarks/gpu_suite.py builds on it too)."""
    raw = dict(raw)
    return AutoConfig.for_model(raw.pop("model_type"), **raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="an HF config.json")
    ap.add_argument("tokenizer_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--max-positions", type=int, default=None, help="override max_position_embeddings")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    raw = json.loads(pathlib.Path(args.config).read_text())
    if args.max_positions:
        raw["max_position_embeddings"] = args.max_positions
    config = hf_config(raw)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out = pathlib.Path(args.out_dir)
    model.save_pretrained(out)
    copied = [name for name in TOKENIZER_FILES if (pathlib.Path(args.tokenizer_dir) / name).exists()]
    if "tokenizer.json" not in copied:
        raise SystemExit(f"tokenizer_dir: no tokenizer.json in {args.tokenizer_dir}")
    for name in copied:
        shutil.copy(pathlib.Path(args.tokenizer_dir) / name, out / name)
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M random parameters, {copied}")


if __name__ == "__main__":
    main()
