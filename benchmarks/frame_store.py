"""What the simulator's per-pose frame store (``Simulator.observe``) saves in RFT's group rollouts and in evaluation.

    PYTHONPATH=src python benchmarks/frame_store.py --policy results-lab/sft/r2r_rxr/final \\
        --dataset-dir results-lab/mini_r2r --split val_seen --B 2 --G 8 --repeats 2

Runs the same rollouts (same policy, episodes and sampling seed, so the same actions) with the
store (``FRAME_CACHE_BYTES`` as shipped) and without it (a store of one frame, the behaviour
before it), alternating ``--repeats`` times in one process:

* **group**: ``B`` instructions x ``G`` members, temperature 1.0, as RFT's ``collect`` runs them;
* **eval**: ``G`` distinct episodes at once, one member each, the evaluation's batch.

Reported per setting: frames the engine asked for, frames rendered, wall seconds of each run,
and the ratio of the paired wall times (without / with); the actions of the two runs are
checked identical (the store must change no result).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="policy checkpoint (a trained one: random weights do not stop)")
    ap.add_argument("--dataset-dir", type=Path, required=True, help="dataset root (episodes/, scenes in ../scenes)")
    ap.add_argument("--split", default="val_seen")
    ap.add_argument("--turn-angle", type=float, default=15.0)
    ap.add_argument("--B", type=int, default=2, help="instructions per group rollout")
    ap.add_argument("--G", type=int, default=8, help="members per instruction; episodes at once in the eval setting")
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import saca.sim.base as base
    from saca.episodes import load_split
    from saca.policy.agent import PolicyAgentConfig
    from saca.policy.generate import SamplingConfig
    from saca.policy.model import load_policy
    from saca.sim import make_simulator
    from saca.sim.base import SimConfig
    from saca.train.rollout import RolloutEngine

    policy = load_policy(args.policy, dtype="float32", device="cpu")
    episodes = load_split(args.dataset_dir / "episodes", args.split)
    scenes = args.dataset_dir.parent / "scenes"
    sim_cfg = SimConfig(width=128, height=128, depth=False, instance=False, max_steps=args.max_steps)
    counts = {"renders": 0}

    def make_sim(_ep=None):
        sim = make_simulator("embedded", sim_cfg, args.turn_angle, scenes)
        render = sim.render

        def counted(position, heading):
            counts["renders"] += 1
            return render(position, heading)

        sim.render = counted
        return sim

    settings = {
        "group": (episodes[: args.B], args.G, SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=48, seed=args.seed)),
        "eval": (episodes[args.B: args.B + args.G], 1, SamplingConfig(do_sample=True, temperature=0.7, max_new_tokens=48, seed=args.seed)),
    }
    shipped = base.FRAME_CACHE_BYTES
    results = {"policy": str(args.policy), "split": args.split, "frame_cache_bytes": shipped, "rows": []}
    for name, (eps, G, sampling) in settings.items():
        cfg = PolicyAgentConfig(generation=sampling, invalid_action="stop", device="cpu")
        runs = {"store": [], "none": []}
        actions = {}
        frames = {}
        for rep in range(args.repeats):
            for mode in (("store", "none") if rep % 2 == 0 else ("none", "store")):
                base.FRAME_CACHE_BYTES = shipped if mode == "store" else 0
                counts["renders"] = 0
                t0 = time.perf_counter()
                trajs = RolloutEngine(policy, cfg, make_sim, seed=args.seed).rollout(eps, G)
                runs[mode].append(time.perf_counter() - t0)
                acts = [tuple(tr.actions) for tr in trajs]
                if actions.setdefault(mode, acts) != acts:
                    raise SystemExit(f"{name}: two runs with the same seed gave different actions ({mode})")
                frames[mode] = (sum(len(tr.frames) for tr in trajs), counts["renders"])
        base.FRAME_CACHE_BYTES = shipped
        if actions["store"] != actions["none"]:
            raise SystemExit(f"{name}: the frame store changed the actions")
        asked, rendered = frames["store"]
        row = {
            "setting": name, "episodes": len(eps), "G": G, "env_steps": sum(len(a) for a in actions["store"]),
            "frames_asked": asked, "rendered_with_store": rendered, "rendered_without": frames["none"][1],
            "seconds_with_store": [round(t, 2) for t in runs["store"]],
            "seconds_without": [round(t, 2) for t in runs["none"]],
            "speedup": round(statistics.mean(n / s for n, s in zip(runs["none"], runs["store"])), 3),
        }
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
