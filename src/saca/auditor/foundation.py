"""Foundation perception: CLIP + GroundingDINO + SAM3 (SAM as fallback), from local directories.

For landmark ``l`` the prompt is ``p(l) = "A photo of a {l}."`` (SACA
Appendix B.1) and, per (frame ``o``, landmark) pair (method-notes §3.2):

* ``S_g = cos(E_I(o), E_T(p(l)))`` with CLIP's projected, L2-normalised
  embeddings;
* GroundingDINO on ``(o, p(l))``: every query's confidence is the max sigmoid
  logit over the landmark's tokens in the prompt (``det_token_scope:
  landmark``; ``all``: over every prompt token, transformers'
  post-processing default); the single highest-confidence box ``b`` and its
  confidence ``c`` are kept;
* only when ``c > tau_det``: ``S_b = cos(E_I(crop(o, b)), E_T(p(l)))``; the
  segmenter prompted with ``b`` gives the mask ``M`` and its predicted IoU
  ``u``; ``S_m = cos(E_I(crop(o * M, b)), E_T(p(l)))`` with the background
  zeroed (black). An empty mask gives ``S_m = 0``.

Crops are padded to a square with black before CLIP's resize (a centre crop
would cut elongated objects). Pre-processing (resize, normalise) runs in
torch on the whole batch with the constants of each model's
``preprocessor_config.json``, so no image-processor class (some need
torchvision) is involved; resizes are bilinear/bicubic with antialiasing,
close to but not bit-identical with the PIL processors.

Cost: CLIP embeds each distinct frame once and each prompt once (cached across
calls); GroundingDINO runs once per pair, ``batch_size`` pairs per forward;
the segmenter embeds each frame that needs a mask once and decodes one box
per pair. Each call of :meth:`score` takes the pairs of a whole rollout group.

Segmenters, by the ``model_type`` of ``config.json``: ``sam3``, ``sam3_video``
and ``sam3_tracker`` load as ``Sam3TrackerModel`` (SAM3's box-promptable
image path, which predicts an IoU per mask); ``sam2`` as ``Sam2Model``;
``sam`` as ``SamModel``. No ``trust_remote_code``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from saca import SacaError
from saca.auditor.base import Frame, PairScore, PerceptionBackend
from saca.auditor.config import FoundationConfig

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM3_TYPES = ("sam3", "sam3_video", "sam3_tracker")


def model_dir(path: str, key: str) -> Path:
    """A ``save_pretrained`` directory, or SacaError naming the config key (the workflow's parse-time check)."""
    from saca.io import check_model_dir

    return check_model_dir(path, f"auditor.foundation.{key}")


def _preproc(path: Path) -> dict:
    f = path / "preprocessor_config.json"
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SacaError(f"{f}: malformed JSON ({err})") from err


def _size(value, default: int) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for k in ("shortest_edge", "height", "longest_edge"):
            if k in value:
                return int(value[k])
    return default


class FoundationBackend(PerceptionBackend):
    name = "foundation"

    def __init__(self, config: FoundationConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        import torch

        self.config = config or FoundationConfig()
        self.torch = torch
        dev = self.config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self.dtype = getattr(torch, self.config.dtype)
        self._text_cache: dict[str, "torch.Tensor"] = {}
        self._load_clip()
        self.detector = None
        self.segmenter = None
        if self.needs_detection:
            self._load_detector()
        if self.needs_mask:
            self._load_segmenter()

    # --- loading -----------------------------------------------------------------
    def _from_pretrained(self, cls, path: Path, key: str):
        try:
            model = cls.from_pretrained(str(path), local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SacaError(f"auditor.foundation.{key}: cannot load {cls.__name__} from '{path}' ({err})") from err
        return model.to(self.device).eval()

    def _tokenizer(self, path: Path, key: str):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SacaError(f"auditor.foundation.{key}: cannot load a tokenizer from '{path}' ({err})") from err

    def _load_clip(self) -> None:
        from transformers import CLIPModel

        path = model_dir(self.config.clip_path, "clip_path")
        self.clip = self._from_pretrained(CLIPModel, path, "clip_path")
        self.clip_tok = self._tokenizer(path, "clip_path")
        pp = _preproc(path)
        self.clip_size = _size(pp.get("crop_size") or pp.get("size"), self.clip.config.vision_config.image_size)
        self.clip_mean = tuple(pp.get("image_mean", CLIP_MEAN))
        self.clip_std = tuple(pp.get("image_std", CLIP_STD))
        self.clip_max_len = int(self.clip.config.text_config.max_position_embeddings)

    def _load_detector(self) -> None:
        from transformers import GroundingDinoForObjectDetection

        path = model_dir(self.config.gdino_path, "gdino_path")
        self.detector = self._from_pretrained(GroundingDinoForObjectDetection, path, "gdino_path")
        self.det_tok = self._tokenizer(path, "gdino_path")
        pp = _preproc(path)
        size = pp.get("size") or {}
        self.det_short = int(size.get("shortest_edge", 800)) if isinstance(size, dict) else int(size)
        self.det_long = int(size.get("longest_edge", 1333)) if isinstance(size, dict) else int(size)
        self.det_mean = tuple(pp.get("image_mean", IMAGENET_MEAN))
        self.det_std = tuple(pp.get("image_std", IMAGENET_STD))

    def _load_segmenter(self) -> None:
        key = "sam3_path" if self.config.sam3_path else "sam_path"
        if not self.config.sam3_path and not self.config.sam_path:
            raise SacaError("auditor.foundation: the mask module needs sam3_path or sam_path (or drop 'mask' "
                            "from auditor.modules)")
        if self.config.sam3_path and not Path(self.config.sam3_path).is_dir() and self.config.sam_path:
            log.warning("auditor.foundation.sam3_path '%s' does not exist; falling back to SAM at '%s'",
                        self.config.sam3_path, self.config.sam_path)
            key = "sam_path"
        path = model_dir(getattr(self.config, key), key)
        mtype = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", "")
        if mtype in SAM3_TYPES:
            from transformers import Sam3TrackerModel as cls

            self.seg_kind, mean, std = "sam3", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        elif mtype == "sam2":
            from transformers import Sam2Model as cls

            self.seg_kind, mean, std = "sam2", IMAGENET_MEAN, IMAGENET_STD
        elif mtype == "sam":
            from transformers import SamModel as cls

            self.seg_kind, mean, std = "sam", IMAGENET_MEAN, IMAGENET_STD
        else:
            raise SacaError(f"auditor.foundation.{key}: '{path}' holds a '{mtype}' model; expected sam3, "
                            "sam3_tracker, sam3_video, sam2 or sam")
        self.segmenter = self._from_pretrained(cls, path, key)
        pp = _preproc(path)
        self.seg_mean = tuple(pp.get("image_mean", mean))
        self.seg_std = tuple(pp.get("image_std", std))
        vc = self.segmenter.config.vision_config
        size = getattr(vc, "image_size", None)
        if size is None and hasattr(vc, "backbone_config"):
            size = vc.backbone_config.image_size
        self.seg_size = int(size if isinstance(size, int) else size[0])
        log.info("auditor segmenter: %s (%s) at %d px", path, self.seg_kind, self.seg_size)

    # --- tensors -----------------------------------------------------------------
    def _to_tensor(self, rgbs: Sequence[np.ndarray]):
        t = self.torch.from_numpy(np.stack(rgbs)).to(self.device)
        return t.permute(0, 3, 1, 2).float() / 255.0

    def _normalise(self, x, mean, std):
        m = self.torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        s = self.torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        return ((x - m) / s).to(self.dtype)

    def _resize(self, x, h: int, w: int, mode: str = "bilinear"):
        import torch.nn.functional as F

        if x.shape[-2:] == (h, w):
            return x
        return F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True).clamp(0, 1)

    def _clip_frames(self, rgbs):
        """CLIP pre-processing of whole frames: shortest edge to S (bicubic), centre crop S x S."""
        x = self._to_tensor(rgbs)
        H, W = x.shape[-2:]
        S = self.clip_size
        scale = S / min(H, W)
        h, w = max(S, round(H * scale)), max(S, round(W * scale))
        x = self._resize(x, h, w, "bicubic")
        top, left = (h - S) // 2, (w - S) // 2
        return self._normalise(x[:, :, top:top + S, left:left + S], self.clip_mean, self.clip_std)

    def _clip_crops(self, crops: Sequence[np.ndarray]):
        """Box crops: padded with black to a square, resized to S x S."""
        S = self.clip_size
        out = []
        for c in crops:
            h, w = c.shape[:2]
            side = max(h, w)
            sq = np.zeros((side, side, 3), np.uint8)
            y0, x0 = (side - h) // 2, (side - w) // 2
            sq[y0:y0 + h, x0:x0 + w] = c
            out.append(self._resize(self._to_tensor([sq]), S, S, "bicubic"))
        return self._normalise(self.torch.cat(out), self.clip_mean, self.clip_std)

    def _embed_images(self, pixel_values):
        torch = self.torch
        outs = []
        bs = self.config.batch_size
        with torch.no_grad():
            for k in range(0, pixel_values.shape[0], bs):
                feats = self.clip.get_image_features(pixel_values=pixel_values[k:k + bs])
                feats = getattr(feats, "pooler_output", feats)
                outs.append(torch.nn.functional.normalize(feats.float(), dim=-1))
        return torch.cat(outs)

    def _embed_texts(self, landmarks: Sequence[str]):
        torch = self.torch
        todo = [l for l in dict.fromkeys(landmarks) if l not in self._text_cache]
        if todo:
            enc = self.clip_tok([self.text(l) for l in todo], padding=True, truncation=True,
                                max_length=self.clip_max_len, return_tensors="pt").to(self.device)
            with torch.no_grad():
                feats = self.clip.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            feats = getattr(feats, "pooler_output", feats)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            for l, f in zip(todo, feats):
                self._text_cache[l] = f
        return torch.stack([self._text_cache[l] for l in landmarks])

    # --- detection -----------------------------------------------------------------
    def _landmark_token_mask(self, texts: Sequence[str], landmarks: Sequence[str], enc):
        """(B, L) bool: the prompt tokens that spell the landmark (or every non-special token)."""
        torch = self.torch
        ids = enc["input_ids"]
        special = set(self.det_tok.all_special_ids)
        valid = enc["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(sorted(special), device=ids.device))
        if self.config.det_token_scope == "all" or "offset_mapping" not in enc:
            return valid
        prefix = self.prompt.split("{l}")[0]
        mask = torch.zeros_like(valid)
        offs = enc["offset_mapping"].tolist()
        for b, (text, l) in enumerate(zip(texts, landmarks)):
            start = len(prefix)
            end = start + len(l)
            for k, (s, e) in enumerate(offs[b]):
                if e > s and s < end and e > start:
                    mask[b, k] = True
        mask &= valid
        # a landmark the tokenizer dropped entirely: fall back to all prompt tokens for that row
        empty = ~mask.any(dim=1)
        mask[empty] = valid[empty]
        return mask

    def _det_pixels(self, rgbs):
        x = self._to_tensor(rgbs)
        H, W = x.shape[-2:]
        scale = self.det_short / min(H, W)
        if max(H, W) * scale > self.det_long:
            scale = self.det_long / max(H, W)
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        return self._normalise(self._resize(x, h, w), self.det_mean, self.det_std)

    def _detect(self, frames: Sequence[Frame], pairs: Sequence[tuple[int, str]]):
        """Highest-confidence box and its confidence for each pair: lists of ((x0,y0,x1,y1) | None, c)."""
        torch = self.torch
        results: list[tuple] = [None] * len(pairs)
        bs = self.config.batch_size
        # pairs grouped by frame size, so a batch needs no padding
        by_size: dict[tuple, list[int]] = {}
        for n, (i, _) in enumerate(pairs):
            by_size.setdefault(frames[i].size, []).append(n)
        for (H, W), idx in by_size.items():
            for k in range(0, len(idx), bs):
                chunk = idx[k:k + bs]
                lms = [pairs[n][1] for n in chunk]
                texts = [self.text(l) for l in lms]
                enc = self.det_tok(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
                enc = {k2: v.to(self.device) for k2, v in enc.items()}
                pix = self._det_pixels([frames[pairs[n][0]].rgb for n in chunk])
                with torch.no_grad():
                    out = self.detector(
                        pixel_values=pix, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        token_type_ids=enc.get("token_type_ids"),
                        pixel_mask=torch.ones(pix.shape[0], *pix.shape[-2:], dtype=torch.long, device=self.device),
                    )
                tokmask = self._landmark_token_mask(texts, lms, enc)
                L = enc["input_ids"].shape[1]
                probs = out.logits[:, :, :L].float().sigmoid()
                probs = probs.masked_fill(~tokmask[:, None, :], 0.0)
                conf = probs.max(dim=-1).values  # (B, Q)
                best = conf.argmax(dim=-1)
                for b, n in enumerate(chunk):
                    q = int(best[b])
                    c = float(conf[b, q])
                    cx, cy, bw, bh = (float(v) for v in out.pred_boxes[b, q])
                    x0 = int(math.floor(max(0.0, (cx - bw / 2) * W)))
                    y0 = int(math.floor(max(0.0, (cy - bh / 2) * H)))
                    x1 = int(math.ceil(min(float(W), (cx + bw / 2) * W)))
                    y1 = int(math.ceil(min(float(H), (cy + bh / 2) * H)))
                    x1, y1 = max(x1, min(x0 + 1, W)), max(y1, min(y0 + 1, H))
                    x0, y0 = min(x0, x1 - 1), min(y0, y1 - 1)
                    results[n] = ((x0, y0, x1, y1), c)
        return results

    # --- segmentation ---------------------------------------------------------------
    def _seg_pixels(self, rgbs):
        x = self._to_tensor(rgbs)
        H, W = x.shape[-2:]
        S = self.seg_size
        if self.seg_kind == "sam":  # longest side to S, pad bottom-right (after normalising)
            scale = S / max(H, W)
            h, w = max(1, round(H * scale)), max(1, round(W * scale))
            x = self._normalise(self._resize(x, h, w), self.seg_mean, self.seg_std)
            return self.torch.nn.functional.pad(x, (0, S - w, 0, S - h)), (h, w)
        return self._normalise(self._resize(x, S, S), self.seg_mean, self.seg_std), (S, S)

    def _segment(self, frames: Sequence[Frame], items: list[tuple[int, tuple]]):
        """Masks and predicted IoUs for (frame index, box) items: lists of (H, W) bool arrays and floats."""
        torch = self.torch
        import torch.nn.functional as F

        bs = self.config.batch_size
        frame_ids = list(dict.fromkeys(i for i, _ in items))
        emb: dict[int, object] = {}
        for k in range(0, len(frame_ids), bs):
            chunk = frame_ids[k:k + bs]
            by_size: dict[tuple, list[int]] = {}
            for i in chunk:
                by_size.setdefault(frames[i].size, []).append(i)
            for _, ids in by_size.items():
                pix, _ = self._seg_pixels([frames[i].rgb for i in ids])
                with torch.no_grad():
                    e = self.segmenter.get_image_embeddings(pixel_values=pix)
                for b, i in enumerate(ids):
                    emb[i] = [lvl[b:b + 1] for lvl in e] if isinstance(e, (list, tuple)) else e[b:b + 1]
        masks, ious = [], []
        for k in range(0, len(items), bs):
            chunk = items[k:k + bs]
            first = emb[chunk[0][0]]
            if isinstance(first, list):
                e = [torch.cat([emb[i][lvl] for i, _ in chunk]) for lvl in range(len(first))]
            else:
                e = torch.cat([emb[i] for i, _ in chunk])
            boxes = []
            for i, (x0, y0, x1, y1) in chunk:
                H, W = frames[i].size
                S = self.seg_size
                if self.seg_kind == "sam":
                    s = S / max(H, W)
                    boxes.append([x0 * s, y0 * s, x1 * s, y1 * s])
                else:
                    boxes.append([x0 * S / W, y0 * S / H, x1 * S / W, y1 * S / H])
            boxes = torch.tensor(boxes, dtype=self.dtype, device=self.device)[:, None, :]
            with torch.no_grad():
                out = self.segmenter(image_embeddings=e, input_boxes=boxes, multimask_output=False)
            low = out.pred_masks[:, 0, 0:1].float()  # (B, 1, h, w) logits
            iou = out.iou_scores[:, 0, 0].float().clamp(0, 1)
            for b, (i, _) in enumerate(chunk):
                H, W = frames[i].size
                m = low[b:b + 1]
                if self.seg_kind == "sam":
                    S = self.seg_size
                    s = S / max(H, W)
                    h, w = max(1, round(H * s)), max(1, round(W * s))
                    m = F.interpolate(m, size=(S, S), mode="bilinear", align_corners=False)[..., :h, :w]
                m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)
                masks.append((m[0, 0] > 0).cpu().numpy())
                ious.append(float(iou[b]))
        return masks, ious

    # --- scoring -----------------------------------------------------------------------
    def _score(self, frames: Sequence[Frame], pairs: Sequence[tuple[int, str]]) -> list[PairScore]:
        torch = self.torch
        frame_ids = list(dict.fromkeys(i for i, _ in pairs))
        img = self._embed_images(self._clip_frames([frames[i].rgb for i in frame_ids]))
        row = {i: r for r, i in enumerate(frame_ids)}
        txt = self._embed_texts([l for _, l in pairs])
        out = []
        for n, (i, _) in enumerate(pairs):
            out.append(PairScore(S_g=float(img[row[i]] @ txt[n])))
        if not self.needs_detection:
            return out
        det = self._detect(frames, pairs)
        local = []
        for n, (box, c) in enumerate(det):
            out[n].box, out[n].c = box, c
            if c > self.tau_det:
                local.append(n)
        if not local:
            return out
        crops = []
        for n in local:
            x0, y0, x1, y1 = out[n].box
            crops.append(frames[pairs[n][0]].rgb[y0:y1, x0:x1])
        s_b = (self._embed_images(self._clip_crops(crops)) * txt[local]).sum(-1)
        for k, n in enumerate(local):
            out[n].S_b = float(s_b[k])
        if not self.needs_mask:
            return out
        masks, ious = self._segment(frames, [(pairs[n][0], out[n].box) for n in local])
        masked, with_pixels = [], []
        for k, n in enumerate(local):
            x0, y0, x1, y1 = out[n].box
            out[n].mask, out[n].u = masks[k], ious[k]
            m = masks[k][y0:y1, x0:x1]
            if m.any():
                masked.append(frames[pairs[n][0]].rgb[y0:y1, x0:x1] * m[..., None].astype(np.uint8))
                with_pixels.append(n)
        if with_pixels:
            s_m = (self._embed_images(self._clip_crops(masked)) * txt[with_pixels]).sum(-1)
            for k, n in enumerate(with_pixels):
                out[n].S_m = float(s_m[k])
        return out

    def close(self) -> None:
        self.clip = self.detector = self.segmenter = None
        self._text_cache.clear()
