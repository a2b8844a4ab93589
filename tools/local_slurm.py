#!/usr/bin/env python3
"""A one-node SLURM cluster on this machine, to run the workflow through `snakemake --profile slurm` for real.

    python tools/local_slurm.py up      # install (Debian packages, when missing), configure, start; prints SLURM_CONF
    python tools/local_slurm.py status  # sinfo of the running cluster
    python tools/local_slurm.py down    # stop exactly the daemons `up` started (by pid)

It writes its own slurm.conf and gres.conf into a state directory (``--dir``, default ``$SACA_SLURM_DIR`` or
``/tmp/saca-slurm``): one node with 2 CPUs and 2 fake GPUs (``gpu:a100:2``; each needs a device file, so
``/dev/null`` and ``/dev/zero`` stand in), one partition ``debug``, no accounting storage (docs/slurm.md says why).
It starts its own ``munged`` (its own key and socket), ``slurmctld`` and ``slurmd``, waits until the node is idle
and records their pids in ``pids.json``; ``down`` stops those pids and nothing else. Clients (sbatch, squeue,
scontrol, Snakemake's SLURM executor) find the cluster as on a real one, at ``/etc/slurm/slurm.conf``: ``up`` links
that path to the state directory's file and ``down`` removes the link. The link is needed: the jobstep plugin
(snakemake-executor-plugin-slurm-jobstep 0.6.1) runs each job's command through a nested ``srun`` with every
``SLURM_*`` variable but the job's identity removed, ``SLURM_CONF`` included, so a cluster known only through
``SLURM_CONF`` fails inside the job ("Could not establish a configuration source"). ``up`` refuses to replace an
``/etc/slurm/slurm.conf`` that is not its own link. Nothing else is written outside the state directory.

The test suite uses the same code (``LocalSlurm``) in tests/test_slurm.py; ``make slurm-up`` / ``make slurm-down``
call this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]
NODE = "saca-node"
PARTITION = "debug"
GPU_TYPE = "a100"
CPUS = 2
GPUS = 2
# where SLURM's clients look without SLURM_CONF (Debian's build); the jobstep plugin's nested srun drops SLURM_CONF
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
MEM_MB = 64000  # declared, not checked (SlurmdParameters=config_overrides, memory is not a consumable resource)


class SlurmUnavailable(RuntimeError):
    """SLURM is not installed and apt could not install it (the reason is the message)."""


def _which_all() -> list[str]:
    return [d for d in DAEMONS + ["sbatch", "squeue", "scontrol", "sinfo"] if shutil.which(d) is None]


def ensure_installed() -> None:
    """Install the Debian packages when a daemon or client is missing; raise SlurmUnavailable with apt's reason."""
    if not _which_all():
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"{', '.join(_which_all())} missing and no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed (rc {r.returncode}): {tail[0]}")
    if _which_all():
        raise SlurmUnavailable(f"apt-get installed {' '.join(PACKAGES)} but {', '.join(_which_all())} still missing")


def _free_port(preferred: int) -> int:
    for port in [preferred, 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port")


class LocalSlurm:
    """The cluster in ``state_dir``: ``start()`` / ``stop()``, or ``with LocalSlurm(dir) as cluster:``."""

    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir).resolve()
        self.conf = self.dir / "slurm.conf"
        self.pidfile = self.dir / "pids.json"

    # --- configuration ---
    def env(self) -> dict:
        """The environment of a client (sbatch, squeue, snakemake --executor slurm) of this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        d = self.dir
        for sub in ("ctld", "d", "log", "munge"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (d / "munge").chmod(0o700)
        ctld_port = _free_port(16817)
        d_port = _free_port(16818 if ctld_port != 16818 else 16819)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            "\n".join(
                [
                    "# written by tools/local_slurm.py: one node, 2 CPUs, 2 fake GPUs, no accounting storage",
                    "ClusterName=saca-local",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={d_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
                    f"AuthInfo=socket={d / 'munge' / 'munge.socket'},cred_expire=30",
                    f"StateSaveLocation={d / 'ctld'}",
                    f"SlurmdSpoolDir={d / 'd'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "MpiDefault=none",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SwitchType=switch/none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SlurmdParameters=config_overrides",
                    "GresTypes=gpu",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    # finished jobs stay visible to squeue for 5 min: the profile's status query (squeue) needs them
                    "MinJobAge=300",
                    # an admin-set DOWN node stays down until `scontrol update state=resume`
                    "ReturnToService=1",
                    "SlurmdTimeout=60",
                    "KillWait=5",
                    "InactiveLimit=0",
                    f"NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={CPUS} Sockets=1 "
                    f"CoresPerSocket={CPUS} ThreadsPerCore=1 RealMemory={MEM_MB} Gres=gpu:{GPU_TYPE}:{GPUS} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        devices = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full", "/dev/tty"][:GPUS]
        (d / "gres.conf").write_text(
            "# fake GPUs: slurmd wants a device file per GPU; nothing reads them\n"
            + "".join(f"NodeName={NODE} Name=gpu Type={GPU_TYPE} File={dev}\n" for dev in devices)
        )

    # --- daemons ---
    def _spawn(self, name: str, cmd: list[str]) -> int:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=self.env(), start_new_session=True)
        log.close()
        return p.pid

    def pids(self) -> dict:
        return json.loads(self.pidfile.read_text()) if self.pidfile.exists() else {}

    def _record(self, pids: dict) -> None:
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids))
        tmp.replace(self.pidfile)

    def _link_default_conf(self) -> None:
        if DEFAULT_CONF.is_symlink() or DEFAULT_CONF.exists():
            if not _our_link(DEFAULT_CONF):
                raise SlurmUnavailable(f"{DEFAULT_CONF} exists and is not a link made by tools/local_slurm.py: "
                                       "this machine has a SLURM configuration of its own")
            other = LocalSlurm(Path(os.readlink(DEFAULT_CONF)).parent)
            if other.dir != self.dir and any(_alive(pid) for pid in other.pids().values()):
                raise RuntimeError(f"{DEFAULT_CONF} belongs to the local cluster of {other.dir}, still running: "
                                   f"stop it first (python tools/local_slurm.py down --dir {other.dir})")
            DEFAULT_CONF.unlink()
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)

    def start(self, timeout: float = 120) -> "LocalSlurm":
        ensure_installed()
        if self.pids():
            raise RuntimeError(f"{self.pidfile} exists: a cluster of this state directory runs (stop it first)")
        self.write_config()
        self._link_default_conf()
        m = self.dir / "munge"
        pids = {}
        try:
            pids["munged"] = self._spawn("munged", [
                "munged", "--foreground", "--force", f"--key-file={m / 'munge.key'}", f"--socket={m / 'munge.socket'}",
                f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
            self._record(pids)
            self._wait(lambda: (m / "munge.socket").exists(), 30, "munged's socket")
            pids["slurmctld"] = self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._record(pids)
            self._wait(lambda: self.run("scontrol", "ping").returncode == 0
                       and "UP" in self.run("scontrol", "ping").stdout, timeout, "slurmctld")
            pids["slurmd"] = self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", NODE])
            self._record(pids)
            self._wait(self.idle, timeout, f"node {NODE} idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, pid in self.pids().items():
                if not _alive(pid):
                    raise RuntimeError(f"{name} (pid {pid}) exited while waiting for {what}; see {self.dir / 'log'}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{what} not ready after {timeout:.0f} s; see {self.dir / 'log'}")

    def stop(self, timeout: float = 30) -> None:
        """Stop the daemons this state directory started (slurmd, slurmctld, then munged), by pid."""
        pids = self.pids()
        for name in ("slurmd", "slurmctld", "munged"):
            pid = pids.get(name)
            if pid is None or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        if DEFAULT_CONF.is_symlink() and os.readlink(DEFAULT_CONF) == str(self.conf):
            DEFAULT_CONF.unlink()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- queries ---
    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, env=self.env())

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", NODE, "-o", "%T").stdout.strip()

    def idle(self) -> bool:
        return self.node_state() == "idle"

    def sinfo(self) -> str:
        return self.run("sinfo").stdout


class JobRecorder:
    """Every job the controller knows, polled (``scontrol show job -o``) while a run goes on.

    The controller forgets a finished job after MinJobAge (300 s): a record kept here outlives that, so a test
    can ask after a long run how each job was submitted (``TresPerJob`` holds its ``--gpus``) and how it ended.
    ``jobs``: job id -> the fields of its last record (JobState, Comment = the executor's ``rule_NAME...``,
    TresPerJob, NumCPUs, Restarts, StdOut, ...); ``states``: job id -> every state it was seen in, in order.
    """

    _FIELD = re.compile(r"(?:^| )([A-Za-z/:_]+)=(.*?)(?= [A-Za-z/:_]+=|$)")

    def __init__(self, cluster: "LocalSlurm", every: float = 1.0):
        self.cluster, self.every = cluster, every
        self.jobs: dict[int, dict] = {}
        self.states: dict[int, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def poll(self) -> None:
        out = self.cluster.run("scontrol", "show", "job", "-o").stdout
        for line in out.splitlines():
            rec = {k: v.strip() for k, v in self._FIELD.findall(line.strip())}
            if "JobId" not in rec:
                continue
            jid = int(rec["JobId"])
            self.jobs[jid] = rec
            seen = self.states.setdefault(jid, [])
            if not seen or seen[-1] != rec.get("JobState"):
                seen.append(rec.get("JobState"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()


def _our_link(path: Path) -> bool:
    """A symlink to the slurm.conf of some state directory of this harness (its first line says so)."""
    try:
        return path.is_symlink() and Path(os.readlink(path)).read_text().startswith("# written by tools/local_slurm.py")
    except OSError:
        return path.is_symlink()  # a dangling link left by a cluster whose state directory is gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by us) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("--dir", default=os.environ.get("SACA_SLURM_DIR", "/tmp/saca-slurm"))
    args = ap.parse_args(argv)
    cluster = LocalSlurm(args.dir)
    if args.action == "up":
        try:
            cluster.start()
        except SlurmUnavailable as err:
            print(f"local SLURM unavailable: {err}", file=sys.stderr)
            return 1
        print(cluster.sinfo(), end="")
        print(f"{DEFAULT_CONF} -> {cluster.conf}")
    elif args.action == "down":
        cluster.stop()
    else:
        if not cluster.pids():
            print(f"no cluster started from {cluster.dir}", file=sys.stderr)
            return 1
        print(cluster.sinfo(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
