# Shared helpers for the rules. Each rules file adds its final outputs to TARGETS.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from saca import SacaError
from saca.report import run_name
from saca.external import check_config_paths, download_targets

RESULTS = config.get("results", "results")
# a results folder inside the working directory is named relative to it, however it was given: the params, the
# commands and the outputs that name a path (agent specs, reports) are then the same in every copy of the checkout
# (and with `results=$PWD/results`), so a moved or copied checkout neither reruns nor writes other bytes
if os.path.isabs(RESULTS) and Path(os.path.normpath(RESULTS)).is_relative_to(Path.cwd()):
    RESULTS = os.path.relpath(os.path.normpath(RESULTS), Path.cwd())
# the seeds of every RFT run (training and evaluation): results/rft/{variant}/s{seed}, run rft-{variant}-s{seed}
SEEDS = list(config.get("seeds", [0]))

# External checkpoints and model directories (policy.model, sft.deepspeed, landmarks.model_path, the foundation
# models of the auditor) are checked now, when the workflow is parsed: a typo must fail before any job starts, not
# after Snakemake has deleted the outputs (a trained model) of the job that reads the path.
try:
    check_config_paths(config, produced_under=RESULTS)
except SacaError as err:
    sys.exit(f"config error: {err}")

DATASETS = list(config["datasets"])
SPLITS = ["train", "val_seen", "val_unseen"]
SACA = "python -m saca"
# The package code a job can execute is one of its inputs: editing a module reruns the jobs whose commands
# import it, and only those; the lists come from the import graph (saca.codegraph), not from this file.
from functools import lru_cache

from saca.codegraph import cached_command_sources


@lru_cache(maxsize=None)
def code(command):
    """The source files ``python -m saca {command}`` can execute (saca.codegraph.command_sources; kept in
    .snakemake/saca-codegraph.json under a digest of the package's files)."""
    try:
        return cached_command_sources(command, Path(".snakemake") / "saca-codegraph.json")
    except SacaError as err:
        sys.exit(f"workflow error: {err}")


TARGETS = []


onstart:
    # SLURM: the profile's placeholder account / partition fail every sbatch one by one; refuse them now, before
    # the first job is submitted (dry runs never get here: `snakemake --profile slurm -n all` needs no cluster)
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        from saca.cluster import check_slurm_placeholders

        try:
            check_slurm_placeholders(
                (job.rule.name, job.resources) for job in workflow.dag.needrun_jobs() if not job.is_local
            )
        except SacaError as err:
            sys.exit(f"profile error: {err}")


# --- cluster resources (config `resources`; profiles/slurm maps gpu + gpu_model to --gpus) ---
RESOURCES = config.get("resources", {})


def rule_resources(kind, gpu=True):
    """The ``resources:`` of a heavy job, from ``resources.{kind}``: ``gpu`` (with ``gpu_model``; the SLURM
    executor turns them into ``--gpus``), ``cpus_per_gpu`` for a GPU job or ``cpus_per_task`` for a CPU job (the
    other is 0: the executor takes the first that is set), ``mem_mb``, ``runtime`` (minutes). ``gpu=False`` (a
    reference-agent evaluation, an oracle audit) asks for CPUs only. Resources never trigger a rerun."""
    r = RESOURCES.get(kind, {})
    n = int(r.get("gpu", 0)) if gpu else 0
    return {
        "gpu": n,
        "gpu_model": RESOURCES.get("gpu_model", "") if n else "",
        "cpus_per_gpu": int(r.get("cpus_per_gpu", 8)) if n else 0,
        "cpus_per_task": 0 if n else int(r.get("cpus_per_task", 2)),
        "mem_mb": int(r.get("mem_mb", 8000)),
        "runtime": int(r.get("runtime", 60)),
    }


def dataset_backend(dataset):
    return config["datasets"][dataset]["backend"]


def render_resources(gpu_if=lambda w: False):
    """Per-job resources of the jobs that drive a simulator. A habitat dataset renders on a GPU (EGL), from
    ``resources.render``; ``gpu_if(wildcards)`` says when the job needs one anyway (a policy evaluation)."""
    keys = rule_resources("render")
    return {
        k: (
            lambda w, _k=k: (
                rule_resources("evaluate")[_k]
                if gpu_if(w)
                else rule_resources("render", gpu=dataset_backend(w.dataset) == "habitat")[_k]
            )
        )
        for k in keys
    }


def launcher(kind):
    """``python`` for one process, ``torchrun`` with one process per GPU when a job has several."""
    n = int(RESOURCES.get(kind, {}).get("gpu", 0))
    return f"torchrun --standalone --nproc_per_node {n}" if n > 1 else "python"


def all_targets():
    return TARGETS


def as_json(obj):
    """A config section as one shell-quoted JSON word (a dict interpolated into shell: is not JSON)."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def dataset_cfg(wildcards, split=None):
    """The config entry of a dataset as the rules of one split see it.

    ``episodes`` keeps only the count of that split (each split is generated from its own
    seed), so editing the count of one split reruns the jobs of that split only.
    """
    cfg = dict(config["datasets"][wildcards.dataset])
    split = split or wildcards.split
    cfg["episodes"] = {k: v for k, v in cfg.get("episodes", {}).items() if k == split}
    return cfg


def scene_ids():
    """The embedded houses the scenes job generates; habitat scenes are downloaded, so there are none."""
    from saca.sim.embedded.world import SceneGenConfig

    sc = config["scenes"]
    if sc["backend"] == "habitat":
        return []
    return sorted(sid for ids in SceneGenConfig(**sc).scene_ids().values() for sid in ids)


# --- evaluation runs (RUN_AGENTS, REFERENCE_AGENTS and EVAL_DIR are defined in evaluate.smk) ---


def run_agent(wildcards):
    if wildcards.run not in RUN_AGENTS:
        known = ", ".join(RUN_AGENTS)
        raise ValueError(f"evaluation run {wildcards.run!r} has no agent; known runs: {known} (see RUN_AGENTS)")
    spec = RUN_AGENTS[wildcards.run]
    return str(spec(wildcards)) if callable(spec) else spec


def run_checkpoint(wildcards):
    spec = run_agent(wildcards)
    return [] if spec in REFERENCE_AGENTS else [spec]


def eval_inputs(wildcards):
    return {
        "episodes": f"{RESULTS}/{wildcards.dataset}/episodes/{wildcards.split}.json.gz",
        "gt": f"{RESULTS}/{wildcards.dataset}/episodes/{wildcards.split}_gt.json.gz",
        "scenes": f"{RESULTS}/scenes/index.json",
        "checkpoint": run_checkpoint(wildcards),
        "src": code("evaluate"),
    }


def eval_targets(run, with_plots=True):
    """The metrics.json (and plots) of one run, for every dataset and configured split."""
    out = []
    for dataset in DATASETS:
        for split in EVAL["splits"]:
            d = EVAL_DIR.format(dataset=dataset, run=run, split=split)
            out.append(f"{d}/metrics.json")
            if with_plots and EVAL["plots"] > 0:
                out.append(f"{d}/plots")
    return out


def eval_job(wildcards):
    """What an evaluation job reads of the evaluation section: an RFT run, and the SFT policy's seeded runs
    ``sft-s{seed}``, evaluate with their own seed."""
    m = re.fullmatch(r"(?:rft-.+|sft(?:-t\d+)?)-s(\d+)", wildcards.run)
    return {**EVAL_JOB, "seed": int(m.group(1))} if m else EVAL_JOB


def eval_dir(wildcards):
    return EVAL_DIR.format(dataset=wildcards.dataset, run=wildcards.run, split=wildcards.split)


# --- policy and SFT (POLICY, SFT and POLICY_INIT are defined in policy.smk) ---


def vision_pretrained():
    """True when the embedded tiny model's vision tower is pretrained first (policy.vision_pretrain.frames > 0)."""
    return POLICY["model"] == "embedded" and POLICY.get("vision_pretrain", {}).get("frames", 0) > 0


def policy_base():
    """The checkpoint SFT starts from: the embedded tiny model (after vision pretraining, when on), or a local
    path / hub id from policy.model."""
    if POLICY["model"] != "embedded":
        return POLICY["model"]
    return POLICY_VISION if vision_pretrained() else POLICY_INIT


def split_mix(name):
    """``r2r_rxr-t1`` -> ``("r2r_rxr", 1)``: mix r2r_rxr trained again with SFT seed 1 (``sft.train_seeds``);
    a plain mix name -> ``(name, None)``."""
    m = re.fullmatch(r"(.+)-t(\d+)", name)
    if m and m.group(1) in SFT["mixes"]:
        return m.group(1), int(m.group(2))
    return name, None


def seeded_mix(mix, seed):
    """The mix name of ``mix`` trained with further SFT seed ``seed`` (0: the plain mix); :func:`split_mix` inverts it."""
    return mix if seed == 0 else f"{mix}-t{seed}"


def mix_pattern():
    """The ``{mix}`` wildcard: a mix of sft.mixes, optionally with a training seed (``-t{seed}``)."""
    return "(?:" + "|".join(re.escape(m) for m in SFT["mixes"]) + r")(?:-t[0-9]+)?"


def with_train_seed(params, mix, key="seed"):
    """A job's settings for a mix name: a training-seed copy (``{mix}-t{seed}``) runs with ``key`` = that seed."""
    _, seed = split_mix(mix)
    return params if seed is None else {**params, key: seed}


def sft_mix(name):
    name, _ = split_mix(name)
    if name not in SFT["mixes"]:
        known = ", ".join(SFT["mixes"])
        raise ValueError(f"unknown SFT mix {name!r}; sft.mixes defines {known}")
    unknown = [d for d in SFT["mixes"][name] if d not in DATASETS]
    if unknown:
        raise ValueError(f"sft.mixes.{name}: datasets {unknown} are not in the datasets section")
    return SFT["mixes"][name]


def eval_mix(dataset):
    mix = SFT["eval_mix"].get(dataset, dataset)
    if mix not in SFT["mixes"]:
        raise ValueError(f"sft.eval_mix: no SFT mix for dataset {dataset!r} (set sft.eval_mix.{dataset})")
    return mix


def sft_inputs(wildcards):
    mix = sft_mix(wildcards.mix)
    inputs = {
        "train": [f"{RESULTS}/{d}/vln_ego/train" for d in mix],
        "val": [f"{RESULTS}/{d}/vln_ego/{s}" for d in mix for s in SFT["val_splits"]],
        "src": code("sft"),  # not the RL code: editing saca.train.rft does not retrain SFT
    }
    if POLICY["model"] == "embedded":
        inputs["init"] = policy_base()
    elif Path(os.path.abspath(POLICY["model"])).is_relative_to(os.path.abspath(RESULTS)):
        inputs["init"] = POLICY["model"]  # a checkpoint this workflow makes: an input (checked paths are not)
    else:
        inputs["model"] = downloaded(POLICY["model"])  # a download rule's model folder (its manifest), if one
    return inputs


def sft_val_args(wildcards):
    """``NAME=DIR`` per validation split: a list, so that ``{params.val:q}`` quotes each word."""
    return [f"{d}/{s}={RESULTS}/{d}/vln_ego/{s}" for d in sft_mix(wildcards.mix) for s in SFT["val_splits"]]


# --- DAgger (DAGGER_ROUNDS is defined in policy.smk, the rules in dagger.smk) ---


def dagger_stage_dir(mix, r):
    """The policy of round r (0: plain SFT); the last round's is the mix's final SFT policy."""
    if r == DAGGER_ROUNDS:
        return f"{RESULTS}/sft/{mix}/final"
    return f"{RESULTS}/sft/{mix}/dagger/r{r}/final"


def dagger_round(wildcards):
    """The DAgger round a ``sft_dagger`` output is (``final``: the last one)."""
    if wildcards.stage == "final":
        return DAGGER_ROUNDS
    return int(re.fullmatch(r"dagger.r(\d+).final", wildcards.stage).group(1))


def sft_dagger_inputs(wildcards):
    r = dagger_round(wildcards)
    mix = sft_mix(wildcards.mix)
    return {
        "init": dagger_stage_dir(wildcards.mix, r - 1),
        "train": [f"{RESULTS}/{d}/vln_ego/train" for d in mix]
        + [f"{RESULTS}/{d}/dagger/{wildcards.mix}/r{k}" for k in range(1, r + 1) for d in mix],
        "val": [f"{RESULTS}/{d}/vln_ego/{s}" for d in mix for s in SFT["val_splits"]],
        "src": code("sft"),
    }


# --- RFT (RFT, RFT_VARIANTS and RFT_DATASETS are defined in rft.smk) ---


def rft_variant(wildcards):
    """The resolved settings of one variant and seed; an unknown name fails listing the defined ones."""
    try:
        v = resolve_variant(RFT, wildcards.variant, config["auditor"])
    except SacaError as err:
        raise ValueError(str(err)) from None
    return {**v, "seed": int(wildcards.seed)}


def rft_inputs(wildcards):
    v = rft_variant(wildcards)
    mix, eval_split = RFT["sft_mix"], v.get("eval_split", "val_seen")
    inputs = {
        "init": f"{RESULTS}/sft/{mix}/final",
        "scenes": f"{RESULTS}/scenes/index.json",
        "val": [f"{RESULTS}/{d}/episodes/{eval_split}.json.gz" for d in RFT_DATASETS],
        "src": code("rft"),
    }
    if v.get("mode", "online") == "online":
        inputs["train"] = [f"{RESULTS}/{d}/episodes/train.json.gz" for d in RFT_DATASETS]
    if "auditor" in v:  # the SACA switches audit the rollouts against the output of the landmarks rule
        inputs["landmarks"] = [f"{RESULTS}/{d}/landmarks/train.jsonl" for d in RFT_DATASETS]
        if v["auditor"].get("backend") == "foundation":  # ... with the downloaded foundation models
            f = v["auditor"].get("foundation", {})
            inputs["models"] = downloaded(*(f.get(k) for k in ("clip_path", "gdino_path", "sam3_path", "sam_path")))
    else:
        inputs["vln_ego"] = [f"{RESULTS}/{d}/vln_ego/train" for d in RFT_DATASETS]
    return inputs


# --- reports (PAPER, BENCHMARKS, FIG5, REPORT_NAMES are defined in report.smk) ---


def table_rows(table):
    """The variants of the rows of a table that this config defines (the others: numbers of the paper only)."""
    return [v for v in table_variants(PAPER, table) if v == "sft" or v in RFT_VARIANTS]


def report_inputs(wildcards):
    name = wildcards.name
    notebook = "table" if name in TABLES else name
    inputs = {
        "notebook": f"workflow/notebooks/{notebook}.ipynb",
        "paper": PAPER_CSV,
        "code": code("report"),
    }
    if name in TABLES:
        inputs["metrics"] = list(
            dict.fromkeys(  # the SFT row: run "sft" (seed 0) and "sft-s{seed}"
                f"{RESULTS}/{d}/eval/{run_name(v, s)}/val_unseen/metrics.json"
                for v in table_rows(name)
                for s in SEEDS
                for d in BENCHMARKS.values()
            )
        )
        if table_baseline(name):  # the paired comparison reads the per-episode results of every RFT row
            inputs["episodes"] = [
                f"{RESULTS}/{d}/eval/{run_name(v, s)}/val_unseen/episodes.jsonl"
                for v in table_rows(name)
                if v != "sft"
                for s in SEEDS
                for d in BENCHMARKS.values()
            ]
    elif name == "fig5":
        inputs["runs"] = [f"{RESULTS}/rft/{v}/s{s}/final" for v in FIG5 for s in SEEDS]
    elif name == "appendix_a":
        inputs["audits"] = [f"{RESULTS}/{d}/audit/sft/val_unseen/summary.json" for d in DATASETS]
        inputs["figures"] = [f"{RESULTS}/{d}/audit/sft/val_unseen/figure.png" for d in DATASETS]
    elif name == "training":
        inputs["sft"] = f"{RESULTS}/sft/{RFT['sft_mix']}/final"
        inputs["runs"] = [f"{RESULTS}/rft/{v}/s{s}/final" for v in training_variants() for s in SEEDS]
    return inputs


def training_variants():
    """The RFT runs the training report draws: Fig. 5's, then the workflow's other runs."""
    return list(dict.fromkeys([*FIG5, *RFT["runs"]]))


def table_baseline(name):
    """The variant a table's other RFT rows are compared with, pairwise (plain GRPO, where the table builds it)."""
    return "grpo" if "grpo" in table_rows(name) else None


def report_params(wildcards):
    name = wildcards.name
    if name in TABLES:
        return {
            "table": name,
            "results": RESULTS,
            "paper_csv": PAPER_CSV,
            "benchmarks": BENCHMARKS,
            "split": "val_unseen",
            "built": table_rows(name),
            "seeds": SEEDS,
            "title": REPORT_NAMES[name],
            "baseline": table_baseline(name),
            "paper_label": (
                "paper, for reference" if config["datasets"][DATASETS[0]]["backend"] == "embedded" else "paper"
            ),
        }
    if name == "fig5":
        return {"results": RESULTS, "variants": FIG5, "seeds": SEEDS}
    if name == "training":
        return {"results": RESULTS, "mixes": [RFT["sft_mix"]], "variants": training_variants(), "seeds": SEEDS}
    return {
        "results": RESULTS,
        "datasets": DATASETS,
        "run": "sft",
        "split": "val_unseen",
        "figures": [f"{RESULTS}/{d}/audit/sft/val_unseen/figure.png" for d in DATASETS],
    }


# --- data and downloads (rules in data.smk and download.smk) ---


def one_of(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


def episode_source(wildcards):
    return config["datasets"][wildcards.dataset]["source"]


DOWNLOADS = config.get("downloads", {})
DL_DATA = DOWNLOADS.get("data_dir", "data")
DL_MODELS = DOWNLOADS.get("models_dir", "models")
DL_MP3D = DOWNLOADS.get("mp3d", {})
DL_EPISODES = DOWNLOADS.get("episodes", {})
DL_MODEL_SPECS = DOWNLOADS.get("models", {})
DL_MANIFEST = "MANIFEST.sha256"
MP3D_DIR = f"{DL_DATA}/scene_datasets/mp3d"


def _dl_opt(flag, value):
    """A command-line option from a config value: nothing when empty/false, the bare flag when true."""
    if value is None or value is False or value == "" or value == []:
        return ""
    if value is True:
        return flag
    if isinstance(value, (list, tuple)):
        return " ".join([flag, *(shlex.quote(str(v)) for v in value)])
    return f"{flag} {shlex.quote(str(value))}"


def _dl_entry(section, name):
    entries = DOWNLOADS.get(section, {})
    if name not in entries:
        raise ValueError(f"downloads.{section}: no entry {name!r}; defined: {', '.join(entries) or 'none'}")
    return entries[name]


def downloaded(*paths):
    """The manifests of the downloads among ``paths`` (a model directory, the MP3D scene directory, an episode
    directory): inputs of the jobs that read them, so that they run after the download. Other paths: nothing."""
    targets = {os.path.normpath(d): d for d in download_targets(config)}
    out = []
    for p in paths:
        d = targets.get(os.path.normpath(str(p))) if p else None
        if d is not None:
            out.append(f"{d}/{DL_MANIFEST}")
    return out
