"""benchmarks/gpu_suite.py's ratios, the issue's targets (each met, missed or skipped with the
reason) and the Markdown table, all from the suite's result dict."""
from __future__ import annotations

import operator

from asl.bench.report import rows as tabulate

SHORT, LONG = 32768, 131072  # the lengths the issue's targets name
HF_PREFILL, HF_DECODE = "transformers-sdpa", "transformers-static"
FASTKV, ASL = "fastkv+snapkv", "asl+snapkv"


class Missing(Exception):
    """A target cannot be evaluated: a case it needs did not run (the message says why)."""


def _case(by: dict, method: str) -> dict:
    c = by.get(method)
    if c is None:
        raise Missing(f"{method} is not in this run")
    if c["status"] != "ok":
        raise Missing(f"{method}: {c['status']}" + (f" ({c['reason']})" if c.get("reason") else ""))
    return c


def _get(by: dict, method: str, field: str) -> float:
    value = _case(by, method).get(field)
    if value is None:
        raise Missing(f"{method} measured no {field} (see its row)")
    return value


def _ratio(method: str, reference: str, field: str):
    return lambda by: (_get(by, method, field) / _get(by, reference, field), "")


def _scoring_share(by: dict):
    share = _get(by, ASL, "policy_s") / _get(by, ASL, "ttft_s")
    note = "host timer around the policy calls"
    if by.get(FASTKV, {}).get("status") == "ok":
        extra = 1 - _get(by, FASTKV, "ttft_s") / _get(by, ASL, "ttft_s")
        note += f"; ASL's prefill over FastKV's at the same layer and k: {extra:+.1%} of ASL's"
    return share, note


def _memory(method: str):
    def value(by):
        kv_drop = _get(by, "full", "kv_bytes") - _get(by, method, "kv_bytes")
        if kv_drop <= 0:
            raise Missing(f"{method} drops no KV here")
        peak_drop = _get(by, "full", "peak_bytes") - _get(by, method, "peak_bytes")
        return peak_drop / kv_drop, f"peak {peak_drop / 2**20:,.1f} MiB below full's, KV {kv_drop / 2**20:,.1f} MiB"
    return value


def _decode_note(result: dict, by: dict) -> str:
    hf = by.get(HF_DECODE, {})
    compiled = "compiled" if hf.get("compiled_graphs") else "not compiled (transformers compiles only on CUDA)"
    return f"ours: asl.generate(compile={result['decode']['compile']!r}); transformers {compiled}"


TARGETS = (  # id, the issue's length, what, comparison, threshold, value(cases by method) -> (value, note)
    ("snapkv-prefill", SHORT, "SnapKV prefill / full's", "<=", 1.05, _ratio("snapkv", "full", "ttft_s")),
    ("snapkv-prefill", LONG, "SnapKV prefill / full's", "<=", 1.05, _ratio("snapkv", "full", "ttft_s")),
    ("fastkv-prefill", SHORT, "FastKV prefill / full's", "<=", 0.60, _ratio(FASTKV, "full", "ttft_s")),
    ("fastkv-prefill", LONG, "FastKV prefill / full's", "<=", 0.55, _ratio(FASTKV, "full", "ttft_s")),
    ("asl-scoring", SHORT, "ASL scoring + ranking (trace.policy_s) / its prefill", "<=", 0.03, _scoring_share),
    ("asl-scoring", LONG, "ASL scoring + ranking (trace.policy_s) / its prefill", "<=", 0.03, _scoring_share),
    ("full-vs-sdpa", SHORT, "full-cache prefill / transformers' sdpa forward", "<=", 1.0,
     _ratio("full", HF_PREFILL, "ttft_s")),
    ("full-vs-sdpa", LONG, "full-cache prefill / transformers' sdpa forward", "<=", 1.0,
     _ratio("full", HF_PREFILL, "ttft_s")),
    ("tpot-vs-static", SHORT, "full-cache TPOT / transformers' compiled static-cache TPOT", "<=", 0.8,
     _ratio("full", HF_DECODE, "tpot_s")),
    ("tpot-vs-static", LONG, "full-cache TPOT / transformers' compiled static-cache TPOT", "<=", 0.8,
     _ratio("full", HF_DECODE, "tpot_s")),
    ("peak-fastkv", LONG, "(full's peak - FastKV's) / the KV FastKV drops", ">=", 1.0, _memory(FASTKV)),
    ("peak-asl", LONG, "(full's peak - ASL's) / the KV ASL drops", ">=", 1.0, _memory(ASL)),
)


def add_ratios(cases: list[dict]) -> None:
    """Each measured case's TTFT, TPOT, peak and KV over the full cache's at its length, same run."""
    full = {c["tokens"]: c for c in cases if c["method"] == "full" and c["status"] == "ok"}
    for c in cases:
        ref = full.get(c["tokens"])
        for field in ("ttft_s", "tpot_s", "peak_bytes", "kv_bytes"):
            mine, base = c.get(field), ref.get(field) if ref else None
            c[f"{field.rsplit('_', 1)[0]}_x_full"] = mine / base if mine is not None and base else None


def targets(result: dict) -> list[dict]:
    lengths = sorted({c["tokens"] for c in result["cases"]})
    rows = []
    for name, issue_n, what, op, threshold, value in TARGETS:
        n = issue_n if issue_n in lengths else (lengths[0] if issue_n == SHORT else lengths[-1])
        by = {c["method"]: c for c in result["cases"] if c["tokens"] == n}
        row = {"target": name, "issue_tokens": issue_n, "tokens": n, "what": what, "threshold": f"{op} {threshold}"}
        try:
            v, note = value(by)
        except Missing as e:
            row.update(status="skipped", value=None, note=str(e))
        else:
            met = {"<=": operator.le, ">=": operator.ge}[op](v, threshold)
            row.update(status="met" if met else "missed", value=v, note=note)
        if name == "tpot-vs-static" and row["status"] != "skipped":
            row["note"] = _decode_note(result, by)
        if n != issue_n:
            row["note"] = "; ".join(filter(None, [f"at {n:,} tokens (the issue's target is at {issue_n:,})",
                                                  row["note"]]))
        rows.append(row)
    return rows


def _num(x, scale: float = 1.0, fmt: str = "{:,.1f}") -> str:
    return "" if x is None else fmt.format(x * scale)


def _status(c: dict) -> str:
    return c["status"] + (f": {c['reason']}" if c.get("reason") else "")


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"# GPU suite: {m['device_name']}, {m['config']} ({m['layers']} layers), {m['dtype']}", ""]
    if m["device"] == "cpu":
        lines += ["**CPU dry run: these are not GPU figures.** It checks that the suite runs end to end.", ""]
    d = result["decode"]
    lines += [f"{m['date']}, torch {m['torch']}, transformers {m['transformers']}, select_tokens {m['select_tokens']}, "
              f"{m['new_tokens']} new tokens; decode: asl.generate(compile={d['compile']!r}) ({d['why']}), "
              f"{d['shapes']} shapes; {result['elapsed_s']:.0f} s of a {m['budget_s']:.0f} s budget.", "",
              f"Random weights; {m['layers_note']}; TTFT and TPOT medians over the timed runs after a warm-up, "
              "x full against the full cache at the same length in this run.", "",
              tabulate.markdown(["step", "status", "detail"],
                                [[name, st["status"], st.get("detail") or st.get("reason") or ""]
                                 for name, st in result["steps"].items()]), ""]
    cases = []
    for c in result["cases"]:
        share = c["policy_s"] / c["ttft_s"] if c.get("policy_s") is not None and c.get("ttft_s") else None
        cases.append([f"{c['tokens']:,}", c["method"], _status(c), str(c.get("repeats", "")),
                      _num(c.get("ttft_s"), 1e3), _num(c.get("ttft_x_full"), fmt="{:.2f}"),
                      _num(c.get("tpot_s"), 1e3, "{:,.2f}"), _num(c.get("tpot_x_full"), fmt="{:.2f}"),
                      _num(c.get("compile_s")), _num(share, 100), _num(c.get("peak_bytes"), 2**-20),
                      _num(c.get("peak_x_full"), fmt="{:.2f}"), _num(c.get("kv_bytes"), 2**-20),
                      _num(c.get("kv_x_full"), fmt="{:.2f}")])
    lines += [tabulate.markdown(["tokens", "method", "status", "runs", "TTFT ms", "x full", "TPOT ms", "x full",
                                 "compile s", "policy %", "peak MiB", "x full", "KV MiB", "x full"], cases), "",
              tabulate.markdown(["target", "tokens", "what", "value", "threshold", "status", "note"],
                                [[t["target"], f"{t['tokens']:,}", t["what"], _num(t["value"], fmt="{:.3f}"),
                                  str(t["threshold"]), t["status"], t["note"]] for t in result["targets"]])]
    return "\n".join(lines) + "\n"
