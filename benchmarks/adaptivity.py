"""When does adaptivity pay? Adaptive rules against the best fixed layer and the oracle, from the
per-prompt records a calibration file keeps (python -m asl.bench calibrate: every prompt's
oracle outcome at every layer, ASL's ratios, the other rules' signals), so no model runs here.

    python benchmarks/adaptivity.py FILE.json [FILE.json ...] --out docs/results/adaptivity

For every prompt and layer the records say whether selecting there keeps the full cache's
answer; a rule's setting picks, per prompt, a layer (the first from l_min where its signal
passes; none: the full cache), so each setting's agreement and KV share follow exactly. The
families: FastKV's fixed layer (every layer), ASL's tau, JaccardStop's and EntropyStop's
thresholds, FittedStop (its logistic fit on the tuning prompts, its confidence swept) and the
oracle (each prompt's earliest matching layer: the frontier no rule can pass). Each family's
setting is chosen on the tuning prompts (the cheapest with agreement >= --agreement) and judged
on the held-out ones: agreement with its Wilson interval, KV share, the share of the oracle's
savings it captures, and the exact McNemar test against the tuned fixed layer on the same
held-out prompts (and against the fixed layer of the nearest KV share). Transfer: each
family's setting tuned on one task's tuning prompts, judged on every other task's held-out
prompts (which transfers better, the fixed layer or the rule?). Mixed workload: all the files of
one model (tasks and lengths) as one stream, each family tuned on the stream's tuning prompts
and judged on its held-out ones, against the fixed layer of the nearest mean KV (tokens, not
shares: a long prompt weighs more) and of the nearest mean attention work (sum over layers of
the tokens squared), the two parts of a prefill's time (the linear layers scale with the tokens
each layer runs on, which is its KV; attention with their square). Writes adaptivity.json,
adaptivity.md and frontier_<model>@<length>.png.

The cost axis is the KV share of selection alone, `((a + 1) n + (L - 1 - a) k) / (L n)`; the
prefill time falls in the same order (the layers up to `a` run on the whole prompt).
"""
from __future__ import annotations

import argparse
import json
import dataclasses
import math
import pathlib

from asl.bench.report.rows import markdown, share
from asl.bench.report.stats import mcnemar_exact, wilcoxon_p, wilson
from asl.calibration.search import RULE_THRESHOLDS, PromptMeasure, kv_share, picked_layer, rule_layer
from asl.policies.adaptive import EntropyStop, FittedStop, JaccardStop

CONFIDENCES = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def rule_picks(policy, l_min: int, last: int):
    """prompt -> the layer `policy` picks, replayed on the prompt's recorded signals with the
    policy's own decision (`fires`), as calibrate chooses the rules' thresholds."""
    return lambda m: rule_layer(policy, m, l_min, last)


def families(tune: list[PromptMeasure], l_min: int, num_layers: int, taus) -> dict[str, list[tuple[str, object]]]:
    """Per family, its settings as (label, prompt -> picked layer)."""
    last = num_layers - 1
    out = {
        "fixed layer": [(f"layer {l}", lambda m, l=l: l) for l in range(last)],
        "ASL (tau)": [(f"tau {t:g}", lambda m, t=t: picked_layer(m.ratios[l_min], t, l_min, last)) for t in taus],
        "JaccardStop": [(f"jaccard >= {t:g}", rule_picks(JaccardStop(threshold=t), l_min, last))
                        for t in RULE_THRESHOLDS],
        "EntropyStop": [(f"entropy <= {t:g}", rule_picks(EntropyStop(threshold=t), l_min, last))
                        for t in RULE_THRESHOLDS],
    }
    try:
        rule = FittedStop.fit([(m.signals, m.matches) for m in tune], l_min=l_min)
    except ValueError:  # one outcome only on the tuning prompts: nothing to fit
        rule = None
    if rule is not None:
        out["FittedStop"] = [(f"confidence {c:g}", rule_picks(dataclasses.replace(rule, confidence=c), l_min, last))
                             for c in CONFIDENCES]
    out["oracle"] = [("earliest matching layer", lambda m: last if m.earliest is None else m.earliest)]
    return out


def judge(measures: list[PromptMeasure], pick, select_tokens: int, num_layers: int) -> dict:
    layers = [pick(m) for m in measures]
    kept = [bool(m.matches.get(a, True)) for m, a in zip(measures, layers)]
    kv = [kv_share(a, m.prompt_tokens, select_tokens, num_layers) for m, a in zip(measures, layers)]
    tokens = [s * num_layers * m.prompt_tokens for s, m in zip(kv, measures)]  # KV entries per KV head, all layers
    work = [attention_work(a, m.prompt_tokens, select_tokens, num_layers) for m, a in zip(measures, layers)]
    n = len(measures)
    low, high = wilson(sum(kept), n)
    return {"n": n, "agree": sum(kept), "agreement": sum(kept) / n, "interval": [low, high],
            "kv_share": sum(kv) / n, "mean_layer": sum(layers) / n, "kv_tokens": sum(tokens) / n,
            "attention_work": sum(work) / n, "kept": kept, "kv": kv}


def attention_work(layer: int, prompt_tokens: int, select_tokens: int, num_layers: int) -> float:
    """Sum over layers of the tokens squared, selection alone after `layer` (attention's share of a prefill)."""
    kept = min(select_tokens, prompt_tokens)
    return (layer + 1) * prompt_tokens ** 2 + (num_layers - 1 - layer) * kept ** 2


def tuned(points: list[dict], target: float) -> dict:
    """The cheapest setting whose tuning agreement reaches the target, else the most agreeing."""
    ok = [p for p in points if p["tune"]["agree"] >= math.ceil(target * p["tune"]["n"] - 1e-9)]
    if ok:
        return min(ok, key=lambda p: (p["tune"]["kv_share"], -p["tune"]["agree"]))
    return min(points, key=lambda p: (-p["tune"]["agree"], p["tune"]["kv_share"]))


def analyse(path: pathlib.Path, target: float) -> dict:
    data = json.loads(path.read_text())
    measures = [PromptMeasure.from_json(m) for m in data["measures"]]
    tune = [m for m in measures if not m.held_out]
    held = [m for m in measures if m.held_out]
    a, layers = data["asl"], data["num_layers"]
    k, l_min = a["select_tokens"], a["l_min"]
    lengths = data["prompts"].get("lengths")
    name = data["model"] + (f"@{'+'.join(str(n) for n in lengths)}" if lengths else "")  # one file per length
    out = {"model": data["model"], "name": name, "file": str(path), "num_layers": layers, "select_tokens": k,
           "l_min": l_min,
           "prompts": data["prompts"], "n_tune": len(tune), "n_held_out": len(held), "target": target,
           "families": {}}
    for family, settings in families(tune, l_min, layers, data["search"]["taus"]).items():
        points = [{"setting": label, "tune": judge(tune, pick, k, layers), "held_out": judge(held, pick, k, layers)}
                  for label, pick in settings]
        out["families"][family] = {"points": points, "tuned": tuned(points, target)}
    out["transfer"] = transfer(tune, held, l_min, layers, data["search"]["taus"], k, target)
    fixed = out["families"]["fixed layer"]
    base = fixed["tuned"]["held_out"]
    oracle = out["families"]["oracle"]["tuned"]["held_out"]
    for family, f in out["families"].items():
        h = f["tuned"]["held_out"]
        b = sum(x and not y for x, y in zip(h["kept"], base["kept"]))
        c = sum(y and not x for x, y in zip(h["kept"], base["kept"]))
        nearest = min(fixed["points"], key=lambda p: abs(p["held_out"]["kv_share"] - h["kv_share"]))["held_out"]
        b2 = sum(x and not y for x, y in zip(h["kept"], nearest["kept"]))
        c2 = sum(y and not x for x, y in zip(h["kept"], nearest["kept"]))
        saved = 1 - oracle["kv_share"]
        f["verdict"] = {
            "vs_tuned_fixed": {"only_this": b, "only_fixed": c, "p": mcnemar_exact(b, c),
                               "kv_difference": h["kv_share"] - base["kv_share"],
                               "kv_p": wilcoxon_p(h["kv"], base["kv"])},  # the paired KV shares
            "vs_fixed_at_same_kv": {"fixed_kv_share": nearest["kv_share"], "only_this": b2, "only_fixed": c2,
                                    "p": mcnemar_exact(b2, c2), "agreement_difference": h["agreement"] -
                                    nearest["agreement"]},
            "oracle_savings_captured": (1 - h["kv_share"]) / saved if saved > 0 else None,
        }
    return out


def task_of(m: PromptMeasure) -> str:
    return m.label.split("/")[0] if m.label else "all"


def transfer(tune, held, l_min: int, layers: int, taus, k: int, target: float) -> list[dict]:
    """Per family and source task: the setting tuned on that task's tuning prompts, judged on
    each other task's held-out prompts."""
    tasks = sorted({task_of(m) for m in tune} & {task_of(m) for m in held})
    rows = []
    for source in tasks:
        src = [m for m in tune if task_of(m) == source]
        for family, settings in families(src, l_min, layers, taus).items():
            if family == "oracle":
                continue
            points = [{"setting": label, "pick": pick, "tune": judge(src, pick, k, layers)} for label, pick in settings]
            chosen = tuned(points, target)
            for dest in tasks:
                if dest == source:
                    continue
                h = judge([m for m in held if task_of(m) == dest], chosen["pick"], k, layers)
                rows.append({"family": family, "tuned_on": source, "judged_on": dest, "setting": chosen["setting"],
                             "n": h["n"], "agreement": h["agreement"], "interval": h["interval"],
                             "kv_share": h["kv_share"]})
    return rows


def mixed(paths: list[pathlib.Path], target: float) -> list[dict]:
    """Per model, its files' prompts (every task and length) as one stream: each family tuned on
    the stream's tuning prompts, judged on its held-out ones against the fixed layer of the
    nearest mean KV tokens and of the nearest mean attention work (McNemar on the same prompts)."""
    by_model: dict[str, list[dict]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        by_model.setdefault(data["model"], []).append(data)
    out = []
    for model, datas in by_model.items():
        shape = {(d["num_layers"], d["asl"]["select_tokens"], d["asl"]["l_min"]) for d in datas}
        if len(shape) != 1:
            raise ValueError(f"{model}: the files differ in layers, select_tokens or l_min ({sorted(shape)}); "
                             "a mixed stream needs one setting")
        layers, k, l_min = shape.pop()
        measures = [PromptMeasure.from_json(m) for d in datas for m in d["measures"]]
        tune, held = [m for m in measures if not m.held_out], [m for m in measures if m.held_out]
        taus = sorted({t for d in datas for t in d["search"]["taus"]})
        fams = {}
        for family, settings in families(tune, l_min, layers, taus).items():
            points = [{"setting": label, "tune": judge(tune, pick, k, layers), "held_out": judge(held, pick, k, layers)}
                      for label, pick in settings]
            fams[family] = tuned(points, target)
        fixed_points = [{"setting": label, "held_out": judge(held, pick, k, layers)}
                        for label, pick in families(tune, l_min, layers, taus)["fixed layer"]]
        rows = []
        for family, chosen in fams.items():
            h = chosen["held_out"]
            row = {"family": family, "setting": chosen["setting"], "n": h["n"], "agree": h["agree"],
                   "interval": h["interval"], "kv_tokens": h["kv_tokens"], "attention_work": h["attention_work"]}
            for axis in ("kv_tokens", "attention_work"):
                near = min(fixed_points, key=lambda p: abs(p["held_out"][axis] - h[axis]))
                b = sum(x and not y for x, y in zip(h["kept"], near["held_out"]["kept"]))
                c = sum(y and not x for x, y in zip(h["kept"], near["held_out"]["kept"]))
                row[f"vs_fixed_at_{axis}"] = {"fixed": near["setting"], "fixed_agree": near["held_out"]["agree"],
                                              "fixed_value": near["held_out"][axis], "only_this": b, "only_fixed": c,
                                              "p": mcnemar_exact(b, c)}
            rows.append(row)
        lengths = sorted({n for d in datas for n in d["prompts"].get("lengths", [])})
        tasks = sorted({task_of(m) for m in measures})
        out.append({"model": model, "lengths": lengths, "tasks": tasks, "n_tune": len(tune), "n_held_out": len(held),
                    "select_tokens": k, "target": target, "rows": rows})
    return out


def mixed_table(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        kv, att = r["vs_fixed_at_kv_tokens"], r["vs_fixed_at_attention_work"]
        rows.append([r["family"], r["setting"], share(r["agree"], r["n"], *r["interval"]), f"{r['kv_tokens']:,.0f}",
                     f"{r['attention_work']:.3g}",
                     f"{kv['fixed']} ({kv['fixed_agree']}/{r['n']}): {kv['only_this']} / {kv['only_fixed']}, p = {kv['p']:.3g}",
                     f"{att['fixed']} ({att['fixed_agree']}/{r['n']}): {att['only_this']} / {att['only_fixed']}, "
                     f"p = {att['p']:.3g}"])
    return (f"### Mixed workload, {result['model']}: one stream of {', '.join(result['tasks'])} at "
            f"{', '.join(map(str, result['lengths']))} tokens; {result['n_held_out']} held-out prompts (tuned on "
            f"{result['n_tune']}), select_tokens {result['select_tokens']}, target {100 * result['target']:.0f}%\n\n"
            + markdown(["family", "tuned setting", "held-out agreement [95%]", "mean KV tokens (per KV head, all layers)",
                        "mean attention work (sum of tokens^2)",
                        "vs the fixed layer of the nearest mean KV: answers only this / only fixed (McNemar)",
                        "vs the fixed layer of the nearest attention work"], rows))


def transfer_table(result: dict) -> str:
    rows = result["transfer"]
    if not rows:
        return ""
    per_pair = [[r["family"], f"{r['tuned_on']} -> {r['judged_on']}", r["setting"],
                 share(round(r["agreement"] * r["n"]), r["n"], *r["interval"]), f"{100 * r['kv_share']:.1f}%"]
                for r in rows]
    pooled = {}
    for r in rows:
        s = pooled.setdefault(r["family"], [0, 0, 0.0])
        s[0] += round(r["agreement"] * r["n"])
        s[1] += r["n"]
        s[2] += r["kv_share"] * r["n"]
    return "\n".join([
        f"Transfer ({result['name']}): tuned on one task's tuning prompts, judged on another's held-out ones "
        "(agreement [95%], KV share)", "",
        markdown(["family", "tuned on -> judged on", "setting", "agreement", "KV share"], per_pair), "",
        markdown(["family", "all transfers: agreement [95%]", "mean KV share"],
                 [[family, share(agree, n, *wilson(agree, n)), f"{100 * kv / n:.1f}%"]
                  for family, (agree, n, kv) in pooled.items()])])


def table(result: dict) -> str:
    r, rows = result, []
    for family, f in r["families"].items():
        h, v = f["tuned"]["held_out"], f["verdict"]
        cap, fixed, same = v["oracle_savings_captured"], v["vs_tuned_fixed"], v["vs_fixed_at_same_kv"]
        rows.append([family, f["tuned"]["setting"], share(h["agree"], h["n"], *h["interval"]),
                     f"{100 * h['kv_share']:.1f}%", "" if cap is None else f"{100 * cap:.0f}%",
                     f"{fixed['only_this']} / {fixed['only_fixed']} (p = {fixed['p']:.3g}); KV "
                     f"{100 * fixed['kv_difference']:+.1f} points (p = {fixed['kv_p']:.3g})",
                     f"{100 * same['fixed_kv_share']:.1f}% KV: {same['only_this']} / {same['only_fixed']}, "
                     f"p = {same['p']:.3g}"])
    return (f"### {r['name']}: {r['n_held_out']} held-out prompts (tuned on {r['n_tune']}), select_tokens "
            f"{r['select_tokens']}, l_min {r['l_min']}, target agreement {100 * r['target']:.0f}%\n\n" + markdown(
                ["family", "tuned setting", "held-out agreement [95%]", "KV share", "oracle's savings captured",
                 "vs tuned fixed layer: answers only this / only fixed (McNemar p); KV (Wilcoxon p)",
                 "vs fixed layer at the same KV (p)"], rows))


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for family, f in result["families"].items():
        pts = sorted((p["held_out"]["kv_share"], p["held_out"]["agreement"]) for p in f["points"])
        marker = "*" if family == "oracle" else "o"
        line = ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], marker=marker, ms=4 if marker == "o"
                       else 14, lw=1, label=family, alpha=0.8)[0]
        h = f["tuned"]["held_out"]
        low, high = h["interval"]
        ax.errorbar([100 * h["kv_share"]], [100 * h["agreement"]],
                    yerr=[[100 * max(0.0, h["agreement"] - low)], [100 * max(0.0, high - h["agreement"])]], fmt="s", ms=8,
                    mfc="none", color=line.get_color(), capsize=3)
    ax.axhline(100 * result["target"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("KV share of the full cache (selection alone), held-out mean, %")
    ax.set_ylabel("answers equal to the full cache's, held out, %")
    ax.set_title(f"{result['name']}: {result['n_held_out']} held-out prompts; squares: each family's tuned "
                 f"setting (95% Wilson)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=pathlib.Path, help="calibration files that keep their measures")
    ap.add_argument("--agreement", type=float, default=0.9, help="the tuning target (as calibrate's)")
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [analyse(f, args.agreement) for f in args.files]
    for r in results:
        plot(r, args.out / f"frontier_{r['name']}.png")
    bare = lambda j: {k: v for k, v in j.items() if k not in ("kept", "kv")}  # noqa: E731 (per-prompt lists)
    strip = lambda r: {**r, "families": {k: {**f, "tuned": {**f["tuned"], "tune": bare(f["tuned"]["tune"]),  # noqa: E731
                                                           "held_out": bare(f["tuned"]["held_out"])},
                                             "points": [{**p, "tune": bare(p["tune"]), "held_out": bare(p["held_out"])}
                                                        for p in f["points"]]}
                                         for k, f in r["families"].items()}}
    (args.out / "adaptivity.json").write_text(json.dumps([strip(r) for r in results], indent=1) + "\n")
    streams = mixed(args.files, args.agreement)
    text = "\n\n".join([table(r) + "\n\n" + transfer_table(r) for r in results] + [mixed_table(m) for m in streams])
    (args.out / "mixed.json").write_text(json.dumps(streams, indent=1) + "\n")
    (args.out / "adaptivity.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
