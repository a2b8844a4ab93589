"""The chosen mini-world default on val_unseen: SFT training seeds x evaluation seeds (issue 12, docs/policy.md).

    python docs/experiments/sft_seeds.py --point short_res112_f4_e2 --train-seeds 0 1 --eval-seeds 0 1 2
    python docs/experiments/sft_seeds.py --point short_res112_f4_e2 --report-only

Works in a sweep point's results directory (``results/sweep/{point}``, see ``mini_sweep.py``), whose
SFT model is training seed 0 (the workflow's ``sft`` rule). The workflow first builds the point's
val_unseen episodes, landmarks and the reference runs (random, forward) with evaluation seeds 0-2;
then, for every further training seed, ``saca sft`` with ``sft.seed = s`` into ``sft-seeds/s{s}``
(the rule's command and settings); every model is evaluated on val_unseen of both datasets with each
evaluation seed (run ``sft-t{s}-e{e}``); the first evaluation seed's run of each model is audited (the
Appendix-A share; auditing every run doubles the time). The table gives mean and sample standard
deviation over all (training seed, evaluation seed) pairs and the per-training-seed means.

Two instances can share the 2 cores (``SACA_THREADS=1``, ``--no-workflow`` for the second, each with
its own ``--train-seeds``): single-threaded evaluations of the tiny policy run almost as fast as
two-threaded ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mini_sweep import DATASETS, POINTS, ROOT, deep_merge, episode_lengths, shell, snake  # noqa: E402

SPLIT = "val_unseen"


def agent_params(cfg: dict) -> dict:
    v = cfg["vln_ego"]
    return {**cfg["policy"]["agent"], "n_actions": v["n_actions"], "memory": v["memory"],
            "image_format": v["image_format"], "jpeg_quality": v["jpeg_quality"]}


def evaluate(res: Path, cfg: dict, d: str, run: str, agent: str, seed: int, audit: bool = True) -> None:
    py = [sys.executable, "-m", "saca"]
    ds = dict(cfg["datasets"][d])
    ds["episodes"] = {SPLIT: ds["episodes"][SPLIT]}
    common = ["--scenes", str(res / "scenes"), "--sim", json.dumps(cfg["sim"]), "--dataset-config", json.dumps(ds)]
    out = res / d / "eval" / run / SPLIT
    if not (out / "metrics.json").exists():
        shell(py + ["evaluate", "--dataset-dir", str(res / d), "--split", SPLIT, "--agent", agent, "--run", run, *common,
                    "--params", json.dumps({**cfg["evaluation"], "seed": seed}), "--out", str(out)],
              res / "logs" / "seeds" / f"{d}-{run}.log")
    audit_dir = res / d / "audit" / run / SPLIT
    if audit and run.startswith("sft") and not (audit_dir / "summary.json").exists():
        shell(py + ["audit", "--episodes", str(res / d / "episodes"), "--split", SPLIT, "--eval-dir", str(out),
                    "--landmarks", str(res / d / "landmarks" / f"{SPLIT}.jsonl"), *common,
                    "--params", json.dumps(cfg["auditor"]), "--out", str(audit_dir)], res / "logs" / "seeds" / f"{d}-{run}.audit.log")


def train(res: Path, cfg: dict, seed: int) -> Path:
    """SFT with training seed ``seed``; seed 0 is the point's workflow run."""
    if seed == cfg["sft"]["seed"]:
        return res / "sft" / "r2r_rxr" / "agent.json"
    run = res / "sft-seeds" / f"s{seed}"
    py = [sys.executable, "-m", "saca"]
    sft = {k: v for k, v in cfg["sft"].items() if k not in ("mixes", "eval_mix", "val_splits")}
    sft.update(seed=seed, n_actions=cfg["vln_ego"]["n_actions"])
    if not (run / "final").exists():
        # the point's SFT starting point: the tiny model, or its vision-pretrained tower (policy.vision_pretrain)
        init = "init_vision" if cfg["policy"].get("vision_pretrain", {}).get("frames", 0) > 0 else "init"
        shell(py + ["sft", "--init", str(res / "policy" / init),
                    "--train", *[str(res / d / "vln_ego" / "train") for d in DATASETS],
                    "--val", *[f"{d}/val_seen={res / d / 'vln_ego' / 'val_seen'}" for d in DATASETS],
                    "--out", str(run), "--params", json.dumps(sft)], run / "sft.log")
    if not (run / "agent.json").exists():
        shell(py + ["policy-agent", "--checkpoint", str(run / "final"), "--out", str(run / "agent.json"),
                    "--params", json.dumps(agent_params(cfg))], run / "agent.log")
    return run / "agent.json"


def metrics(res: Path, d: str, run: str) -> dict | None:
    m = res / d / "eval" / run / SPLIT / "metrics.json"
    if not m.exists():
        return None
    out = json.loads(m.read_text())
    out["steps"], out["expert_steps"] = episode_lengths(m.parent / "episodes.jsonl", res / d / "episodes" / f"{SPLIT}_gt.json.gz")
    a = res / d / "audit" / run / SPLIT / "summary.json"
    out["A"] = json.loads(a.read_text())["appendix_a"]["share"] if a.exists() else None
    return out


def fmt(values) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"


def report(res: Path, train_seeds, eval_seeds) -> None:
    keys = ["SR", "SPL", "NE", "nDTW", "steps", "A"]
    print(f"| run | dataset | n | " + " | ".join(keys) + " | expert steps |")
    print("|" + "---|" * (4 + len(keys)))
    for d in DATASETS:
        groups = {f"SFT t{t}": [f"sft-t{t}-e{e}" for e in eval_seeds] for t in train_seeds}
        groups["SFT all"] = [r for g in list(groups.values()) for r in g]
        groups["random"] = [f"random-e{e}" for e in eval_seeds]
        groups["forward"] = ["forward-e0"]
        for name, runs in groups.items():
            ms = [m for m in (metrics(res, d, r) for r in runs) if m]
            if not ms:
                continue
            print(f"| {name} | {d} | {len(ms)} | " + " | ".join(fmt([m.get(k) for m in ms]) for k in keys)
                  + f" | {np.mean([m['expert_steps'] for m in ms]):.0f} |")
        per_seed = [np.mean([m["SR"] for m in (metrics(res, d, f"sft-t{t}-e{e}") for e in eval_seeds) if m])
                    for t in train_seeds]
        print(f"| SR per training seed | {d} | | {', '.join(f'{x:.3f}' for x in per_seed)} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--point", required=True, choices=list(POINTS))
    ap.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--no-workflow", action="store_true", help="skip the workflow step (val_unseen data already built)")
    args = ap.parse_args()
    res = ROOT / "results" / "sweep" / args.point
    overlay = res / "overlay.yaml"
    cfg = deep_merge(yaml.safe_load((ROOT / "config/config.yaml").read_text()), yaml.safe_load(overlay.read_text()))
    if not args.report_only and not args.no_workflow:
        rel = res.relative_to(ROOT)
        # the point's SFT model (training seed 0, the one selected on val_seen) is built once: not asked for again,
        # so that a later change of the package's code does not retrain it
        agent = rel / "sft" / "r2r_rxr" / "agent.json"
        snake(args.point, ["snakemake", "--cores", "2", "--configfile", "config/config.yaml", str(overlay), "--",
                           *([] if (ROOT / agent).exists() else [str(agent)]),
                           *[str(rel / d / "landmarks" / f"{s}.jsonl") for d in DATASETS for s in (SPLIT, "train")],
                           *[str(rel / d / "episodes" / f"{SPLIT}.json.gz") for d in DATASETS]])
    if not args.report_only:
        for d in DATASETS:
            for e in args.eval_seeds:
                evaluate(res, cfg, d, f"random-e{e}", "random", e)
            evaluate(res, cfg, d, "forward-e0", "forward", 0)  # deterministic
        for t in args.train_seeds:
            agent = train(res, cfg, t)
            for d in DATASETS:
                for e in args.eval_seeds:
                    # the audit (Appendix-A share) of the first evaluation seed of each model, for time
                    evaluate(res, cfg, d, f"sft-t{t}-e{e}", str(agent), e, audit=(e == args.eval_seeds[0]))
    report(res, args.train_seeds, args.eval_seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
