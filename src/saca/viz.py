"""Figures shared by the workflow: top-down maps and the dataset preview.

``draw_top_down`` is the one map drawing (rooms, walls, landmark objects);
evaluation plots and auditor figures draw paths on top of it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from saca.io import atomic_path  # noqa: E402


def draw_top_down(ax, scene: dict, label_objects: bool = True, highlight: tuple[int, ...] = ()) -> None:
    """Rooms (floor colour), walls, and landmark objects of an embedded scene, x right, z down."""
    for room in scene["rooms"]:
        x0, z0, x1, z1 = room["rect"]
        ax.add_patch(Rectangle((x0, z0), x1 - x0, z1 - z0, color=room["wall_rgba"][:3], alpha=0.25, lw=0))
    for w in scene["walls"]:
        ax.add_patch(Rectangle((w[0], w[1]), w[2] - w[0], w[3] - w[1], color="0.15", lw=0))
    for o in scene["objects"]:
        x, _, z = o["position"]
        hx, hz = o["half_extents"]
        hot = o["instance_id"] in highlight
        ax.add_patch(Rectangle((x - hx, z - hz), 2 * hx, 2 * hz, color="tab:red" if hot else "0.45", alpha=0.8, lw=0))
        if label_objects:
            ax.text(x, z, o["name"], fontsize=6, ha="center", va="center", color="black" if not hot else "darkred")
    bx0, bz0, bx1, bz1 = scene["bounds"]
    ax.set_xlim(bx0 - 0.3, bx1 + 0.3)
    ax.set_ylim(bz1 + 0.3, bz0 - 0.3)  # z grows downwards on the page
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_path(ax, points, color: str, label: str, lw: float = 1.5, marker: str | None = None) -> None:
    pts = np.asarray(points, dtype=float)
    if len(pts) == 0:
        return
    ax.plot(pts[:, 0], pts[:, 2], color=color, lw=lw, label=label, marker=marker, ms=3)


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Save a figure atomically (PNG), then close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def preview_figure(episode, frames: list[np.ndarray], scene: dict, out: str | Path, n_frames: int = 6) -> None:
    """A strip of frames along the expert path with the instruction, and the top-down map with the reference path."""
    idx = np.linspace(0, len(frames) - 1, num=min(n_frames, len(frames))).round().astype(int)
    fig = plt.figure(figsize=(2.0 * len(idx) + 4.5, 4.6))
    gs = fig.add_gridspec(2, len(idx) + 2, height_ratios=[3, 1.4])
    for k, i in enumerate(idx):
        ax = fig.add_subplot(gs[0, k])
        ax.imshow(frames[i])
        ax.set_title(f"t = {i}", fontsize=8)
        ax.axis("off")
    tax = fig.add_subplot(gs[1, : len(idx)])
    tax.axis("off")
    text = "\n".join(textwrap.wrap(episode.instruction_text, width=26 * len(idx)))
    tax.text(0, 1, f"Episode {episode.episode_id} ({episode.scene_id}), {len(frames)} steps\n{text}", va="top", fontsize=8)
    max_ = fig.add_subplot(gs[:, len(idx) :])
    draw_top_down(max_, scene, highlight=tuple(episode.info.get("landmark_instances", [])))
    draw_path(max_, episode.reference_path, "tab:blue", "reference path", marker="o")
    if episode.gt_locations:
        draw_path(max_, episode.gt_locations, "tab:orange", "expert", lw=1.0)
    s, g = episode.start_position, episode.goal_position
    max_.plot([s[0]], [s[2]], "g^", ms=8, label="start")
    max_.plot([g[0]], [g[2]], "r*", ms=11, label="goal")
    max_.legend(fontsize=6, loc="lower right")
    save_figure(fig, out)
