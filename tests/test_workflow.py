"""The workflow itself: the smoke config runs every rule end to end, and config edits rerun only what they touch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd=REPO):
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _make_recipe(target: str) -> str:
    """The snakemake command line ``make <target>`` runs, exactly as the Makefile writes it."""
    r = subprocess.run(["make", "-n", "-o", ".installed", target, f"PYTHON={sys.executable}"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if " -m snakemake" in line]
    assert len(lines) == 1, r.stdout
    return lines[0]


@pytest.mark.parametrize("target", ["smoke", "workflow", "lab"])
def test_readme_make_targets_parse_as_written(target):
    # the README's quick start runs `make smoke` / `make workflow`; CI runs them as written. Run the
    # Makefile's command line unchanged, as a dry run (options appended after it change nothing before)
    assert f"make {target}" in (REPO / "README.md").read_text()
    cmd = _make_recipe(target)
    r = subprocess.run(f"{cmd} --dry-run --nolock --quiet rules", shell=True, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, (cmd, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "FileNotFoundError" not in r.stderr
    assert re.search(r"\bsft\b", r.stdout) and re.search(r"\baudit\b", r.stdout), r.stdout[-3000:]


@pytest.mark.parametrize(
    "extra,key,path",
    [
        ("policy: {model: no/such/checkpoint}", "policy.model", "no/such/checkpoint"),
        ("sft: {mixes: {r2r_rxr: [mini_r2r, mini_rxr]}, deepspeed: config/deepspeed/zero9.json}", "sft.deepspeed",
         "config/deepspeed/zero9.json"),
        ("landmarks: {extractor: llm, model_path: models/no-such-lm}", "landmarks.model_path", "models/no-such-lm"),
        ("auditor: {backend: foundation, foundation: {clip_path: models/no-such-clip}}", "auditor.foundation.clip_path",
         "models/no-such-clip"),
    ],
)
def test_a_bad_external_path_fails_at_parse_time_and_keeps_finished_work(tmp_path, extra, key, path):
    # the probe of issue 10: a typo in policy.model made Snakemake delete the trained SFT model
    # (results/sft/{mix}/final/) before the job failed
    out = tmp_path / "results"
    final = out / "sft" / "r2r_rxr" / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"20 minutes of training")
    typo = tmp_path / "typo.yaml"
    typo.write_text(extra + "\n")
    runs = [["-n"], []] if key == "policy.model" else [["-n"]]
    for dry in runs:  # the dry run first: before the fix a real run would first build the whole smoke world
        r = snakemake(str(final), *dry, "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", str(typo),
                      "--config", f"results={out}")
        assert r.returncode != 0, r.stdout[-2000:]
        errors = [line for line in r.stderr.splitlines() if line.startswith("config error: ")]
        assert len(errors) == 1 and key in errors[0] and path in errors[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        assert (final / "model.safetensors").read_bytes() == b"20 minutes of training"


def test_a_valid_policy_checkpoint_passes_the_parse_time_check(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    from saca.policy.tiny import TinyConfig, build_tiny_policy

    ckpt = build_tiny_policy(tmp_path / "base", TinyConfig(seed=0))
    cfg = tmp_path / "base.yaml"
    cfg.write_text(f"policy: {{model: {ckpt}}}\n")
    r = snakemake("all", "-n", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", str(cfg),
                  "--config", f"results={tmp_path / 'results'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "policy_init" not in r.stdout  # the embedded tiny policy is not built when policy.model is a checkpoint


def test_an_unknown_rft_variant_lists_the_defined_ones(tmp_path):
    out = tmp_path / "results"
    r = snakemake("-n", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", "--config", f"results={out}",
                  "--", str(out / "rft" / "gpro" / "s0" / "final"))
    assert r.returncode != 0
    assert re.search(r"unknown variant 'gpro'; defined variants: .*\bgrpo, no_align, .*saca, ss, ss_afr, vlnr1",
                     r.stdout + r.stderr)


def test_each_rft_run_is_trained_once_and_evaluated_on_every_dataset(tmp_path):
    out = tmp_path / "results"
    r = snakemake("all", "-n", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", "--config", f"results={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _planned_jobs(r.stdout)
    # rft.runs (grpo, saca, vlnr1) and the rows of the reports `all` renders (Table 2: + ss, ss_afr), once each
    assert sorted(w["variant"] for rule, w in jobs if rule == "rft") == ["grpo", "saca", "ss", "ss_afr", "vlnr1"]
    evals = {(w["run"], w["dataset"]) for rule, w in jobs if rule == "evaluate"}
    assert {(f"rft-{v}-s0", d) for v in ("grpo", "ss", "ss_afr", "saca", "vlnr1") for d in ("mini_r2r", "mini_rxr")} <= evals
    assert {w["name"] for rule, w in jobs if rule == "report"} == {"table2", "fig5", "appendix_a", "training"}


def test_every_rft_run_is_trained_and_evaluated_once_per_seed(tmp_path):
    out = tmp_path / "results"
    seeds = _edited(tmp_path, lambda c: c.update(seeds=[0, 3]))
    r = snakemake("all", "-n", "-p", "--cores", "1", "--nolock", "--configfile", str(seeds), "--config", f"results={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _planned_jobs(r.stdout)
    assert sorted((w["variant"], w["seed"]) for rule, w in jobs if rule == "rft") == sorted(
        (v, s) for v in ("grpo", "saca", "ss", "ss_afr", "vlnr1") for s in ("0", "3"))
    evals = {w["run"] for rule, w in jobs if rule == "evaluate"}
    assert {"sft", "rft-saca-s0", "rft-saca-s3"} <= evals and "rft-saca" not in evals
    # the training seed and the evaluation seed of run rft-saca-s3 are both 3
    assert re.search(r"saca rft .*--out \S+/rft/saca/s3 .*--params .*\"seed\": 3\b", r.stdout)
    assert re.search(r"saca evaluate .*--run rft-saca-s3 .*--params .*\"seed\": 3\b", r.stdout)
    assert re.search(r"saca evaluate .*--run sft .*--params .*\"seed\": 0\b", r.stdout)
    # the SFT checkpoint is evaluated with every seed too (the tables' SFT row: run sft is seed 0)
    assert {"sft-s3"} <= evals and "sft-s0" not in evals
    assert re.search(r"saca evaluate .*--agent \S+/sft/r2r_rxr/agent.json --run sft-s3 .*--params .*\"seed\": 3\b", r.stdout)
    assert sum(1 for rule, w in jobs if rule == "sft") == 1  # one SFT checkpoint, whatever the seeds
    # ... which needs run "sft" to be evaluation seed 0
    bad = _edited(tmp_path, lambda c: c.update(seeds=[0, 3], evaluation={**c.get("evaluation", {}), "seed": 2}))
    r = snakemake("all", "-n", "--cores", "1", "--nolock", "--configfile", str(bad), "--config", f"results={out}")
    assert r.returncode != 0 and "evaluation.seed is 2" in r.stdout + r.stderr and "set evaluation.seed: 0" in r.stdout + r.stderr


def test_a_further_sft_training_seed_trains_the_mix_again_and_is_evaluated_with_every_seed(tmp_path):
    out = tmp_path / "results"
    cfg = _edited(tmp_path, lambda c: (c.update(seeds=[0, 2]), c.setdefault("sft", {}).update(train_seeds=[5])))
    r = snakemake("all", "-n", "-p", "--cores", "1", "--nolock", "--configfile", str(cfg), "--config", f"results={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _planned_jobs(r.stdout)
    assert sorted(w["mix"] for rule, w in jobs if rule == "sft") == ["r2r_rxr", "r2r_rxr-t5"]
    assert re.search(rf"saca sft .*--out {out}/sft/r2r_rxr-t5 .*--params .*\"seed\": 5\b", r.stdout)
    assert re.search(rf"saca sft .*--out {out}/sft/r2r_rxr --params .*\"seed\": 0\b", r.stdout)
    evals = {w["run"] for rule, w in jobs if rule == "evaluate"}
    assert {"sft", "sft-s2", "sft-t5", "sft-t5-s2"} <= evals
    assert re.search(r"saca evaluate .*--agent \S+/sft/r2r_rxr-t5/agent.json --run sft-t5-s2 .*\"seed\": 2\b", r.stdout)
    # RFT starts from the plain mix only
    assert "r2r_rxr-t5/final" not in "".join(l for l in r.stdout.splitlines() if "saca rft " in l)
    bad = _edited(tmp_path, lambda c: c.setdefault("sft", {}).update(train_seeds=[0]))
    r = snakemake("all", "-n", "--cores", "1", "--nolock", "--configfile", str(bad), "--config", f"results={out}")
    assert r.returncode != 0 and "sft.train_seeds [0]" in r.stdout + r.stderr


def test_vision_pretraining_runs_between_policy_init_and_sft_only_when_switched_on(tmp_path):
    out = tmp_path / "results"
    final = str(out / "sft" / "r2r_rxr" / "final")
    # on in the default config (and in the smoke config, with 64 frames)
    r = snakemake("-n", "-p", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", "--config", f"results={out}",
                  "--", final)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [rule for rule, _ in _planned_jobs(r.stdout)].count("vision_pretrain") == 1
    assert re.search(rf"saca vision-pretrain --init {out}/policy/init --scenes {out}/scenes .*\"frames\": 64", r.stdout)
    assert re.search(rf"saca sft --init {out}/policy/init_vision ", r.stdout)
    off = _edited(tmp_path, lambda c: c["policy"]["vision_pretrain"].update(frames=0))
    r = snakemake("-n", "-p", "--cores", "1", "--nolock", "--configfile", str(off), "--config", f"results={out}", "--", final)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vision_pretrain" not in {rule for rule, _ in _planned_jobs(r.stdout)}
    assert re.search(rf"saca sft --init {out}/policy/init ", r.stdout)


def test_an_ablation_outside_rft_runs_is_built_on_request_with_its_landmarks(tmp_path):
    out = tmp_path / "results"
    target = out / "mini_r2r" / "eval" / "rft-no_con-s0" / "val_unseen" / "metrics.json"
    r = snakemake("-n", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", "--config", f"results={out}",
                  "--", str(target))
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _planned_jobs(r.stdout)
    assert [w["variant"] for rule, w in jobs if rule == "rft"] == ["no_con"]
    assert {(w["dataset"], w["split"]) for rule, w in jobs if rule == "landmarks"} == {
        ("mini_r2r", "train"), ("mini_rxr", "train")}


# smoke_run: tests/conftest.py (one smoke run per session, shared with other test files)


@pytest.mark.slow
def test_smoke_workflow_writes_every_dataset(smoke_run):
    out = smoke_run
    for ds in ("mini_r2r", "mini_rxr"):
        for split in ("train", "val_seen", "val_unseen"):
            assert (out / ds / "episodes" / f"{split}.json.gz").stat().st_size > 0
            assert (out / ds / "episodes" / f"{split}_gt.json.gz").stat().st_size > 0
            m = json.loads((out / ds / "vln_ego" / split / "manifest.json").read_text())
            assert m["samples"] == m["frames"] > 0
        assert (out / ds / "preview.png").read_bytes()[:4] == b"\x89PNG"
        metrics = json.loads((out / ds / "eval" / "oracle" / "val_unseen" / "metrics.json").read_text())
        assert set(metrics) == {"TL", "NE", "OS", "SR", "SPL", "nDTW", "SDTW", "episodes"}
        assert metrics["SR"] == 1.0
    assert (out / "logs").is_dir() and (out / "benchmarks").is_dir()
    # every result directory records what made it
    dirs = [out / "sft" / "r2r_rxr" / "final", out / "rft" / "saca" / "s0" / "final", out / "mini_r2r" / "vln_ego" / "train",
            out / "mini_r2r" / "eval" / "rft-saca-s0" / "val_unseen", out / "mini_rxr" / "audit" / "sft" / "val_unseen"]
    for d in dirs:
        rec = json.loads((d / "provenance.json").read_text())
        assert len(rec["config_sha256"]) == 16 and rec["versions"]["torch"] and "git" in rec, d


def policy_runs() -> set:
    """Evaluation runs of trained policies: SFT and every RFT variant (trained on both datasets)."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {"sft"} | {f"rft-{v}-s{s}" for v in cfg["rft"]["variants"] for s in cfg["seeds"]}


def _planned_jobs(stdout: str) -> list[tuple[str, dict]]:
    jobs, rule = [], None
    for line in stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if m:
            rule = m.group(1)
            jobs.append((rule, {}))
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and jobs:
            jobs[-1][1].update(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return jobs


@pytest.mark.slow
def test_editing_one_dataset_reruns_only_that_dataset(smoke_run, tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg["datasets"]["mini_rxr"]["seed"] = 99
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    r = snakemake("all", "-n", "--cores", "2", "--configfile", str(edited), "--nolock", "--config", f"results={smoke_run}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _planned_jobs(r.stdout)
    assert jobs, r.stdout[-3000:]
    # mini_r2r jobs may rerun only through a policy trained on a mix that includes mini_rxr
    # (sft.mixes); its data and its reference-agent evaluations must not
    mixed = any("mini_rxr" in ds and len(ds) > 1 for ds in yaml.safe_load((REPO / "config" / "config.yaml").read_text())["sft"]["mixes"].values())
    others = [(rule, w) for rule, w in jobs if w.get("dataset", "mini_rxr") != "mini_rxr"]
    for rule, w in others:
        assert mixed and w.get("run") in policy_runs(), (rule, w)
    assert {w.get("dataset") for _, w in jobs if "dataset" in w} >= {"mini_rxr"}
    assert "scenes" not in {rule for rule, _ in jobs}


@pytest.mark.slow
def test_editing_one_splits_episode_count_reruns_only_that_split(smoke_run, tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg["datasets"]["mini_rxr"]["episodes"]["val_unseen"] += 1
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    r = snakemake("all", "-n", "--cores", "2", "--configfile", str(edited), "--nolock", "--config", f"results={smoke_run}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _planned_jobs(r.stdout)
    rules = {rule for rule, _ in jobs}
    assert ("episodes", {"dataset": "mini_rxr", "split": "val_unseen"}) in jobs, jobs
    assert "vln_ego" in rules and "scenes" not in rules
    for rule, w in jobs:
        # train and val_seen data are untouched; the SFT run retrains because its
        # validation loss reads the val_unseen VLN-Ego split
        assert w.get("split", "val_unseen") == "val_unseen", (rule, w)
        if w.get("dataset") == "mini_r2r":
            assert w.get("run") in policy_runs(), (rule, w)


@pytest.mark.slow
def test_nothing_to_do_after_a_complete_run(smoke_run):
    r = snakemake("all", "-n", "--cores", "2", "--configfile", "config/smoke.yaml", "--nolock", "--config", f"results={smoke_run}")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-3000:]


def _edited(tmp_path, edit) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    edit(cfg)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_editing_evaluation_plots_reruns_only_the_plots(smoke_run, tmp_path):
    edited = _edited(tmp_path, lambda c: c.setdefault("evaluation", {}).update(plots=2))
    r = snakemake("all", "-n", "--cores", "2", "--configfile", str(edited), "--nolock", "--config", f"results={smoke_run}")
    assert r.returncode == 0, r.stderr[-3000:]
    rules = {rule for rule, _ in _planned_jobs(r.stdout)} - {"all"}
    assert rules == {"eval_plots"}, rules


def test_an_rft_policy_is_evaluated_with_its_rollout_sampling_unless_told(tmp_path):
    """rule rft_agent writes rft.generation into an RFT policy's agent spec (rft.eval_sampling: rollout), the SFT
    policy keeps policy.agent.generation; a variant with eval_sampling: agent keeps the agent's too."""
    def edit(c):
        c["rft"]["variants"] = {**c["rft"].get("variants", {}), "grpo": {"soft_score": False, "afr": False,
                                                                          "rr": False, "eval_sampling": "agent"}}

    r = snakemake("all", "-n", "-p", "--cores", "1", "--nolock", "--configfile", str(_edited(tmp_path, edit)),
                  "--config", f"results={tmp_path / 'results'}")
    assert r.returncode == 0, r.stderr[-3000:]
    temps = dict(re.findall(r"saca policy-agent --checkpoint \S+/(sft/r2r_rxr|rft/\w+/s0)/final .*\"temperature\": ([0-9.]+)",
                            r.stdout))
    assert temps == {"sft/r2r_rxr": "0.7", "rft/saca/s0": "1.0", "rft/ss/s0": "1.0", "rft/ss_afr/s0": "1.0",
                     "rft/grpo/s0": "0.7", "rft/vlnr1/s0": "1.0"}, temps


@pytest.mark.slow
def test_editing_one_variant_reruns_only_that_variant(smoke_run, tmp_path):
    def edit(c):
        base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["rft"]["variants"]
        c["rft"]["variants"] = {**base, "saca": {"lambda_con": 0.5}}

    r = snakemake("all", "-n", "--cores", "2", "--configfile", str(_edited(tmp_path, edit)), "--nolock",
                  "--config", f"results={smoke_run}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [(rule, w) for rule, w in _planned_jobs(r.stdout) if rule != "all"]
    assert jobs
    for rule, w in jobs:  # the variant's jobs and the reports that show it
        assert (w.get("variant") == "saca" or w.get("run") == "rft-saca-s0" or rule == "report_index"
                or (rule == "report" and w["name"] in ("table2", "fig5", "training"))), (rule, w)
    assert ("report", {"name": "appendix_a"}) not in jobs


@pytest.mark.slow
def test_auditing_one_more_run_reruns_no_existing_audit(smoke_run, tmp_path):
    edited = _edited(tmp_path, lambda c: c.setdefault("auditor", {}).update(runs=["sft", "random", "oracle", "forward"],
                                                                            group_size=3))
    r = snakemake("all", "-n", "--cores", "2", "--configfile", str(edited), "--nolock", "--config", f"results={smoke_run}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [(rule, w) for rule, w in _planned_jobs(r.stdout) if rule != "all"]
    assert jobs and all(w.get("run") == "forward" for _, w in jobs), jobs


@pytest.mark.slow
def test_editing_a_module_reruns_only_the_rules_that_import_it(smoke_run):
    import os

    path = REPO / "src" / "saca" / "train" / "saca.py"
    st, text = path.stat(), path.read_bytes()
    try:  # an edit (Snakemake compares checksums, so touching the file is not one), undone right after
        path.write_bytes(text + b"\n# an edit\n")
        r = snakemake("all", "-n", "--cores", "2", "--configfile", "config/smoke.yaml", "--nolock",
                      "--config", f"results={smoke_run}")
    finally:
        path.write_bytes(text)
        os.utime(path, (st.st_atime, st.st_mtime))
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [(rule, w) for rule, w in _planned_jobs(r.stdout) if rule != "all"]
    # the rft command imports SACA's group construction: every RFT variant retrains, and its evaluations follow;
    # the data, SFT and the reference evaluations do not
    assert {rule for rule, _ in jobs} <= {"rft", "rft_agent", "evaluate", "eval_plots", "audit", "audit_figure",
                                          "report", "report_index"}
    assert any(rule == "rft" for rule, _ in jobs)
    for rule, w in jobs:
        assert (w.get("variant") or w.get("run", "").startswith("rft-") or rule == "report_index"
                or (rule == "report" and w["name"] in ("table2", "fig5", "training"))), (rule, w)


def test_the_slurm_profile_is_found_from_the_root_and_requests_gpus(tmp_path):
    """`snakemake --profile slurm` from the repository root finds profiles/slurm (through ./slurm) and submits the
    heavy rules with their GPUs. A dry run needs no cluster; `--sdm env-modules` replaces the profile's conda
    deployment, as this machine has no conda."""
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text(yaml.safe_dump({"resources": {
        "gpu_model": "a100", "sft": {"gpu": 8, "cpus_per_gpu": 8, "mem_mb": 256000, "runtime": 1440},
        "rft": {"gpu": 4, "cpus_per_gpu": 8, "mem_mb": 256000, "runtime": 2880},
        "evaluate": {"gpu": 1, "cpus_per_gpu": 8, "mem_mb": 64000, "runtime": 240},
        "audit": {"gpu": 1, "cpus_per_gpu": 8, "mem_mb": 64000, "runtime": 240}}}))
    # the mini world in full (the profile's own config/paper.yaml is replaced by the files given here)
    r = snakemake("--profile", "slurm", "-n", "all", "--sdm", "env-modules", "--configfile", "config/config.yaml",
                  "config/smoke.yaml", str(gpus), "--nolock", "--config", f"results={tmp_path / 'results'}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Using profiles slurm" in out
    blocks = {}
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", out):
        m = re.search(r"rule (\w+):", block)
        w = re.search(r"wildcards: ([^\n]*)", block)
        res = re.search(r"resources: ([^\n]*)", block)
        if m and res:
            blocks.setdefault((m.group(1), w.group(1) if w else ""), (res.group(1), block))
    sft_res, sft_block = blocks[("sft", "mix=r2r_rxr")]
    assert "gpu=8" in sft_res and "gpu_model=a100" in sft_res and "cpus_per_gpu=8" in sft_res
    assert "torchrun --standalone --nproc_per_node 8 -m saca sft" in sft_block
    rft_res, rft_block = blocks[("rft", "variant=saca, seed=0")]
    assert "gpu=4" in rft_res and "torchrun --standalone --nproc_per_node 4 -m saca rft" in rft_block
    policy_eval = next(v[0] for k, v in blocks.items() if k[0] == "evaluate" and "run=sft" in k[1])
    reference_eval = next(v[0] for k, v in blocks.items() if k[0] == "evaluate" and "run=random" in k[1])
    assert "gpu=1" in policy_eval and "gpu=0" in reference_eval and "cpus_per_task=2" in reference_eval
    assert "gpu=0" in next(v[0] for k, v in blocks.items() if k[0] == "audit")  # the oracle backend needs none
    # the laptop default asks for no GPU and runs one process
    r = snakemake("-n", "-p", "all", "--cores", "2", "--nolock", "--configfile", "config/smoke.yaml",
                  "--config", f"results={tmp_path / 'laptop'}")
    assert r.returncode == 0 and "torchrun" not in r.stdout and "OMP_NUM_THREADS=1 python -m saca rft" in r.stdout


@pytest.mark.parametrize("extra,message", [
    ("rft: {lamda_con: 0.5}", "unknown config key 'rft.lamda_con' (did you mean 'lambda_con'?)"),
    ("evaluaton: {plots: 2}", "unknown config key 'evaluaton' (did you mean 'evaluation'?)"),
    ("rft: {variants: {my_ablation: {kapa: 0.25}}}", "rft.variants.my_ablation: unknown key 'kapa' (did you mean 'kappa'?)"),
    ("rft: {variants: {my_ablation: {kappa: 1.5}}}", "rft.variants.my_ablation: rft.kappa: 1.5 is greater than the maximum of 1"),
])
def test_a_misspelled_key_or_bad_variant_is_named_at_parse_time(tmp_path, extra, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(extra + "\n")
    r = snakemake("-n", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", str(bad),
                  "--config", f"results={tmp_path / 'results'}")
    assert r.returncode != 0 and f"config error: {message}" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_smoke_rft_takes_real_gradient_steps(smoke_run):
    # issue 25: every smoke RFT update was skipped (all groups collapsed), so the five variants ended with the SFT
    # weights and CI never exercised an RFT gradient step. VLN-R1's offline RFT (vlnr1) now gets mixed groups and
    # steps; the online variants' smoke rollouts all fail (docs/rft.md), so they may still skip
    import hashlib

    def sha(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    sft = sha(smoke_run / "sft" / "r2r_rxr" / "final" / "model.safetensors")
    assert sorted(p.name for p in (smoke_run / "rft").iterdir()) == ["grpo", "saca", "ss", "ss_afr", "vlnr1"]
    run = smoke_run / "rft" / "vlnr1" / "s0"
    train = [r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if r["event"] == "train"]
    stepped = [r for r in train if not r.get("skipped_step")]
    assert stepped and all(r["samples"] > 0 and r["grad_norm"] > 0 for r in stepped), train
    assert any(r["collapsed_share"] < 1 for r in train)  # a group of mixed rewards
    assert sha(run / "final" / "model.safetensors") != sft
    for v in ("grpo", "ss", "ss_afr", "saca"):  # a skipped update leaves the weights as they were
        log = [r for r in map(json.loads, (smoke_run / "rft" / v / "s0" / "train_log.jsonl").read_text().splitlines())
               if r["event"] == "train"]
        if all(r.get("skipped_step") for r in log):
            assert sha(smoke_run / "rft" / v / "s0" / "final" / "model.safetensors") == sft, v


def test_lab_dag_builds_with_its_budgets(tmp_path):
    """``make lab`` (issue 29): Table 2's four variants x 3 seeds, DAgger rounds after SFT, 500 val_unseen episodes."""
    r = snakemake("all", "-n", "-p", "--cores", "2", "--nolock", "--configfile", "config/lab.yaml",
                  "--config", f"results={tmp_path / 'results'}")
    assert r.returncode == 0, r.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout.split("Job stats:")[1].split("Reasons")[0], re.M))
    lab = yaml.safe_load((REPO / "config" / "lab.yaml").read_text())
    rounds = lab["sft"]["dagger"]["rounds"]
    assert int(counts["rft"]) == len(lab["rft"]["runs"]) * len(lab["seeds"]) == 12
    # SFT and its DAgger rounds once per training seed (sft.seed 0 and sft.train_seeds [1])
    assert lab["sft"]["train_seeds"] == [1]
    assert int(counts["sft"]) == 2 and int(counts["sft_dagger"]) == 2 * rounds
    assert int(counts["dagger_rollouts"]) == 2 * 2 * rounds  # each training seed, each round, each dataset of the mix
    # policies evaluated on val_unseen: both SFT training seeds with each of the 3 evaluation seeds, every RFT run,
    # the 3 reference agents, per dataset
    assert int(counts["evaluate"]) == 2 * (2 * 3 + 12 + 3)
    for variant in ("grpo", "ss", "ss_afr", "saca"):
        for seed in (0, 1, 2):
            assert f"rft/{variant}/s{seed}/final" in r.stdout
    assert '"val_unseen": 500' in r.stdout and '"max_unseen_steps": 8' in r.stdout
    # the last DAgger round is the mix's SFT policy; plain SFT is round 0
    assert f"sft/r2r_rxr/dagger/r{rounds - 1}/final" in r.stdout and "sft/r2r_rxr/dagger/r0/final" in r.stdout
    assert '"lookahead": 1' in r.stdout and '"max_steps": 100' in r.stdout
    # 24 train houses, the held-out ones pinned at house_008-010 (chosen on a development split, 2026-12-08)
    assert '"train": 24, "val_unseen": 3, "val_unseen_start": 8' in r.stdout
    assert "scenes/house_026.json" in r.stdout and "scenes/house_027.json" not in r.stdout


def test_a_policy_trained_elsewhere_is_evaluated_on_this_configs_episodes(tmp_path):
    """evaluation.agents (issue 29: the lab's house-count policies on a development split): run {name} evaluates
    the agent spec at its path, {dataset} filled per dataset, on every dataset and split; names of the workflow's
    own runs are refused at parse time, naming the key."""
    out = tmp_path / "results"
    for ds in ("mini_r2r", "mini_rxr"):
        (tmp_path / "elsewhere" / ds).mkdir(parents=True)
        (tmp_path / "elsewhere" / ds / "agent.json").write_text('{"checkpoint": "final", "options": {}}')
    cfg = tmp_path / "agents.yaml"
    cfg.write_text(yaml.safe_dump({"evaluation": {"agents": {"h24": f"{tmp_path}/elsewhere/{{dataset}}/agent.json"}}}))
    r = snakemake("all", "-n", "-p", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", str(cfg),
                  "--config", f"results={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    evals = sorted((w["run"], w["dataset"]) for rule, w in _planned_jobs(r.stdout) if rule == "evaluate" and w["run"] == "h24")
    assert evals == [("h24", "mini_r2r"), ("h24", "mini_rxr")]
    for ds in ("mini_r2r", "mini_rxr"):
        assert re.search(rf"saca evaluate --dataset-dir {out}/{ds} --split val_unseen --agent {tmp_path}/elsewhere/{ds}/"
                         r"agent.json --run h24 ", r.stdout), ds
    # the other evaluations' params do not mention the agents: adding one reruns nothing else
    assert '"agents"' not in r.stdout
    for name in ("sft", "sft-t1", "rft-grpo-s0", "oracle"):
        cfg.write_text(yaml.safe_dump({"evaluation": {"agents": {name: f"{tmp_path}/elsewhere/mini_r2r/agent.json"}}}))
        r = snakemake("-n", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml", str(cfg),
                      "--config", f"results={out}")
        assert r.returncode != 0 and f"config error: evaluation.agents: '{name}': a run name of its own" in r.stderr, name
