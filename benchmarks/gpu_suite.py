"""The prepared device run of issue 23, as one process within a time budget: the ops against
their torch fallback, then TTFT, TPOT and peak memory of full, SnapKV, FastKV, ASL (forced at
FastKV's layer), GemFilter and ASL two-pass on a model shape at long context, with
transformers' own sdpa forward and compiled static-cache decode as the reference.

    bash benchmarks/gpu_suite.sh            # on the GPU machine: build, CUDA tests, then this
    python benchmarks/gpu_suite.py --device cpu --config benchmarks/configs/qwen2.5-0.5b.json \\
        --layers 8 --tokens 2048          # the CPU dry run

The weights are random, made on the device (real ones cannot travel there), so ASL's layer is
forced with `l_max` (the compute of a real selection there). Cases run most important first:
every method at the shortest length, then at the longest, then the others. Each is estimated
from what this run has measured so far and, when it would overrun --budget-s, run with fewer
repeats, without decode, or skipped, always with the reason recorded. Every case rewrites
--out's suite.json and suite.md, so a run stopped midway keeps what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import math
import os
import pathlib
import statistics
import time
import traceback

import torch

import asl
import suite_cases as run
from gpu_prefill import methods, model_shape, random_decoder
from suite_report import HF_DECODE, HF_PREFILL, add_ratios, markdown, targets

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "benchmarks" / "configs" / "llama-3.1-8b-instruct.json"
COMPILE_PRIOR_S = {"cuda": 90.0, "cpu": 30.0}  # a first compile's guess, until this run has timed one


def _tokens(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be whole numbers separated by commas, got {text!r}") from None
    if any(v < 64 for v in values):
        raise argparse.ArgumentTypeError(f"every length must be at least 64 tokens, got {text!r}")
    return values


def _step(text: str) -> tuple[str, dict]:
    name, sep, rest = text.partition("=")
    status, _, detail = rest.partition(":")
    if not sep or not name or not status:
        raise argparse.ArgumentTypeError(f"must be NAME=STATUS[:DETAIL], got {text!r}")
    return name, {"status": status, "detail": detail}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda where torch sees one")
    ap.add_argument("--tokens", type=_tokens, default=[32768, 65536, 131072], help="prompt lengths, N[,N...]")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the model shape (an HF config.json)")
    ap.add_argument("--layers", type=int, help="keep the first N layers only (a dry run)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="seconds for this whole process")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-suite")
    ap.add_argument("--select-tokens", type=int, help="k and SnapKV's budget (default 2048, or a quarter of "
                    "the shortest prompt when that is less)")
    ap.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per run (TPOT)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case after its warm-up, at most")
    ap.add_argument("--ops-repeats", type=int, default=5, help="repeats of the ops timing (0: skip it)")
    ap.add_argument("--threads", type=int, help="torch's CPU threads")
    ap.add_argument("--decode-shapes", choices=["dynamic", "static"], default="dynamic",
                    help="dynamic: torch.compile traces the decode step with symbolic sizes, one compile for "
                         "every cache size; static: torch's default (recompiles on new sizes)")
    ap.add_argument("--no-compile", action="store_true", help="eager decode (a quick dry run)")
    ap.add_argument("--no-transformers", action="store_true", help="skip transformers' reference cases")
    ap.add_argument("--step", type=_step, action="append", default=[], metavar="NAME=STATUS[:DETAIL]",
                    help="an earlier step's outcome to record (gpu_suite.sh: the build, the CUDA tests)")
    args = ap.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this torch sees no CUDA device")
    k = args.select_tokens or min(2048, min(args.tokens) // 4)
    for flag, value, low in (("--select-tokens", k, 33), ("--new-tokens", args.new_tokens, 2),
                             ("--repeats", args.repeats, 1), ("--ops-repeats", args.ops_repeats, 0),
                             ("--threads", args.threads or 1, 1), ("--budget-s", args.budget_s, 1)):
        if value < low:
            ap.error(f"{flag} must be at least {low}, got {value}")
    args.select_tokens = k
    try:
        model_shape(args.config, args.layers)
    except OSError as e:
        ap.error(f"--config: cannot read {args.config}: {e.strerror}")
    except json.JSONDecodeError as e:
        ap.error(f"--config: {args.config} is not JSON: {e}")
    except ValueError as e:  # names --layers
        ap.error(str(e))
    return args


def decode_mode(device: torch.device, no_compile: bool) -> dict:
    """What asl.generate's compile gets: "reduce-overhead" (CUDA graphs) on CUDA where
    asl.generation knows that mode, else True; False with --no-compile."""
    if no_compile:
        return {"compile": False, "why": "--no-compile"}
    if device.type != "cuda":
        return {"compile": True, "why": "CUDA graphs need a CUDA device"}
    if "reduce-overhead" in inspect.getsource(asl.generation):
        return {"compile": "reduce-overhead", "why": "CUDA graphs: asl.generation has that mode"}
    return {"compile": True, "why": "this asl.generation has no compile='reduce-overhead' (no CUDA graphs)"}


def build_models(raw: dict, device: torch.device, want_hf: bool):
    """(our Decoder, transformers' LlamaForCausalLM-like model or None, why none). Where
    transformers imports, ours converts its model and shares its weights: one copy on the device."""
    if not want_hf:
        return random_decoder(raw, device.type), None, "--no-transformers"
    try:
        import transformers
        from random_checkpoint import hf_config
    except ImportError as e:
        return random_decoder(raw, device.type), None, f"transformers does not import here: {e}"
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config(raw), dtype=torch.bfloat16,
                                                           attn_implementation="sdpa").eval()
    ours = asl.from_transformers(hf)
    # from_transformers makes RoPE's inv_freq on the CPU (asl/models/interop.py); a host tensor
    # in the compiled decode step can keep inductor from CUDA graphs, so it goes to the device.
    ours.rope.inv_freq = ours.rope.inv_freq.to(device)
    return ours, hf, None


def length_order(tokens: list[int]) -> list[int]:
    """The shortest length first, then the longest, then the rest (32k, 128k, 64k)."""
    s = sorted(set(tokens))
    return s[:1] + s[-1:] * (len(s) > 1) + s[1:-1]


def plan(tokens: list[int], names: list[str]) -> list[dict]:
    order = ["full", HF_PREFILL] + [m for m in names if m != "full"] + [HF_DECODE]
    return [{"tokens": n, "method": m, "status": "not reached"} for n in length_order(tokens) for m in order]


def kind(method: str) -> str:
    return {HF_PREFILL: "hf-prefill", HF_DECODE: "hf-decode"}.get(method, "ours")


class Estimates:
    """Seconds a case should take, from this run's own measurements: prefill scales with the
    length between linearly and quadratically (so up by the power 1.7, down linearly)."""

    def __init__(self, device: str, compiles: bool, dynamic: bool):
        self.ttft: dict[tuple[str, int], float] = {}
        self.tpot: dict[str, float] = {}
        prior = COMPILE_PRIOR_S[device]
        self.compile = {"ours": prior if compiles else 0.0, "hf": prior if device == "cuda" else 0.0}
        self.dynamic, self.compiled = dynamic, False
        self.timed_compile = 0.0  # per timed run of ours (recompiles or re-captures a new cache may cause)

    def _scaled(self, method: str, n: int) -> float | None:
        known = [(m, t) for (name, m), t in self.ttft.items() if name == method]
        if not known:
            return None
        m, t = min(known, key=lambda mt: abs(math.log(mt[0] / n)))
        return t * (n / m) ** (1.7 if n > m else 1.0)

    def prefill(self, method: str, n: int) -> float:
        base = HF_PREFILL if method == HF_DECODE else method
        if (base, n) in self.ttft:
            return self.ttft[(base, n)]
        full = self.ttft.get(("full", n)) or self._scaled("full", n) or 0.0
        ratios = [t / self.ttft[("full", m)] for (name, m), t in self.ttft.items()
                  if name == base and ("full", m) in self.ttft]
        return full * (ratios[-1] if ratios else 1.0)

    def cost(self, method: str, n: int, repeats: int, new_tokens: int, compiling: bool = True) -> float:
        """Warm-up plus `repeats` timed runs; without `compiling`, leaving out the compile time
        (a one-off: with dynamic shapes only the first decode case compiles)."""
        k = kind(method)
        guess = self.tpot.get("full", 0.0) * (1.5 if k == "hf-decode" else 1.0)  # no TPOT of its own yet
        one = self.prefill(method, n) + (new_tokens - 1) * self.tpot.get(method, guess)
        extra = 0.0
        if compiling and new_tokens > 1 and k == "ours":
            extra = self.compile["ours"] + repeats * self.timed_compile
        elif compiling and k == "hf-decode":
            extra = self.compile["hf"]
        return (1 + repeats) * one + extra

    def update(self, case: dict) -> None:
        m, n = case["method"], case["tokens"]
        if case.get("ttft_s"):
            self.ttft[(m, n)] = case["ttft_s"]
        if case.get("tpot_s"):
            self.tpot[m] = case["tpot_s"]
        if kind(m) == "ours" and case.get("decode"):  # with dynamic shapes the first compile serves all sizes
            first = not self.compiled and case["compiles"] > 0
            self.compile["ours"] = 0.0 if first and self.dynamic else case["compile_s"]
            self.compiled |= case["compiles"] > 0
            self.timed_compile = case["timed_compile_s"] / case["repeats"]
        if kind(m) == "hf-decode" and case.get("compile_s") is not None:
            self.compile["hf"] = case["compile_s"]


def tiers(method: str, repeats: int, new_tokens: int) -> list[tuple[int, int]]:
    """(timed runs, new tokens) to try, best first; new tokens 1 is a prefill without decode."""
    k = kind(method)
    if k == "hf-prefill":
        return [(repeats, 1), (1, 1)]
    if k == "hf-decode":
        return [(1, new_tokens)]
    return [(repeats, new_tokens), (1, new_tokens), (1, 1)]


def choose(est: Estimates, case: dict, rest: list[dict], left: float, args) -> tuple[int, int, float] | None:
    """The best tier that fits: above the cheapest, it must leave room for the cheapest tier of
    the cases still to come at this length."""
    options = tiers(case["method"], args.repeats, args.new_tokens)
    reserve = sum(est.cost(c["method"], c["tokens"], *tiers(c["method"], args.repeats, args.new_tokens)[-1],
                           compiling=False) for c in rest if c["tokens"] == case["tokens"])
    for i, (repeats, new) in enumerate(options):
        need = est.cost(case["method"], case["tokens"], repeats, new)
        if need + (reserve if i < len(options) - 1 else 0) <= left:
            return repeats, new, need
    return None


def summarize(warm: dict, timed: list[dict], method: str) -> dict:
    """Medians over the timed runs; peak the largest; compile time the warm-up's."""
    def median(field):
        values = [r[field] for r in timed if r.get(field) is not None]
        return statistics.median(values) if values else None

    out = {f: median(f) for f in ("ttft_s", "tpot_s", "tpot_median_s", "policy_s", "wall_s")}
    if kind(method) == "hf-prefill":
        out["ttft_s"] = out["wall_s"]
    peaks = [r["peak_bytes"] for r in timed if r.get("peak_bytes") is not None]
    out["peak_bytes"] = max(peaks) if peaks else None
    out["total_peak_bytes"] = max((r.get("total_peak_bytes") or 0 for r in timed), default=0) or None
    last = timed[-1]
    for f in ("kv_bytes", "new_tokens", "selection_layer"):
        out[f] = last.get(f)
    if kind(method) == "ours":
        out.update(compile_s=warm["compile_s"], compiles=warm["compiles"],
                   timed_compile_s=sum(r["compile_s"] for r in timed),
                   cudagraph_skips=warm["cudagraph_skips"] + sum(r["cudagraph_skips"] for r in timed))
    elif kind(method) == "hf-decode":  # the warm-up's extra time is its compile and capture
        out.update(compile_s=max(0.0, warm["wall_s"] - out["wall_s"]), compiled_graphs=warm["compiled_graphs"])
    return out


class Suite:
    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.device = torch.device(args.device)
        self.out = pathlib.Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.est = Estimates(self.device.type, not args.no_compile, args.decode_shapes == "dynamic")
        self.result: dict = {"meta": {}, "steps": dict(args.step), "decode": {}, "cases": [], "targets": []}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def write(self) -> None:
        r = self.result
        r["elapsed_s"] = time.perf_counter() - self.t0
        add_ratios(r["cases"])
        r["targets"] = targets(r) if r["cases"] else []
        for name, text in (("suite.json", json.dumps(r, indent=1, default=str)), ("suite.md", markdown(r))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)

    def setup(self) -> None:
        a = self.args
        if a.threads:
            torch.set_num_threads(a.threads)
        raw = model_shape(a.config, a.layers, max(a.tokens) + a.new_tokens)
        self.result["decode"] = {**decode_mode(self.device, a.no_compile), "shapes": a.decode_shapes}
        try:
            self.result["steps"]["ops"] = run.ops_step(self.device, a.ops_repeats)
        except Exception as e:  # the cases do not depend on it
            traceback.print_exc()
            self.result["steps"]["ops"] = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:300]}
        start = time.perf_counter()
        self.model, self.hf, why = build_models(raw, self.device, not a.no_transformers)
        self.no_hf = why
        self.result["steps"]["model"] = {"status": "ok", "detail": f"random bf16 weights made on {a.device} in "
                                         f"{time.perf_counter() - start:.1f} s" + (f"; {why}" if why else
                                         "; ours shares transformers' weights")}
        c = self.model.config
        self.tok = run.RandomIds(c.vocab_size)
        self.policies = lambda: methods(c.num_layers, a.select_tokens, model_type=c.model_type, restarts=True)
        self.result["meta"] = {
            "device": a.device, "device_name": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": _version("transformers"), "config": a.config,
            "layers": c.num_layers, "dtype": "bfloat16", "tokens": a.tokens, "select_tokens": a.select_tokens,
            "new_tokens": a.new_tokens, "repeats": a.repeats, "budget_s": a.budget_s,
            "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
            "max_position_embeddings": raw["max_position_embeddings"], "policies": self._describe(),
            "layers_note": _layers_note(self.policies(), c.num_layers),
        }
        self.result["cases"] = plan(a.tokens, list(self.policies()))

    def _describe(self) -> dict:
        return {name: [repr(p) for p in pair if p is not None] for name, pair in self.policies().items()}

    def one_run(self, method: str, n: int, new_tokens: int):
        """A no-argument callable doing one run of the case."""
        if kind(method) == "ours":
            pair = self.policies()[method]
            dyn = self.args.decode_shapes == "dynamic"
            return lambda: run.ours(self.model, self.tok, n, pair, new_tokens, self.result["decode"]["compile"], dyn)
        ids = torch.tensor([self.tok.ids(n)], device=self.device)
        if kind(method) == "hf-prefill":
            return lambda: run.hf_prefill(self.hf, ids)
        return lambda: run.hf_static_decode(self.hf, ids, new_tokens)

    def measure(self, case: dict, repeats: int, new_tokens: int) -> dict:
        fn = self.one_run(case["method"], case["tokens"], new_tokens)
        try:
            warm = run.measured(fn, self.device)
        except (TypeError, ValueError) as e:  # an asl.generate that refuses the CUDA-graph mode
            d = self.result["decode"]
            if kind(case["method"]) != "ours" or d["compile"] != "reduce-overhead" or "compile" not in str(e):
                raise
            d.update(compile=True, why=f"asl.generate refused compile='reduce-overhead': {e}")
            fn = self.one_run(case["method"], case["tokens"], new_tokens)
            warm = run.measured(fn, self.device)
        timed = [run.measured(fn, self.device) for _ in range(repeats)]
        return {"status": "ok", "repeats": repeats, "decode": new_tokens > 1, **summarize(warm, timed, case["method"])}

    def run_case(self, case: dict, rest: list[dict]) -> None:
        if kind(case["method"]) != "ours" and self.hf is None:
            case.update(status="skipped", reason=self.no_hf)
            return
        left = self.left()
        picked = choose(self.est, case, rest, left, self.args)
        if picked is None:
            need = self.est.cost(case["method"], case["tokens"], *tiers(case["method"], 1, self.args.new_tokens)[-1])
            case.update(status="skipped", reason=f"budget: needs ~{need:.1f} s, {max(left, 0):.1f} s left")
            return
        repeats, new_tokens, need = picked
        case.update(status="interrupted", reason=f"the run stopped during this case (estimated {need:.0f} s)")
        self.write()
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {case['tokens']:>7} {case['method']:<20} "
              f"{repeats} run(s){'' if new_tokens > 1 else ', prefill only'}, ~{need:.0f} s", flush=True)
        start = time.perf_counter()
        try:
            case.update(self.measure(case, repeats, new_tokens), reason=None)
        except torch.cuda.OutOfMemoryError as e:
            case.update(status="oom", reason=str(e).splitlines()[0][:200])
        except Exception as e:  # one case failing must not lose the others
            traceback.print_exc()
            case.update(status="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        case["case_s"] = time.perf_counter() - start
        if case["status"] == "ok" and not case["decode"] and kind(case["method"]) == "ours":
            case["reason"] = "decode skipped: the budget left room for a prefill only"
        self.est.update(case)
        _free(self.device)

    def main(self) -> None:
        self.setup()
        self.write()
        cases = self.result["cases"]
        for i, case in enumerate(cases):
            self.run_case(case, cases[i + 1:])
            self.write()
        print((self.out / "suite.md").read_text())


def _layers_note(policies: dict, num_layers: int) -> str:
    fastkv, asl_, gem = policies["fastkv+snapkv"][0], policies["asl+snapkv"][0], policies["gemfilter"][0]
    return (f"FastKV at layer {fastkv.layer}, ASL forced at l_max {asl_.l_max} (tau 0, l_min {asl_.l_min}), "
            f"GemFilter at layer {gem.layer}, of {num_layers} layers, each keeping {fastkv.select_tokens} tokens, "
            f"with SnapKV {fastkv.select_tokens} after FastKV and ASL")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    Suite(parse_args()).main()
