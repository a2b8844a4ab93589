"""SACA Table 2 and Fig. 5 on the mini world (issue 13, docs/rft.md "SACA on the mini world").

    python docs/experiments/saca_table2.py --point direct_f8_e2 --variants grpo ss ss_afr saca --seeds 0 1 2
    python docs/experiments/saca_table2.py --point direct_f8_e2 --report-only

Works in a sweep point's results directory (``results/sweep/{point}``, see ``mini_sweep.py`` and
``sft_seeds.py``: its SFT model, landmarks and val_unseen episodes must exist). For every variant of
``rft.variants`` and RFT seed, ``saca rft`` with the workflow's resolved settings (``resolve_variant``: the
rft base, the variant's override, the top-level auditor section) and ``rft.seed = s`` from the point's SFT
checkpoint, into ``rft-table2/{tag}/{variant}-s{seed}``; then the agent spec and the evaluation on
val_unseen of both datasets with evaluation seed 0 (run ``rft-{tag}-{variant}-s{seed}``). The SFT row is
the point's SFT model under evaluation seeds 0-2 (runs ``sft-t0-e*`` of ``sft_seeds.py``).

The table gives mean and sample standard deviation over seeds; the Fig. 5 data is each run's validation
success rate (the ``rft.eval_split`` subset, ``rft.eval_episodes`` per dataset) against the update, averaged
over the seeds; the training rows give the routing, repair and rescue counts.

Two instances can share the 2 cores (``SACA_THREADS=1``, each with its own ``--variants`` or ``--seeds``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from mini_sweep import DATASETS, POINTS, ROOT, deep_merge, shell  # noqa: E402
from sft_seeds import agent_params, evaluate, fmt, metrics  # noqa: E402

from saca.train.rft import resolve_variant  # noqa: E402

SPLIT = "val_unseen"


def run_dir(res: Path, tag: str, variant: str, seed: int) -> Path:
    return res / "rft-table2" / tag / f"{variant}-s{seed}"


def train(res: Path, cfg: dict, tag: str, variant: str, seed: int, overrides: dict) -> Path:
    run = run_dir(res, tag, variant, seed)
    py = [sys.executable, "-m", "saca"]
    params = {**deep_merge(resolve_variant(cfg["rft"], variant, cfg["auditor"]), overrides), "seed": seed}
    ds = {d: {k: cfg["datasets"][d][k] for k in ("backend", "turn_angle")} for d in DATASETS}
    if not (run / "final").exists():
        shell(py + ["rft", "--init", str(res / "sft" / "r2r_rxr" / "final"), "--out", str(run),
                    "--data", *[f"{d}={res / d}" for d in DATASETS], "--datasets", json.dumps(ds),
                    "--scenes", str(res / "scenes"), "--sim", json.dumps(cfg["sim"]),
                    "--agent", json.dumps(agent_params(cfg)),
                    "--landmarks", *[f"{d}={res / d / 'landmarks' / 'train.jsonl'}" for d in DATASETS],
                    "--params", json.dumps(params)], run / "rft.log")
    if not (run / "agent.json").exists():
        shell(py + ["policy-agent", "--checkpoint", str(run / "final"), "--out", str(run / "agent.json"),
                    "--params", json.dumps(agent_params(cfg))], run / "agent.log")
    return run / "agent.json"


def train_rows(run: Path) -> tuple[list[dict], list[dict]]:
    log = run / "train_log.jsonl"
    if not log.exists():
        return [], []
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    return [r for r in rows if r["event"] == "train"], [r for r in rows if r["event"] == "val"]


def report(res: Path, tag: str, variants, seeds) -> None:
    keys = ["SR", "SPL", "NE", "nDTW"]
    print(f"### val_unseen (mean ± sd over seeds; tag {tag})\n")
    print("| row | dataset | n | " + " | ".join(keys) + " |")
    print("|" + "---|" * (3 + len(keys)))
    for d in DATASETS:
        rows = {"SFT (eval seeds 0-2)": [f"sft-t0-e{e}" for e in range(3)]}
        rows.update({v: [f"rft-{tag}-{v}-s{s}" for s in seeds] for v in variants})
        for name, runs in rows.items():
            ms = [m for m in (metrics(res, d, r) for r in runs) if m]
            if ms:
                print(f"| {name} | {d} | {len(ms)} | " + " | ".join(fmt([m.get(k) for m in ms]) for k in keys) + " |")
    print("\n### training (sums over the run's updates, mean over seeds)\n")
    counts = ["success_rate", "groups_mixed", "groups_all_failure", "collapsed_share", "role_near_miss",
              "repair_attempts", "repair_successes", "afr_groups", "afr_zero_spread", "align_samples", "con_pairs",
              "appendix_a_share", "time_rollout", "time_audit", "time_repair", "time_train"]
    print("| variant | n | " + " | ".join(counts) + " |")
    print("|" + "---|" * (2 + len(counts)))
    for v in variants:
        per = []
        for s in seeds:
            tr, _ = train_rows(run_dir(res, tag, v, s))
            if tr:
                agg = {}
                for k in counts:
                    vals = [r.get(k) for r in tr if r.get(k) is not None]
                    mean_keys = ("success_rate", "collapsed_share", "appendix_a_share")
                    agg[k] = (float(np.mean(vals)) if k in mean_keys else float(np.sum(vals))) if vals else None
                per.append(agg)
        if per:
            cells = []
            for k in counts:
                vals = [p[k] for p in per if p[k] is not None]
                cells.append(f"{np.mean(vals):.2f}" if vals else "-")
            print(f"| {v} | {len(per)} | " + " | ".join(cells) + " |")
    print("\n### Fig. 5: validation SR (mean of the datasets) against the update, mean ± sd over seeds\n")
    for v in variants:
        curves = {}
        for s in seeds:
            _, val = train_rows(run_dir(res, tag, v, s))
            for r in val:
                curves.setdefault(r["step"], []).append(float(np.mean(list(r["val_sr"].values()))))
        if curves:
            print(f"- {v}: " + ", ".join(f"{k}: {np.mean(x):.3f} ± {np.std(x, ddof=1) if len(x) > 1 else 0:.3f}"
                                          for k, x in sorted(curves.items())))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--point", required=True, choices=list(POINTS))
    ap.add_argument("--variants", nargs="+", default=["grpo", "ss", "ss_afr", "saca"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--tag", default="default", help="name of this experiment's settings (results subdirectory)")
    ap.add_argument("--rft", default="{}", help="JSON overrides of the rft settings for every variant")
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    res = ROOT / "results" / "sweep" / args.point
    cfg = deep_merge(yaml.safe_load((ROOT / "config/config.yaml").read_text()),
                     yaml.safe_load((res / "overlay.yaml").read_text()))
    overrides = json.loads(args.rft)
    if not args.report_only:
        for v in args.variants:
            for s in args.seeds:
                agent = train(res, cfg, args.tag, v, s, overrides)
                if not args.no_eval:
                    for d in DATASETS:
                        evaluate(res, cfg, d, f"rft-{args.tag}-{v}-s{s}", str(agent), 0, audit=False)
    report(res, args.tag, args.variants, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
