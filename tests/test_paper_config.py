"""The paper setting (issues 14-15): config/paper.yaml, the habitat scene links, the paper DAG on the SLURM profile."""

from __future__ import annotations

import json

import pytest

from saca import SacaError
from saca.commands.data import link_habitat_scenes


def test_habitat_scenes_are_linked_and_indexed(tmp_path):
    src = tmp_path / "data" / "scene_datasets"
    for scan in ("17DRP5sb8fy", "zsNo4HB9uLZ"):
        (src / "mp3d" / scan).mkdir(parents=True)
        (src / "mp3d" / scan / f"{scan}.glb").write_bytes(b"glTF")
        (src / "mp3d" / scan / f"{scan}.navmesh").write_bytes(b"nav")
    out = tmp_path / "results" / "scenes"
    index = link_habitat_scenes(src, out)
    assert index["scenes"] == ["mp3d/17DRP5sb8fy/17DRP5sb8fy.glb", "mp3d/zsNo4HB9uLZ/zsNo4HB9uLZ.glb"]
    assert json.loads((out / "index.json").read_text()) == index
    # an episode's scene_id resolves against the scenes folder, as the embedded houses do
    assert (out / "mp3d/17DRP5sb8fy/17DRP5sb8fy.glb").read_bytes() == b"glTF"
    assert (out / "mp3d").is_symlink()
    link_habitat_scenes(src, out)  # again: the link is replaced, not nested
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "mp3d"]


def test_habitat_scenes_missing_or_empty_name_the_folder(tmp_path):
    with pytest.raises(SacaError, match=r"scenes.dir: '.*nowhere' is not a directory"):
        link_habitat_scenes(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty" / "mp3d").mkdir(parents=True)
    with pytest.raises(SacaError, match=r"scenes.dir: no scene files .* under '.*empty'"):
        link_habitat_scenes(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
