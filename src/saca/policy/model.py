"""Loading the policy VLM through transformers' Auto classes (never ``trust_remote_code``).

``load_policy(path_or_id)`` accepts a local checkpoint directory (what
``save_pretrained`` wrote: the tiny embedded model, an SFT or RL checkpoint, a
downloaded Qwen2-VL-2B) or a hub id (``Qwen/Qwen2-VL-2B-Instruct``,
``llava-hf/LLaVA-Video-7B-Qwen2-hf``) where the hub can be reached. Supported
families: Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision / LLaVA-Video (the
``llava_onevision`` model type). Bad input fails early with a
:class:`saca.SacaError` that names the path: a missing directory, no
``config.json``, no weights, a truncated or corrupt safetensors file, a
tokenizer without the family's image tokens.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from saca import SacaError
from saca.policy.processor import FAMILIES, PolicyProcessor, family_of

DTYPES = ("float32", "bfloat16", "float16", "auto")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise SacaError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


def check_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Validate a local checkpoint directory before transformers touches it."""
    path = Path(path)
    if not path.exists():
        raise SacaError(f"{path}: policy checkpoint directory does not exist")
    if not path.is_dir():
        raise SacaError(f"{path}: policy checkpoint must be a directory (save_pretrained output), not a file")
    cfg = path / "config.json"
    if not cfg.exists():
        raise SacaError(f"{path}: not a model checkpoint (no config.json)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SacaError(f"{cfg}: malformed config.json ({err})") from err
    if data.get("model_type") not in FAMILIES:
        raise SacaError(
            f"{cfg}: model_type '{data.get('model_type')}' is not a supported policy family ({', '.join(FAMILIES)})"
        )
    weights = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
            raise SacaError(f"{index}: malformed weight index ({err})") from err
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise SacaError(f"{path}: weight shards listed in {index.name} are missing: {missing}")
        weights = [path / s for s in shards]
    if not weights:
        raise SacaError(f"{path}: no model weights (*.safetensors) in the checkpoint directory")
    for w in weights:
        check_safetensors(w)
    return path


def check_safetensors(file: Path) -> None:
    """Header and size check of a safetensors file; a truncated or corrupt file raises SacaError naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            if not list(fh.keys()):
                raise SacaError(f"{file}: safetensors file holds no tensors")
    except SacaError:
        raise
    except Exception as err:  # safetensors raises SafetensorError / OSError / ValueError
        raise SacaError(f"{file}: corrupt or truncated safetensors file ({err})") from err
    # safe_open checks the header; also check that the data the header promises is all there
    with open(file, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SacaError(f"{file}: corrupt safetensors header ({err})") from err
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    size = file.stat().st_size
    if 8 + n + end > size:
        raise SacaError(f"{file}: truncated safetensors file ({size} bytes, header promises {8 + n + end})")


def is_local_reference(ref: str) -> bool:
    """A path that cannot be a hub id (absolute, relative with ./, nested, or existing) is local."""
    if Path(ref).exists():
        return True
    return not _HUB_ID.match(ref)


@dataclass
class Policy:
    """A loaded policy: the transformers model, its processor adapter, its family and where it came from."""

    model: object
    processor: PolicyProcessor
    family: str
    source: str

    @property
    def device(self):
        return next(self.model.parameters()).device

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """``save_pretrained`` of model, tokenizer and image processor: ``load_policy`` reads it back."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir))
        self.processor.save_pretrained(out_dir)


def load_policy(
    path_or_id: str | os.PathLike,
    dtype: str = "float32",
    device: str = "cpu",
    image_pixels: int | None = None,
    attn_implementation: str | None = None,
) -> Policy:
    """Load a policy VLM + processor adapter via ``AutoModelForImageTextToText`` / Auto tokenizer / image processor.

    ``image_pixels`` overrides the Qwen2-VL frame pixel budget (``min_pixels = max_pixels``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    ref = str(path_or_id)
    local = is_local_reference(ref)
    if local:
        check_checkpoint_dir(ref)
    try:
        config = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as err:
        where = ref if local else f"'{ref}' (not a local directory; tried the model hub)"
        raise SacaError(f"{where}: cannot load the model config ({err})") from err
    family = family_of(config)
    kwargs = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(ref, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise SacaError(f"{ref}: cannot load the model weights ({err})") from err
    processor = PolicyProcessor.from_pretrained(ref, model.config, image_pixels=image_pixels)
    model.to(torch.device(device))
    model.eval()
    return Policy(model=model, processor=processor, family=family, source=ref)


def vision_tower(model):
    """The vision tower of a policy model: Qwen2-VL / Qwen2.5-VL ``model.visual`` (patch embedding, blocks and the
    patch merger), LLaVA-OneVision ``model.vision_tower`` (its projector is not part of it)."""
    inner = getattr(model, "model", model)
    for name in ("visual", "vision_tower"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise SacaError(f"{type(model).__name__}: no vision tower (expected .model.visual or .model.vision_tower)")
