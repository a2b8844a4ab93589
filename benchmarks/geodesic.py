"""Geodesic queries/s: the exact tangent-graph geodesic against the former grid Dijkstra, paired.

    PYTHONPATH=src python benchmarks/geodesic.py
    PYTHONPATH=src python benchmarks/geodesic.py --eval-baseline-src /path/to/old/checkout/src

Both measures run on the same random pairs of navigable points in the same
generated houses, in one process, alternating, so their ratio is robust to the
machine's drift. Two regimes:

* ``cold``: every query has a new goal (episode generation: each leg is new);
  the grid pays one Dijkstra over ~10^4 cells, the exact geodesic one over its
  tangent graph;
* ``warm``: many queries toward the same goal (evaluation and the teacher: one
  goal per episode, a query per step).

``--eval-baseline-src`` also runs ``benchmarks/eval_throughput.py`` (oracle
agent, no rendering: navigation cost only) alternately against this checkout
and another source tree (e.g. a ``git worktree`` of the commit before the exact
geodesic) and prints the median steps/s ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def query_rates(houses: int, pairs: int, seed: int) -> dict:
    import numpy as np

    from saca.sim.embedded.navgrid import NavGrid
    from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

    cfg = SceneGenConfig(seed=seed)
    rng = np.random.default_rng(seed)
    t = {"exact_cold": 0.0, "grid_cold": 0.0, "exact_warm": 0.0, "grid_warm": 0.0, "build_s": 0.0}
    n_cold = n_warm = 0
    ratios = []
    for h in range(houses):
        sid = f"house_{h:03d}"
        scene = generate_scene(sid, scene_seed(seed, sid), cfg)
        t0 = time.perf_counter()
        nav = NavGrid.from_scene(scene, 0.18)
        t["build_s"] += time.perf_counter() - t0
        pts = nav.free_points()
        for _ in range(pairs):
            a, b = pts[rng.integers(len(pts))], pts[rng.integers(len(pts))]
            for kind, fn in (("grid", nav.grid_distance), ("exact", nav.geodesic_distance)):
                nav.exact._goals.clear()
                nav._fields.clear()
                t0 = time.perf_counter()
                d = fn(a, b)
                t[f"{kind}_cold"] += time.perf_counter() - t0
                if kind == "grid":
                    dg = d
            ratios.append(dg / d if d > 0 else 1.0)
            n_cold += 1
            starts = pts[rng.integers(len(pts), size=20)]
            for kind, fn in (("grid", nav.grid_distance), ("exact", nav.geodesic_distance)):
                fn(starts[0], b)  # the goal's field is built: warm from here
                t0 = time.perf_counter()
                for s in starts:
                    fn(s, b)
                t[f"{kind}_warm"] += time.perf_counter() - t0
            n_warm += len(starts)
    return {
        "houses": houses,
        "pairs": n_cold,
        "exact_cold_qps": round(n_cold / t["exact_cold"], 1),
        "grid_cold_qps": round(n_cold / t["grid_cold"], 1),
        "exact_warm_qps": round(n_warm / t["exact_warm"], 1),
        "grid_warm_qps": round(n_warm / t["grid_warm"], 1),
        "scene_build_ms": round(1000 * t["build_s"] / houses, 1),
        "grid_over_exact_median": round(statistics.median(ratios), 4),
        "grid_over_exact_p95": round(sorted(ratios)[int(0.95 * (len(ratios) - 1))], 4),
    }


def eval_steps(src: Path, episodes: int) -> float:
    bench = Path(__file__).with_name("eval_throughput.py")
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(bench), "--episodes", str(episodes), "--batch-size", "8"],
                         env=env, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    return float(rows[0]["env_steps_per_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--houses", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=40, help="random pairs per house")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-baseline-src", type=Path, default=None)
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--eval-repeats", type=int, default=3)
    args = ap.parse_args(argv)
    r = query_rates(args.houses, args.pairs, args.seed)
    print(f"# geodesic queries/s, {r['houses']} houses, {r['pairs']} random pairs (seed {args.seed}); "
          f"exact tangent graph built in {r['scene_build_ms']} ms per house")
    print(f"{'regime':>6} {'exact q/s':>10} {'grid q/s':>10} {'exact/grid':>10}")
    for regime in ("cold", "warm"):
        e, g = r[f"exact_{regime}_qps"], r[f"grid_{regime}_qps"]
        print(f"{regime:>6} {e:>10.1f} {g:>10.1f} {e / g:>10.2f}")
    print(f"grid distance / exact distance: median {r['grid_over_exact_median']}, p95 {r['grid_over_exact_p95']}")
    if args.eval_baseline_src is not None:
        here = Path(__file__).resolve().parents[1] / "src"
        pairs = []
        for _ in range(args.eval_repeats):
            base = eval_steps(args.eval_baseline_src, args.eval_episodes)
            new = eval_steps(here, args.eval_episodes)
            pairs.append((base, new))
        ratio = statistics.median(n / b for b, n in pairs)
        r["eval_steps_per_s"] = [{"baseline": b, "this": n} for b, n in pairs]
        r["eval_ratio_median"] = round(ratio, 3)
        print("# oracle evaluation steps/s, baseline vs this checkout (alternating): "
              + ", ".join(f"{b:.0f} vs {n:.0f}" for b, n in pairs) + f"; median ratio {ratio:.3f}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
