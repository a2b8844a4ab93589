"""The embedded default policy: a tiny random VLM of a real family, built offline.

``build_tiny_policy`` trains a byte-level BPE tokenizer with ``tokenizers`` on
the prompt and option vocabulary (plus the embedded world's landmark and colour
names), adds the ChatML and image/video special tokens of the family, builds a
model from a config with random weights (seeded), and writes everything with
``save_pretrained``; every later step loads it through :func:`saca.policy.model.load_policy`,
exactly as it would load a downloaded Qwen2-VL-2B. Nothing is downloaded.

Families: ``qwen2_vl`` (default), ``qwen2_5_vl``, ``llava_onevision``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from saca import SacaError
from saca.action_text import format_actions, option_menu
from saca.policy.processor import (
    FAMILIES,
    IM_END,
    IM_START,
    LLAVA_IMAGE,
    QWEN_IMAGE_PAD,
    QWEN_VISION_END,
    QWEN_VISION_START,
)
from saca.prompt import SYSTEM_MESSAGE, build_prompt

ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE_PAD, "<|video_pad|>", LLAVA_IMAGE, "<video>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ IMAGE }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

NAV_WORDS = (
    "walk go move head turn left right straight forward ahead past through into out of the a an "
    "room hallway corridor door doorway wall corner kitchen bedroom bathroom living dining office "
    "stop wait near next to beside in front behind toward towards until you reach see first then "
    "after before pass enter exit leave continue keep slightly around and with on at by your is are "
    "colour color painted coloured floor goal there here this that one two three"
)


@dataclass
class TinyConfig:
    """Sizes of the embedded tiny policy (policy.init in config.yaml)."""

    family: str = "qwen2_vl"
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_heads: int = 2
    patch_size: int = 14
    image_size: int = 56  # frames are resized to image_size x image_size
    vocab_size: int = 1024
    max_position_embeddings: int = 4096
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.family not in FAMILIES:
            raise SacaError(f"{where}.family: unknown family '{self.family}'; choose one of {', '.join(FAMILIES)}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise SacaError(f"{where}: hidden_size / num_heads must be a multiple of 4")
        if self.num_heads % self.num_kv_heads:
            raise SacaError(f"{where}: num_heads must be a multiple of num_kv_heads")
        if self.vision_embed_dim % self.vision_heads:
            raise SacaError(f"{where}: vision_embed_dim must be a multiple of vision_heads")
        step = 2 * self.patch_size if self.family != "llava_onevision" else self.patch_size
        if self.image_size % step:
            raise SacaError(f"{where}.image_size: must be a multiple of {step} for {self.family}")
        if self.vocab_size < 300:
            raise SacaError(f"{where}.vocab_size: must be at least 300 (256 bytes + special tokens)")


def tokenizer_corpus() -> list[str]:
    """Texts the tiny tokenizer's BPE merges are learned from (deterministic)."""
    texts = [SYSTEM_MESSAGE, NAV_WORDS]
    try:
        from saca.sim.embedded.catalogue import LANDMARK_NAMES, WALL_COLOURS

        names = list(LANDMARK_NAMES) + [c for c, _ in WALL_COLOURS]
    except ImportError:  # pragma: no cover - the catalogue ships with the package
        names = []
    texts += [f"Walk to the {n} and stop next to the {n}." for n in names]
    for angle in (15, 30):
        texts.append(option_menu(angle))
        texts.append(build_prompt("Walk past the table and stop.", 3, angle))
        for a in range(4):
            texts.append(format_actions([a] * 6, angle))
            texts.append(format_actions([1, 1, a, a, 2, 3], angle))
    return texts * 4


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(tokenizer_corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        model_max_length=32768,
        padding_side="right",
    )
    return tok


def _mrope_section(head_dim: int) -> list[int]:
    """Split of the rotary half-dimension over (time, height, width), Qwen2-VL's 1/4, 3/8, 3/8."""
    half = head_dim // 2
    hw = (half - half // 4) // 2
    return [half - 2 * hw, hw, hw]


def model_config(cfg: TinyConfig, tok):
    from transformers import LlavaOnevisionConfig, Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        tie_word_embeddings=False,
    )
    if cfg.family in ("qwen2_vl", "qwen2_5_vl"):
        head_dim = cfg.hidden_size // cfg.num_heads
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head_dim)}
        common = dict(
            image_token_id=ids[QWEN_IMAGE_PAD],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids[QWEN_VISION_START],
            vision_end_token_id=ids[QWEN_VISION_END],
            tie_word_embeddings=False,
        )
        if cfg.family == "qwen2_vl":
            vision = dict(
                depth=cfg.vision_depth,
                embed_dim=cfg.vision_embed_dim,
                hidden_size=cfg.hidden_size,
                num_heads=cfg.vision_heads,
                mlp_ratio=2,
                patch_size=cfg.patch_size,
                spatial_merge_size=2,
                temporal_patch_size=2,
            )
            return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        vision = dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_embed_dim,
            intermediate_size=2 * cfg.vision_embed_dim,
            out_hidden_size=cfg.hidden_size,
            num_heads=cfg.vision_heads,
            patch_size=cfg.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=cfg.patch_size * 4,
            fullatt_block_indexes=[cfg.vision_depth - 1],
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    text["model_type"] = "qwen2"
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=cfg.vision_embed_dim,
        intermediate_size=2 * cfg.vision_embed_dim,
        num_hidden_layers=cfg.vision_depth,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[LLAVA_IMAGE],
        video_token_id=ids["<video>"],
        image_grid_pinpoints=[[cfg.image_size, cfg.image_size]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )


def image_processor(cfg: TinyConfig):
    if cfg.family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        px = cfg.image_size * cfg.image_size
        return Qwen2VLImageProcessorPil(min_pixels=px, max_pixels=px, patch_size=cfg.patch_size, merge_size=2, temporal_patch_size=2)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    s = cfg.image_size
    return LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, image_grid_pinpoints=[[s, s]])


def build_tiny_policy(out_dir: str | Path, cfg: TinyConfig | None = None) -> Path:
    """Build the tiny policy and write it with ``save_pretrained`` into ``out_dir`` (atomically)."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from saca.io import atomic_dir, write_json

    cfg = cfg or TinyConfig()
    cfg.validate("policy.init")
    tok = build_tokenizer(cfg.vocab_size)
    image_string = (
        QWEN_VISION_START + QWEN_IMAGE_PAD + QWEN_VISION_END if cfg.family != "llava_onevision" else LLAVA_IMAGE
    )
    tok.chat_template = CHAT_TEMPLATE.replace("{{ IMAGE }}", "{{ '" + image_string + "' }}")
    mcfg = model_config(cfg, tok)
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_config(mcfg)
    im_end = tok.convert_tokens_to_ids(IM_END)
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end], pad_token_id=tok.pad_token_id, bos_token_id=mcfg.text_config.bos_token_id, do_sample=False
    )
    ip = image_processor(cfg)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        ip.save_pretrained(str(tmp))
        write_json(tmp / "saca_tiny.json", asdict(cfg))
    return out_dir


def describe(path: str | Path) -> dict:
    """Parameter counts of a saved policy (for logs)."""
    from saca.policy.model import load_policy

    pol = load_policy(path)
    n = sum(p.numel() for p in pol.model.parameters())
    return {"family": pol.family, "parameters": int(n), "vocab": len(pol.processor.tokenizer), "source": str(path)}

