"""The cost of a SACA update against a GRPO update (issue 13), measured in one process.

    PYTHONPATH=src python benchmarks/saca_cost.py --res results/sweep/direct_f8_e2 --updates 6
    PYTHONPATH=src python benchmarks/saca_cost.py --res results --updates 6        # the workflow's own results

Two RFT trainers start from the same SFT checkpoint (``RES/sft/r2r_rxr/final``) with the config's resolved
``grpo`` and ``saca`` variants (config/config.yaml, plus ``RES/overlay.yaml`` when present) and take turns,
one update each, ``--updates`` times: the two see the same machine load, so their ratio is what the
numbers are for (identical runs on these machines drift up to 1.5x between runs). Each update's time is
split as the trainer logs it:

* **rollouts**: the G-trajectory group rollouts (``time_rollout``: generation and simulation);
* **auditing**: the PGSA auditor over every rollout of the update (``time_audit``), including the extra
  instance-channel rendering the oracle needs (in the rollouts' time, not separable);
* **repair**: Repair Resampling's suffix rollouts (``time_repair``);
* **training**: reference log-probs, forward / backward of every loss term, the optimizer (``time_train``).

Prints a JSON report: per-variant mean seconds per update of each part, SACA / GRPO ratios of the total
and of each part, and the SACA-only parts as shares of SACA's update.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PARTS = ("time_rollout", "time_audit", "time_repair", "time_train")


def trainer(res: Path, cfg: dict, variant: str, out: Path):
    from saca.config import from_dict
    from saca.episodes import load_split
    from saca.episodes.generate import DatasetConfig
    from saca.landmarks import read_landmarks
    from saca.policy.agent import PolicyAgentConfig
    from saca.sim.base import SimConfig
    from saca.train.rft import RftConfig, RftTrainer, resolve_variant

    rft = from_dict(RftConfig, {**resolve_variant(cfg["rft"], variant, cfg["auditor"]), "eval_steps": 0,
                                "eval_episodes": 0, "save_steps": 0, "max_steps": 10**6}, f"rft.variants.{variant}")
    v = cfg["vln_ego"]
    agent = from_dict(PolicyAgentConfig, {**cfg["policy"]["agent"], "n_actions": v["n_actions"], "memory": v["memory"],
                                          "image_format": v["image_format"], "jpeg_quality": v["jpeg_quality"]},
                      "policy.agent")
    sim = from_dict(SimConfig, cfg["sim"], "sim")
    names = rft.datasets or list(cfg["datasets"])
    train = {d: load_split(res / d / "episodes", "train") for d in names}
    sim_args = {d: (sim, from_dict(DatasetConfig, cfg["datasets"][d], f"datasets.{d}"), res / "scenes") for d in names}
    lms = {d: read_landmarks(res / d / "landmarks" / "train.jsonl") for d in names} if rft.uses_auditor else {}
    return RftTrainer(res / "sft" / rft.sft_mix / "final" if rft.sft_mix else res / "sft" / "r2r_rxr" / "final", None,
                      out, rft, agent, train, {}, sim_args, landmarks=lms)


def main() -> int:
    import numpy as np
    import torch
    import yaml

    ap = argparse.ArgumentParser()
    ap.add_argument("--res", default="results", help="a results directory with sft/, scenes/ and each dataset's "
                    "episodes/ and landmarks/train.jsonl")
    ap.add_argument("--updates", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = Path(args.res)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    if (res / "overlay.yaml").exists():
        sys.path.insert(0, str(ROOT / "docs" / "experiments"))
        from mini_sweep import deep_merge

        cfg = deep_merge(cfg, yaml.safe_load((res / "overlay.yaml").read_text()))
    cfg["rft"]["sft_mix"] = "r2r_rxr"
    rows = {"grpo": [], "saca": []}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: trainer(res, cfg, v, Path(tmp) / v) for v in rows}
        for t in trainers.values():
            t.setup()
        for u in range(args.updates):
            for v, t in trainers.items():
                t0 = time.perf_counter()
                row = t.update(u)
                row["time_update"] = time.perf_counter() - t0
                rows[v].append(row)
                print(f"update {u + 1} {v}: {row['time_update']:.1f} s", file=sys.stderr, flush=True)
    out = {"updates": args.updates, "threads": args.threads, "machine": platform.processor() or platform.machine(),
           "res": str(res), "G": cfg["rft"]["G"], "groups_per_step": cfg["rft"]["groups_per_step"]}
    for v, rs in rows.items():
        out[v] = {k: float(np.mean([r.get(k) or 0.0 for r in rs])) for k in PARTS + ("time_update",)}
        out[v]["env_steps_per_update"] = float(np.mean([r["env_steps_per_s"] * r["time_rollout"] for r in rs]))
        if v == "saca":
            for k in ("audit_pairs", "repair_attempts", "repair_successes", "afr_groups", "rep_samples",
                      "align_samples", "con_pairs"):
                out[v][k] = float(np.mean([r.get(k, 0) for r in rs]))
    g, s = out["grpo"], out["saca"]
    out["ratio_total"] = s["time_update"] / g["time_update"]
    out["ratio_rollout"] = s["time_rollout"] / g["time_rollout"]
    out["ratio_train"] = s["time_train"] / g["time_train"] if g["time_train"] else None
    out["saca_share"] = {k: s[k] / s["time_update"] for k in PARTS}
    out["extra_over_grpo"] = {  # SACA's update minus GRPO's, split by part, as a share of GRPO's update
        k: (s[k] - g[k]) / g["time_update"] for k in PARTS}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
