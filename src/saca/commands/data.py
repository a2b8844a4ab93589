"""CLI commands: scenes, episodes, vln-ego, export-sharegpt, preview."""

from __future__ import annotations

from pathlib import Path

from saca import SacaError
from saca.config import section_from_json


def add_sim_args(p) -> None:
    """Options every command that drives a simulator takes."""
    p.add_argument("--scenes", required=True, help="directory of scene files (results/scenes)")
    p.add_argument("--sim", default=None, help="JSON of the 'sim' config section")
    p.add_argument("--dataset-config", default=None, help="JSON of the dataset's entry in 'datasets'")


def sim_configs(args):
    """The ``sim`` and dataset sections of ``--sim`` / ``--dataset-config``, checked (no simulator built)."""
    from saca.episodes.generate import DatasetConfig
    from saca.sim.base import SimConfig

    sim_cfg = section_from_json(args.sim, SimConfig, "sim", "--sim")
    ds_cfg = section_from_json(args.dataset_config, DatasetConfig, "datasets.<dataset>", "--dataset-config")
    return sim_cfg, ds_cfg


def sim_from_args(args):
    """Build the simulator a command needs from ``--sim``/``--dataset-config``/``--scenes``."""
    from saca.sim import make_simulator

    sim_cfg, ds_cfg = sim_configs(args)
    return make_simulator(ds_cfg.backend, sim_cfg, ds_cfg.turn_angle, args.scenes), ds_cfg


def cmd_scenes(args) -> int:
    from saca.io import write_json
    from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

    cfg = section_from_json(args.params, SceneGenConfig, "scenes")
    out = Path(args.out)
    index = cfg.scene_ids()
    for split, ids in index.items():
        for sid in ids:
            write_json(out / f"{sid}.json", generate_scene(sid, scene_seed(cfg.seed, sid), cfg))
    write_json(out / "index.json", {"format": 1, "seed": cfg.seed, "splits": index})
    print(f"wrote {sum(len(v) for v in index.values())} scenes to {out}")
    return 0


def scenes_for_split(scenes_dir: str | Path, split: str) -> list[str]:
    from saca.io import read_json

    path = Path(scenes_dir) / "index.json"
    index = read_json(path)
    try:
        splits = index["splits"]
        return list(splits["val_unseen"] if split == "val_unseen" else splits["train"])
    except (KeyError, TypeError) as err:
        raise SacaError(f"{path}: missing field splits.{err}") from err


def cmd_episodes(args) -> int:
    from saca.episodes import write_episodes
    from saca.episodes.generate import generate_split

    sim, cfg = sim_from_args(args)
    with sim:
        eps = generate_split(args.dataset, cfg, args.split, scenes_for_split(args.scenes, args.split), sim)
    ep_path, _ = write_episodes(args.out, args.split, eps)
    print(f"wrote {len(eps)} episodes to {ep_path}")
    return 0


def cmd_vln_ego(args) -> int:
    from saca.episodes import load_split
    from saca.vln_ego.generate import VlnEgoConfig, generate_vln_ego

    cfg = section_from_json(args.params, VlnEgoConfig, "vln_ego")
    episodes = load_split(args.episodes, args.split)
    sim, ds = sim_from_args(args)
    with sim:
        m = generate_vln_ego(episodes, sim, cfg, ds.turn_angle, args.out, split=args.split)
    print(f"wrote {m['samples']} samples ({m['frames']} frames, {m['episodes']} episodes) to {args.out}")
    return 0


def cmd_export_sharegpt(args) -> int:
    from saca.vln_ego.sharegpt import export_sharegpt

    n = export_sharegpt(args.vln_ego, args.out, args.name)
    print(f"exported {n} samples to {args.out}")
    return 0


def cmd_preview(args) -> int:
    from saca.episodes import load_split
    from saca.viz import preview_figure
    from saca.vln_ego.generate import replay_frames

    episodes = load_split(args.episodes, args.split)
    if not episodes:
        raise SacaError(f"{args.episodes}: split {args.split} has no episodes")
    ep = episodes[min(args.index, len(episodes) - 1)]
    sim, _ = sim_from_args(args)
    with sim:
        frames = replay_frames(sim, ep)
        preview_figure(ep, frames, sim.scene, args.out)
    print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("scenes", help="generate the embedded houses (scene files + index.json)")
    p.add_argument("--params", default=None, help="JSON of the 'scenes' config section")
    p.add_argument("--out", required=True, help="output directory (results/scenes)")
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("episodes", help="generate VLN-CE episode files for one dataset split")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. mini_r2r")
    p.add_argument("--split", required=True, choices=["train", "val_seen", "val_unseen"])
    p.add_argument("--out", required=True, help="episodes directory (results/{dataset}/episodes)")
    add_sim_args(p)
    p.set_defaults(func=cmd_episodes)

    p = sub.add_parser("vln-ego", help="render VLN-Ego samples for one dataset split")
    p.add_argument("--episodes", required=True, help="episodes directory with {split}.json.gz and {split}_gt.json.gz")
    p.add_argument("--split", required=True, choices=["train", "val_seen", "val_unseen"])
    p.add_argument("--params", default=None, help="JSON of the 'vln_ego' config section")
    p.add_argument("--out", required=True, help="output directory (results/{dataset}/vln_ego/{split})")
    add_sim_args(p)
    p.set_defaults(func=cmd_vln_ego)

    p = sub.add_parser("export-sharegpt", help="export a VLN-Ego split to LLaMA-Factory's sharegpt layout")
    p.add_argument("--vln-ego", required=True, help="VLN-Ego split directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", default="vln_ego", help="dataset name in dataset_info.json")
    p.set_defaults(func=cmd_export_sharegpt)

    p = sub.add_parser("preview", help="frames + instruction + top-down map of one episode (PNG)")
    p.add_argument("--episodes", required=True)
    p.add_argument("--split", default="val_unseen", choices=["train", "val_seen", "val_unseen"])
    p.add_argument("--index", type=int, default=0, help="which episode of the split")
    p.add_argument("--out", required=True, help="PNG path")
    add_sim_args(p)
    p.set_defaults(func=cmd_preview)
