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


import dataclasses  # noqa: E402
import importlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())

# the hyper-parameter sections, their dataclasses (whose defaults are the paper's: the one source of defaults), and
# the keys where the paper config departs from a default on purpose, with the reason
HYPER = {
    "sft": ("saca.train.sft", "SftConfig", {
        "bf16": "the dataclass default is CPU-safe fp32; the paper trains in bf16 on GPUs",
        "gradient_checkpointing": "memory on the cluster, not a paper setting",
        "sharding": "FSDP shards on 8 GPUs (docs/memory.md)",
        "max_seq_length": "LLaVA-OneVision's 730 tokens per frame x 16 frames", "save_steps": "checkpoint cadence", "mixes": "workflow",
        "eval_mix": "workflow", "val_splits": "workflow"}),
    "rft": ("saca.train.rft", "RftConfig", {
        "bf16": "as sft", "gradient_checkpointing": "as sft", "auditor": "merged over the top-level auditor section",
        "micro_batch_size": "12,000-token decisions: one per pass fits 48 GB (docs/memory.md)",
        "sharding": "FSDP shards on 8 GPUs (docs/memory.md)",
        "datasets": "workflow", "sft_mix": "workflow", "runs": "workflow", "variants": "workflow"}),
    "auditor": ("saca.auditor.config", "AuditorConfig", {"backend": "the foundation models (the paper's PGSA)",
                                                         "runs": "workflow"}),
    "vln_ego": ("saca.vln_ego.generate", "VlnEgoConfig", {}),
    "landmarks": ("saca.landmarks", "LandmarkConfig", {"extractor": "Qwen3-0.6B, the paper's extractor",
                                                       "batch_size": "GPU batching"}),
}


@pytest.mark.parametrize("section", sorted(HYPER))
def test_the_paper_config_spells_out_the_dataclass_defaults(section):
    module, name, departs = HYPER[section]
    defaults = dataclasses.asdict(getattr(importlib.import_module(module), name)())
    for key, value in PAPER[section].items():
        if key in departs:
            continue
        assert key in defaults, f"{section}.{key}: not a field of {name}"
        assert value == defaults[key], f"paper.yaml {section}.{key} = {value!r}, the dataclass default is {defaults[key]!r}"


def test_the_paper_config_is_valid_and_complete():
    import jsonschema

    from saca.config import load_schema, unknown_keys

    unknown_keys(PAPER)
    jsonschema.validate(PAPER, load_schema())
    assert PAPER["seeds"] == [0]
    for name, ds in PAPER["datasets"].items():
        assert ds["backend"] == "habitat" and ds["source"]["format"] == name and ds["sim"], name
    assert PAPER["datasets"]["rxr_ce"]["sim"]["hfov"] == 79 and PAPER["datasets"]["r2r_ce"]["sim"]["allow_sliding"]
    # every model path the config names is a download of the same config
    models = {f"models/{n}" for n in PAPER["downloads"]["models"]}
    f = PAPER["auditor"]["foundation"]
    assert {PAPER["policy"]["model"], PAPER["landmarks"]["model_path"], f["clip_path"], f["gdino_path"],
            f["sam3_path"]} <= models
    # the rows of Tables 1-5 are all variants
    from saca.report import TABLES, paper_numbers, table_variants

    rows = {v for t in TABLES for v in table_variants(paper_numbers(REPO / PAPER["reports"]["paper_numbers"]), t)}
    # all but Table 1's extra-data row (SACA trained with ScaleVLN's data, which this workflow does not download; the
    # report shows it as "not built")
    assert rows - {"sft", "saca_extra_data"} <= set(PAPER["rft"]["variants"])


def _jobs(stdout: str) -> list[tuple[str, dict, str]]:
    """(rule, wildcards, resources line) of each job a dry run plans."""
    jobs, cur = [], None
    for line in stdout.splitlines():
        s = line.strip()
        m = re.match(r"^(?:local)?rule (\w+):", s)
        if m:
            cur = [m.group(1), {}, ""]
            jobs.append(cur)
        elif cur and s.startswith("wildcards:"):
            cur[1] = dict(kv.split("=", 1) for kv in s[len("wildcards:"):].strip().split(", "))
        elif cur and s.startswith("resources:"):
            cur[2] = s
    return [tuple(j) for j in jobs]


def test_the_slurm_profile_plans_the_whole_paper_dag_with_downloads_and_gpus(tmp_path):
    """`snakemake --profile slurm -n all` from the repository root: config/paper.yaml (the profile's configfile,
    replacing the mini world's), every download, every table's variants on both benchmarks, their GPUs. No cluster,
    no conda (`--sdm env-modules` replaces the profile's conda deployment), no data: a dry run."""
    r = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "all", "--sdm", "env-modules",
                        "--nolock", "--config", f"results={tmp_path / 'results'}"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _jobs(r.stdout)
    rules = [j[0] for j in jobs]
    assert {"download_scenes", "download_episodes", "download_model", "episodes_import", "scenes"} <= set(rules)
    assert sorted(w["name"] for rule, w, _ in jobs if rule == "download_episodes") == [
        "R2R_VLNCE_v1-3_preprocessed", "RxR_VLNCE_v0"]
    assert sorted(w["name"] for rule, w, _ in jobs if rule == "download_model") == [
        "LLaVA-Video-7B-Qwen2-hf", "Qwen3-0.6B", "clip-vit-base-patch32", "grounding-dino-tiny", "sam3"]
    assert {(w["dataset"], w["split"]) for rule, w, _ in jobs if rule == "episodes_import"} == {
        (d, s) for d in ("r2r_ce", "rxr_ce") for s in ("train", "val_seen", "val_unseen")}
    # every variant of Tables 1-5 (and VLN-R1's RFT) is trained once and evaluated on both benchmarks
    variants = set(PAPER["rft"]["variants"])
    assert sorted(w["variant"] for rule, w, _ in jobs if rule == "rft") == sorted(variants)
    evals = {(w["run"], w["dataset"]) for rule, w, _ in jobs if rule in ("evaluate", "evaluate_shard")}
    assert {(f"rft-{v}-s0", d) for v in variants for d in ("r2r_ce", "rxr_ce")} <= evals
    assert {w["name"] for rule, w, _ in jobs if rule == "report"} == set(PAPER["reports"]["build"])
    res = {rule: line for rule, _, line in jobs}
    assert "gpu=8" in res["sft"] and "gpu=8" in res["rft"] and "runtime=2880" in res["sft"]
    assert "gpu=1" in res["landmarks"] and "gpu=1" in res["vln_ego"] and "gpu=1" in res["audit"]
    assert "slurm_account=YOUR_ACCOUNT" in res["sft"]
    # multi-GPU training launches one process per GPU
    assert re.search(r"torchrun --standalone --nproc_per_node 8 -m saca sft --init models/LLaVA-Video-7B-Qwen2-hf",
                     r.stdout)
