"""Issue 29: how many train houses? The lab's SFT policies trained in different numbers of houses, on a development
split of held-out houses (060-062, ``docs/experiments/lab_houses_dev.yaml``), printed as Markdown.

    PYTHONPATH=src python docs/experiments/lab_houses_dev.py                     # runs h24 h48, base h24
    PYTHONPATH=src python docs/experiments/lab_houses_dev.py --runs h24 h48 --base h24

Reads the evaluations the workflow wrote (``results-lab-dev/{dataset}/eval/{run}/val_unseen/``): SR, SPL, OS, NE
from ``metrics.json``, the wall-collision share of forward steps from the trajectories, and the paired difference
of each run against ``--base`` over the same episodes (:func:`saca.report.paired_bootstrap`: 10,000 resamples of
the episodes). Nothing is recomputed but the statistics; a missing evaluation is an error naming its file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from saca.report import episode_metrics_file, paired_bootstrap, wall_collision_share  # noqa: E402

DATASETS = ("mini_r2r", "mini_rxr")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results-lab-dev")
    ap.add_argument("--runs", nargs="+", default=["h24", "h48"])
    ap.add_argument("--base", default="h24")
    ap.add_argument("--split", default="val_unseen")
    args = ap.parse_args(argv)
    print("| dataset | run | episodes | SR | SPL | OS | NE (m) | walls | SR - " + args.base + " [95 % CI] (p) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ds in DATASETS:
        base = episode_metrics_file(Path(args.results) / ds / "eval" / args.base / args.split / "episodes.jsonl")
        for run in args.runs:
            d = Path(args.results) / ds / "eval" / run / args.split
            m = json.loads((d / "metrics.json").read_text())
            sr = episode_metrics_file(d / "episodes.jsonl")
            walls = wall_collision_share(d / "episodes.jsonl")["share"]
            cell = "-"
            if run != args.base:
                pair = paired_bootstrap([(sr, base)])
                lo, hi = pair["ci"]
                cell = f"{100 * pair['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (p {pair['p_boot']:.3f})"
            print(f"| {ds} | {run} | {len(sr)} | {100 * m['SR']:.1f} | {100 * m['SPL']:.1f} | {100 * m['OS']:.1f} "
                  f"| {m['NE']:.2f} | {100 * walls:.1f} % | {cell} |")

if __name__ == "__main__":
    main()
