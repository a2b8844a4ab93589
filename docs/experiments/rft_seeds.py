"""The RFT comparison of docs/rft.md: SFT vs rft-grpo vs rft-vlnr1 over seeds, on val_unseen of both mini datasets.

    PYTHONPATH=src python docs/experiments/rft_seeds.py --seeds 0 1 2            # after `make workflow` (needs results/)
    PYTHONPATH=src python docs/experiments/rft_seeds.py --report-only

For each variant and seed: ``saca rft`` with the variant's settings and ``rft.seed = seed`` into
``results/rft-seeds/{variant}-s{seed}``, its agent spec, and the evaluation of both datasets'
val_unseen as run ``rft-{variant}-s{seed}`` (evaluation seed = the same seed). The SFT policy is
evaluated with evaluation seeds 0, 1, 2 as run ``sft-s{seed}``. The commands are the workflow's
own (same config, same CLI); the script only loops over seeds, which the workflow gets with the
reproduction layer. The last step prints the table (mean and sample std over seeds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from saca.config import load_yaml  # noqa: E402
from saca.train.rft import resolve_variant  # noqa: E402


def sh(cmd, log):
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}; see {log}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--variants", nargs="+", default=["grpo", "vlnr1"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--sft-seeds", nargs="*", type=int, default=None, help="evaluation seeds of the SFT run (default: --seeds)")
    args = ap.parse_args()
    cfg = load_yaml(args.config)
    res = Path(cfg.get("results", "results"))
    rft = cfg["rft"]
    datasets = rft.get("datasets") or list(cfg["datasets"])
    vln_ego = cfg["vln_ego"]
    agent = {**cfg["policy"]["agent"], "n_actions": vln_ego["n_actions"], "memory": vln_ego["memory"],
             "image_format": vln_ego["image_format"], "jpeg_quality": vln_ego["jpeg_quality"]}
    sft_agent = res / "sft" / rft["sft_mix"] / "agent.json"
    py = [sys.executable, "-m", "saca"]
    sft_seeds = args.seeds if args.sft_seeds is None else args.sft_seeds
    runs = {f"sft-s{s}": (sft_agent, s) for s in sft_seeds}
    for v in args.variants:
        for s in args.seeds:
            runs[f"rft-{v}-s{s}"] = (res / "rft-seeds" / f"{v}-s{s}" / "agent.json", s)
    if not args.report_only:
        for v in args.variants:
            for s in args.seeds:
                out = res / "rft-seeds" / f"{v}-s{s}"
                if not (out / "final").exists():
                    params = {**resolve_variant(rft, v), "seed": s}
                    mode = params.get("mode", "online")
                    cmd = py + ["rft", "--init", str(res / "sft" / rft["sft_mix"] / "final"), "--out", str(out),
                                "--data", *[f"{d}={res / d}" for d in datasets],
                                "--datasets", json.dumps({d: {k: cfg["datasets"][d][k] for k in ("backend", "turn_angle")} for d in datasets}),
                                "--scenes", str(res / "scenes"), "--sim", json.dumps(cfg["sim"]), "--agent", json.dumps(agent),
                                "--params", json.dumps(params)]
                    if mode == "offline":
                        cmd += ["--vln-ego", *[str(res / d / "vln_ego" / "train") for d in datasets]]
                    sh(cmd, out / "rft.log")
                if not (out / "agent.json").exists():
                    sh(py + ["policy-agent", "--checkpoint", str(out / "final"), "--out", str(out / "agent.json"),
                             "--params", json.dumps(agent)], out / "agent.log")
        for run, (spec, seed) in runs.items():
            for d in datasets:
                out = res / d / "eval" / run / "val_unseen"
                if (out / "metrics.json").exists():
                    continue
                ev = {**cfg["evaluation"], "seed": seed}
                sh(py + ["evaluate", "--dataset-dir", str(res / d), "--split", "val_unseen", "--agent", str(spec),
                         "--run", run, "--scenes", str(res / "scenes"), "--sim", json.dumps(cfg["sim"]),
                         "--dataset-config", json.dumps(cfg["datasets"][d]), "--params", json.dumps(ev), "--out", str(out)],
                   res / "logs" / "rft-seeds" / f"{d}-{run}.log")
    print("| run | dataset | seeds | SR mean ± std | SPL mean ± std | per seed SR |")
    print("|---|---|---|---|---|---|")
    for name in ["sft"] + [f"rft-{v}" for v in args.variants]:
        for d in datasets:
            ms = []
            for s in (sft_seeds if name == "sft" else args.seeds):
                f = res / d / "eval" / f"{name}-s{s}" / "val_unseen" / "metrics.json"
                if f.exists():
                    ms.append(json.loads(f.read_text()))
            if not ms:
                continue
            sr, spl = np.array([m["SR"] for m in ms]), np.array([m["SPL"] for m in ms])
            sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0)
            print(f"| {name} | {d} | {len(ms)} | {sr.mean():.3f} ± {sd(sr):.3f} | {spl.mean():.3f} ± {sd(spl):.3f} | "
                  f"{' / '.join(f'{x:.3f}' for x in sr)} |")
    for v in args.variants:
        shares = []
        for s in args.seeds:
            f = res / "rft-seeds" / f"{v}-s{s}" / "final" / "rft_summary.json"
            if f.exists():
                shares.append(json.loads(f.read_text()).get("all_failure_share_mean"))
        print(f"{v}: all-failure share of training groups per seed: {shares}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
