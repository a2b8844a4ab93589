"""The lever sweep of docs/policy.md ("The mini world in the paper's regime", issue 12), selected on val_seen.

    python docs/experiments/mini_sweep.py --points base res112 ...   # runs the workflow for each point
    python docs/experiments/mini_sweep.py --report-only                 # prints the table
    python docs/experiments/mini_sweep.py --points a b --eval-seeds 1 2  # + evaluation seeds 1 and 2 (mean of 3)

Each point is a small override of ``config/config.yaml`` (``POINTS`` below; the ``lab_*`` points: of
``config/config.yaml`` with ``config/lab.yaml`` over it). The script writes the override to
``results/sweep/{point}/overlay.yaml`` and runs the workflow itself,

    snakemake --cores 2 --configfile config/config.yaml [config/lab.yaml] results/sweep/{point}/overlay.yaml -- TARGETS

with ``results: results/sweep/{point}``, for the targets: the SFT model, its evaluation on val_seen of
both datasets (``SWEEP_VAL_SEEN`` episodes each, a larger val_seen than the default config's, since
selection happens there) and the oracle audit of those episodes (the Appendix-A share). Points that
leave the world and the VLN-Ego settings unchanged share the data of the point named in ``data_from``
(symlinked), so only SFT and evaluation run again. val_unseen is never touched here.

Table columns: SFT minutes (the ``sft`` rule's benchmark file, 2 cores), val_seen SR / mean episode
length / expert length per dataset, Appendix-A share of failed episodes (rho > 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("mini_r2r", "mini_rxr")
SWEEP_VAL_SEEN = 60

# the override every point shares: a larger val_seen for selection, no val_unseen data
COMMON = {
    "datasets": {d: {"episodes": {"val_seen": SWEEP_VAL_SEEN}} for d in DATASETS},
    "sft": {"val_splits": ["val_seen"]},
}

POINTS: dict[str, dict] = {}


DEFAULT = ("config/config.yaml",)
LAB = ("config/config.yaml", "config/lab.yaml")  # the lab setting of issue 29 (its SFT chain: DAgger, 2 rounds)


def point(name, data_from=None, evals=None, configs=DEFAULT, **override):
    """``evals``: extra evaluations of the point's SFT model, ``{run suffix: evaluation.agent_options}``
    (decoding / execution settings that need no retraining); ``configs``: the config files the override is
    merged over, in order (``LAB``: the lab's SFT policy, DAgger included)."""
    POINTS[name] = {"override": override, "data_from": data_from, "evals": evals or {}, "configs": configs}


# Each point was run against the default config of its day. `base` ran before `direct_f8_e2` became the
# default (no max_detour, 16 frames of memory, 4 epochs) and shared that default's data; rerunning it today
# needs those three keys pinned. The other points set what they change over the defaults they inherit.
# the pre-issue default (4 epochs, 22 min): 56 px frames (4 image tokens), 16 frames of memory;
# its train data are the default workflow's (results/)
point("base", data_from="results")
# world difficulty: shorter routes (R2R-style 4-9 m, RxR-style 6-14 m through 2-3 landmarks), more train
# episodes so that the number of VLN-Ego samples stays about the same
SHORT = {"mini_r2r": {"path_length": [4.0, 9.0], "episodes": {"train": 160}, "max_detour": None},
         "mini_rxr": {"path_length": [6.0, 14.0], "landmarks": [2, 3], "episodes": {"train": 120}, "max_detour": None}}
EXEC = {"exec1": {"execute_actions": 1}}  # re-plan after every action (closed loop) instead of after the chunk
# the 10-minute budget on the default world: 8 frames of memory (7 history + current), 2 epochs
point("f8_e2", data_from=None, vln_ego={"memory": {"max_frames": 8}}, sft={"num_train_epochs": 2})
point("short_f8_e2", datasets=SHORT, vln_ego={"memory": {"max_frames": 8}}, sft={"num_train_epochs": 2}, evals=EXEC)
# landmark visibility: every leg of the route is nearly straight (geodesic <= 1.1 x straight line), so the
# landmark a leg walks to is in sight from where the leg starts (once the agent has turned toward it)
DIRECT = {"mini_r2r": {"max_detour": 1.1}, "mini_rxr": {"max_detour": 1.1}}
point("direct_f8_e2", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}}, sft={"num_train_epochs": 2}, evals=EXEC)
# both: nearly straight legs on the shorter routes (the default's world with SHORT's route lengths)
DIRECT_SHORT = {k: {**SHORT[k], **DIRECT[k]} for k in SHORT}
point("direct_short_f8_e2", datasets=DIRECT_SHORT, vln_ego={"memory": {"max_frames": 8}}, sft={"num_train_epochs": 2})
# recovery data: one noise-injected expert rollout per train episode (p = 0.15), 1 epoch over the ~2.4x larger set
point("direct_f8_noise_e1", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}, "noise": {"trajectories": 1, "p": 0.15}},
      sft={"num_train_epochs": 1})
# resolution on the direct-leg world: 112 px frames (16 image tokens: 4 horizontal bins of 22.5 deg where
# 56 px gives 2 of 45 deg), 4 frames of memory to keep the cost per sample
point("direct_res112_f4_e2", datasets=DIRECT, vln_ego={"memory": {"max_frames": 4}}, policy={"init": {"image_size": 112}},
      sft={"num_train_epochs": 2}, evals=EXEC)
point("direct_res112_f4_noise_e1", datasets=DIRECT, policy={"init": {"image_size": 112}},
      vln_ego={"memory": {"max_frames": 4}, "noise": {"trajectories": 1, "p": 0.15}}, sft={"num_train_epochs": 1}, evals=EXEC)
# a policy that sees: the default (direct_f8_e2) with its vision tower pretrained on 12,000 rendered frames of the
# train houses (landmark per image token, "fills the cell", free space ahead; saca.policy.vision_pretrain)
point("direct_f8_e2_vis", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}},
      sft={"num_train_epochs": 2}, policy={"vision_pretrain": {"frames": 12000}})
# ... and SFT with that tower frozen (sft.freeze_vision_tower, LLaMA-Factory's switch): SFT at lr 2e-3 otherwise
# rewrites the pretrained tower (the pretraining's probe heads no longer decode it after SFT: loss 14.0 against 0.37)
VIS = {"vision_pretrain": {"frames": 12000}}
point("direct_f8_e2_vis_frozen", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}},
      sft={"num_train_epochs": 2, "freeze_vision_tower": True}, policy=VIS)
# the tower pretrained to write landmark tokens in the language model's word-embedding directions (head: words)
point("direct_f8_visw_noise_e1", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}, "noise": {"trajectories": 1, "p": 0.15}},
      sft={"num_train_epochs": 1}, policy={"vision_pretrain": {"frames": 12000, "head": "words"}})
# the pretrained tower plus recovery data (one noise-injected expert rollout per train episode), 1 epoch: a policy
# that sees walls and landmarks, trained on states off the expert's path
point("direct_f8_vis_noise_e1", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}, "noise": {"trajectories": 1, "p": 0.15}},
      sft={"num_train_epochs": 1}, policy=VIS)
# more recovery data for the seeing policy (measured after it became the default, val_seen only): twice the
# noise rate on the same number of rollouts (same SFT cost), and two noise-injected rollouts per train episode
# (about 1.5x the samples and the SFT time: beyond the 10-minute budget, a probe of what more data buys)
point("direct_f8_vis_noise30_e1", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}, "noise": {"trajectories": 1, "p": 0.3}},
      sft={"num_train_epochs": 1}, policy=VIS)
point("direct_f8_vis_noise2_e1", datasets=DIRECT, vln_ego={"memory": {"max_frames": 8}, "noise": {"trajectories": 2, "p": 0.15}},
      sft={"num_train_epochs": 1}, policy=VIS)
# ... the same data at the default's compute: 1,859 steps (the default's one epoch; 0.64 epoch here), with a frame
# cache that holds every frame (the 40,000-frame default thrashes on its 44,600 samples): more data or more steps?
point("direct_f8_vis_noise2_s1859", data_from="direct_f8_vis_noise2_e1", datasets=DIRECT,
      vln_ego={"memory": {"max_frames": 8}, "noise": {"trajectories": 2, "p": 0.15}},
      sft={"max_steps": 1859, "frame_cache": 60000}, policy=VIS)
# resolution: 112 px frames (16 image tokens each) with 4 frames of memory (about the cost of 56 px with 8)
point("short_res112_f4_e2", data_from=None, datasets=SHORT, vln_ego={"memory": {"max_frames": 4}},
      policy={"init": {"image_size": 112}}, sft={"num_train_epochs": 2}, evals=EXEC)

# issue 29: does the lab's SFT policy (DAgger, 2 rounds) generalise from more training episodes? The lab's policy
# reaches SR 0.33 on its own train episodes of mini_r2r, 0.20 on val_seen (the same houses) and 0.12 on val_unseen
# (docs/policy.md). `lab_x1` is the lab's SFT chain as it is (120 / 80 train episodes); `lab_x3` the same chain on
# three times as many train episodes of the same 8 houses (the first 120 / 80 are lab_x1's: each split draws its
# episodes from its own random stream), one epoch of round-0 SFT over them (three times the steps), DAgger rollouts
# on all of them, the same 600 steps per DAgger round.
# config/lab.yaml has had lab_x3's 360 / 240 since then: lab_x1 pins the 120 / 80 it ran with.
point("lab_x1", configs=LAB, datasets={"mini_r2r": {"episodes": {"train": 120}}, "mini_rxr": {"episodes": {"train": 80}}})
point("lab_x3", configs=LAB, datasets={"mini_r2r": {"episodes": {"train": 360}}, "mini_rxr": {"episodes": {"train": 240}}})


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def targets(res: Path) -> list[str]:
    out = [str(res / "sft" / "r2r_rxr" / "final")]
    for d in DATASETS:
        out += [str(res / d / "eval" / "sft" / "val_seen" / "metrics.json"),
                str(res / d / "audit" / "sft" / "val_seen" / "summary.json")]
    return out


def share_data(res: Path, src: Path) -> None:
    """Symlink the scenes and train data of another point with the same world and VLN-Ego settings."""
    res.mkdir(parents=True, exist_ok=True)
    rels = ["scenes", *[f"{d}/{sub}" for d in DATASETS for sub in
                        ("episodes/train.json.gz", "episodes/train_gt.json.gz", "vln_ego/train")]]
    for rel in rels:
        dst = res / rel
        if not dst.exists() and (src / rel).exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(src / rel, dst.parent), dst)


def run_point(name: str, cores: int) -> None:
    p = POINTS[name]
    res = Path("results/sweep") / name
    overlay = deep_merge(COMMON, p["override"])
    overlay["results"] = str(res)
    res.mkdir(parents=True, exist_ok=True)
    (res / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    if p["data_from"]:
        src = Path(p["data_from"]) if "/" in p["data_from"] or p["data_from"] == "results" else Path("results/sweep") / p["data_from"]
        share_data(res, src)
    base = ["snakemake", "--cores", str(cores), "--configfile", *p["configs"], str(res / "overlay.yaml")]
    snake(name, base + ["--", *targets(res)])
    cfg = merged_config(p["configs"], overlay)
    for suffix, options in p["evals"].items():
        extra_eval(res, cfg, f"sft-{suffix}", options)


def point_config(name: str) -> tuple[Path, dict]:
    res = Path("results/sweep") / name
    overlay = yaml.safe_load((res / "overlay.yaml").read_text())
    return res, merged_config(POINTS[name]["configs"], overlay)


def merged_config(configs, overlay: dict) -> dict:
    """The config Snakemake sees: ``configs`` merged in order, then the point's overlay."""
    cfg: dict = {}
    for path in configs:
        cfg = deep_merge(cfg, yaml.safe_load((ROOT / path).read_text()))
    return deep_merge(cfg, overlay)


def seed_evals(name: str, seeds) -> None:
    """Evaluation seeds beyond the workflow's seed 0 for the point's SFT model (runs ``sft-seed{n}``, val_seen)."""
    res, cfg = point_config(name)
    for seed in seeds:
        extra_eval(res, cfg, f"sft-seed{seed}", {}, seed=seed)
    if name in BEFORE_BATCHING:  # seed 0 again with the current runner
        extra_eval(res, cfg, "sft-batched", {})


# points whose workflow run predates the evaluation's decision batching (2026-11-28): their seed 0 is repeated as
# run `sft-batched`, so that all seeds of a mean come from the same runner
BEFORE_BATCHING = {"base", "direct_f8_e2", "direct_res112_f4_e2", "direct_f8_noise_e1"}


def round0_evals(name: str, seeds) -> None:
    """A DAgger point's round-0 policy (plain SFT on the VLN-Ego data, before any DAgger round) on val_seen with
    evaluation seeds 0 and ``seeds`` (runs ``sft-r0-seed{n}``): what more expert data does before DAgger."""
    res, cfg = point_config(name)
    agent = res / "sft" / "r2r_rxr" / "dagger" / "r0" / "agent.json"
    if not agent.exists():
        sys.exit(f"point {name}: no round-0 agent at {agent} (sft.dagger.rounds > 0 writes it)")
    for seed in [0, *seeds]:
        extra_eval(res, cfg, f"sft-r0-seed{seed}", {}, seed=seed, agent=agent)


def extra_eval(res: Path, cfg: dict, run: str, options: dict, seed: int | None = None, agent: Path | None = None) -> None:
    """Evaluate the point's SFT agent (or ``agent``) with other agent options (or another evaluation ``seed``) on
    val_seen, and audit it (the workflow's commands)."""
    py = [sys.executable, "-m", "saca"]
    sim = json.dumps(cfg["sim"])
    for d in DATASETS:
        ds = dict(cfg["datasets"][d])
        ds["episodes"] = {"val_seen": ds["episodes"]["val_seen"]}
        out = res / d / "eval" / run / "val_seen"
        common = ["--scenes", str(res / "scenes"), "--sim", sim, "--dataset-config", json.dumps(ds)]
        if not (out / "metrics.json").exists():
            params = {**cfg["evaluation"], "agent_options": options}
            if seed is not None:
                params["seed"] = seed
            shell(py + ["evaluate", "--dataset-dir", str(res / d), "--split", "val_seen", "--agent",
                        str(agent or res / "sft" / "r2r_rxr" / "agent.json"), "--run", run, *common,
                        "--params", json.dumps(params), "--out", str(out)], res / "logs" / f"{d}-{run}.log")
        audit = res / d / "audit" / run / "val_seen"
        if not (audit / "summary.json").exists():
            shell(py + ["audit", "--episodes", str(res / d / "episodes"), "--split", "val_seen", "--eval-dir", str(out),
                        "--landmarks", str(res / d / "landmarks" / "val_seen.jsonl"), *common,
                        "--params", json.dumps(cfg["auditor"]), "--out", str(audit)], res / "logs" / f"{d}-{run}.audit.log")


def shell(cmd, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("SACA_THREADS", "2"), "PYTHONPATH": str(ROOT / "src")}
    with open(log, "w") as fh:
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): see {log}")


def snake(name, cmd) -> None:
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        sys.exit(f"point {name}: snakemake failed ({r.returncode})")


def episode_lengths(path: Path, gt_path: Path) -> tuple[float, float]:
    """Mean agent steps of an evaluation's episodes and mean expert steps of the same episodes."""
    import gzip

    gt = json.loads(gzip.open(gt_path).read())
    steps, expert = [], []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        steps.append(row.get("steps", len(row["actions"])))
        expert.append(len(gt[str(row["episode_id"])]["actions"]))
    n = max(len(steps), 1)
    return sum(steps) / n, sum(expert) / n


def report(names) -> None:
    head = "| point | SFT min | " + " | ".join(f"{d} SR / steps (expert) / A-share" for d in DATASETS) + " |"
    print(head)
    print("|" + "---|" * (2 + len(DATASETS)))
    for name in names:
        for run in ["sft", *[f"sft-{s}" for s in POINTS[name]["evals"]]]:
            report_row(name, run)


def report_row(name: str, run: str) -> None:
    res = ROOT / "results/sweep" / name
    bench = res / "benchmarks" / "sft" / "r2r_rxr.tsv"
    minutes = float(bench.read_text().splitlines()[-1].split("\t")[0]) / 60 if bench.exists() else float("nan")
    vis = res / "benchmarks" / "policy" / "vision_pretrain.tsv"  # points that pretrain the vision tower first
    label_min = f"{minutes:.1f}"
    if vis.exists():
        label_min += f" + {float(vis.read_text().splitlines()[-1].split(chr(9))[0]) / 60:.1f} vision"
    cells = []
    for d in DATASETS:
        m = res / d / "eval" / run / "val_seen" / "metrics.json"
        a = res / d / "audit" / run / "val_seen" / "summary.json"
        if not m.exists():
            cells.append("-")
            continue
        sr = json.loads(m.read_text())["SR"]
        steps, expert = episode_lengths(m.parent / "episodes.jsonl", res / d / "episodes" / "val_seen_gt.json.gz")
        share = json.loads(a.read_text())["appendix_a"]["share"] if a.exists() else None
        cells.append(f"{sr:.3f} / {steps:.0f} ({expert:.0f}) / {'-' if share is None else f'{share:.2f}'}")
    label = name if run == "sft" else f"{name}, {run[4:]}"
    print(f"| {label} | {label_min} | " + " | ".join(cells) + " |")


def seed_report(names, seeds, round0: bool = False) -> None:
    """SR over evaluation seeds 0 and ``seeds`` (mean ± sample sd; seed 0 of a point in BEFORE_BATCHING is its
    ``sft-batched`` run),
    mean episode length and Appendix-A share over the same runs."""
    import statistics

    print("| point | " + " | ".join(f"{d} SR (per seed) / steps (expert) / A-share" for d in DATASETS) + " |")
    print("|" + "---|" * (1 + len(DATASETS)))
    for name in names:
        res = ROOT / "results/sweep" / name
        cells = []
        for d in DATASETS:
            srs, steps, shares, expert = [], [], [], 0.0
            for run in seed_runs(name, seeds, round0):
                m = res / d / "eval" / run / "val_seen" / "metrics.json"
                if not m.exists():
                    continue
                srs.append(json.loads(m.read_text())["SR"])
                st, expert = episode_lengths(m.parent / "episodes.jsonl", res / d / "episodes" / "val_seen_gt.json.gz")
                steps.append(st)
                a = res / d / "audit" / run / "val_seen" / "summary.json"
                if a.exists():
                    shares.append(json.loads(a.read_text())["appendix_a"]["share"])
            if not srs:
                cells.append("-")
                continue
            sd = statistics.stdev(srs) if len(srs) > 1 else float("nan")
            share = f"{statistics.mean(shares):.2f}" if shares else "-"
            cells.append(f"{statistics.mean(srs):.3f} ± {sd:.3f} ({', '.join(f'{x:.3f}' for x in srs)}) / "
                         f"{statistics.mean(steps):.0f} ({expert:.0f}) / {share}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def seed_runs(name: str, seeds, round0: bool = False) -> list[str]:
    """The evaluation runs of a point's SFT policy (``round0``: its round-0 policy) at seed 0 and ``seeds``."""
    if round0:
        return [f"sft-r0-seed{n}" for n in [0, *seeds]]
    return ["sft-batched" if name in BEFORE_BATCHING else "sft", *[f"sft-seed{n}" for n in seeds]]


def compare(variant: str, baseline: str, seeds, round0: bool = False) -> None:
    """Paired SR difference of two points' SFT policies on the same val_seen episodes and evaluation seeds (0 and
    ``seeds``): ``saca.report.paired_bootstrap`` (bootstrap over episodes, sign test over seeds)."""
    from saca.report import episode_metrics_file, paired_bootstrap

    for d in DATASETS:
        pairs = []
        for rv, rb in zip(seed_runs(variant, seeds, round0), seed_runs(baseline, seeds, round0)):
            pairs.append(tuple(episode_metrics_file(ROOT / "results/sweep" / name / d / "eval" / run / "val_seen"
                                                    / "episodes.jsonl") for name, run in ((variant, rv), (baseline, rb))))
        c = paired_bootstrap(pairs)
        print(f"{'round 0: ' if round0 else ''}{variant} - {baseline}, {d}: SR {100 * c['diff']:+.1f} points "
              f"[{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] (bootstrap p {c['p_boot']:.3f}; per seed "
              f"{', '.join(f'{100 * x:+.1f}' for x in c['per_seed'])}; sign p {c['p_sign']:.2f}; "
              f"{c['episodes']} episodes)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", nargs="+", default=list(POINTS))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--eval-seeds", type=int, nargs="*", default=[],
                    help="also evaluate each point's SFT model with these evaluation seeds (val_seen) and report the "
                    "mean over seed 0 and them")
    ap.add_argument("--round0", action="store_true",
                    help="DAgger points: also evaluate the round-0 policy (plain SFT) with seed 0 and --eval-seeds")
    ap.add_argument("--evals-only", action="store_true",
                    help="skip the workflow run (the point's SFT model exists): only the extra evaluations")
    ap.add_argument("--compare", nargs=2, metavar=("VARIANT", "BASELINE"),
                    help="print the paired SR difference of two points (seed 0 and --eval-seeds; with --round0 also "
                    "of their round-0 policies)")
    args = ap.parse_args()
    unknown = [n for n in args.points if n not in POINTS]
    if unknown:
        sys.exit(f"unknown points {unknown}; defined: {', '.join(POINTS)}")
    if not args.report_only:
        for name in args.points:
            if not args.evals_only:
                run_point(name, args.cores)
            if args.eval_seeds:  # evaluations that exist are kept
                seed_evals(name, args.eval_seeds)
            if args.round0:
                round0_evals(name, args.eval_seeds)
    report(args.points)
    if args.eval_seeds:
        seed_report(args.points, args.eval_seeds)
    if args.round0:
        print("\nround 0 (plain SFT, before DAgger):")
        seed_report(args.points, args.eval_seeds, round0=True)
    if args.compare:
        print()
        compare(*args.compare, args.eval_seeds)
        if args.round0:
            compare(*args.compare, args.eval_seeds, round0=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
