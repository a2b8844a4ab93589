"""How the tests run the workflow through the local SLURM cluster (tools/local_slurm.py): the user's profile command
on the smoke world, and what its output says. Shared by conftest.py (the copied checkout's smoke run) and
tests/test_slurm.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from local_slurm import GPU_TYPE, PARTITION  # noqa: E402

# the smoke world's rules that ask for GPUs here (gpu: 1, so one process: the outputs stay the local run's); a job's
# threads stay the rule's (the jobstep runs with --cores all), so its CPUs here change no output
GPU_OVERLAY = {"resources": {
    "gpu_model": GPU_TYPE,
    "sft": {"gpu": 1, "cpus_per_gpu": 1, "mem_mb": 2000, "runtime": 30},
    "rft": {"gpu": 1, "cpus_per_gpu": 1, "mem_mb": 2000, "runtime": 30},
    "evaluate": {"gpu": 1, "cpus_per_gpu": 1, "mem_mb": 2000, "runtime": 30},
    "audit": {"gpu": 0, "cpus_per_task": 1, "mem_mb": 2000, "runtime": 30},
    # one CPU per rendering job (VLN-Ego, previews, reference-agent evaluations): two jobs at once on the 2 CPUs
    "render": {"gpu": 0, "cpus_per_task": 1, "mem_mb": 2000, "runtime": 30}}}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def profile_cmd(results: Path, logdir: Path, *targets: str, configfiles=()) -> list[str]:
    """`snakemake --profile slurm TARGETS` on the mini world's smoke config (docs/slurm.md), on the local cluster:
    plus an account and partition on the command line (the profile keeps its placeholders), ``--sdm env-modules``
    (no conda here), the jobs' logs kept (to count them), status checks every 2 s from the first second (the
    default 10 s leaves the 2 CPUs idle between the smoke world's short jobs), and ``--nolock`` (the tests share
    the repository's .snakemake)."""
    return [sys.executable, "-m", "snakemake", "--profile", "slurm", *targets,
            "--configfile", "config/config.yaml", "config/smoke.yaml", *map(str, configfiles),
            "--default-resources", "slurm_account=saca", f"slurm_partition={PARTITION}", "cpus_per_task=1",
            "--sdm", "env-modules", "--slurm-init-seconds-before-status-checks", "1",
            "--seconds-between-status-checks", "2",
            "--slurm-keep-successful-logs", "--slurm-logdir", str(logdir), "--nolock", "--config", f"results={results}"]


def profile_env(cluster, checkout: Path = REPO) -> dict:
    return {**cluster.env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout / "src")}


def run_profile(cluster, cmd, timeout=3600, checkout: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=checkout, env=profile_env(cluster, checkout), capture_output=True, text=True,
                          timeout=timeout)


def submissions(output: str) -> list[tuple[int, int, str]]:
    """(Snakemake job id, SLURM job id, SLURM log) of every submission the executor reported."""
    return [(int(a), int(b), c) for a, b, c in SUBMITTED.findall(output)]


def overlay(tmp_path: Path, name: str, cfg: dict) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p
