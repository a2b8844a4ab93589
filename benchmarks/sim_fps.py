"""Simulator throughput: renderer frames/s (embedded, and Habitat where it imports) and VLN-Ego samples/s.

Renders along the expert trajectories of generated episodes (what VLN-Ego and
evaluation actually see), on one core, at each requested resolution. Prints a
table and, with --json, writes the numbers to a file. With ``--habitat-scene``
(a .glb, e.g. habitat-sim's test scene ``simple_room.glb``; a navmesh is computed
at load) the Habitat backend renders at the same resolutions in the same run, along
point-goal episodes generated on that navmesh (``saca.episodes.navmesh``); headless,
``habitat_sim`` renders through EGL (Mesa's llvmpipe where there is no GPU).

    python benchmarks/sim_fps.py                 # 128x128 and 224x224
    python benchmarks/sim_fps.py --sizes 128 --episodes 20
    python benchmarks/sim_fps.py --habitat-scene ../shared/data/habitat-test-assets/scenes/simple_room.glb \
        --habitat-gpu-device -1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from saca.episodes import load_split, write_episodes  # noqa: E402
from saca.episodes.generate import DatasetConfig, generate_split  # noqa: E402
from saca.io import write_json  # noqa: E402
from saca.sim import make_simulator  # noqa: E402
from saca.sim.base import Action, SimConfig  # noqa: E402
from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed  # noqa: E402
from saca.vln_ego.generate import VlnEgoConfig, generate_vln_ego  # noqa: E402


def build(root: Path, n_episodes: int):
    cfg = SceneGenConfig(seed=0, train=4, val_unseen=1)
    ids = cfg.scene_ids()["train"]
    for sid in ids:
        write_json(root / "scenes" / f"{sid}.json", generate_scene(sid, scene_seed(0, sid), cfg))
    ds = DatasetConfig(turn_angle=15, style="r2r", landmarks=[1, 2], seed=3, episodes={"train": n_episodes})
    sim = make_simulator("embedded", SimConfig(), 15, root / "scenes")
    write_episodes(root / "episodes", "train", generate_split("bench", ds, "train", ids, sim))
    sim.close()
    return load_split(root / "episodes", "train")


def timed_renders(sim, episodes) -> tuple[float, int]:
    """Frames/s of ``sim.render`` alone along each episode's expert actions (stepping is not timed); closes ``sim``."""
    n, elapsed = 0, 0.0
    for ep in episodes:
        sim.reset(ep)
        for a in ep.gt_actions:
            s = sim.state
            t0 = time.perf_counter()
            sim.render(s.position, s.heading)
            elapsed += time.perf_counter() - t0
            n += 1
            if a != Action.STOP:
                sim.step(a)
    sim.close()
    return n / elapsed, n


def render_fps(episodes, scenes, size: int, instance: bool) -> tuple[float, int]:
    cfg = SimConfig(width=size, height=size, instance=instance, depth=instance)
    sim = make_simulator("embedded", cfg, 15, scenes)
    for ep in episodes:  # load every scene once before timing
        sim.reset(ep)
    return timed_renders(sim, episodes)


def habitat_fps(scene: Path, episodes: int, size: int, instance: bool, gpu: int = 0) -> tuple[float, int]:
    """Frames/s of the Habitat backend on ``scene`` along generated point-goal episodes (4-12 m routes)."""
    from saca.episodes.navmesh import generate_navmesh_split

    cfg = SimConfig(width=size, height=size, instance=instance, depth=instance, gpu_device_id=gpu)
    sim = make_simulator("habitat", cfg, 15, scene.parent)
    ds = DatasetConfig(backend="habitat", turn_angle=15, path_length=[4.0, 12.0], seed=3, episodes={"train": episodes})
    eps = generate_navmesh_split("bench", ds, "train", [scene.name], sim)
    sim.render(eps[0].start_position, 0.0)  # the first frame sets up the renderer: not timed
    return timed_renders(sim, eps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--habitat-scene", type=Path, default=None,
                    help="also time the Habitat backend on this .glb (needs habitat_sim)")
    ap.add_argument("--habitat-episodes", type=int, default=5)
    ap.add_argument("--habitat-gpu-device", type=int, default=0, help="-1: EGL's default display (llvmpipe, no GPU)")
    ap.add_argument("--no-vln-ego", action="store_true", help="skip the VLN-Ego samples/s measurement")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        episodes = build(root, args.episodes)
        for size in args.sizes:
            for inst in (True, False):
                fps, n = render_fps(episodes, root / "scenes", size, inst)
                key = f"render_{size}x{size}_{'rgb_depth_instance' if inst else 'rgb_only'}"
                out[key] = round(fps, 1)
                print(f"{key:42s} {fps:8.1f} frames/s  ({n} frames, 1 process)")
                if args.habitat_scene is not None:
                    fps, n = habitat_fps(args.habitat_scene, args.habitat_episodes, size, inst, args.habitat_gpu_device)
                    out[f"habitat_{key}"] = round(fps, 1)
                    print(f"{'habitat_' + key:42s} {fps:8.1f} frames/s  ({n} frames, 1 process, "
                          f"{args.habitat_scene.name})")
        if args.no_vln_ego:
            if args.json:
                write_json(args.json, out)
            return
        sim = make_simulator("embedded", SimConfig(), 15, root / "scenes")
        t0 = time.perf_counter()
        m = generate_vln_ego(episodes, sim, VlnEgoConfig(), 15, root / "ego")
        dt = time.perf_counter() - t0
        sim.close()
        out["vln_ego_samples_per_s_128"] = round(m["samples"] / dt, 1)
        print(f"{'vln_ego samples (render+encode+write), 128':42s} {m['samples'] / dt:8.1f} samples/s ({m['samples']} samples)")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
