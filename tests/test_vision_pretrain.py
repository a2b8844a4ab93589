"""Vision-tower pretraining of the embedded tiny policy on rendered train-house frames (saca.policy.vision_pretrain)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from saca import SacaError  # noqa: E402
from saca.policy.tiny import TinyConfig, build_tiny_policy  # noqa: E402
from saca.policy.vision_pretrain import (  # noqa: E402
    VisionPretrainConfig,
    cell_targets,
    pretrain_vision,
    probe_vision,
    render_frames,
)
from saca.sim.base import SimConfig  # noqa: E402

SIM = SimConfig(width=64, height=64, depth=False, instance=False)


def test_cell_targets_name_the_largest_landmark_of_each_cell_and_whether_it_fills_it():
    # a 4 x 8 mask cut into 2 x 2 cells of 2 x 4 = 8 pixels each; instance 7 is an unlabelled object
    inst = np.array([
        [0, 0, 0, 0, 1, -1, -1, -1],
        [0, 0, 0, 1, 1, 1, -1, -1],
        [-1, -1, -1, -1, 7, 7, 7, 7],
        [-1, -1, -1, 2, 7, 7, 7, 7],
    ])
    labels = {0: "duck", 1: "table", 2: "duck", 7: "not a landmark"}
    names = ["table", "duck"]
    out = cell_targets(inst, labels, names, (2, 2), min_fraction=0.1, large_fraction=0.5)
    assert out.dtype == np.int64 and out.shape == (4, 2)
    # top-left: duck 7/8 > 0.5 (fills); top-right: table 3/8 > 0.1 but not > 0.5; bottom-left: duck 1/8 = 0.125
    # (present, not filling); bottom-right: only the unlabelled object -> none (index 2)
    assert out.tolist() == [[1, 1], [0, 0], [1, 0], [2, 0]]
    # below min_fraction a landmark is not there
    assert cell_targets(inst, labels, names, (2, 2), 0.2, 0.5)[2].tolist() == [2, 0]
    # one cell: the whole frame's largest landmark (duck 8 of 32 pixels against table 4)
    assert cell_targets(inst, labels, names, (1, 1), 0.1, 0.5).tolist() == [[1, 0]]


def test_frames_come_from_the_train_houses_and_their_targets_match_the_renderer(mini_world):
    cfg = VisionPretrainConfig(frames=12, toward_landmark=1.0, seed=3)
    names = ["table", "duck", "teal stool", "green plant", "red cabinet", "blue pillar", "wooden shelf", "teddy bear",
             "grey washing machine", "green sofa", "white fridge", "purple armchair", "orange barrel", "black piano",
             "yellow lamp", "pink bed"]
    houses = mini_world["index"]["train"]
    rgb, cells, free = render_frames(mini_world["scenes"], houses, SIM, cfg, names, (2, 2))
    assert rgb.shape == (12, 64, 64, 3) and rgb.dtype == np.uint8
    assert cells.shape == (12, 4, 2) and free.shape == (12, 4)
    # facing a landmark, most frames show one
    assert (cells[:, :, 0] < len(names)).any(axis=1).mean() >= 0.5
    # free space is monotone: a longer straight walk is free only if the shorter ones are
    assert np.all(np.diff(free, axis=1) <= 0)
    # the same seed renders the same frames
    again = render_frames(mini_world["scenes"], houses, SIM, cfg, names, (2, 2))
    assert np.array_equal(again[0], rgb) and np.array_equal(again[1], cells) and np.array_equal(again[2], free)
    with pytest.raises(SacaError, match="no train houses"):
        render_frames(mini_world["scenes"], [], SIM, cfg, names, (2, 2))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("vis") / "init", TinyConfig(seed=0))


def test_pretraining_changes_only_the_vision_tower_and_is_deterministic(mini_world, tiny_dir, tmp_path):
    from safetensors.torch import load_file

    from saca.policy.model import load_policy

    cfg = VisionPretrainConfig(frames=48, epochs=2, batch_size=16, learning_rate=3e-3, seed=1)
    summary = pretrain_vision(tiny_dir, mini_world["scenes"], tmp_path / "a", cfg, SIM)
    assert summary["frames"] == 48 and summary["val_frames"] == 5 and summary["steps"] == 2 * (43 // 16)
    assert summary["houses"] == mini_world["index"]["train"]  # never the val_unseen houses
    assert summary["val_after"]["loss"] < summary["val_before"]["loss"]
    assert json.loads((tmp_path / "a" / "vision_pretrain.json").read_text())["steps"] == summary["steps"]
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(tmp_path / "a" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())}
    assert changed and all(".visual." in f".{k}" for k in changed), sorted(changed)[:5]
    assert any("merger" in k for k in changed) and any("patch_embed" in k for k in changed)
    # the result is a policy like any other; the same seed gives the same bytes
    assert load_policy(tmp_path / "a").family == "qwen2_vl"
    # the probe scores any policy's tower with the heads trained beside this one: the random tower scores worse
    trained, untrained = (probe_vision(p, tmp_path / "a", mini_world["scenes"], frames=24, sim_cfg=SIM) for p in (tmp_path / "a", tiny_dir))
    assert trained["loss"] < untrained["loss"] and {"landmark_recall", "free_acc", "cell_majority"} <= set(trained)
    with pytest.raises(SacaError, match="no probe heads"):
        probe_vision(tmp_path / "a", tiny_dir, mini_world["scenes"], frames=4, sim_cfg=SIM)
    pretrain_vision(tiny_dir, mini_world["scenes"], tmp_path / "b", cfg, SIM)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_the_words_head_scores_landmarks_against_the_names_word_embeddings(mini_world, tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from saca.policy.model import load_policy
    from saca.policy.vision_pretrain import name_embeddings

    pol = load_policy(tiny_dir)
    names = ["red cabinet", "duck"]
    emb = name_embeddings(pol, names)
    table = pol.model.get_input_embeddings().weight
    ids = pol.processor.tokenizer(" red cabinet", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 2 and torch.allclose(emb[0], table[ids].mean(0))
    cfg = VisionPretrainConfig(frames=24, epochs=1, batch_size=8, head="words", seed=2)
    summary = pretrain_vision(tiny_dir, mini_world["scenes"], tmp_path / "w", cfg, SIM)
    assert summary["val_after"]["loss"] < summary["val_before"]["loss"]
    heads = load_file(tmp_path / "w" / "vision_heads.safetensors")
    # the name embeddings are fixed: the init's, for the 16 landmark names of the catalogue
    from saca.sim.embedded.catalogue import LANDMARK_NAMES

    assert torch.equal(heads["names"], name_embeddings(pol, list(LANDMARK_NAMES)))
    assert heads["cells.weight"].shape == (2, table.shape[1])  # none and fills only
    probe = probe_vision(tmp_path / "w", tmp_path / "w", mini_world["scenes"], frames=8, sim_cfg=SIM)
    assert 0 <= probe["landmark_recall"] <= 1


def test_bad_settings_and_inputs_are_named(mini_world, tiny_dir, tmp_path):
    with pytest.raises(SacaError, match="frames is 0"):
        pretrain_vision(tiny_dir, mini_world["scenes"], tmp_path / "o", VisionPretrainConfig(frames=0), SIM)
    with pytest.raises(SacaError, match="min_fraction < large_fraction"):
        VisionPretrainConfig(frames=4, min_fraction=0.5, large_fraction=0.3).validate("policy.vision_pretrain")
    with pytest.raises(SacaError, match=r"policy.vision_pretrain.head: 'clip' is not linear or words"):
        VisionPretrainConfig(frames=4, head="clip").validate("policy.vision_pretrain")
    with pytest.raises(SacaError, match=r"policy.vision_pretrain.ahead"):
        VisionPretrainConfig(frames=4, ahead=[]).validate("policy.vision_pretrain")
    with pytest.raises(SacaError, match=r"index.json: scenes index not found"):
        pretrain_vision(tiny_dir, tmp_path, tmp_path / "o", VisionPretrainConfig(frames=4), SIM)
    llava = build_tiny_policy(tmp_path / "llava", TinyConfig(family="llava_onevision"))
    with pytest.raises(SacaError, match="Qwen families, not llava_onevision"):
        pretrain_vision(llava, mini_world["scenes"], tmp_path / "o", VisionPretrainConfig(frames=4), SIM)
    assert not (tmp_path / "o").exists()


def test_the_command_refuses_an_unknown_key_naming_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "saca", "vision-pretrain", "--init", str(tmp_path), "--scenes", str(tmp_path),
                        "--out", str(tmp_path / "o"), "--params", json.dumps({"frame": 10})],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "policy.vision_pretrain.frame" in r.stderr
