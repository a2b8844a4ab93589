"""Issue 29's must-show tables from a lab run (`make lab`, results in results-lab/), printed as Markdown.

    PYTHONPATH=src python docs/experiments/lab_summary.py                      # results-lab, config/lab.yaml
    PYTHONPATH=src python docs/experiments/lab_summary.py --results results-lab --seeds 0 1 2

Reads only what the workflow wrote (nothing is recomputed but the statistics):

* the SFT / DAgger table: each DAgger round's rollouts on the train episodes (``results/{dataset}/dagger/{mix}/
  r{k}/manifest.json``: the policy of round k-1; success rate, wall-collision share, agreement with the expert)
  and the final SFT policy's evaluation on val_unseen (SR, wall-collision share from its trajectories, the
  Appendix-A share from its audit), with the minutes of every training and rollout job (Snakemake's
  ``benchmarks/``);
* SACA's mechanisms from every RFT journal (:func:`saca.report.mechanism_counts`);
* Table 2 (mean and sample sd over the seeds, :func:`saca.report.comparison`) with the paired comparison
  against ``grpo`` (:func:`saca.report.paired_comparison`);
* how each policy ends its val_unseen episodes (:func:`saca.report.behaviour`: STOP, the step limit, a STOP at
  the goal once there, turns undone, walls);
* Fig. 5's points (:func:`saca.report.fig5_curves`);
* the wall time of the run's jobs, per rule (sum of the benchmark files' seconds).

Missing parts (a run still going) are reported as missing, not skipped silently.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from saca import SacaError  # noqa: E402
from saca.report import (behaviour, comparison, fig5_curves, mean_spread, mechanism_counts, paired_comparison,  # noqa: E402
                         paper_numbers, run_name, wall_collision_share)

BENCH = {"R2R-CE": "mini_r2r", "RxR-CE": "mini_rxr"}


def pct(x, digits=1):
    return "—" if x is None else f"{100 * x:.{digits}f}"


def minutes(path: Path):
    """Wall minutes of one Snakemake benchmark file (its ``s`` column), None when absent."""
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return sum(float(r["s"]) for r in rows) / 60 if rows else None


def sft_table(res: Path, datasets, mix: str, rounds: int, seeds, train_seeds) -> None:
    print("\n## SFT and DAgger\n")
    print("| training seed | policy | data | minutes | " + " | ".join(
        f"{d} train rollouts: SR / walls / agree" for d in datasets) + " |")
    print("|---|---|---|---|" + "---|" * len(datasets))
    for t in train_seeds:
        m = mix if t == 0 else f"{mix}-t{t}"  # the mix trained with seed t (sft.train_seeds)
        for k in range(rounds + 1):
            name = "final" if k == rounds else f"dagger/r{k}/final"  # the round's policy under results/sft/{m}/
            stage = res / "sft" / m / name
            bench = res / "benchmarks" / "sft" / (f"{m}.tsv" if k == 0 else f"{m}.{name}.tsv")
            cells = []
            for d in datasets:
                man = res / d / "dagger" / m / f"r{k + 1}" / "manifest.json"
                if man.is_file():
                    r = json.loads(man.read_text()).get("rollouts", {})
                    cells.append(f"{pct(r.get('success_rate'))} / {pct(r.get('wall_collision_share'))} / "
                                 f"{pct(r.get('expert_agreement'))}")
                else:
                    cells.append("(not rolled out)" if k == rounds else "(missing)")
            data = "VLN-Ego" + (f" + DAgger r1..r{k}" if k else "")
            mins = minutes(bench)
            print(f"| {t} | round {k}{' (final)' if k == rounds else ''} | {data} | "
                  f"{'—' if mins is None else f'{mins:.1f}'} | " + " | ".join(cells) + " |")
            if not stage.exists():
                print(f"|  |  | ({stage} missing) |")
    print("\nThe final policy on val_unseen, per training seed and evaluation seed (SR, SPL, wall-collision share of "
          "forward steps; the Appendix-A share from the audit of run `sft`):\n")
    print("| dataset | training seed | evaluation seed | run | episodes | SR | SPL | walls | Appendix-A share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in datasets:
        srs = []
        for t in train_seeds:
            for e in seeds:
                run = run_name("sft", e, t)
                ev = res / d / "eval" / run / "val_unseen"
                if not (ev / "metrics.json").is_file():
                    print(f"| {d} | {t} | {e} | {run} | (evaluation missing) |")
                    continue
                met = json.loads((ev / "metrics.json").read_text())
                srs.append(100 * met["SR"])
                walls = wall_collision_share(ev / "episodes.jsonl")
                audit = res / d / "audit" / run / "val_unseen" / "summary.json"
                a = json.loads(audit.read_text())["appendix_a"] if audit.is_file() else None
                print(f"| {d} | {t} | {e} | {run} | {met.get('episodes')} | {pct(met['SR'])} | {pct(met['SPL'])} | "
                      f"{pct(walls['share'])} | "
                      + (f"{pct(a['share'])} ({a['near_miss']} of {a['failed']})" if a else "—") + " |")
        if srs:
            mean, sd = mean_spread(srs)
            print(f"| {d} | all | all |  | {len(srs)} runs | {mean:.1f}" + ("" if sd is None else f" ± {sd:.1f}")
                  + " |  |  |  |")
    for run in ("random", "oracle"):
        srs = []
        for d in datasets:
            p = res / d / "eval" / run / "val_unseen" / "metrics.json"
            srs.append(f"{d} {pct(json.loads(p.read_text())['SR'])}" if p.is_file() else f"{d} (missing)")
        print(f"\n{run} agent SR: " + ", ".join(srs))


def mechanisms(res: Path, variants, seeds) -> None:
    print("\n## SACA's mechanisms (RFT journals)\n")
    print("| run | updates | rollout SR | mixed / all-failure groups | repair successes / branches | "
          "AFR groups with spread | L_con pairs (updates with one) | Appendix-A share |")
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        for s in seeds:
            try:
                (r,) = mechanism_counts(res, [v], [s], partial=True)
            except SacaError as err:
                print(f"| {v}/s{s} | ({err}) |")
                continue
            print(f"| {v}/s{s}{' (running)' if r['partial'] else ''} | {r['updates']} | {pct(r['rollout_sr'])} | {r['groups_mixed']} / "
                  f"{r['groups_all_failure']} | {r['repair_successes']} / {r['repair_attempts']} "
                  f"({pct(r['repair_success_rate'], 0)}) | {r['afr_groups'] - r['afr_zero_spread']} / "
                  f"{r['afr_groups']} ({pct(r['afr_spread_share'], 0)}) | {r['con_pairs']} "
                  f"({pct(r['con_every_update'], 0)}) | {pct(r['appendix_a_share'])} |")


def table2(res: Path, paper_csv: str, variants, seeds) -> None:
    print("\n## Table 2 (val_unseen; mean ± sd over seeds " + ", ".join(map(str, seeds)) + ")\n")
    try:
        rows = comparison(paper_numbers(paper_csv), "table2", res, BENCH, "val_unseen", ["sft", *variants], seeds)
    except SacaError as err:
        print(f"(not complete: {err})")
        return
    print("| row | benchmark | metric | paper | reproduced |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["status"] == "reproduced" and r["metric"] in ("SR", "SPL", "NE"):
            spread = f" ± {r['spread']:.1f}" if r["spread"] is not None else ""
            print(f"| {r['label']} | {r['benchmark']} | {r['metric']} | {r['paper']} | {r['reproduced']:.1f}{spread} |")
    print("\nPaired against grpo (bootstrap over episodes, 10,000 resamples; sign test over seeds):\n")
    print("| benchmark | variant | metric | Δ (points) | 95% CI | p (bootstrap) | per seed | p (sign) |")
    print("|---|---|---|---|---|---|---|---|")
    for bench, d in BENCH.items():
        for v in variants:
            if v == "grpo":
                continue
            for metric in ("SR", "SPL"):
                c = paired_comparison(res, d, v, "grpo", seeds, metric=metric)
                print(f"| {bench} | {v} | {metric} | {100 * c['diff']:+.1f} | [{100 * c['ci'][0]:+.1f}, "
                      f"{100 * c['ci'][1]:+.1f}] | {c['p_boot']:.3f} | "
                      + ", ".join(f"{100 * x:+.1f}" for x in c["per_seed"]) + f" | {c['p_sign']:.2f} |")


def behaviours(res: Path, datasets, variants, seeds, max_steps: int) -> None:
    print("\n## How the policies end their episodes (val_unseen; :func:`saca.report.behaviour`)\n")
    print("| dataset | run | episodes | SR | OS | stop at the goal (SR / OS) | ending on STOP | at the step limit | "
          "steps | steps of a success | turns | turns undone | walls |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in datasets:
        for run in ["oracle", "sft", *(run_name(v, s) for v in variants for s in seeds)]:  # oracle: the expert
            ev = res / d / "eval" / run / "val_unseen"
            if not (ev / "metrics.json").is_file():
                print(f"| {d} | {run} | (evaluation missing) |")
                continue
            met = json.loads((ev / "metrics.json").read_text())
            b = behaviour(ev / "episodes.jsonl", max_steps)
            walls = wall_collision_share(ev / "episodes.jsonl")
            won = "-" if b["success_steps"] is None else f"{b['success_steps']:.0f}"
            print(f"| {d} | {run} | {b['episodes']} | {pct(met['SR'])} | {pct(met['OS'])} | {pct(b['stop_at_goal'])} | "
                  f"{pct(b['stopped'])} | {pct(b['at_limit'])} | {b['steps']:.0f} | "
                  f"{won} | {pct(b['turn_share'])} | "
                  f"{pct(b['undone_turns'])} | {pct(walls['share'])} |")


def fig5(res: Path, variants, seeds) -> None:
    print("\n## Fig. 5 (validation SR on val_seen, mean over datasets and seeds)\n")
    try:
        curves = fig5_curves(res, variants, seeds)
    except SacaError as err:
        print(f"(not complete: {err})")
        return
    for v, pts in curves.items():
        print(f"- {v}: " + ", ".join(f"{s}: {100 * m:.1f}" for s, m, *_ in pts))


def wall_time(res: Path, datasets) -> None:
    print("\n## Wall time of the jobs (sum of Snakemake's benchmark files, minutes)\n")
    per = defaultdict(float)
    for f in (res / "benchmarks").rglob("*.tsv"):
        top = f.relative_to(res / "benchmarks").parts[0]
        # benchmarks/{dataset}/{rule}_{split or mix}.tsv, benchmarks/{rule family}/..., benchmarks/scenes.tsv
        key = re.sub(r"_(train|val_seen|val_unseen|r2r_rxr_r\d+)$", "", f.stem) if top in datasets else Path(top).stem
        per[key] += minutes(f) or 0.0
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"- {k}: {v:.1f}")
    print(f"- total job time: {sum(per.values()):.1f} (two jobs at a time on 2 cores)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results-lab")
    ap.add_argument("--paper", default="config/paper-numbers.csv")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["grpo", "ss", "ss_afr", "saca"])
    ap.add_argument("--datasets", nargs="+", default=["mini_r2r", "mini_rxr"])
    ap.add_argument("--mix", default="r2r_rxr")
    ap.add_argument("--rounds", type=int, default=2, help="sft.dagger.rounds of the run")
    ap.add_argument("--max-steps", type=int, default=500, help="sim.max_steps of the run")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1], help="SFT training seeds: 0 and sft.train_seeds")
    a = ap.parse_args()
    res = Path(a.results)
    sft_table(res, a.datasets, a.mix, a.rounds, a.seeds, a.train_seeds)
    mechanisms(res, a.variants, a.seeds)
    table2(res, a.paper, a.variants, a.seeds)
    behaviours(res, a.datasets, a.variants, a.seeds, a.max_steps)
    fig5(res, a.variants, a.seeds)
    wall_time(res, a.datasets)


if __name__ == "__main__":
    main()
