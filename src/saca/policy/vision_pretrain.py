"""Pretraining the tiny policy's vision tower on the embedded world's frames (mini-world lever, issue 12).

The paper's backbones (Qwen2-VL, LLaVA-Video) come with a vision tower pretrained on web images; the
embedded tiny policy starts from random weights and, after SFT, barely reads its frames
(``docs/policy.md``: replacing every frame by grey costs it 0.07 nats per action letter out of 0.76).
This module gives the tiny model what the real backbones have, a vision tower that already
recognises things, using the only images there are offline: the renderer's.

Frames: ``frames`` views from random navigable positions of the **train** houses only (val_unseen
houses stay unseen), half of them facing a random landmark of the house with a random offset within
the field of view, half with a random heading. Each frame goes through the VLN-Ego image codec (JPEG)
and the policy's own image processor, exactly as a VLN-Ego frame does.

Targets, from the simulator's instance masks (the labels the oracle auditor uses):

* for every merged image token (the cell of the image it covers, e.g. 2 x 2 cells at 56 px): which
  landmark of the catalogue covers most of the cell (more than ``min_fraction`` of its pixels; else
  none), and whether it fills the cell (more than ``large_fraction``: near, where a route ends);
* for the frame: can the agent walk straight ahead for each of ``ahead`` metres without hitting a wall
  or an object (from the mean of the frame's tokens; where the tiny SFT policy fails most, half of its
  forward steps blocked).

Loss: cross-entropy of the cell's landmark (16 names + none) plus the binary cross-entropies of
"fills" and of the free-space targets, through heads on the merged tokens (the embeddings the
language model receives). ``head: linear`` learns free linear heads; ``head: words`` scores each
landmark by the cosine between the token and the mean input embedding of the landmark's name in the
language model (fixed), so the tower learns to write, for a red cabinet in view, a token that points
the way the words ``red cabinet`` of the instruction do (LLaVA's stage-1 idea: align image features with
the language model's embedding space before instruction tuning). Only the vision tower (patch embedding, blocks, merger) is
trained; the whole policy is written with ``save_pretrained``, the heads beside it
(``vision_heads.safetensors``, a probe for diagnostics that no model loads).
Deterministic on CPU for a fixed seed and thread count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from saca import SacaError

log = logging.getLogger(__name__)


@dataclass
class VisionPretrainConfig:
    """``policy.vision_pretrain`` in config.yaml. ``frames: 0`` switches the step off."""

    frames: int = 0  # rendered training frames (train houses); 0: no vision pretraining
    epochs: int = 4
    batch_size: int = 64
    learning_rate: float = 1.0e-3
    weight_decay: float = 0.01
    toward_landmark: float = 0.5  # share of frames that face a landmark (the rest: random heading)
    min_fraction: float = 0.02  # a landmark is "in" a token's cell above this share of the cell's pixels
    large_fraction: float = 0.3  # ... and "fills" the cell above this share
    ahead: list = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])  # free-space targets: can the agent walk this far straight ahead
    val_fraction: float = 0.1  # frames held out to report accuracy (same houses, other views)
    head: str = "linear"  # linear: free linear heads | words: landmark logits = cosine to the name's word embeddings
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.head not in ("linear", "words"):
            raise SacaError(f"{where}.head: '{self.head}' is not linear or words")
        if self.frames < 0 or self.epochs < 1 or self.batch_size < 1:
            raise SacaError(f"{where}: frames must be >= 0, epochs and batch_size >= 1")
        if not 0 <= self.toward_landmark <= 1 or not 0 <= self.val_fraction < 1:
            raise SacaError(f"{where}: toward_landmark must lie in [0, 1] and val_fraction in [0, 1)")
        if not 0 < self.min_fraction < self.large_fraction <= 1:
            raise SacaError(f"{where}: need 0 < min_fraction < large_fraction <= 1")
        if self.learning_rate <= 0:
            raise SacaError(f"{where}.learning_rate: must be positive")
        if not self.ahead or any(d <= 0 for d in self.ahead):
            raise SacaError(f"{where}.ahead: a non-empty list of positive distances (metres)")


def cell_targets(instance: np.ndarray, labels: dict[int, str], names: list[str], grid: tuple[int, int],
                 min_fraction: float, large_fraction: float) -> np.ndarray:
    """Per-cell targets of one frame: ``int64 [cells, 2]`` in row-major cell order.

    Column 0: the landmark name (index into ``names``) covering the largest share of the cell, if that
    share exceeds ``min_fraction``, else ``len(names)`` (none). Column 1: 1 if that share exceeds
    ``large_fraction`` (the landmark fills the cell: near), else 0. ``instance`` is the simulator's
    instance mask (``-1`` = no object), ``labels`` its instance names; the image is cut into
    ``grid = (rows, cols)`` equal cells (the merged image tokens' layout).
    """
    h, w = instance.shape
    rows, cols = grid
    index = {n: i for i, n in enumerate(names)}
    cat = np.full(instance.shape, -1, dtype=np.int64)
    for inst, name in labels.items():
        if name in index:
            cat[instance == inst] = index[name]
    out = np.zeros((rows * cols, 2), dtype=np.int64)
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    for r in range(rows):
        for c in range(cols):
            cell = cat[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
            share = np.bincount(cell[cell >= 0], minlength=len(names)) / max(cell.size, 1)
            best = int(np.argmax(share))
            out[r * cols + c] = (best, int(share[best] > large_fraction)) if share[best] > min_fraction else (len(names), 0)
    return out


def _token_grid(processor, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of merged image tokens the processor makes of a ``height x width`` frame."""
    v, _ = processor.process_images([np.zeros((height, width, 3), dtype=np.uint8)])
    _, gh, gw = (int(x) for x in v["image_grid_thw"][0])
    merge = int(processor.image_processor.merge_size)
    return gh // merge, gw // merge


def render_frames(scenes_dir: str | Path, scene_ids: list[str], sim_cfg, cfg: VisionPretrainConfig,
                  names: list[str], grid: tuple[int, int], image_format: str = "jpeg", quality: int = 95):
    """Render ``cfg.frames`` views of the given houses.

    Returns rgb (uint8 ``[N, H, W, 3]``, after the image codec), cell targets (:func:`cell_targets`) and
    free-space targets (``[N, len(cfg.ahead)]``: 1 where the straight segment of that length is free).
    """
    import dataclasses

    from saca.sim import make_simulator
    from saca.sim.base import forward_vector
    from saca.vln_ego.store import decode_image, encode_image

    if not scene_ids:
        raise SacaError("policy.vision_pretrain: no train houses to render (scenes index has an empty 'train' split)")
    rng = np.random.default_rng(cfg.seed)
    sim_cfg = dataclasses.replace(sim_cfg, instance=True, depth=False)
    per_scene = np.bincount(np.arange(cfg.frames) % len(scene_ids), minlength=len(scene_ids))
    rgbs, cells, free = [], [], []
    with make_simulator("embedded", sim_cfg, 15.0, scenes_dir) as sim:
        for scene_id, n in zip(scene_ids, per_scene):
            sim.load_scene(scene_id)
            pts = sim.nav.free_points(min_clearance=sim_cfg.agent_radius)
            objects = [o for o in sim.scene.get("objects", []) if o.get("name") in names]
            for _ in range(int(n)):
                pos = pts[rng.integers(len(pts))]
                pos = (float(pos[0]), 0.0, float(pos[2]))
                if objects and rng.random() < cfg.toward_landmark:
                    ox, _, oz = objects[rng.integers(len(objects))]["position"]
                    # heading convention: forward = (-sin h, -cos h) in (x, z)
                    heading = math.atan2(-(ox - pos[0]), -(oz - pos[2]))
                    heading += math.radians(sim_cfg.hfov) * (rng.random() - 0.5) * 0.9
                else:
                    heading = rng.random() * 2 * math.pi
                obs = sim.render(pos, heading)
                fwd = forward_vector(heading)
                free.append([sim.move_to(pos, tuple(np.asarray(pos) + d * fwd)) is not None for d in cfg.ahead])
                rgbs.append(decode_image(encode_image(obs.rgb, image_format, quality)))
                cells.append(cell_targets(obs.instance, sim.instance_labels, names, grid, cfg.min_fraction,
                                          cfg.large_fraction))
    return np.stack(rgbs), np.stack(cells), np.asarray(free, dtype=np.float32)


def name_embeddings(pol, names: list[str]):
    """``[len(names), hidden]``: the mean input embedding of each landmark name's tokens as an instruction writes
    it (`` the red cabinet`` -> `` red``, `` cabinet``), taken from the language model and kept fixed."""
    import torch

    table = pol.model.get_input_embeddings().weight.detach()
    rows = []
    for name in names:
        ids = pol.processor.tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        rows.append(table[torch.tensor(ids)].mean(0))
    return torch.stack(rows).clone()


class _Probe:
    """The vision tower of a policy with the heads on its merged tokens (``linear`` or ``words``), over a set
    of rendered frames."""

    def __init__(self, pol, rgb: np.ndarray, cells: np.ndarray, free: np.ndarray, names: list[str], head: str = "linear"):
        import torch

        from saca.policy.model import vision_tower

        self.visual = vision_tower(pol.model)
        self.hidden = pol.model.config.text_config.hidden_size
        self.k = len(names)
        self.head = head
        if head == "linear":
            self.heads = torch.nn.ModuleDict({"cells": torch.nn.Linear(self.hidden, self.k + 2),
                                              "free": torch.nn.Linear(self.hidden, free.shape[1])})
        else:  # "words": a cell's landmark logits are its token's cosine to the landmark name's word embeddings
            self.heads = torch.nn.ModuleDict({"cells": torch.nn.Linear(self.hidden, 2),  # none, fills
                                              "free": torch.nn.Linear(self.hidden, free.shape[1])})
            self.heads.register_buffer("names", name_embeddings(pol, names))
            self.heads.register_parameter("log_scale", torch.nn.Parameter(torch.tensor(math.log(10.0))))
        self.pix, self.thw = [], []
        for im in rgb:
            v, _ = pol.processor.process_images([im])
            self.pix.append(v["pixel_values"])
            self.thw.append(v["image_grid_thw"])
        self.tokens = cells.shape[1]
        self.cells, self.free = torch.from_numpy(cells), torch.from_numpy(free)

    def forward(self, idx):
        import torch

        out = self.visual(torch.cat([self.pix[i] for i in idx]), grid_thw=torch.cat([self.thw[i] for i in idx]))
        emb = getattr(out, "pooler_output", out)  # merged tokens [len(idx) * tokens, hidden]
        emb = emb.reshape(len(idx), self.tokens, self.hidden)
        cells = self.heads["cells"](emb)
        if self.head == "words":
            cos = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(self.heads.names, dim=-1).T
            cells = torch.cat([self.heads.log_scale.exp() * cos, cells], dim=-1)  # [k names, none, fills]
        return cells, self.heads["free"](emb.mean(1))

    def loss(self, idx, outputs=None):
        """The training loss over frames ``idx``; ``outputs``: :meth:`forward`'s, when already computed."""
        import torch.nn.functional as F

        c, b = outputs if outputs is not None else self.forward(idx)
        k, t = self.k, self.cells[idx]
        return (F.cross_entropy(c[..., : k + 1].reshape(-1, k + 1), t[..., 0].reshape(-1))
                + F.binary_cross_entropy_with_logits(c[..., k + 1], t[..., 1].float())
                + F.binary_cross_entropy_with_logits(b, self.free[idx]))

    def scores(self, idx) -> dict:
        import torch

        if len(idx) == 0:
            return {}
        with torch.no_grad():
            c, b = self.forward(idx)
            loss = float(self.loss(idx, (c, b)))
        k, t, tb = self.k, self.cells[idx], self.free[idx]
        cls, has = c[..., : k + 1].argmax(-1), t[..., 0] < k
        return {
            "loss": round(loss, 4),
            # cells with a landmark: share named correctly (always answering "none" scores 0)
            "landmark_recall": round(float((cls == t[..., 0])[has].float().mean()), 3),
            # cells named a landmark: share that hold it (precision)
            "landmark_precision": round(float((cls == t[..., 0])[cls < k].float().mean()) if (cls < k).any() else 0.0, 3),
            "cell_acc": round(float((cls == t[..., 0]).float().mean()), 3),
            "cell_majority": round(float((~has).float().mean()), 3),
            "fills_f1": round(_f1((c[..., k + 1] > 0).float(), t[..., 1].float()), 3),
            # free-space accuracy per distance, beside always answering that distance's majority
            "free_acc": [round(float(x), 3) for x in ((b > 0).float() == tb).float().mean(0)],
            "free_majority": [round(max(float(x), 1 - float(x)), 3) for x in tb.mean(0)],
        }


def _load_qwen(policy_dir):
    from saca.policy.model import load_policy
    from saca.policy.processor import QWEN_FAMILIES

    pol = load_policy(policy_dir)
    if pol.family not in QWEN_FAMILIES:
        raise SacaError(f"{policy_dir}: vision pretraining supports the Qwen families, not {pol.family}")
    pol.model.float()
    return pol


def _train_houses(scenes_dir) -> list[str]:
    from saca.sim.embedded.world import scenes_for_split

    index_path = Path(scenes_dir) / "index.json"
    if not index_path.is_file():
        raise SacaError(f"{index_path}: scenes index not found (policy.vision_pretrain renders the train houses)")
    return scenes_for_split(scenes_dir, "train")


def pretrain_vision(policy_dir: str | Path, scenes_dir: str | Path, out_dir: str | Path,
                    cfg: VisionPretrainConfig, sim_cfg=None, image_format: str = "jpeg", quality: int = 95) -> dict:
    """Pretrain the vision tower of the policy in ``policy_dir``; write the policy to ``out_dir`` (atomically).

    Returns a summary (also written as ``out_dir/vision_pretrain.json``): frames, houses, loss and
    held-out scores before and after (cell landmark recall / precision / accuracy beside always "none",
    F1 of "fills", free-space accuracy beside its majority).
    """
    import torch
    from safetensors.torch import save_file

    from saca.io import atomic_dir, write_json
    from saca.sim.base import SimConfig
    from saca.sim.embedded.catalogue import LANDMARK_NAMES

    cfg.validate("policy.vision_pretrain")
    sim_cfg = sim_cfg or SimConfig()
    pol = _load_qwen(policy_dir)
    scene_ids = _train_houses(scenes_dir)
    if cfg.frames == 0:
        raise SacaError("policy.vision_pretrain.frames is 0: nothing to pretrain")
    names = list(LANDMARK_NAMES)
    grid = _token_grid(pol.processor, sim_cfg.height, sim_cfg.width)
    rgb, cells, free = render_frames(scenes_dir, scene_ids, sim_cfg, cfg, names, grid, image_format, quality)
    log.info("vision pretraining: %d frames of %d train houses rendered", len(rgb), len(scene_ids))

    torch.manual_seed(cfg.seed)
    probe = _Probe(pol, rgb, cells, free, names, cfg.head)
    n = len(rgb)
    n_val = int(round(n * cfg.val_fraction))
    order = np.random.default_rng(cfg.seed + 1).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]

    before = probe.scores(val_idx)
    params = list(probe.visual.parameters()) + list(probe.heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    probe.visual.train()
    log_every = max(1, total // 10)
    step = 0
    for epoch in range(cfg.epochs):
        perm = np.random.default_rng(cfg.seed + 2 + epoch).permutation(train_idx)
        for s in range(steps_per_epoch):
            loss = probe.loss(perm[s * cfg.batch_size:(s + 1) * cfg.batch_size])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % log_every == 0 or step == total:
                log.info("vision pretraining step %d/%d loss %.4f", step, total, loss.item())
    probe.visual.eval()
    after = probe.scores(val_idx)
    summary = {"config": asdict(cfg), "houses": scene_ids, "frames": n, "val_frames": n_val, "tokens_per_frame": probe.tokens,
               "steps": total, "val_before": before, "val_after": after, "threads": torch.get_num_threads()}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        pol.model.save_pretrained(str(tmp))
        pol.processor.save_pretrained(str(tmp))
        for extra in ("saca_tiny.json",):
            if (Path(policy_dir) / extra).is_file():
                (tmp / extra).write_bytes((Path(policy_dir) / extra).read_bytes())
        write_json(tmp / "vision_pretrain.json", summary)
        # the probe heads, for diagnostics only (probe_vision: how much of this a later fine-tuning keeps)
        save_file({k: v.detach().contiguous() for k, v in probe.heads.state_dict().items()},
                  str(tmp / "vision_heads.safetensors"))
    return summary


def probe_vision(policy_dir: str | Path, pretrained_dir: str | Path, scenes_dir: str | Path, frames: int = 1000,
                 sim_cfg=None, seed: int = 12345, image_format: str = "jpeg", quality: int = 95) -> dict:
    """Score the vision tower of ``policy_dir`` (e.g. after SFT) with the heads that :func:`pretrain_vision` wrote
    into ``pretrained_dir``, on ``frames`` new views of the train houses (``seed``): how much of what the tower
    learned the later training kept. Settings (targets' thresholds, distances) are the pretraining's."""
    import torch
    from safetensors.torch import load_file

    from saca.io import read_json
    from saca.sim.base import SimConfig
    from saca.sim.embedded.catalogue import LANDMARK_NAMES

    pretrained_dir = Path(pretrained_dir)
    heads_path = pretrained_dir / "vision_heads.safetensors"
    if not heads_path.is_file():
        raise SacaError(f"{heads_path}: no probe heads (a directory written by saca vision-pretrain)")
    cfg = VisionPretrainConfig(**{**read_json(pretrained_dir / "vision_pretrain.json")["config"], "frames": frames, "seed": seed})
    sim_cfg = sim_cfg or SimConfig()
    pol = _load_qwen(policy_dir)
    names = list(LANDMARK_NAMES)
    grid = _token_grid(pol.processor, sim_cfg.height, sim_cfg.width)
    rgb, cells, free = render_frames(scenes_dir, _train_houses(scenes_dir), sim_cfg, cfg, names, grid, image_format, quality)
    probe = _Probe(pol, rgb, cells, free, names, cfg.head)
    probe.heads.load_state_dict(load_file(str(heads_path)))
    probe.visual.eval()
    with torch.no_grad():
        return probe.scores(np.arange(len(rgb)))


def _f1(pred, target) -> float:
    tp = float((pred * target).sum())
    denom = float(pred.sum() + target.sum())
    return 2 * tp / denom if denom else 1.0
