"""Top-down plots of evaluated episodes: map, reference path, agent path, start, goal, 3 m circle.

The map is the project's one top-down drawing, :func:`saca.viz.draw_top_down`
(rooms, walls, landmark objects) of the embedded scene the simulator loaded; a
backend without a scene description (Habitat) gets the paths on a plain grid.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from saca import SacaError
from saca.episodes import Episode
from saca.evaluate.metrics import SUCCESS_DISTANCE
from saca.io import atomic_dir, read_jsonl


def sample_records(records: Sequence[dict], n: int, seed: int) -> list[dict]:
    """``n`` records drawn without replacement by a seeded generator, in split order."""
    if n <= 0 or not records:
        return []
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(records), size=min(n, len(records)), replace=False).tolist())
    return [records[k] for k in pick]


def plot_episode(record: dict, episode: Episode, path: str | Path, scene: dict | None = None) -> None:
    """One PNG: the scene's top-down map (``saca.viz.draw_top_down``, when ``scene`` is given),
    the reference path, the agent path, start, goal and the 3 m success circle."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from saca.viz import draw_path, draw_top_down, save_figure

    fig, ax = plt.subplots(figsize=(6.4, 6.6))
    if scene is not None:
        draw_top_down(ax, scene, label_objects=True, highlight=tuple(episode.info.get("landmark_instances", [])))
    else:
        ax.set_aspect("equal")
        ax.invert_yaxis()  # as draw_top_down: x right, z down the page
        ax.grid(alpha=0.3)
    goal, start = episode.goal_position, record["positions"][0]
    end = record["positions"][-1]
    draw_path(ax, episode.reference_path, "tab:green", "reference path", lw=2.0, marker="o")
    draw_path(ax, record["positions"], "tab:blue", "agent path", lw=1.8)
    ax.add_patch(Circle((goal[0], goal[2]), SUCCESS_DISTANCE, fill=False, ls=":", color="tab:red",
                        label=f"{SUCCESS_DISTANCE:g} m around the goal (Euclidean)"))
    ax.plot([start[0]], [start[2]], "o", color="black", ms=8, label="start")
    stopped = record["stop_called"]
    ax.plot([end[0]], [end[2]], "s" if stopped else "X", color="tab:blue", ms=8,
            label="agent end (STOP)" if stopped else "agent end (step limit)")
    ax.plot([goal[0]], [goal[2]], "*", color="tab:red", ms=15, label="goal")
    m = record["metrics"]
    ax.set_title(
        f"episode {record['episode_id']}  {record['scene_id']}\n"
        f"SR {m['SR']:.0f}  SPL {m['SPL']:.2f}  NE {m['NE']:.2f} m  nDTW {m['nDTW']:.2f}  steps {record['steps']}",
        fontsize=10,
    )
    ax.set_xlabel("\n".join(textwrap.wrap(episode.instruction_text, 95)), fontsize=7)
    ax.legend(loc="best", fontsize=7, framealpha=0.85)
    save_figure(fig, path)


def plot_sampled_episodes(
    eval_dir: str | Path,
    episodes: Sequence[Episode],
    make_sim: Callable,
    out_dir: str | Path,
    n: int,
    seed: int,
) -> list[Path]:
    """Plot ``n`` seeded-sampled episodes of a finished evaluation into ``out_dir`` (replaced atomically)."""
    eval_dir = Path(eval_dir)
    records = read_jsonl(eval_dir / "episodes.jsonl")
    by_id = {str(e.episode_id): e for e in episodes}
    chosen = sample_records(records, n, seed)
    sim = make_sim()
    written = []
    try:
        with atomic_dir(out_dir) as tmp:
            for rec in chosen:
                ep = by_id.get(str(rec["episode_id"]))
                if ep is None:
                    raise SacaError(f"{eval_dir / 'episodes.jsonl'}: episode {rec['episode_id']!r} is not in the split")
                sim.load_scene(ep.scene_id)
                name = f"episode_{rec['episode_id']}.png"
                plot_episode(rec, ep, tmp / name, getattr(sim, "scene", None))
                written.append(Path(out_dir) / name)
    finally:
        sim.close()
    return written
