"""CLI commands: evaluate, eval-merge, plot-episodes (VLN-CE evaluation, docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from saca.config import add_params_args

log = logging.getLogger(__name__)


def _common_args(p: argparse.ArgumentParser) -> None:
    from saca.commands.data import add_sim_args

    p.add_argument("--dataset-dir", required=True, type=Path,
                   help="dataset root, e.g. results/mini_r2r (episodes in DATASET_DIR/episodes/)")
    p.add_argument("--split", required=True,
                   help="val_unseen, val_seen or train; or an imported leaderboard split without _gt "
                        "(e.g. test): run, not scored")
    add_sim_args(p)  # --scenes, --sim, --dataset-config (backend and turn angle)


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="run an agent on every episode of a split; write episodes.jsonl + metrics.json")
    _common_args(p)
    p.add_argument("--agent", required=True,
                   help="reference agent (random, forward, oracle) or a policy checkpoint path")
    p.add_argument("--run", default=None, help="run name (default: the agent name); names the default --out")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: DATASET_DIR/eval/RUN/SPLIT)")
    p.add_argument("--shard", default=None, help="evaluate shard i of n (0-based 'i/n'); outputs go to OUT/shards/i-of-n")
    p.add_argument("--batch-size", type=int, default=None, help="episodes active at once (overrides the params)")
    add_params_args(p, "evaluation")
    p.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("eval-merge", help="merge OUT/shards/{i}-of-{n} of a sharded evaluation into OUT")
    m.add_argument("--out", type=Path, required=True, help="the evaluation directory that holds shards/")
    m.set_defaults(func=cmd_merge)

    q = sub.add_parser("plot-episodes", help="top-down plots (map, reference path, agent path) of sampled episodes")
    _common_args(q)
    q.add_argument("--eval-dir", type=Path, required=True, help="a finished evaluation directory (episodes.jsonl)")
    q.add_argument("--out", type=Path, required=True, help="directory for the PNG files (replaced atomically)")
    q.add_argument("--n", type=int, default=None, help="episodes to plot (default: the params' 'plots')")
    add_params_args(q, "evaluation")
    q.set_defaults(func=cmd_plot)


def _make_sim_factory(args):
    """A simulator factory (one simulator per batch slot); builds one now so a bad config fails first."""
    from saca import SacaError
    from saca.commands.data import sim_from_args

    if not Path(args.scenes).is_dir():
        raise SacaError(f"--scenes {args.scenes}: directory does not exist (run the 'scenes' step)")
    sim_from_args(args)[0].close()
    return lambda: sim_from_args(args)[0]


def _load(args):
    """The split's episodes; a split outside SPLITS is taken only as an imported leaderboard split
    (``{split}.json.gz`` without ``_gt``, e.g. R2R-CE ``test``), which is run but not scored."""
    from saca import SacaError
    from saca.episodes import SPLITS, episode_paths, load_split

    ep_dir = args.dataset_dir / "episodes"
    source, gt = episode_paths(ep_dir, args.split)
    if args.split not in SPLITS:
        if not re.fullmatch(r"[A-Za-z0-9_]+", args.split) or not source.exists() or gt.exists():
            raise SacaError(f"--split '{args.split}': choose one of {', '.join(SPLITS)}, or a leaderboard split "
                            f"imported without ground truth ({source} without {gt.name})")
        return load_split(ep_dir, args.split, with_gt=False), str(source)
    return load_split(ep_dir, args.split), str(source)


def cmd_evaluate(args) -> int:
    from saca.config import params_from_args
    from saca.evaluate.agents import make_agent
    from saca.evaluate.runner import EvalConfig, evaluate_split, parse_shard, shard_dir
    from saca.runlock import folder_lock

    cfg = params_from_args(args, EvalConfig, "evaluation")
    if args.batch_size is not None:
        cfg.batch_size = args.batch_size
        cfg.validate("--batch-size")
    shard = parse_shard(args.shard)
    run = args.run or Path(args.agent).name
    out = args.out or args.dataset_dir / "eval" / run / args.split
    episodes, source = _load(args)
    make_sim = _make_sim_factory(args)
    agent = make_agent(args.agent, seed=cfg.seed, options=cfg.agent_options)  # last: a policy is the slow part
    with folder_lock(shard_dir(out, shard), "evaluation folder"):  # one writer per output folder
        res = evaluate_split(episodes, make_sim, agent, out, cfg, args.split, args.agent, shard, source)
    m = res["metrics"]
    if m is None:  # a leaderboard split: trajectories written, nothing scored
        n = res["ran"] + res["skipped"]
        print(f"{args.split}: a leaderboard split (no goals, no ground truth): wrote {n} trajectories to "
              f"{res['predictions']} for the leaderboard; not scored here")
        return 0
    log.info(
        "%s %s%s: %d episodes (%d run now, %d resumed) in %.1f s | SR %.3f SPL %.3f NE %.2f OS %.3f nDTW %.3f",
        run, args.split, f" shard {args.shard}" if shard else "", m["episodes"], res["ran"], res["skipped"],
        res["seconds"], m["SR"], m["SPL"], m["NE"], m["OS"], m["nDTW"],
    )
    print(json.dumps(m, sort_keys=True))
    return 0


def cmd_merge(args) -> int:
    from saca.evaluate.runner import merge_shards
    from saca.runlock import folder_lock

    with folder_lock(args.out, "evaluation folder"):
        m = merge_shards(args.out)
    if m is None:
        print(f"merged a leaderboard split: {args.out / 'predictions.json'}; not scored here")
        return 0
    print(json.dumps(m, sort_keys=True))
    return 0


def cmd_plot(args) -> int:
    from saca.config import params_from_args
    from saca.evaluate.plots import plot_sampled_episodes
    from saca.evaluate.runner import EvalConfig

    cfg = params_from_args(args, EvalConfig, "evaluation")
    n = cfg.plots if args.n is None else args.n
    episodes, _ = _load(args)
    written = plot_sampled_episodes(args.eval_dir, episodes, _make_sim_factory(args), args.out, n, cfg.seed)
    log.info("wrote %d plots to %s", len(written), args.out)
    return 0
