"""The cluster path, executed: `snakemake --profile slurm` through a one-node SLURM cluster started on this machine
(tools/local_slurm.py: Debian's slurmctld / slurmd / munge, 2 CPUs, 2 fake GPUs). Nothing is mocked: sbatch, squeue
and scancel are SLURM's own; the jobs run the workflow's commands inside their allocations.

The runs use the user's command form (docs/slurm.md) with the mini world's documented configfile pair, plus what
this machine needs: ``--sdm env-modules`` (no conda here), an account and partition on the command line (the
profile keeps its placeholders), ``--slurm-keep-successful-logs`` (to count the jobs' logs), a 1 s first status
check, and ``--nolock`` (the tests share the repository's .snakemake). The slow tests skip, with apt's reason, only
where SLURM cannot be installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from saca import SacaError
from saca.cluster import PLACEHOLDERS, check_slurm_placeholders

from slurm_runs import (REPO, overlay, profile_cmd, profile_env, run_profile,  # noqa: E402
                        submissions)
from local_slurm import GPU_TYPE, NODE, PARTITION, JobRecorder, LocalSlurm  # noqa: E402


# --- no cluster needed ----------------------------------------------------------------------------------------

def test_placeholder_account_and_partition_are_refused_naming_the_profile_key():
    jobs = [("sft", {"slurm_account": "YOUR_ACCOUNT", "slurm_partition": "gpu"}),
            ("rft", {"slurm_account": "YOUR_ACCOUNT", "slurm_partition": "gpu"}),
            ("scenes", {"slurm_account": "lab", "slurm_partition": "gpu"})]
    with pytest.raises(SacaError) as err:
        check_slurm_placeholders(jobs)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("profiles/slurm/config.yaml: default-resources: slurm_account 'YOUR_ACCOUNT' is still the "
                          "placeholder (rules rft, sft)")
    assert "--default-resources slurm_account=NAME" in msg and "--set-resources RULE:slurm_account=NAME" in msg
    both = [("scenes", {"slurm_account": "YOUR_ACCOUNT", "slurm_partition": "YOUR_PARTITION"})]
    with pytest.raises(SacaError, match="slurm_account 'YOUR_ACCOUNT' and slurm_partition 'YOUR_PARTITION' are "
                                        "still the placeholders"):
        check_slurm_placeholders(both)
    check_slurm_placeholders([("sft", {"slurm_account": "lab", "slurm_partition": "gpu"}), ("all", {})])


def test_the_profile_ships_the_placeholders_and_queries_states_with_squeue():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert (REPO / "slurm").resolve() == (REPO / "profiles" / "slurm").resolve()
    assert {k: profile["default-resources"][k] for k in PLACEHOLDERS} == PLACEHOLDERS
    # sacct answers nothing on a cluster without accounting storage; the plugin falls back to sacct by itself where
    # squeue cannot see finished jobs long enough (MinJobAge < 120 s)
    assert profile["slurm-status-command"] == "squeue" and profile["executor"] == "slurm"


def test_the_harness_declares_two_cpus_and_two_fake_gpus(tmp_path):
    cluster = LocalSlurm(tmp_path)
    cluster.write_config()
    conf = cluster.conf.read_text()
    assert f"NodeName={NODE} " in conf and " CPUs=2 " in conf and f"Gres=gpu:{GPU_TYPE}:2 " in conf
    assert f"PartitionName={PARTITION} Nodes={NODE} Default=YES" in conf and "GresTypes=gpu" in conf
    assert "AccountingStorageType=accounting_storage/none" in conf and "MinJobAge=300" in conf
    gres = [x for x in (tmp_path / "gres.conf").read_text().splitlines() if x.startswith("NodeName")]
    assert gres == [f"NodeName={NODE} Name=gpu Type={GPU_TYPE} File=/dev/null",
                    f"NodeName={NODE} Name=gpu Type={GPU_TYPE} File=/dev/zero"]
    assert not cluster.pids()


# --- the local cluster ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_placeholders_stop_the_run_before_any_job_is_submitted(slurm_cluster, tmp_path):
    """The profile as shipped (placeholder account and partition), on a live cluster: one line, nothing submitted."""
    before = slurm_cluster.run("squeue", "-h", "--states=all", "-o", "%i").stdout.split()
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "all", "--configfile", "config/config.yaml",
           "config/smoke.yaml", "--sdm", "env-modules", "--slurm-logdir", str(tmp_path / "slurm_logs"), "--nolock",
           "--config", f"results={tmp_path / 'results'}"]
    r = run_profile(slurm_cluster, cmd, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    line = next(x for x in out.splitlines() if x.startswith("profile error: "))
    assert line.startswith("profile error: profiles/slurm/config.yaml: default-resources: slurm_account 'YOUR_ACCOUNT' "
                           "and slurm_partition 'YOUR_PARTITION' are still the placeholders")
    assert not submissions(out) and not (tmp_path / "slurm_logs").exists() and not (tmp_path / "results").exists()
    # no new job: the ones listed before may have aged out meanwhile (MinJobAge), so compare as sets
    after = slurm_cluster.run("squeue", "-h", "--states=all", "-o", "%i").stdout.split()
    assert set(after) <= set(before), f"jobs submitted: {sorted(set(after) - set(before))}"


@pytest.fixture(scope="module")
def slurm_smoke(copied_smoke):
    """The smoke world's whole DAG through the local cluster, its GPU rules asking for a GPU each: the session's
    copied-checkout run (conftest.py), which goes through SLURM whenever this module is collected."""
    if copied_smoke["via"] != "slurm":
        pytest.skip(f"the copied checkout's smoke run did not go through SLURM: {copied_smoke['why']}")
    return copied_smoke


def job_stats(output: str) -> tuple[dict[str, int], set[str]]:
    """The DAG's jobs per rule (the "Job stats" table Snakemake prints before it starts) and the local rules
    among them (those it ran as ``localrule NAME:``, on this machine)."""
    table = output.split("Job stats:", 1)[1].split("\ntotal", 1)[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}
    return counts, set(re.findall(r"^localrule (\w+):$", output, flags=re.M))


@pytest.mark.slow
def test_the_smoke_dag_runs_every_rule_as_a_slurm_job(slurm_smoke, slurm_cluster):
    r = slurm_smoke["run"]
    assert r.returncode == 0, (slurm_smoke["out"][-6000:])
    print(f"\n$ {shlex.join(slurm_smoke['cmd'])}\nrc {r.returncode} in {slurm_smoke['seconds']:.0f} s\n"
          f"{slurm_cluster.sinfo()}")
    counts, local = job_stats(slurm_smoke["out"])
    assert local == {"all"} and counts["all"] == 1
    remote = {rule: n for rule, n in counts.items() if rule not in local}
    subs = submissions(slurm_smoke["out"])
    # one submission per DAG job (no retry was needed), each a distinct SLURM job with its own log
    assert len(subs) == sum(remote.values()) == len({s[0] for s in subs}) == len({s[1] for s in subs})
    logs = sorted(slurm_smoke["logdir"].rglob("*.log"))
    assert sorted(int(p.stem) for p in logs) == sorted(s[1] for s in subs)
    jobs = slurm_smoke["jobs"].jobs
    per_rule = {}
    for _, jid, _ in subs:
        assert jobs[jid]["JobState"] == "COMPLETED" and jobs[jid]["NodeList"] == NODE, jobs[jid]
        rule = re.match(r"rule_(\w+?)(?:_wildcards_|$)", jobs[jid]["Comment"]).group(1)
        per_rule[rule] = per_rule.get(rule, 0) + 1
    assert per_rule == remote
    print(f"{len(subs)} SLURM jobs for the {sum(remote.values())} DAG jobs that are not local rules "
          f"(local: {', '.join(sorted(local))})")


# what records when, where or how long a job ran: provenance records, the logs and benchmarks, the rendered
# reports (papermill writes fresh cell ids and prints the timings below), and inside the JSON / JSONL outputs the
# timing and throughput fields and a training run's ``fingerprint`` (a hash of its absolute input paths)
NOT_COMPARED = {"provenance.json"}
NOT_COMPARED_DIRS = {"logs", "benchmarks", "reports"}
TIMING = re.compile(r"^(time_.*|rollout_time_.*|.*_seconds|.*_per_s|frames_per_second|fingerprint)$")


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not TIMING.match(k)}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def digests(root: Path, checkout: Path = REPO) -> dict[str, tuple[str, str]]:
    """relative path -> (how compared, sha256): every output byte for byte with the results folder's own path
    written as <RESULTS>, JSON / JSONL outputs that differ only in their timing fields as ``untimed``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_dir() or p.name in NOT_COMPARED or rel.parts[0] in NOT_COMPARED_DIRS:
            continue
        data = p.read_bytes().replace(str(root).encode(), b"<RESULTS>")
        if root.is_relative_to(checkout):  # a results folder inside the checkout is named relative to it (common.smk)
            data = data.replace(str(root.relative_to(checkout)).encode(), b"<RESULTS>")
        how = "bytes"
        if p.suffix in (".json", ".jsonl"):
            text = data.decode()
            objs = [json.loads(x) for x in text.splitlines() if x.strip()] if p.suffix == ".jsonl" else json.loads(text)
            if _untimed(objs) != objs:
                how, data = "untimed", json.dumps(_untimed(objs), sort_keys=True).encode()
        out[str(rel)] = (how, hashlib.sha256(data).hexdigest())
    return out


@pytest.mark.slow
def test_the_slurm_outputs_are_byte_identical_to_the_local_run(slurm_smoke, smoke_run):
    assert slurm_smoke["run"].returncode == 0
    cluster, local = digests(slurm_smoke["results"], slurm_smoke["checkout"]), digests(smoke_run)
    assert sorted(cluster) == sorted(local)
    differ = sorted(k for k in local if cluster[k] != local[k])
    assert differ == []
    untimed = sorted(k for k in local if local[k][0] == "untimed")
    assert all(k.endswith(("summary.json", "train_log.jsonl", "finished.json")) for k in untimed), untimed
    weights = [k for k in local if k.endswith(".safetensors")]
    assert len(weights) >= 7  # the policy init, vision tower, SFT and every RFT run
    print(f"\n{len(local) - len(untimed)} files byte-identical, {len(untimed)} equal but for their timing fields "
          f"({', '.join(untimed)}); {len(weights)} weight files among the identical")


@pytest.mark.slow
def test_the_gpu_rules_were_submitted_with_gpus(slurm_smoke):
    assert slurm_smoke["run"].returncode == 0
    jobs = [j for j in slurm_smoke["jobs"].jobs.values() if j.get("StdOut", "").startswith(str(slurm_smoke["logdir"]))]
    gpus = {j["Comment"]: j.get("TresPerJob", "") for j in jobs}
    want = f"gres:gpu:{GPU_TYPE}:1"
    assert gpus["rule_sft_wildcards_r2r_rxr"] == want
    assert gpus["rule_rft_wildcards_saca_0"] == want
    policy_evals = [c for c in gpus if c.startswith("rule_evaluate_") and ("_sft_" in c or "_rft-" in c)]
    reference_evals = [c for c in gpus if c.startswith("rule_evaluate_") and re.search("_(random|forward|oracle)_", c)]
    assert policy_evals and all(gpus[c] == want for c in policy_evals)
    assert reference_evals and not any(gpus[c] for c in reference_evals)
    assert not any(gpus[c] for c in gpus if c.startswith(("rule_scenes", "rule_episodes", "rule_report")))
    print("\n" + "\n".join(f"{c}: TresPerJob={gpus[c]}" for c in sorted(gpus) if gpus[c]))


# --- torchrun inside an allocation, and the faults: small targets on a copy of the smoke results ----------------

def copy_results(src: Path, dst: Path, *remove: str) -> Path:
    """A copy of a finished results folder (times kept) without the outputs ``remove`` names (relative paths)."""
    shutil.copytree(src, dst, symlinks=True)
    for rel in remove:
        p = dst / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def wait_for(predicate, timeout: float, what: str, proc=None, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snakemake exited (rc {proc.returncode}) before {what}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_of(recorder: JobRecorder, comment_prefix: str, state: str | None = None) -> int | None:
    recorder.poll()
    for jid, rec in sorted(recorder.jobs.items()):
        if rec.get("Comment", "").startswith(comment_prefix) and (state is None or rec.get("JobState") == state):
            return jid
    return None


def active_jobs(recorder: JobRecorder, logdir: Path) -> list[int]:
    """The jobs of the runs that log to ``logdir`` that have not ended."""
    recorder.poll()
    return [jid for jid, rec in recorder.jobs.items() if rec.get("StdOut", "").startswith(str(logdir))
            and rec.get("JobState") in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED")]


def start_profile(cluster, cmd, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=profile_env(cluster), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


# SFT on 2 fake GPUs: torchrun, 2 processes (gloo on CPU), FSDP2 shards as config/paper.yaml trains (sft.sharding)
SFT2 = {"resources": {"sft": {"gpu": 2, "cpus_per_gpu": 1, "mem_mb": 2000, "runtime": 30}, "gpu_model": GPU_TYPE},
        "sft": {"sharding": "fsdp"}}
SFT_RUN = "sft/r2r_rxr"


def run_local(results: Path, target: Path, cfg: Path) -> subprocess.CompletedProcess:
    """The same target and configs as the profile's run, by a local Snakemake (no SLURM)."""
    return subprocess.run([sys.executable, "-m", "snakemake", str(target), "--cores", "2", "--configfile",
                           "config/config.yaml", "config/smoke.yaml", str(cfg), "--nolock", "--config",
                           f"results={results}"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")})


@pytest.fixture(scope="module")
def sft_two_gpus(slurm_smoke, slurm_cluster, tmp_path_factory):
    """The smoke SFT on 2 GPUs through SLURM, and the same command run locally."""
    assert slurm_smoke["run"].returncode == 0
    tmp = tmp_path_factory.mktemp("sft2")
    cfg = overlay(tmp, "sft2.yaml", SFT2)
    results = copy_results(slurm_smoke["results"], tmp / "results", SFT_RUN)
    cmd = profile_cmd(results, tmp / "slurm_logs", str(results / SFT_RUN / "final"), configfiles=[cfg])
    with JobRecorder(slurm_cluster) as rec:
        r = run_profile(slurm_cluster, cmd)
    local = copy_results(slurm_smoke["results"], tmp / "local", SFT_RUN)
    return {"run": r, "out": r.stdout + r.stderr, "jobs": rec, "results": results / SFT_RUN,
            "local": local / SFT_RUN, "local_run": run_local(local, local / SFT_RUN / "final", cfg)}


@pytest.mark.slow
def test_sft_on_two_gpus_runs_torchrun_with_two_processes_and_equals_the_local_command(sft_two_gpus):
    r = sft_two_gpus
    assert r["run"].returncode == 0, r["out"][-5000:]
    assert r["local_run"].returncode == 0, r["local_run"].stderr[-3000:]
    assert "torchrun --standalone --nproc_per_node 2 -m saca sft" in r["out"]
    subs = submissions(r["out"])
    assert len(subs) == 1, subs
    rec = r["jobs"].jobs[subs[0][1]]
    assert rec["TresPerJob"] == f"gres:gpu:{GPU_TYPE}:2" and rec["NumCPUs"] == "2" and rec["JobState"] == "COMPLETED"
    summary = json.loads((r["results"] / "final" / "sft_summary.json").read_text())
    local = json.loads((r["local"] / "final" / "sft_summary.json").read_text())
    assert summary["world_size"] == local["world_size"] == 2 and summary["config"]["sharding"] == "fsdp"
    a = (r["results"] / "final" / "model.safetensors").read_bytes()
    assert a == (r["local"] / "final" / "model.safetensors").read_bytes()
    print(f"\nsft on 2 GPUs (FSDP2): world_size 2 inside SLURM (job {subs[0][1]}, TresPerJob={rec['TresPerJob']}) "
          f"and outside; model.safetensors sha256 {hashlib.sha256(a).hexdigest()[:16]} both")


# RFT on 2 fake GPUs: torchrun, 2 processes (gloo on CPU), FSDP2 shards as config/paper.yaml trains (rft.sharding;
# its checkpoints are torch.distributed.checkpoint shards); 4 updates, a checkpoint after each
RFT2 = {"resources": {"rft": {"gpu": 2, "cpus_per_gpu": 1, "mem_mb": 2000, "runtime": 30}, "gpu_model": GPU_TYPE},
        "rft": {"max_steps": 4, "save_steps": 1, "sharding": "fsdp"}}
RFT_RUN = "rft/saca/s0"


@pytest.fixture(scope="module")
def rft_two_gpus(slurm_smoke, slurm_cluster, tmp_path_factory):
    """The saca RFT run on 2 GPUs through SLURM, its job scancel-ed after its first checkpoint (Snakemake's retry
    resumes it), and the same command run locally without interruption."""
    assert slurm_smoke["run"].returncode == 0
    tmp = tmp_path_factory.mktemp("rft2")
    cfg = overlay(tmp, "rft2.yaml", RFT2)
    results = copy_results(slurm_smoke["results"], tmp / "results", RFT_RUN)
    run = results / RFT_RUN
    cmd = profile_cmd(results, tmp / "slurm_logs", str(run / "final"), configfiles=[cfg])
    with JobRecorder(slurm_cluster) as rec:
        proc = start_profile(slurm_cluster, cmd, tmp / "snakemake.log")
        try:
            first = wait_for(lambda: job_of(rec, "rule_rft_", "RUNNING"), 900, "the rft job to run", proc)
            wait_for(lambda: list((run / "checkpoints").glob("step-*/trainer_state.json")), 900,
                     "the first RFT checkpoint", proc, every=0.2)
            cancelled = slurm_cluster.run("scancel", str(first))
            rc = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    local = copy_results(slurm_smoke["results"], tmp / "local", RFT_RUN)
    loc = run_local(local, local / RFT_RUN / "final", cfg)
    return {"rc": rc, "out": (tmp / "snakemake.log").read_text(), "first": first, "scancel": cancelled,
            "jobs": rec, "run": run, "local": local / RFT_RUN, "local_run": loc,
            "log": (results / "logs" / "rft" / "saca" / "s0.log").read_text(), "logdir": tmp / "slurm_logs"}


@pytest.mark.slow
def test_rft_on_two_gpus_runs_torchrun_with_two_processes_and_equals_the_local_command(rft_two_gpus):
    r = rft_two_gpus
    assert r["rc"] == 0, r["out"][-5000:]
    assert r["local_run"].returncode == 0, r["local_run"].stderr[-3000:]
    assert "torchrun --standalone --nproc_per_node 2 -m saca rft" in r["out"]
    rec = r["jobs"].jobs[r["first"]]
    assert rec["TresPerJob"] == f"gres:gpu:{GPU_TYPE}:2" and rec["NumCPUs"] == "2"
    summary = json.loads((r["run"] / "final" / "rft_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == RFT2["rft"]["max_steps"]
    assert summary["config"]["sharding"] == "fsdp"
    local = json.loads((r["local"] / "final" / "rft_summary.json").read_text())
    assert local["world_size"] == 2
    a = (r["run"] / "final" / "model.safetensors").read_bytes()
    b = (r["local"] / "final" / "model.safetensors").read_bytes()
    assert a == b  # scancel-ed and resumed inside SLURM == uninterrupted outside it
    print(f"\nrft on 2 GPUs: world_size {summary['world_size']} inside SLURM (job {r['first']}, "
          f"TresPerJob={rec['TresPerJob']}) and outside; model.safetensors sha256 "
          f"{hashlib.sha256(a).hexdigest()[:16]} both")


@pytest.mark.slow
def test_a_scancelled_rft_job_is_retried_and_resumes_from_its_checkpoint(rft_two_gpus):
    r = rft_two_gpus
    assert r["rc"] == 0, r["out"][-5000:]
    assert r["scancel"].returncode == 0
    assert "CANCELLED" in r["jobs"].states[r["first"]]
    subs = submissions(r["out"])
    assert len(subs) == 2 and subs[0][1] == r["first"] and subs[1][1] > r["first"]  # the retry: a new SLURM job
    assert r["jobs"].jobs[subs[1][1]]["JobState"] == "COMPLETED"
    m = re.search(r"resumed from \S+step-(\d+) \(step (\d+)\)", r["log"])
    assert m and 1 <= int(m.group(2)) < RFT2["rft"]["max_steps"], r["log"][-3000:]
    rows = [json.loads(x) for x in (r["run"] / "train_log.jsonl").read_text().splitlines()]
    train = [row["step"] for row in rows if row.get("event") == "train"]
    local = [json.loads(x) for x in (r["local"] / "train_log.jsonl").read_text().splitlines()]
    assert train == sorted(set(train)) and len(train) == RFT2["rft"]["max_steps"]
    # the same train and val rows as the uninterrupted run, plus a second `start` row: the resume, at its step
    assert [(x["event"], x["step"]) for x in rows if x["event"] != "start"] == \
        [(x["event"], x["step"]) for x in local if x["event"] != "start"]
    assert [x["step"] for x in rows if x["event"] == "start"] == [0, int(m.group(2))]
    print(f"\nscancel {r['first']} after checkpoint step {m.group(2)}: states {r['jobs'].states[r['first']]}; "
          f"retry job {subs[1][1]} resumed at step {m.group(2)}; train_log steps {train}")


EVAL_DIR = "mini_r2r/eval/random/val_unseen"  # evaluate, then eval_plots: two small jobs in a row


@pytest.fixture(scope="module")
def faults(slurm_smoke, slurm_cluster, tmp_path_factory):
    """One evaluation and its plots through SLURM: the node is set down while the evaluation runs, then resumed;
    once the evaluation has finished, the Snakemake controller is killed with SIGKILL, its orphaned jobs left to
    end, and the same command started again."""
    assert slurm_smoke["run"].returncode == 0
    tmp = tmp_path_factory.mktemp("faults")
    results = copy_results(slurm_smoke["results"], tmp / "results", EVAL_DIR)
    targets = [str(results / EVAL_DIR / "metrics.json"), str(results / EVAL_DIR / "plots")]
    cmd = profile_cmd(results, tmp / "slurm_logs", *targets)
    c = slurm_cluster
    f = {"results": results, "node": []}
    with JobRecorder(c) as rec:
        proc = start_profile(c, cmd, tmp / "first.log")
        first_log = tmp / "first.log"
        try:
            job = wait_for(lambda: job_of(rec, "rule_evaluate_", "RUNNING"), 900, "the evaluation to run", proc)
            f["job"] = job
            f["down"] = c.run("scontrol", "update", f"nodename={NODE}", "state=down", "reason=fault-test")
            f["node"].append(wait_for(lambda: c.node_state(), 60, "the node state"))
            wait_for(lambda: rec.poll() or rec.jobs[job]["JobState"] != "RUNNING", 300, "the job to leave the node")
            f["after_down"] = rec.jobs[job]["JobState"]
            time.sleep(5)  # down for a while: nothing can start
            f["resume"] = c.run("scontrol", "update", f"nodename={NODE}", "state=resume")
            f["node"].append(wait_for(lambda: c.node_state() if c.node_state() in ("idle", "mixed", "allocated")
                                      else None, 120, "the node back up"))
            wait_for(lambda: re.search(r"Finished jobid: \d+ \(Rule: evaluate\)", first_log.read_text()), 900,
                     "the evaluation to finish", proc)
            os.kill(proc.pid, signal.SIGKILL)  # the controller only; its SLURM jobs go on
            proc.wait(timeout=60)
            f["killed_rc"] = proc.returncode
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        # the orphans of the killed controller end on their own (a user would wait for them or scancel them)
        wait_for(lambda: not active_jobs(rec, tmp / "slurm_logs"), 900, "the orphaned jobs to end", every=2)
        f["first"] = first_log.read_text()
        second = run_profile(c, cmd)
    f.update(second=second, jobs=rec, second_out=second.stdout + second.stderr)
    return f


@pytest.mark.slow
def test_a_node_set_down_while_a_job_runs_then_resumed_lets_the_run_complete(faults, slurm_smoke):
    f = faults
    assert f["down"].returncode == 0 and f["resume"].returncode == 0, (f["down"].stderr, f["resume"].stderr)
    assert f["node"][0].startswith("down"), f["node"]
    states = f["jobs"].states[f["job"]]
    # SLURM requeues the batch job (JobRequeue=1): it waits while the node is down and runs again once resumed;
    # where it is not requeued it ends NODE_FAIL and Snakemake's retry submits it again
    evals = [s for s in submissions(f["first"]) if "/rule_evaluate/" in s[2]]
    requeued = "COMPLETED" == f["jobs"].jobs[f["job"]]["JobState"] and len(evals) == 1
    retried = len(evals) == 2 and f["jobs"].jobs[evals[1][1]]["JobState"] == "COMPLETED"
    assert requeued or retried, (states, evals)
    assert "Finished jobid" in f["first"] and f["second"].returncode == 0, f["second_out"][-4000:]
    got = (f["results"] / EVAL_DIR / "metrics.json").read_bytes()
    assert got == (slurm_smoke["results"] / EVAL_DIR / "metrics.json").read_bytes(), "metrics.json differs"
    print(f"\nnode {NODE}: {' -> '.join(f['node'])}; job {f['job']} states {states} "
          f"({'requeued by SLURM' if requeued else 'retried by Snakemake'}); metrics.json equal to the smoke run's")


@pytest.mark.slow
def test_a_killed_controller_started_again_does_not_resubmit_finished_jobs(faults):
    f = faults
    assert f["killed_rc"] == -signal.SIGKILL
    assert f["second"].returncode == 0, f["second_out"][-4000:]
    again = submissions(f["second_out"])
    assert not [s for s in again if "/rule_evaluate/" in s[2]]  # the finished evaluation is not submitted again
    plots = [s for s in submissions(f["first"]) if "/rule_eval_plots/" in s[2]]
    # eval_plots: the killed controller had submitted it (its SLURM job went on and, ending well, cleared the
    # output's incomplete mark itself: not submitted again) or not yet (submitted now)
    if plots:
        assert f["jobs"].jobs[plots[0][1]]["JobState"] == "COMPLETED" and again == []
    else:
        assert len(again) == 1 and "/rule_eval_plots/" in again[0][2]
    assert (f["results"] / EVAL_DIR / "plots").is_dir()
    print(f"\nkilled with SIGKILL after the evaluation finished ({len(plots)} eval_plots job(s) submitted before, "
          f"left running); started again: {len(again)} job(s) submitted")
