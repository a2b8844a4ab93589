"""Evaluation throughput: episodes/s and environment steps/s, per batch size (episodes active at once).

    PYTHONPATH=src python benchmarks/eval_throughput.py                 # builds a mini world in a temp dir
    PYTHONPATH=src python benchmarks/eval_throughput.py --dataset-dir results/mini_r2r --turn-angle 15
    # a policy (its decisions batched over the active episodes), batch sizes interleaved over 2 repeats:
    PYTHONPATH=src python benchmarks/eval_throughput.py --dataset-dir results/mini_r2r --split val_seen \
        --agent results/sft/r2r_rxr/agent.json --batch-size 8 32 --repeats 2
    # a policy with and without decision batching (episodes that need a decision wait for the others):
    PYTHONPATH=src python benchmarks/eval_throughput.py --dataset-dir results/mini_r2r --agent results/sft/r2r_rxr/agent.json \
        --batch-size 8 --waiting off on

The oracle needs no pixels, so this measures the simulator's navigation
(collision checks, geodesic distances, the teacher) plus the runner and the
metrics, not rendering. Timing covers ``evaluate_split`` end to end (simulator
creation, episodes, metrics, writing the outputs) in a fresh output directory.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def build_world(root: Path, episodes: int, turn_angle: float, seed: int) -> Path:
    """Two held-out houses and ``episodes`` val_unseen episodes (R2R style) under ``root``."""
    from saca.episodes import write_episodes
    from saca.episodes.generate import DatasetConfig, generate_split
    from saca.io import write_json
    from saca.sim.base import SimConfig
    from saca.sim.embedded.sim import EmbeddedSimulator
    from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

    sc = SceneGenConfig(seed=seed, train=1, val_unseen=2)
    ids = sc.scene_ids()
    for sid in ids["train"] + ids["val_unseen"]:
        write_json(root / "scenes" / f"{sid}.json", generate_scene(sid, scene_seed(seed, sid), sc))
    cfg = DatasetConfig(turn_angle=turn_angle, style="r2r", landmarks=[1, 2], seed=seed, episodes={"val_unseen": episodes})
    with EmbeddedSimulator(SimConfig(), turn_angle, root / "scenes") as sim:
        eps = generate_split("bench", cfg, "val_unseen", ids["val_unseen"], sim)
    write_episodes(root / "bench" / "episodes", "val_unseen", eps)
    return root / "bench"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset-dir", type=Path, default=None, help="existing dataset dir (default: build one)")
    ap.add_argument("--scenes-dir", type=Path, default=None, help="default: DATASET_DIR/../scenes")
    ap.add_argument("--split", default="val_unseen")
    ap.add_argument("--turn-angle", type=float, default=15.0)
    ap.add_argument("--episodes", type=int, default=30, help="episodes to generate when building a world")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--agent", default="oracle", help="oracle (default), random, forward or a policy agent spec")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the batch sizes (interleaved: paired ratios)")
    ap.add_argument("--waiting", nargs="+", choices=["on", "off"], default=["on"],
                    help="decision batching of a policy agent (queued_actions); off: every episode steps every tick")
    args = ap.parse_args(argv)

    from saca.episodes import load_split
    from saca.evaluate.agents import make_agent
    from saca.evaluate.runner import EvalConfig, evaluate_split
    from saca.sim.base import SimConfig
    from saca.sim.embedded.sim import EmbeddedSimulator

    with tempfile.TemporaryDirectory(prefix="saca-eval-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ds = args.dataset_dir or build_world(tmp, args.episodes, args.turn_angle, args.seed)
        build_s = time.perf_counter() - t0
        scenes = args.scenes_dir or ds.parent / "scenes"
        episodes = load_split(ds / "episodes", args.split)
        agent = make_agent(args.agent, seed=args.seed)  # loaded once: the runs time the evaluation only
        rows = []
        for rep in range(args.repeats):
            for bs in args.batch_size:
                for waiting in args.waiting:
                    if waiting == "off":
                        agent.queued_actions = None  # the runner then steps every episode on every tick
                    else:
                        agent.__dict__.pop("queued_actions", None)
                    calls0 = getattr(agent, "_calls", 0)
                    make = lambda: EmbeddedSimulator(SimConfig(), args.turn_angle, scenes)  # noqa: E731
                    res = evaluate_split(episodes, make, agent, tmp / f"out_bs{bs}_{waiting}_r{rep}",
                                         EvalConfig(batch_size=bs, seed=args.seed), args.split, args.agent)
                    rows.append({
                        "batch_size": bs,
                        "waiting": waiting,
                        "repeat": rep,
                        "episodes": res["ran"],
                        "env_steps": res["steps"],
                        "generate_calls": getattr(agent, "_calls", 0) - calls0,
                        "seconds": round(res["seconds"], 3),
                        "episodes_per_s": round(res["ran"] / res["seconds"], 2),
                        "env_steps_per_s": round(res["steps"] / res["seconds"], 1),
                        "SR": res["metrics"]["SR"],
                        "SPL": round(res["metrics"]["SPL"], 4),
                    })
    print(f"# {args.agent} evaluation throughput ({platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}; world built in {build_s:.1f} s)")
    print(f"{'batch':>5} {'wait':>4} {'episodes':>8} {'steps':>7} {'calls':>6} {'seconds':>8} {'ep/s':>7} "
          f"{'steps/s':>8} {'SR':>5} {'SPL':>6}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['waiting']:>4} {r['episodes']:>8} {r['env_steps']:>7} {r['generate_calls']:>6} "
              f"{r['seconds']:>8.2f} {r['episodes_per_s']:>7.2f} {r['env_steps_per_s']:>8.1f} {r['SR']:>5.2f} {r['SPL']:>6.3f}")
    # paired per repeat: steps/s of each setting over the first setting's
    first = (args.batch_size[0], args.waiting[0])
    for bs in args.batch_size:
        for waiting in args.waiting:
            if (bs, waiting) == first:
                continue
            ratios = [r["env_steps_per_s"] / b["env_steps_per_s"] for b, r in zip(
                (x for x in rows if (x["batch_size"], x["waiting"]) == first),
                (x for x in rows if (x["batch_size"], x["waiting"]) == (bs, waiting)))]
            print(f"steps/s of batch {bs} waiting {waiting} over batch {first[0]} waiting {first[1]} "
                  "(paired per repeat): " + ", ".join(f"{x:.2f}x" for x in ratios))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
