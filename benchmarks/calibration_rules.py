"""Add the stopping rules' thresholds to calibration files written before `calibrate` chose
them, from each file's own per-prompt records (no model call: asl.bench.calibrate.rules, the
same choice as ASL's tau), and write the package's bundled copies (without those records).

    .venv/bin/python benchmarks/calibration_rules.py --bundle asl/calibration \\
        docs/results/calibration-agreement/calibration-qwen2.5-0.5b.json \\
        docs/results/calibration-agreement/calibration-smollm2-135m.json \\
        docs/results/gemma3-calibration/calibration-gemma3-270m.json
"""
import argparse
import json
import pathlib

from asl.atomic import write_atomic
from asl.bench.calibrate import rules
from asl.calibration import check
from asl.calibration.search import PromptMeasure


def with_rules(data: dict) -> dict:
    """`data` with its "rules" chosen from its "measures", placed just before them (as calibrate does)."""
    measures = [PromptMeasure.from_json(m) for m in data["measures"]]
    chosen = rules(measures, data["asl"]["l_min"], data["target"], data["num_layers"], data["asl"]["select_tokens"])
    out = {}
    for key, value in data.items():
        if key == "measures":
            out["rules"] = chosen
        if key != "rules":
            out[key] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=pathlib.Path, help="calibration files with their measures")
    ap.add_argument("--bundle", type=pathlib.Path, help="also write <folder>/<model>.json without the measures")
    args = ap.parse_args()
    for path in args.files:
        data = with_rules(check(json.loads(path.read_text()), path))
        write_atomic(path, json.dumps(data, indent=1) + "\n")
        print(path, {name: r["threshold"] for name, r in data["rules"].items()})
        if args.bundle:
            bundled = {k: v for k, v in data.items() if k != "measures"}
            write_atomic(args.bundle / f"{data['model']}.json", json.dumps(check(bundled, path), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
