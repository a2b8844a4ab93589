"""CLI commands: scenes, episodes, episodes-import, vln-ego, export-sharegpt, preview."""

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
    """The dataset's simulator settings and its dataset section, from ``--sim`` / ``--dataset-config``,
    checked (no simulator built): the global ``sim`` section with the dataset's ``sim`` overrides
    merged in (:func:`saca.sim.dataset_sim_config`)."""
    import json

    from saca.episodes.generate import DatasetConfig
    from saca.sim import check_dataset_sim, dataset_sim_config
    from saca.sim.base import SimConfig

    where = "datasets.<dataset>"
    sim_cfg = section_from_json(args.sim, SimConfig, "sim", "--sim")
    try:  # an unknown datasets.<dataset>.sim key: name it before the schema's "additional properties" message
        raw = json.loads(args.dataset_config) if args.dataset_config else None
    except json.JSONDecodeError:
        raw = None  # section_from_json names the malformed option
    if isinstance(raw, dict) and isinstance(raw.get("sim"), dict):
        check_dataset_sim(raw["sim"], where)
    ds_cfg = section_from_json(args.dataset_config, DatasetConfig, where, "--dataset-config")
    return dataset_sim_config(sim_cfg, ds_cfg, where), ds_cfg


def sim_from_args(args):
    """Build the simulator a command needs from ``--sim``/``--dataset-config``/``--scenes``
    (the dataset's ``sim`` overrides applied)."""
    from saca.sim import make_simulator

    sim_cfg, ds_cfg = sim_configs(args)
    return make_simulator(ds_cfg.backend, sim_cfg, ds_cfg.turn_angle, args.scenes), ds_cfg


def link_habitat_scenes(src: str | Path, out: str | Path) -> dict:
    """The habitat scenes: ``out/index.json`` listing every ``{dataset}/{scan}/{scan}.glb`` under ``src`` and a link
    ``out/{dataset} -> src/{dataset}``, so that an episode's ``scene_id`` (``mp3d/{scan}/{scan}.glb``) resolves
    against ``out`` as the embedded houses do. The link is replaced atomically; a missing or empty folder names it."""
    import os

    from saca.io import write_json

    src, out = Path(src).resolve(), Path(out)
    if not src.is_dir():
        raise SacaError(f"scenes.dir: '{src}' is not a directory (download the scenes first: rule download_scenes)")
    scenes = sorted(p.relative_to(src).as_posix() for p in src.glob("*/*/*.glb"))
    if not scenes:
        raise SacaError(f"scenes.dir: no scene files ({{dataset}}/{{scan}}/{{scan}}.glb) under '{src}'")
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted({s.split("/")[0] for s in scenes}):
        tmp = out / f".{name}.link-tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(src / name, tmp, target_is_directory=True)
        os.replace(tmp, out / name)
    index = {"format": 1, "backend": "habitat", "dir": str(src), "scenes": scenes}
    write_json(out / "index.json", index)
    return index


def cmd_scenes(args) -> int:
    from saca.io import write_json
    from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

    cfg = section_from_json(args.params, SceneGenConfig, "scenes")
    out = Path(args.out)
    if cfg.backend == "habitat":
        index = link_habitat_scenes(cfg.dir, out)
        print(f"linked {len(index['scenes'])} habitat scenes from {cfg.dir} into {out}")
        return 0
    index = cfg.scene_ids()
    for split, ids in index.items():
        for sid in ids:
            write_json(out / f"{sid}.json", generate_scene(sid, scene_seed(cfg.seed, sid), cfg))
    write_json(out / "index.json", {"format": 1, "seed": cfg.seed, "splits": index})
    print(f"wrote {sum(len(v) for v in index.values())} scenes to {out}")
    return 0


def cmd_episodes(args) -> int:
    from saca.episodes import write_episodes
    from saca.episodes.generate import generate_split
    from saca.episodes.navmesh import generate_navmesh_split
    from saca.sim.embedded.world import scenes_for_split

    sim, cfg = sim_from_args(args)
    generate = generate_navmesh_split if sim.backend == "habitat" else generate_split
    with sim:
        eps = generate(args.dataset, cfg, args.split, scenes_for_split(args.scenes, args.split), sim)
    ep_path, _ = write_episodes(args.out, args.split, eps)
    print(f"wrote {len(eps)} episodes to {ep_path}")
    return 0


def cmd_episodes_import(args) -> int:
    from saca.episodes.vlnce import import_split

    def _list(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    eps, ep_path, gt_path = import_split(args.format, args.src, args.split, args.out,
                                         roles=_list(args.role), languages=_list(args.languages))
    gt = f" and {gt_path}" if gt_path else " (no ground truth: a test split)"
    print(f"wrote {len(eps)} episodes to {ep_path}{gt}")
    return 0


def cmd_vln_ego(args) -> int:
    from saca.runlock import folder_lock

    with folder_lock(args.out, "VLN-Ego split folder"):  # one writer per output folder
        return _cmd_vln_ego(args)


def _cmd_vln_ego(args) -> int:
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


def cmd_dagger_rollouts(args) -> int:
    """One DAgger round's data: the current policy rolled out, every visited frame labelled by the expert."""
    import json

    from saca.episodes import load_split
    from saca.evaluate.agents import make_agent
    from saca.vln_ego.dagger import DaggerConfig, labelled_policy_rollouts, select_episodes, write_dagger_split
    from saca.vln_ego.generate import VlnEgoConfig

    cfg = section_from_json(args.params, VlnEgoConfig, "vln_ego")
    dcfg = section_from_json(args.dagger, DaggerConfig, "sft.dagger", "--dagger")
    try:
        options = json.loads(args.agent_options) if args.agent_options else {}
    except json.JSONDecodeError as err:
        raise SacaError(f"--agent-options: not JSON ({err})") from None
    episodes = select_episodes(load_split(args.episodes, args.split), dcfg.episodes)
    agent = make_agent(args.agent, seed=dcfg.seed + args.round, options=options)
    _, ds = sim_configs(args)
    rollouts = labelled_policy_rollouts(episodes, lambda: sim_from_args(args)[0], agent, cfg.n_actions,
                                        batch_size=dcfg.batch_size, max_steps=dcfg.rollout_steps,
                                        teacher=dcfg.teacher)
    m = write_dagger_split(rollouts, cfg, ds.turn_angle, args.out, args.round,
                           extra={"agent": str(args.agent), "split": args.split})
    r = m["rollouts"]
    share = "n/a" if r["wall_collision_share"] is None else f"{r['wall_collision_share']:.3f}"
    print(f"DAgger round {args.round}: {m['samples']} samples from {m['episodes']} rollouts -> {args.out}; "
          f"rollout SR {r['success_rate']:.3f}, forward steps into walls {share}, "
          f"expert agreement {r['expert_agreement']:.3f}")
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

    p = sub.add_parser("episodes-import", help="import one split of the real R2R-CE / RxR-CE episode files "
                       "into the project's layout (docs/vlnce.md)")
    p.add_argument("--format", required=True, choices=["r2r_ce", "rxr_ce"])
    p.add_argument("--src", required=True,
                   help="the extracted R2R_VLNCE_v1-3_preprocessed or RxR_VLNCE_v0 folder ({split}/ inside)")
    p.add_argument("--split", required=True, help="e.g. train, val_seen, val_unseen (test / test_challenge: no gt)")
    p.add_argument("--out", required=True, help="episodes directory (results/{dataset}/episodes)")
    p.add_argument("--role", default=None, help="rxr_ce: guide (default), follower, guide,follower or '*'")
    p.add_argument("--languages", default=None,
                   help="rxr_ce: comma-separated, default en-US,en-IN (the papers' English subset); '*' for all")
    p.set_defaults(func=cmd_episodes_import)

    p = sub.add_parser("vln-ego", help="render VLN-Ego samples for one dataset split")
    p.add_argument("--episodes", required=True, help="episodes directory with {split}.json.gz and {split}_gt.json.gz")
    p.add_argument("--split", required=True, choices=["train", "val_seen", "val_unseen"])
    p.add_argument("--params", default=None, help="JSON of the 'vln_ego' config section")
    p.add_argument("--out", required=True, help="output directory (results/{dataset}/vln_ego/{split})")
    add_sim_args(p)
    p.set_defaults(func=cmd_vln_ego)

    p = sub.add_parser("dagger-rollouts", help="DAgger: roll a policy out, label every visited frame by the expert")
    p.add_argument("--episodes", required=True, help="episodes directory with {split}.json.gz and {split}_gt.json.gz")
    p.add_argument("--split", default="train", choices=["train", "val_seen", "val_unseen"])
    p.add_argument("--params", default=None, help="JSON of the 'vln_ego' config section")
    p.add_argument("--dagger", default=None, help="JSON of the 'sft.dagger' config section")
    p.add_argument("--agent", required=True, help="the policy: agent.json or a checkpoint (or a reference agent)")
    p.add_argument("--agent-options", default=None, help="JSON keyword arguments of the agent loader")
    p.add_argument("--round", type=int, default=1, help="DAgger round (names the trajectories, offsets the seed)")
    p.add_argument("--out", required=True, help="output VLN-Ego directory (results/{dataset}/dagger/{mix}/r{round})")
    add_sim_args(p)
    p.set_defaults(func=cmd_dagger_rollouts)

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
