"""CLI commands: landmarks, audit, audit-figure (the PGSA auditor; docs/auditor.md)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from saca import SacaError
from saca.config import params_from_args

log = logging.getLogger(__name__)


def cmd_landmarks(args) -> int:
    from saca.episodes import read_episodes
    from saca.io import write_jsonl
    from saca.landmarks import LandmarkConfig, extract_split

    cfg = params_from_args(args, LandmarkConfig, "landmarks")
    path = Path(args.episodes) / f"{args.split}.json.gz"
    episodes = read_episodes(path)
    rows = extract_split(episodes, cfg)
    if len(rows) != len(episodes):  # never silently drop an episode
        raise SacaError(f"{path}: {len(episodes)} episodes but {len(rows)} landmark rows")
    n = write_jsonl(args.out, rows)
    by_source = Counter(r["source"] for r in rows)
    empty = sum(1 for r in rows if not r["landmarks"])
    with_gt = [r for r in rows if "gt_landmarks" in r]
    exact = sum(1 for r in with_gt if r["landmarks"] == r["gt_landmarks"])
    msg = f"wrote {n} rows to {args.out}; sources {dict(sorted(by_source.items()))}; {empty} empty"
    if with_gt:
        msg += f"; {exact}/{len(with_gt)} equal to the ground-truth landmark lists"
    print(msg)
    return 0


def _load_inputs(args):
    from saca.episodes import read_episodes
    from saca.io import read_jsonl
    from saca.landmarks import read_landmarks

    eval_path = Path(args.eval_dir) / "episodes.jsonl"
    records = read_jsonl(eval_path)
    episodes = {e.episode_id: e for e in read_episodes(Path(args.episodes) / f"{args.split}.json.gz")}
    landmarks = read_landmarks(args.landmarks)
    return eval_path, records, episodes, landmarks


def _audit_sim(args, cfg):
    """The simulator for a replay; the oracle backend needs the instance channel whatever ``sim.instance`` says."""
    from saca.commands.data import sim_from_args

    if cfg.backend == "oracle":
        from saca.config import parse_json_section
        from saca.sim.base import SimConfig

        sim_cfg = parse_json_section(args.sim, "sim", "--sim", SimConfig)
        if not sim_cfg.get("instance", True):
            log.info("the oracle backend renders the instance channel (sim.instance overridden to true)")
        args.sim = json.dumps({**sim_cfg, "instance": True})
    sim, _ = sim_from_args(args)
    return sim


def cmd_audit(args) -> int:
    from saca.runlock import folder_lock

    with folder_lock(args.out, "audit folder"):  # one writer per output folder
        return _cmd_audit(args)


def _cmd_audit(args) -> int:
    from saca.auditor import Auditor, AuditorConfig
    from saca.auditor.run import Timer, audit_records, audit_row, summarize
    from saca.config import to_dict
    from saca.io import atomic_path, write_json

    cfg = params_from_args(args, AuditorConfig, "auditor")
    eval_path, records, episodes, landmarks = _load_inputs(args)
    if args.limit:
        records = records[: args.limit]
    out = Path(args.out)
    timer = Timer()
    auditor = Auditor(cfg)
    sim = _audit_sim(args, cfg)
    rows = []
    from saca.progress import Progress

    with sim, atomic_path(out / "audit.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh, \
            Progress(len(records), f"audit {eval_path.parent.name}/{eval_path.name}", unit="episode") as progress:
        for rec, res in audit_records(records, episodes, landmarks, sim, auditor, args.group_size, str(eval_path)):
            row = audit_row(rec, res, with_components=args.components)
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            rows.append(row)
            progress.update(1)
    if len(rows) != len(records):
        raise SacaError(f"{eval_path}: {len(records)} records but {len(rows)} audits")
    summary = summarize(rows, cfg.rho)
    st = auditor.stats
    # counts only: the summary is a result, the same bytes on every rerun; the times go to the log (and the
    # rule's benchmark file)
    summary["cost"] = {"backend": cfg.backend, "frames": st["frames"], "pairs_scored": st["pairs"],
                       "backend_calls": st["calls"]}
    log.info("audit cost: %d frames, %d pairs, %d backend calls in %.3f s of auditing (%.3f s in all; %s frames/s)",
             st["frames"], st["pairs"], st["calls"], st["seconds"], timer.seconds,
             f"{st['frames'] / st['seconds']:.1f}" if st["seconds"] > 0 else "n/a")
    summary["run"] = {"eval": str(eval_path), "split": args.split, "landmarks": str(args.landmarks)}
    summary["auditor"] = to_dict(cfg)
    write_json(out / "summary.json", summary)
    from saca.provenance import write_provenance

    write_provenance(out, summary["auditor"], device=cfg.foundation.device if cfg.backend == "foundation" else "cpu")
    a = summary["appendix_a"]
    share = "n/a" if a["share"] is None else f"{a['share']:.3f}"
    print(f"audited {len(rows)} episodes ({summary['failed']} failed) -> {out}; "
          f"failed episodes with rho > {a['rho_threshold']}: {a['near_miss']}/{a['failed']} = {share} (paper 0.73)")
    return 0


def cmd_audit_figure(args) -> int:
    from dataclasses import replace

    from saca.auditor import Auditor, AuditorConfig, Trajectory
    from saca.auditor.figure import audit_figure
    from saca.auditor.run import record_success, replay
    from saca.io import read_jsonl

    cfg = replace(params_from_args(args, AuditorConfig, "auditor"), keep_masks=True)
    eval_path, records, episodes, landmarks = _load_inputs(args)
    if not records:
        raise SacaError(f"{eval_path}: no episodes")
    rec = None
    if args.episode_id is not None:
        rec = next((r for r in records if str(r["episode_id"]) == str(args.episode_id)), None)
        if rec is None:
            raise SacaError(f"{eval_path}: no episode {args.episode_id!r}")
    elif args.audit:
        # the most telling failure: grounded something, diverged mid-way (largest rho below 1)
        audits = {str(r["episode_id"]): r for r in read_jsonl(args.audit)}
        cands = [a for a in audits.values() if not a["success"] and a["reached"] > 0 and 0 < a["rho"] < 1]
        cands = cands or [a for a in audits.values() if a["reached"] > 0] or list(audits.values())
        best = max(cands, key=lambda a: (a["rho"], a["reached"], -a["T"]))
        rec = next(r for r in records if str(r["episode_id"]) == str(best["episode_id"]))
    else:
        rec = records[0]
    ep = episodes.get(rec["episode_id"], episodes.get(str(rec["episode_id"])))
    if ep is None:
        raise SacaError(f"{eval_path}: episode {rec['episode_id']!r} is not in the split's episode file")
    lms = landmarks.get(rec["episode_id"], landmarks.get(str(rec["episode_id"])))
    if lms is None:
        raise SacaError(f"{args.landmarks}: no row for episode {rec['episode_id']!r}")
    sim = _audit_sim(args, cfg)
    auditor = Auditor(cfg)
    with sim:
        frames, positions = replay(sim, ep, rec["actions"], rec.get("positions"), str(eval_path))
        res = auditor.audit_group([Trajectory(frames, lms, record_success(rec, str(eval_path)))])[0]
        scene = getattr(sim, "scene", None)
    steps = audit_figure(
        [f.rgb for f in frames], res, cfg, args.out,
        title=f"episode {ep.episode_id} ({ep.scene_id}), backend {cfg.backend}, modules {'+'.join(cfg.modules)}",
        instruction=ep.instruction_text, scene=scene, positions=positions, goal=ep.goal_position,
    )
    print(f"wrote {args.out} (episode {ep.episode_id}, steps {steps}, t* = {res.t_star}, rho = {res.rho:.2f})")
    return 0


def cmd_audit_expert(args) -> int:
    """The auditor's expert ceiling: the split's expert trajectories audited as if they had failed (issue 29)."""
    from dataclasses import replace

    from saca.auditor import Auditor, AuditorConfig, Trajectory
    from saca.auditor.run import audit_row, ceiling_summary, expert_records, replay
    from saca.config import from_dict, to_dict
    from saca.episodes import read_episodes
    from saca.io import write_json
    from saca.landmarks import read_landmarks

    base = params_from_args(args, AuditorConfig, "auditor")
    try:
        variants = json.loads(args.variants)
    except json.JSONDecodeError as err:
        raise SacaError(f"--variants: not JSON ({err})") from None
    if not isinstance(variants, dict) or not variants or not all(isinstance(v, dict) for v in variants.values()):
        raise SacaError("--variants: a JSON object {name: {auditor key: value}} with at least one entry")
    auditors = {}
    for name, over in variants.items():
        cfg = from_dict(AuditorConfig, {**to_dict(base), **over}, f"--variants.{name}")
        auditors[name] = Auditor(replace(cfg, keep_masks=False))
    episodes = read_episodes(Path(args.episodes) / f"{args.split}.json.gz",
                             Path(args.episodes) / f"{args.split}_gt.json.gz")
    if args.limit:
        episodes = episodes[: args.limit]
    by_id = {e.episode_id: e for e in episodes}
    landmarks = read_landmarks(args.landmarks)
    records = expert_records(episodes)
    sim = _audit_sim(args, base)
    rows: dict[str, list] = {name: [] for name in auditors}
    with sim:
        for k in range(0, len(records), args.group_size):
            chunk = records[k:k + args.group_size]
            trajs = []
            for rec in chunk:
                lms = landmarks.get(rec["episode_id"], landmarks.get(str(rec["episode_id"])))
                if lms is None:
                    raise SacaError(f"{args.landmarks}: no row for episode {rec['episode_id']!r}")
                frames, _ = replay(sim, by_id[rec["episode_id"]], rec["actions"])
                trajs.append(Trajectory(frames, lms, False))
            for name, auditor in auditors.items():
                rows[name] += [audit_row(rec, res) for rec, res in zip(chunk, auditor.audit_group(trajs))]
    out = {"split": args.split, "episodes": str(args.episodes), "landmarks": str(args.landmarks),
           "statistic": "expert trajectories audited as failures: share with prefix ratio rho above each threshold",
           "variants": {}}
    for name, auditor in auditors.items():
        summ = ceiling_summary(rows[name])
        diff = {k: v for k, v in to_dict(auditor.config).items() if to_dict(base).get(k) != v}
        out["variants"][name] = {"overrides": variants[name], "auditor_changes": diff, **summ}
        print(f"{name}: rho > 0.9 {summ['rho_above_0.9']:.3f}, rho > 0.5 {summ['rho_above_0.5']:.3f} "
              f"({summ['episodes']} expert trajectories)")
    out["auditor"] = to_dict(base)
    write_json(args.out, out)
    return 0


def register(sub) -> None:
    from saca.commands.data import add_sim_args

    p = sub.add_parser("landmarks", help="extract the landmarks of every episode of a split (JSONL)")
    p.add_argument("--episodes", required=True, help="episodes directory with {split}.json.gz")
    p.add_argument("--split", required=True, choices=["train", "val_seen", "val_unseen"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--params", default=None, help="JSON of the 'landmarks' config section")
    g.add_argument("--config", default=None, help="YAML config file; its 'landmarks' section is used")
    p.add_argument("--out", required=True, help="output file, results/{dataset}/landmarks/{split}.jsonl")
    p.set_defaults(func=cmd_landmarks)

    def audit_args(p):
        p.add_argument("--episodes", required=True, help="episodes directory with {split}.json.gz")
        p.add_argument("--split", required=True, choices=["train", "val_seen", "val_unseen"])
        p.add_argument("--eval-dir", required=True, help="evaluation run directory with episodes.jsonl")
        p.add_argument("--landmarks", required=True, help="landmarks/{split}.jsonl")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--params", default=None, help="JSON of the 'auditor' config section")
        g.add_argument("--config", default=None, help="YAML config file; its 'auditor' section is used")
        add_sim_args(p)

    p = sub.add_parser("audit", help="audit the trajectories of an evaluation run (PGSA auditor)")
    audit_args(p)
    p.add_argument("--group-size", type=int, default=8, help="episodes audited together (one batched audit)")
    p.add_argument("--limit", type=int, default=0, help="audit only the first N episodes (0: all)")
    p.add_argument("--components", action="store_true", help="store S_g, c, S_b, u, S_m and boxes per step")
    p.add_argument("--out", required=True, help="output directory (audit.jsonl, summary.json)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("audit-expert", help="the auditor's expert ceiling: expert trajectories audited as failures")
    p.add_argument("--episodes", required=True, help="episodes directory with {split}.json.gz and {split}_gt.json.gz")
    p.add_argument("--split", required=True, choices=["train", "val_seen", "val_unseen"])
    p.add_argument("--landmarks", required=True, help="landmarks/{split}.jsonl")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--params", default=None, help="JSON of the 'auditor' config section (the base)")
    g.add_argument("--config", default=None, help="YAML config file; its 'auditor' section is the base")
    add_sim_args(p)
    p.add_argument("--variants", default='{"default": {}}',
                   help="JSON {name: {auditor key: value}}: auditor settings compared on the same replays")
    p.add_argument("--group-size", type=int, default=8, help="episodes audited together (one batched audit)")
    p.add_argument("--limit", type=int, default=0, help="only the first N episodes (0: all)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.set_defaults(func=cmd_audit_expert)

    p = sub.add_parser("audit-figure", help="Fig. 6-style figure of one audited episode (PNG)")
    audit_args(p)
    p.add_argument("--audit", default=None, help="audit.jsonl, to pick a telling failed episode")
    p.add_argument("--episode-id", default=None, help="episode to show (default: picked from --audit)")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=cmd_audit_figure)
