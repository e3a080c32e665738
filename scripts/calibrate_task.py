"""Calibrate the built-in hidden-preference task over several seeds.

For each seed (task and run seed together) this runs the quickstart pipeline with best-of-N
up to N=256 and reports: SFT gold reward, labeler agreement and reward-model accuracy
against the Bayes-optimal accuracy, the best-of-N gold/proxy curve, and DPO/RLOO gold gain
against KL. docs/calibration.md quotes its output.

    .venv/bin/python scripts/calibrate_task.py --seeds 0 1 2 --out runs/calibration
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlxf.core.config import load_config
from rlxf.lab.config import PipelineConfig
from rlxf.lab.pipeline import Pipeline


def calibrate(seed: int, out: Path, quiet: bool) -> dict:
    cfg = load_config(PipelineConfig, None, [
        f'run.dir="{out / f"seed{seed}"}"', f"run.seed={seed}", f"task.seed={seed}", "best_of_n.n=256"])
    pipe = Pipeline(cfg, quiet=quiet, log=(lambda _m: None) if quiet else print)
    summary = pipe.execute()
    comp, rm = pipe.run.result("comparisons"), pipe.run.result("reward_model")
    curve = pipe.run.result("evaluate")["best_of_n_curve"]
    return {
        "seed": seed,
        "sft_gold": summary["sft"]["gold_mean"],
        "labeler_agreement": comp["labeler_agreement_with_gold"],
        "bayes_optimal": rm["bayes_optimal_accuracy"],
        "rm_acc_vs_labeler": rm["held_out_accuracy_vs_labeler"],
        "rm_acc_vs_gold": rm["held_out_accuracy_vs_gold"],
        "bon": {n: curve[n]["gold"] for n in curve},
        "bon_proxy": {n: curve[n]["proxy"] for n in curve},
        "dpo": (summary["dpo"]["gain_vs_sft"], summary["dpo"]["gain_se"], summary["dpo"]["kl"]),
        "rloo": (summary["rloo"]["gain_vs_sft"], summary["rloo"]["gain_se"], summary["rloo"]["kl"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/calibration"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    rows = [calibrate(s, args.out, args.quiet) for s in args.seeds]
    print("seed  SFT gold  labeler agrees  Bayes-opt  RM acc (vs labeler / vs gold)")
    for r in rows:
        print(f"{r['seed']:>4}  {r['sft_gold']:>8.3f}  {r['labeler_agreement']:>14.3f}  {r['bayes_optimal']:>9.3f}"
              f"  {r['rm_acc_vs_labeler']:.3f} / {r['rm_acc_vs_gold']:.3f}")
    ns = sorted(rows[0]["bon"], key=int)
    print("\nbest-of-N gold (proxy) by N")
    print("seed  " + "  ".join(f"{n:>13}" for n in ns))
    for r in rows:
        print(f"{r['seed']:>4}  " + "  ".join(f"{r['bon'][n]:>6.2f} ({r['bon_proxy'][n]:>4.2f})" for n in ns))
    print("\ngold gain over SFT ± s.e. (KL from SFT)")
    for r in rows:
        print(f"{r['seed']:>4}  DPO {r['dpo'][0]:+.3f} ± {r['dpo'][1]:.3f} (KL {r['dpo'][2]:.2f})"
              f"   RLOO {r['rloo'][0]:+.3f} ± {r['rloo'][1]:.3f} (KL {r['rloo'][2]:.2f})")
    (args.out / "calibration.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
