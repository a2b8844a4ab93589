"""RL groups of the SFT policy (issue 12): share of mixed groups at G = 8 and the Appendix-A share of failed rollouts.

    python docs/experiments/group_stats.py --results results --episodes 32 --out results/group_stats.json

For each dataset, ``--episodes`` train episodes (evenly spaced; RL samples its instructions from the
train split) are rolled out G times each by the RL engine (``saca.train.rollout.RolloutEngine``, the
code ``saca rft`` collects with) under the RL sampling settings (``rft.generation``). Every group is
classified as all-success / mixed / all-failure (``group_outcomes``), and every failed rollout is
replayed and audited by the oracle PGSA auditor (``auditor`` section, landmarks from the workflow's
``landmarks`` rule): the Appendix-A share is the share of failed rollouts with prefix ratio
``rho > auditor.rho``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from saca.auditor import Auditor, AuditorConfig, Trajectory as AuditTrajectory  # noqa: E402
from saca.auditor.run import replay  # noqa: E402
from saca.config import from_dict, load_yaml  # noqa: E402
from saca.episodes import read_episodes  # noqa: E402
from saca.episodes.generate import DatasetConfig  # noqa: E402
from saca.io import write_json  # noqa: E402
from saca.landmarks import read_landmarks  # noqa: E402
from saca.policy.agent import PolicyAgentConfig, resolve_agent_spec  # noqa: E402
from saca.policy.model import load_policy  # noqa: E402
from saca.sim import make_simulator  # noqa: E402
from saca.sim.base import SimConfig  # noqa: E402
from saca.train.rollout import RolloutEngine, group_outcomes, release  # noqa: E402

from mini_sweep import deep_merge  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", nargs="+", default=["config/config.yaml"], help="config file(s), later ones override")
    ap.add_argument("--results", default=None, help="results directory (default: the config's)")
    ap.add_argument("--agent", default=None, help="agent spec (default: {results}/sft/{rft.sft_mix}/agent.json)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--episodes", type=int, default=32, help="instructions per dataset")
    ap.add_argument("--batch", type=int, default=4, help="groups rolled out together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generation", default="{}", help="JSON overrides of rft.generation (e.g. the evaluation's temperature)")
    ap.add_argument("--auditor", default="{}", help="JSON overrides of the auditor section (e.g. patience)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg: dict = {}
    for f in args.config:
        cfg = deep_merge(cfg, load_yaml(f))
    res = Path(args.results or cfg.get("results", "results"))
    rft = cfg["rft"]
    G = int(rft["G"])
    agent_path = args.agent or res / "sft" / rft["sft_mix"] / "agent.json"
    ckpt, options = resolve_agent_spec(agent_path)
    options["generation"] = {**rft["generation"], **json.loads(args.generation), "seed": args.seed}
    acfg = from_dict(PolicyAgentConfig, options, "policy.agent")
    policy = load_policy(ckpt, dtype=acfg.dtype, device=acfg.device, image_pixels=acfg.image_pixels)
    sim_cfg = from_dict(SimConfig, cfg["sim"], "sim")
    audit_cfg = from_dict(AuditorConfig, {**cfg["auditor"], "backend": "oracle", **json.loads(args.auditor)}, "auditor")
    auditor = Auditor(audit_cfg)
    out: dict = {"G": G, "generation": options["generation"], "split": args.split, "agent": str(agent_path),
                 "rho_threshold": audit_cfg.rho, "datasets": {}}
    for d in rft.get("datasets") or list(cfg["datasets"]):
        ds = from_dict(DatasetConfig, cfg["datasets"][d], f"datasets.{d}")
        eps = read_episodes(res / d / "episodes" / f"{args.split}.json.gz", res / d / "episodes" / f"{args.split}_gt.json.gz")
        idx = np.linspace(0, len(eps) - 1, min(args.episodes, len(eps))).round().astype(int)
        eps = [eps[i] for i in idx]
        lms = read_landmarks(res / d / "landmarks" / f"{args.split}.jsonl")
        audit_sim = make_simulator(ds.backend, SimConfig(**{**sim_cfg.__dict__, "instance": True}), ds.turn_angle,
                                   res / "scenes")
        engine = RolloutEngine(policy, acfg, make_sim=None, seed=args.seed, record_logprobs=False)
        trajs = []
        for k in range(0, len(eps), args.batch):
            chunk = eps[k:k + args.batch]
            batch = []
            for j, ep in enumerate(chunk):  # one simulator per group, as the trainer does
                s = make_simulator(ds.backend, sim_cfg, ds.turn_angle, res / "scenes")
                batch += engine.start_group(ep, G, group=k + j, dataset=d, sim=s)
            engine.run(batch)
            release(batch)
            trajs += batch
        outcomes = group_outcomes(trajs)
        failed = [tr for tr in trajs if not tr.success]
        rhos = []
        for k in range(0, len(failed), 8):
            group = []
            for tr in failed[k:k + 8]:
                frames, _ = replay(audit_sim, tr.episode, tr.actions, tr.positions)
                lm = lms.get(tr.episode.episode_id, lms.get(str(tr.episode.episode_id)))
                group.append(AuditTrajectory(frames, lm, False))
            rhos += [r.rho for r in auditor.audit_group(group)]
        # the same audit of the expert's own trajectories, scored as if they had failed: the prefix
        # ratio a rollout that follows the expert all the way would get (the statistic's ceiling here)
        expert_rhos = []
        for k in range(0, len(eps), 8):
            group = []
            for ep in eps[k:k + 8]:
                frames, _ = replay(audit_sim, ep, ep.gt_actions)
                lm = lms.get(ep.episode_id, lms.get(str(ep.episode_id)))
                group.append(AuditTrajectory(frames, lm, False))
            expert_rhos += [r.rho for r in auditor.audit_group(group)]
        steps = [tr.steps for tr in trajs]
        expert = [len(tr.episode.gt_actions or []) for tr in trajs]
        per_group = {}
        for tr in trajs:
            per_group.setdefault(tr.group, 0)
            per_group[tr.group] += int(tr.success)
        out["datasets"][d] = {
            **outcomes,
            "episodes": len(eps),
            "successes_per_group": [per_group[g] for g in sorted(per_group)],
            "failed_rollouts": len(failed),
            "appendix_a_share": (sum(r > audit_cfg.rho for r in rhos) / len(rhos)) if rhos else None,
            "rho_quartiles": [float(q) for q in np.quantile(rhos, [0.25, 0.5, 0.75])] if rhos else None,
            "expert_rho_above_threshold": sum(r > audit_cfg.rho for r in expert_rhos) / len(expert_rhos),
            "expert_rho_quartiles": [float(q) for q in np.quantile(expert_rhos, [0.25, 0.5, 0.75])],
            "mean_steps": float(np.mean(steps)), "mean_expert_steps": float(np.mean(expert)),
            "engine": engine.stats.as_dict(),
        }
        print(d, json.dumps({k: v for k, v in out["datasets"][d].items() if k not in ("engine", "successes_per_group")}))
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
