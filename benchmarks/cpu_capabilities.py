"""Full-cache speed, ours against transformers, under each CPU capability this machine can run.

    python benchmarks/cpu_capabilities.py [--model qwen2.5-0.5b] [--contexts 2048,4096] [--threads 2]
                                          [--out docs/results/cpu-capabilities]

Each row runs benchmarks/decoder_speed.py (prefill and compiled decode, ours against
transformers' sdpa forward and generate, same weights, interleaved medians) in a process of
its own with dtype "auto", as a machine of that kind would run it:

- `default`: what torch picks here (no variable set);
- `avx512`: `ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE`, an AVX-512 CPU without
  bf16 instructions (Skylake-SP), so auto gives float32; only where the CPU has AVX-512;
- `avx2`: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`, an AVX2-only CPU (AMD Zen 3).

Each capability compiles into its own TORCHINDUCTOR_CACHE_DIR (a cache compiled for one
instruction set crashed a process that ran under another). Resumable: finished rows are kept
in --out/runs.jsonl. Writes --out/cpu-capabilities.md (with the CPU's model and flags) and
--out/cpu-capabilities.json. Targets (issue 32): ours at most 1.0x transformers' prefill and
at most 0.5x its time per output token.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from asl.bench.report import rows as tabulate

HERE = pathlib.Path(__file__).resolve().parent
CAPABILITIES = {
    "default": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PREFILL_TARGET, TPOT_TARGET = 1.0, 0.5


def runnable(flags: set[str]) -> list[str]:
    return [c for c in CAPABILITIES if c != "avx512" or "avx512f" in flags]


def measure(capability: str, context: int, args, cache_root: pathlib.Path) -> dict:
    env = {**os.environ, **CAPABILITIES[capability],
           "TORCHINDUCTOR_CACHE_DIR": str(cache_root / f"inductor-{capability}")}
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if name not in CAPABILITIES[capability]:
            env.pop(name, None)
    cmd = [sys.executable, str(HERE / "decoder_speed.py"), "--model", args.model, "--context", str(context),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--dtype", "auto"]
    begun = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "capability_seen": result.pop("capability"), "capability": capability, "context": context,
            "wall_s": round(time.perf_counter() - begun, 1), "env": CAPABILITIES[capability]}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Speed per CPU capability: our decoder against transformers (full cache)",
        "",
        f"CPU: {meta['cpu']}, {meta['cores']} cores ({meta['threads']} threads used); flags: "
        f"{', '.join(meta['flags']) or 'none of ' + ', '.join(SHOWN_FLAGS)}. torch {meta['torch']}, "
        f"transformers {meta['transformers']}; {meta['date']}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "Each row is one process with dtype `auto` under that capability (benchmarks/cpu_capabilities.py says "
        "what each sets). Prefill: our layer-by-layer prefill against transformers' sdpa forward with "
        "`use_cache=True, logits_to_keep=1`, interleaved, median of the repeats. Decode: time per output "
        "token, ours compiled against transformers' `generate`, median of 3. Ratios are ours / transformers "
        f"in the same process. Targets: prefill ratio <= {PREFILL_TARGET}, TPOT ratio <= {TPOT_TARGET}.",
        "",
    ]
    cells = []
    for r in rows:
        p, t = r["prefill_s"], r["tpot_s"]
        met = [f"prefill {'met' if p['ratio'] <= PREFILL_TARGET else 'MISSED'}",
               f"TPOT {'met' if t['ratio'] <= TPOT_TARGET else 'MISSED'}"]
        cells.append([r["capability"], r["capability_seen"], r["dtype"], r["context"], f"{p['asl']:.2f}",
                      f"{p['transformers']:.2f}", f"{p['ratio']:.2f}", f"{1e3 * t['asl_compiled']:.1f}",
                      f"{1e3 * t['transformers_generate']:.1f}", f"{t['ratio']:.2f}", ", ".join(met)])
    lines.append(tabulate.markdown(["capability", "torch sees", "dtype", "tokens", "prefill ours (s)",
                                    "prefill transformers (s)", "ratio", "TPOT ours (ms)", "TPOT transformers (ms)",
                                    "ratio", "targets"], cells))
    lines += ["", "Why each dtype:", ""]
    for cap in dict.fromkeys(r["capability"] for r in rows):
        r = next(x for x in rows if x["capability"] == cap)
        lines.append(f"- `{cap}` ({', '.join(f'{k}={v}' for k, v in r['env'].items()) or 'nothing set'}): "
                     f"{r['dtype']}, {r['dtype_reason']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--contexts", default="2048,4096")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="prefill repeats per row")
    ap.add_argument("--capabilities", default=None, help="comma-separated subset of default, avx512, avx2")
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "results" / "cpu-capabilities"))
    args = ap.parse_args()
    import torch
    import transformers

    from asl.models.dtype import cpu_flags, cpu_model

    flags = cpu_flags()
    caps = runnable(flags)
    if args.capabilities:
        wanted = [c.strip() for c in args.capabilities.split(",")]
        unknown = [c for c in wanted if c not in caps]
        if unknown:
            sys.exit(f"--capabilities: {unknown} cannot run here; allowed: {', '.join(caps)}")
        caps = wanted
    contexts = [int(c) for c in args.contexts.split(",")]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {(r["capability"], r["context"]) for r in rows}
    with tempfile.TemporaryDirectory(prefix="asl-capabilities-") as cache_root:
        for cap in caps:
            for n in contexts:
                if (cap, n) in done:
                    continue
                print(f"{cap} at {n} tokens ...", flush=True)
                row = measure(cap, n, args, pathlib.Path(cache_root))
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"  {row['dtype']}: prefill ratio {row['prefill_s']['ratio']:.2f}, "
                      f"TPOT ratio {row['tpot_s']['ratio']:.2f} ({row['wall_s']} s)", flush=True)
    rows = [r for r in rows if r["capability"] in caps and r["context"] in contexts]
    rows.sort(key=lambda r: (caps.index(r["capability"]), r["context"]))
    meta = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
            "flags": [f for f in SHOWN_FLAGS if f in flags], "torch": torch.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/cpu_capabilities.py " + " ".join(sys.argv[1:])}
    (out / "cpu-capabilities.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "cpu-capabilities.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
