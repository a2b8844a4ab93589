"""A Fig. 6-style view of one audit (SACA §4, Fig. 6).

Rows: (a) raw frames at selected steps; (b) the highest-confidence box of the
active landmark with its confidence ``c`` (solid when ``c > tau_det``, dashed
when the local terms are gated off); (c) the box-prompted mask, background
dimmed; (d) the step soft score ``s_t`` against the active landmark with
``tau_soft`` and ``tau_hard``, hard matches, landmark transitions, the valid
prefix and the divergence point ``t*``; beside it, when a scene is given, the
top-down trajectory coloured by the hard mask.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from saca.auditor.auditor import AuditResult
from saca.auditor.config import AuditorConfig


def select_steps(result: AuditResult, n: int = 6) -> list[int]:
    """Up to ``n`` steps to show: the divergence point and the step before it, the best-scoring
    step of each landmark that was active, then evenly spaced others."""
    T = result.T
    if T == 0:
        return []
    keep = []
    if result.t_star < T:
        keep.append(result.t_star)
        if result.t_star > 0:
            keep.append(result.t_star - 1)
    for j in sorted(set(result.active)):
        steps = [t for t in range(T) if result.active[t] == j]
        best = max(steps, key=lambda t: (result.s[t], -t))
        if result.s[best] > 0:
            keep.append(best)
    keep += [int(round(x)) for x in np.linspace(0, T - 1, num=min(n, T))]
    out = []
    for t in keep:
        if t not in out:
            out.append(t)
        if len(out) == n:
            break
    return sorted(out)


def audit_figure(
    frames: Sequence[np.ndarray],
    result: AuditResult,
    config: AuditorConfig,
    out: str | Path,
    *,
    title: str = "",
    instruction: str = "",
    scene: dict | None = None,
    positions: Sequence[Sequence[float]] | None = None,
    goal: Sequence[float] | None = None,
    n_frames: int = 6,
) -> list[int]:
    """Write the figure to ``out`` (PNG, atomically); returns the steps shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from saca.viz import draw_path, draw_top_down, save_figure

    steps = select_steps(result, n_frames)
    k = max(len(steps), 1)
    has_map = scene is not None and positions is not None
    ncols = k + (2 if has_map else 0)
    fig = plt.figure(figsize=(1.9 * ncols, 8.6))
    gs = fig.add_gridspec(4, ncols, height_ratios=[1, 1, 1, 1.6], hspace=0.38, wspace=0.08)
    cmap = plt.get_cmap("tab10")

    for col, t in enumerate(steps):
        img = np.asarray(frames[t])
        comp = result.components[t] if result.components else {}
        lm = result.landmarks[result.active[t]] if result.landmarks else "-"
        box = comp.get("box")
        c = float(comp.get("c", 0.0))
        ok = c > config.tau_det
        colour = cmap(result.active[t] % 10)
        for row in range(3):
            ax = fig.add_subplot(gs[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.imshow(img)
                tag = " t*" if t == result.t_star else ""
                ax.set_title(f"t = {t}{tag}", fontsize=8, color="tab:red" if tag else "black")
            elif row == 1:
                ax.imshow(img)
                if box is not None:
                    x0, y0, x1, y1 = box
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.6,
                                           ec=colour if ok else "0.6", ls="-" if ok else "--"))
                ax.set_title(f"c={c:.2f} " + textwrap.shorten(lm, 18, placeholder="…"), fontsize=7)
            else:
                mask = result.masks[t] if result.masks and t < len(result.masks) else None
                if mask is not None:
                    dim = (img * 0.25).astype(np.uint8)
                    shown = np.where(mask[..., None], img, dim)
                    ax.imshow(shown)
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
                else:
                    ax.imshow((img * 0.25).astype(np.uint8))
                ax.set_title(f"u={comp.get('u', 0.0):.2f}  s={result.s[t]:.2f}", fontsize=7)
            if col == 0:
                ax.set_ylabel(["(a) frames", "(b) detection", "(c) mask"][row], fontsize=8)

    # (d) soft-score curve
    ax = fig.add_subplot(gs[3, :])
    T = result.T
    ts = np.arange(T)
    if T:
        if result.t_star > 0:
            ax.axvspan(-0.5, result.t_star - 0.5, color="tab:green", alpha=0.08, label="valid prefix")
        start = 0
        for n, tr in enumerate(result.transitions + [T - 1]):
            j = result.active[start] if start < T else 0
            ax.axvspan(start - 0.5, tr + 0.5, ymin=0.0, ymax=0.04, color=cmap(j % 10), alpha=0.9, lw=0)
            if result.landmarks:
                ax.text(start, 0.06, textwrap.shorten(result.landmarks[j], 18), transform=ax.get_xaxis_transform(),
                        fontsize=6, color=cmap(j % 10))
            start = tr + 1
        ax.plot(ts, result.s, color="black", lw=1.2, label="$s_t$ (active landmark)")
        hard = np.asarray(result.hard, dtype=bool)
        ax.scatter(ts[hard], np.asarray(result.s)[hard], s=10, color="tab:blue", zorder=3, label="hard match")
        for tr in result.transitions:
            ax.axvline(tr + 0.5, color="0.5", lw=0.8, ls=":")
        if result.t_star < T:
            ax.axvline(result.t_star, color="tab:red", lw=1.5, label=f"divergence t* = {result.t_star}")
    ax.axhline(config.tau_hard, color="tab:orange", lw=1, ls="--", label=f"tau_hard = {config.tau_hard}")
    ax.axhline(config.tau_soft, color="tab:purple", lw=1, ls="--", label=f"tau_soft = {config.tau_soft}")
    ax.set_xlim(-0.5, max(T - 0.5, 0.5))
    lo = min([0.0] + list(result.s))
    ax.set_ylim(lo - 0.05, max([1.0] + list(result.s)) + 0.05)
    ax.set_xlabel("step t")
    ax.set_ylabel("(d) soft score")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=7, frameon=False)
    ax.set_title(f"P = {result.P:.3f}   rho = t*/T = {result.t_star}/{T} = {result.rho:.2f}   "
                 f"landmarks reached {result.reached}/{len(result.landmarks)}   "
                 f"{'success' if result.success else 'failure'}", fontsize=8)

    if has_map:
        mx = fig.add_subplot(gs[:3, k:])
        draw_top_down(mx, scene, label_objects=True)
        pts = np.asarray(positions, dtype=float)
        ts_ = min(result.t_star, len(pts) - 1)
        draw_path(mx, pts[: ts_ + 1], "tab:green", "valid prefix", lw=2.0)
        draw_path(mx, pts[ts_:], "tab:red", "after t*", lw=1.5)
        mx.plot([pts[0, 0]], [pts[0, 2]], "g^", ms=8, label="start")
        if result.t_star < T:
            mx.plot([pts[ts_, 0]], [pts[ts_, 2]], "rx", ms=10, mew=2, label="t*")
        if goal is not None:
            mx.plot([goal[0]], [goal[2]], "r*", ms=11, label="goal")
        mx.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3, frameon=False)
        mx.set_title("top-down trajectory", fontsize=8)

    head = title
    if instruction:
        head += ("\n" if head else "") + "\n".join(textwrap.wrap(instruction, width=30 * ncols // 2))
    if head:
        fig.suptitle(head, fontsize=8, y=0.995)
    save_figure(fig, out)
    return steps
