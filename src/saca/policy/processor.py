"""The one adapter from prompt text + frames to model inputs, for every supported VLM family.

Why not ``AutoProcessor``: in transformers 5.x the Qwen2-VL and LLaVA-OneVision
processors have three slots (image processor, tokenizer, *video processor*), and
every video processor needs torchvision; without torchvision ``AutoProcessor``
(and even constructing ``Qwen2VLProcessor(..., video_processor=None)``) fails,
and the default ("fast") image processors are torchvision-backed too. Installing
torchvision is not an option here (it breaks transformers' image processors in
this environment), and the policy never needs the video slot: VLN-R1 feeds the
history frames and the current frame as separate images.

So this module is the only place that turns text into tokens for the policy:

* tokenizer: ``AutoTokenizer`` from the checkpoint;
* images: ``AutoImageProcessor.from_pretrained(path, backend="pil")``, always the
  PIL/numpy backend (identical pixels with or without torchvision installed);
* each ``<image>`` placeholder of the prompt (:data:`saca.prompt.IMAGE_TOKEN`) is
  expanded to the family's image token run, with the token count that the
  model's vision tower will produce for that image (Qwen2-VL: ``t*h*w /
  merge**2`` between ``<|vision_start|>``/``<|vision_end|>``; LLaVA-OneVision:
  transformers' own feature-count formula, anyres for a single image, one base
  patch + newline per image for several);
* the chat turn is ChatML (``<|im_start|>system ... <|im_start|>assistant\\n``),
  which is what both families' chat templates produce for a text+image turn;
* answer tokens are appended to the prompt tokens (never re-tokenized together),
  so the label mask is exact and the model sees at training time precisely the
  prefix it continues at generation time.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from saca import SacaError
from saca.prompt import IMAGE_TOKEN, SYSTEM_MESSAGE

IGNORE_INDEX = -100

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
LLAVA_FAMILIES = ("llava_onevision",)
FAMILIES = QWEN_FAMILIES + LLAVA_FAMILIES

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
LLAVA_IMAGE = "<image>"


def family_of(model_config) -> str:
    mt = getattr(model_config, "model_type", None)
    if mt not in FAMILIES:
        raise SacaError(f"unsupported model type '{mt}'; supported families: {', '.join(FAMILIES)}")
    return mt


@dataclass
class Encoded:
    """One sample: token ids, optional labels (``-100`` outside the answer), per-sample vision tensors."""

    input_ids: list[int]
    labels: list[int] | None
    vision: dict = field(default_factory=dict)
    n_images: int = 0
    prompt_length: int = 0


class PolicyProcessor:
    """Tokenizer + PIL image processor + placeholder expansion for one model family."""

    def __init__(self, tokenizer, image_processor, model_config, source: str = "<memory>"):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.family = family_of(model_config)
        self.source = str(source)
        self.model_config = model_config
        self._check_tokens()

    # --- loading and saving -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, model_config, image_pixels: int | None = None) -> "PolicyProcessor":
        from transformers import AutoImageProcessor, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError) as err:
            raise SacaError(f"{path}: cannot load the tokenizer ({err})") from err
        kwargs = {}
        if image_pixels is not None and family_of(model_config) in QWEN_FAMILIES:
            kwargs = {"min_pixels": int(image_pixels), "max_pixels": int(image_pixels)}
        try:
            image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
        except (OSError, ValueError, TypeError) as err:
            raise SacaError(f"{path}: cannot load the image processor (preprocessor_config.json) ({err})") from err
        return cls(tokenizer, image_processor, model_config, source=path)

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.tokenizer.save_pretrained(str(out_dir))
        self.image_processor.save_pretrained(str(out_dir))

    # --- token checks -----------------------------------------------------------------------
    def _single_id(self, token: str) -> int:
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SacaError(
                f"{self.source}: the tokenizer has no single token for '{token}' (it splits it into {len(ids)} "
                f"pieces); a {self.family} policy needs its image tokens in the vocabulary"
            )
        return int(ids[0])

    def _check_tokens(self) -> None:
        cfg = self.model_config
        self.im_start_id = self._single_id(IM_START)
        self.im_end_id = self._single_id(IM_END)
        if self.family in QWEN_FAMILIES:
            self.image_token_id = self._single_id(QWEN_IMAGE_PAD)
            # tokens an answer may never contain: generating one would desynchronise the image placeholders
            self.suppressed_ids = [self.image_token_id, self._single_id(QWEN_VISION_START), self._single_id(QWEN_VISION_END)]
        else:
            self.image_token_id = self._single_id(LLAVA_IMAGE)
            self.suppressed_ids = [self.image_token_id]
        expected = getattr(cfg, "image_token_id", None)
        if expected is not None and int(expected) != self.image_token_id:
            raise SacaError(
                f"{self.source}: the tokenizer's image token has id {self.image_token_id} but the model config "
                f"expects image_token_id={expected}"
            )
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.im_end_id
        eos = {self.im_end_id}
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = sorted(eos)

    # --- text -------------------------------------------------------------------------------
    def chat_text(self, user_text: str) -> str:
        """The ChatML prompt (system, user turn, open assistant turn); ``<image>`` placeholders kept."""
        return (
            f"{IM_START}system\n{SYSTEM_MESSAGE}{IM_END}\n"
            f"{IM_START}user\n{user_text}{IM_END}\n"
            f"{IM_START}assistant\n"
        )

    def _image_string(self, n_tokens: int) -> str:
        if self.family in QWEN_FAMILIES:
            return QWEN_VISION_START + QWEN_IMAGE_PAD * n_tokens + QWEN_VISION_END
        return LLAVA_IMAGE * n_tokens

    # --- images -----------------------------------------------------------------------------
    def process_images(self, images: Sequence[np.ndarray]) -> tuple[dict, list[int]]:
        """Pixel tensors for one sample's images and the number of image tokens of each."""
        images = [np.ascontiguousarray(im, dtype=np.uint8) for im in images]
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3:
                raise SacaError(f"image {i}: expected an RGB array of shape (H, W, 3), got {im.shape}")
        if not images:
            return {}, []
        if self.family in QWEN_FAMILIES:
            out = self.image_processor(images=images, return_tensors="pt")
            merge = int(self.image_processor.merge_size)
            counts = [int(g.prod()) // (merge * merge) for g in out["image_grid_thw"]]
            return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}, counts
        out = self.image_processor(images=[images], return_tensors="pt")
        counts = self._llava_counts(out)
        vision = {
            "pixel_values": out["pixel_values"],
            "image_sizes": out["image_sizes"],
            "batch_num_images": out["batch_num_images"],
        }
        return vision, counts

    def _llava_counts(self, out) -> list[int]:
        """Tokens per image with transformers' own LLaVA-OneVision formula (processing_llava_onevision)."""
        from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

        cfg = self.model_config
        vcfg = cfg.vision_config
        n_base = (vcfg.image_size // vcfg.patch_size) ** 2
        ns = types.SimpleNamespace(
            image_processor=self.image_processor,
            num_image_tokens=n_base,
            vision_aspect_ratio=getattr(cfg, "vision_aspect_ratio", "anyres_max_9"),
        )
        ns._get_unpadded_features = functools.partial(LlavaOnevisionProcessor._get_unpadded_features, ns)
        n_images = int(out["batch_num_images"][0])
        h, w = out["pixel_values"].shape[-2:]
        counts = []
        for size in out["image_sizes"]:
            if n_images == 1:
                n = LlavaOnevisionProcessor._get_number_of_features(ns, int(size[0]), int(size[1]), int(h), int(w))
            else:
                n = n_base + 1  # base patch + image_newline
            if cfg.vision_feature_select_strategy == "default":
                n -= 1
            counts.append(n)
        return counts

    # --- encoding ---------------------------------------------------------------------------
    @property
    def per_image(self) -> bool:
        """True when images are processed independently (Qwen families), so per-frame results can be cached."""
        return self.family in QWEN_FAMILIES

    def join_images(self, parts: Sequence[tuple[dict, list[int]]]) -> tuple[dict, list[int]]:
        """Concatenate per-image ``process_images`` results (Qwen families only)."""
        import torch

        if not self.per_image:
            raise SacaError(f"{self.family}: images of one sample are processed together, not one by one")
        if not parts:
            return {}, []
        vision = {
            "pixel_values": torch.cat([v["pixel_values"] for v, _ in parts]),
            "image_grid_thw": torch.cat([v["image_grid_thw"] for v, _ in parts]),
        }
        return vision, [c for _, cs in parts for c in cs]

    def encode(
        self,
        user_text: str,
        images: Sequence[np.ndarray] | None,
        answer: str | None = None,
        processed: tuple[dict, list[int]] | None = None,
    ) -> Encoded:
        """Tokens (and labels when ``answer`` is given) for one decision.

        Labels are ``-100`` on every prompt token and equal the token ids on the answer
        tokens and the closing ``<|im_end|>`` (VLN-R1 Eq. 8 supervises the answer only).
        ``processed``: the output of :meth:`process_images` for these images, when the
        caller already has it (the SFT data cache); ``images`` is then ignored.
        """
        parts = user_text.split(IMAGE_TOKEN)
        vision, counts = processed if processed is not None else self.process_images(images or [])
        if len(parts) - 1 != len(counts):
            raise SacaError(f"prompt has {len(parts) - 1} {IMAGE_TOKEN} placeholders but {len(counts)} images were given")
        text = parts[0]
        for n, part in zip(counts, parts[1:]):
            text += self._image_string(n) + part
        prompt_ids = list(self.tokenizer(self.chat_text(text), add_special_tokens=False)["input_ids"])
        n_img = sum(1 for t in prompt_ids if t == self.image_token_id)
        if n_img != sum(counts):
            raise SacaError(
                f"{self.source}: the tokenizer produced {n_img} image tokens where {sum(counts)} were placed; "
                "the image token must be a single special token"
            )
        labels = None
        ids = prompt_ids
        if answer is not None:
            answer_ids = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + [self.im_end_id]
            ids = prompt_ids + answer_ids
            labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        return Encoded(ids, labels, vision, len(counts), len(prompt_ids))

    def collate(self, items: Sequence[Encoded], padding_side: str = "right") -> dict:
        """Pad a batch into model inputs (``padding_side='left'`` for generation)."""
        import torch

        if not items:
            raise SacaError("cannot collate an empty batch")
        L = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), L), dtype=torch.long)
        has_labels = all(e.labels is not None for e in items)
        labels = torch.full((len(items), L), IGNORE_INDEX, dtype=torch.long) if has_labels else None
        for i, e in enumerate(items):
            n = len(e.input_ids)
            sl = slice(L - n, L) if padding_side == "left" else slice(0, n)
            ids[i, sl] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[i, sl] = 1
            if labels is not None:
                labels[i, sl] = torch.tensor(e.labels, dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels is not None:
            batch["labels"] = labels
        with_images = [e for e in items if e.n_images]
        if with_images:
            if self.family in QWEN_FAMILIES:
                batch["pixel_values"] = torch.cat([e.vision["pixel_values"] for e in with_images])
                batch["image_grid_thw"] = torch.cat([e.vision["image_grid_thw"] for e in with_images])
                batch["mm_token_type_ids"] = (ids == self.image_token_id).to(torch.int)
            else:
                pmax = max(e.vision["pixel_values"].shape[1] for e in with_images)
                pv = []
                for e in with_images:
                    p = e.vision["pixel_values"]
                    if p.shape[1] < pmax:
                        pad = p.new_zeros((p.shape[0], pmax - p.shape[1], *p.shape[2:]))
                        p = torch.cat([p, pad], dim=1)
                    pv.append(p)
                batch["pixel_values"] = torch.cat(pv)
                batch["image_sizes"] = torch.cat([e.vision["image_sizes"] for e in with_images])
                batch["batch_num_images"] = torch.cat([e.vision["batch_num_images"] for e in with_images])
        return batch

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def n_text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def square_pixels(side: int) -> int:
    """Pixel budget of a ``side x side`` frame (Qwen2-VL ``min_pixels = max_pixels``)."""
    return int(side) * int(side)

