"""Top-down plots of evaluated episodes: navigable floor, reference path, agent path, start, goal, 3 m circle."""

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


def plot_episode(record: dict, episode: Episode, path: str | Path, topdown=None) -> None:
    """One PNG: ``topdown`` = ``(mask[z, x], (x0, x1, z0, z1))`` of the navigable floor, or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 6.8), dpi=100)
    if topdown is not None:
        mask, (x0, x1, z0, z1) = topdown
        ax.imshow(np.where(mask, 0.95, 0.35), cmap="gray", vmin=0, vmax=1, origin="lower",
                  extent=(x0, x1, z0, z1), interpolation="nearest")
    ref = np.asarray(episode.reference_path)
    agent = np.asarray(record["positions"])
    goal = episode.goal_position
    ax.plot(ref[:, 0], ref[:, 2], "--o", color="tab:green", lw=2, ms=4, label="reference path")
    ax.plot(agent[:, 0], agent[:, 2], "-", color="tab:blue", lw=1.8, label="agent path")
    ax.add_patch(plt.Circle((goal[0], goal[2]), SUCCESS_DISTANCE, fill=False, ls=":", color="tab:red",
                            label=f"{SUCCESS_DISTANCE:g} m of the goal (Euclidean)"))
    ax.plot(agent[0, 0], agent[0, 2], "o", color="black", ms=8, label="start")
    ax.plot(agent[-1, 0], agent[-1, 2], "s" if record["stop_called"] else "x", color="tab:blue", ms=8,
            label="agent end (STOP)" if record["stop_called"] else "agent end (step limit)")
    ax.plot(goal[0], goal[2], "*", color="tab:red", ms=16, label="goal")
    m = record["metrics"]
    ax.set_title(
        f"episode {record['episode_id']}  {record['scene_id']}\n"
        f"SR {m['SR']:.0f}  SPL {m['SPL']:.2f}  NE {m['NE']:.2f} m  nDTW {m['nDTW']:.2f}  steps {record['steps']}",
        fontsize=10,
    )
    fig.text(0.5, 0.01, textwrap.fill(episode.instruction_text, 100), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m), -z up")
    ax.set_aspect("equal")
    ax.invert_yaxis()  # seen from above (+y): x to the right, -z (heading 0) up
    if topdown is None:
        ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.85)
    fig.subplots_adjust(bottom=0.16)
    fig.savefig(path, format="png")
    plt.close(fig)


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
                topdown = None
                if hasattr(sim, "top_down_map"):
                    sim.load_scene(ep.scene_id)
                    topdown = sim.top_down_map()
                name = f"episode_{rec['episode_id']}.png"
                plot_episode(rec, ep, tmp / name, topdown)
                written.append(Path(out_dir) / name)
    finally:
        sim.close()
    return written
