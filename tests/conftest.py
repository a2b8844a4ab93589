"""Shared fixtures: a small embedded world built once per test session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from saca.episodes import write_episodes
from saca.episodes.generate import DatasetConfig, generate_split
from saca.io import write_json
from saca.sim import make_simulator
from saca.sim.base import SimConfig
from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

SMALL_SCENES = SceneGenConfig(seed=0, train=2, val_unseen=1, rooms=[2, 3], room_size=[3.0, 4.0], landmarks_per_room=[1, 2])
SMALL_SIM = SimConfig(width=64, height=64)


def build_scenes(out: Path, cfg: SceneGenConfig = SMALL_SCENES) -> dict:
    index = cfg.scene_ids()
    for ids in index.values():
        for sid in ids:
            write_json(out / f"{sid}.json", generate_scene(sid, scene_seed(cfg.seed, sid), cfg))
    write_json(out / "index.json", {"format": 1, "seed": cfg.seed, "splits": index})
    return index


@pytest.fixture(scope="session")
def scene_builder():
    """``build_scenes(out_dir, cfg=SMALL_SCENES)``: write scene files and index.json."""
    return build_scenes


@pytest.fixture(scope="session")
def mini_world(tmp_path_factory):
    """Scenes plus a few mini_r2r and mini_rxr episodes per split, on disk."""
    root = tmp_path_factory.mktemp("world")
    index = build_scenes(root / "scenes")
    datasets = {
        "mini_r2r": DatasetConfig(turn_angle=15, style="r2r", landmarks=[1, 2], seed=1, episodes={"train": 4, "val_seen": 2, "val_unseen": 3}),
        "mini_rxr": DatasetConfig(turn_angle=30, style="rxr", landmarks=[2, 3], seed=2, episodes={"train": 3, "val_seen": 2, "val_unseen": 3}),
    }
    for name, cfg in datasets.items():
        sim = make_simulator("embedded", SMALL_SIM, cfg.turn_angle, root / "scenes")
        for split in ("train", "val_seen", "val_unseen"):
            scenes = index["val_unseen"] if split == "val_unseen" else index["train"]
            write_episodes(root / name / "episodes", split, generate_split(name, cfg, split, scenes, sim))
        sim.close()
    return {"root": root, "scenes": root / "scenes", "index": index, "datasets": datasets, "sim": SMALL_SIM}


@pytest.fixture(scope="session")
def habitat_world(tmp_path_factory):
    """Random point-goal episodes on the scene named by ``SACA_HABITAT_TEST_SCENE`` (a .glb; its navmesh is
    computed at load, ``recompute_navmesh``), rendered on ``SACA_HABITAT_GPU_DEVICE`` (default 0, -1 without a GPU).

    Only used where ``habitat_sim`` imports; skipped with the reason otherwise.
    """
    import math
    import os

    import numpy as np

    from saca.episodes import Episode
    from saca.episodes.generate import expert_actions
    from saca.sim.base import heading_to_quaternion

    scene = os.environ.get("SACA_HABITAT_TEST_SCENE")
    if not scene or not Path(scene).exists():
        pytest.skip("set SACA_HABITAT_TEST_SCENE to a habitat test scene (.glb) to run the contract on Habitat")
    root = tmp_path_factory.mktemp("habitat")
    # SACA_HABITAT_GPU_DEVICE: the CUDA device habitat renders on (default 0); -1 where there is no GPU (llvmpipe)
    sim_cfg = SimConfig(width=64, height=64, gpu_device_id=int(os.environ.get("SACA_HABITAT_GPU_DEVICE", "0")))
    rng = np.random.default_rng(0)
    for name, angle in (("mini_r2r", 15), ("mini_rxr", 30)):
        sim = make_simulator("habitat", sim_cfg, angle, Path(scene).parent)
        sim.load_scene(Path(scene).name)
        for split in ("train", "val_seen", "val_unseen"):
            eps, tries = [], 0
            while len(eps) < 3:
                tries += 1
                if tries > 2000:
                    pytest.fail(f"{scene}: no 3 routes of 3-10 m with a teacher path on its navmesh in 2000 draws")
                a, b = sim.sample_navigable_point(), sim.sample_navigable_point()
                if not 3.0 < sim.geodesic_distance(a, b) < 10.0:
                    continue
                ep = Episode(len(eps), len(eps), Path(scene).name, list(a), heading_to_quaternion(float(rng.uniform(-math.pi, math.pi))),
                             [{"position": list(b), "radius": 3.0}], [list(a), list(b)], f"Go to the goal {len(eps)}.")
                sim.reset(ep)
                res = expert_actions(sim, [b], sim_cfg.max_steps - 1)
                if res is None:
                    continue
                ep.gt_actions, ep.gt_locations = res
                eps.append(ep)
            write_episodes(root / name / "episodes", split, eps)
        sim.close()
    return {"root": root, "scenes": Path(scene).parent, "index": {}, "datasets": {}, "sim": sim_cfg}


# --- two test processes (make test: pytest-xdist, -n 2 --dist loadgroup) --------------------------------------

# the fixtures of the smoke runs and the local SLURM cluster: session-scoped and minutes long, so every test that
# needs one runs in one process (which runs them first: they are the longest chain); the other tests go file by
# file to whichever process is free (a file's module fixtures are built once)
SMOKE_FIXTURES = {"smoke_run", "copied_smoke", "local_slurm", "slurm_cluster"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    smoke = [item for item in items if SMOKE_FIXTURES & set(item.fixturenames)]
    for item in items:
        item.add_marker(pytest.mark.xdist_group("smoke" if item in smoke else item.path.name))
    items[:] = smoke + [item for item in items if item not in smoke]


class _GroupsTaken:
    """After pytest-xdist's hook: under ``--dist loadgroup`` every test id carries its group, or two processes would
    run the smoke workflow into one folder (pytest 9.2 ignores xdist 3.8's id rewrite: pytest-xdist#1386)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if getattr(config.option, "loadgroup", False) and items and "@" not in items[0].nodeid:
            raise pytest.UsageError(f"pytest {pytest.__version__} drops pytest-xdist's test groups "
                                    "(pytest-xdist#1386): install the pinned pytest (pip install -e '.[dev]')")


def pytest_configure(config):
    config.pluginmanager.register(_GroupsTaken(), "saca-xdist-groups")


# --- the smoke workflow, run once per test session ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
# inside the checkout (git-ignored), so that the workflow names it relative to the working directory
# (common.smk): a second checkout that runs into the same relative folder gives the same params and bytes
SMOKE_RESULTS = ".smoke-test/results"


def smoke_cmd(results: Path, *extra: str) -> list[str]:
    """``snakemake all --configfile config/smoke.yaml`` into ``results`` (given as an absolute path, as a user
    would), run from a checkout."""
    return [sys.executable, "-m", "snakemake", "all", "--cores", "2", "--configfile", "config/smoke.yaml", "--nolock",
            *extra, "--config", f"results={results}"]


def run_smoke(checkout: Path, *extra: str) -> tuple[Path, subprocess.CompletedProcess]:
    """:func:`smoke_cmd` in ``checkout``, results in ``checkout/.smoke-test/results``; returns that folder and the
    finished process."""
    out = checkout / SMOKE_RESULTS
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: nothing from an earlier session
    return out, subprocess.run(smoke_cmd(out, *extra), cwd=checkout, capture_output=True, text=True)


@pytest.fixture(scope="session")
def smoke_run(copied_smoke_started):
    """The results folder of one complete smoke run (``make smoke``'s config) of this checkout, shared by every
    test of the session (about 5 minutes on 2 cores); removed at the end of the session. SACA_SMOKE_RESULTS=
    {checkout}/.smoke-test/results reuses a finished run instead (kept). The copied checkout's run (below), when
    the session needs it, is started first and goes on beside this one: the SLURM run's jobs leave the CPUs idle
    between them (submission, status checks), which this run fills."""
    if os.environ.get("SACA_SMOKE_RESULTS"):  # a finished run of this checkout's SMOKE_RESULTS, reused (development)
        out = Path(os.environ["SACA_SMOKE_RESULTS"]).resolve()
        assert out == (REPO / SMOKE_RESULTS).resolve() and (out / "reports" / "index.html").is_file(), out
        yield out
        return
    out, r = run_smoke(REPO)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-6000:])
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def copy_checkout(src: Path, dest: Path) -> None:
    """The files a clone of ``src`` holds (tracked and untracked, not ignored): no results, no .snakemake."""
    r = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, text=True)
    if r.returncode == 0:
        for rel in filter(None, r.stdout.split("\0")):
            if (src / rel).is_symlink():  # e.g. ./slurm -> profiles/slurm
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.readlink(src / rel), dest / rel)
            elif (src / rel).is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, dest / rel)
    else:  # not a git checkout (an unpacked archive)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", ".snakemake", ".smoke-test", "results*",
                                                                 ".venv", "__pycache__", "*.egg-info"))


# --- the local SLURM cluster (tools/local_slurm.py), started once per session when a test asks for it ----------

@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """The running local cluster, or the reason (a string) it cannot run here."""
    sys.path.insert(0, str(REPO / "tools"))
    from local_slurm import LocalSlurm, SlurmUnavailable

    try:
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except SlurmUnavailable as err:
        yield str(err)
        return
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(local_slurm):
    if isinstance(local_slurm, str):
        pytest.skip(f"no local SLURM cluster: {local_slurm}")
    return local_slurm


@pytest.fixture(scope="session")
def copied_smoke_started(request, tmp_path_factory):
    """The smoke workflow once more, in a copy of this checkout at another path (with a space in it), results in
    the copy's own ``.smoke-test/results``, started in the background when a test of the session needs it (None
    otherwise). When the session also runs tests/test_slurm.py and the local SLURM cluster starts, this run goes
    through it with the user's command (``snakemake --profile slurm all``, the GPU rules asking for GPUs): one run
    then shows both that the outputs do not depend on where the checkout lies (tests/test_reproducible.py) and
    that SLURM changes none of them (tests/test_slurm.py), at the cost of one smoke run instead of two."""
    import time
    from contextlib import ExitStack

    if not any("copied_smoke" in item.fixturenames for item in request.session.items):
        yield None
        return
    tmp = tmp_path_factory.mktemp("copied_smoke")
    clone = tmp / "another checkout"
    copy_checkout(REPO, clone)
    run = {"via": "local", "why": "tests/test_slurm.py is not part of this session", "checkout": clone,
           "results": clone / SMOKE_RESULTS, "jobs": None, "recording": ExitStack()}
    env, cmd = None, smoke_cmd(run["results"])
    if any(item.path.name == "test_slurm.py" for item in request.session.items):
        cluster = request.getfixturevalue("local_slurm")
        if isinstance(cluster, str):
            run["why"] = f"no local SLURM cluster: {cluster}"
        else:
            from local_slurm import JobRecorder
            from slurm_runs import GPU_OVERLAY, overlay, profile_cmd, profile_env

            run.update(via="slurm", logdir=tmp / "slurm_logs",
                       jobs=run["recording"].enter_context(JobRecorder(cluster)))
            cmd = profile_cmd(run["results"], run["logdir"], "all",
                              configfiles=[overlay(tmp, "gpus.yaml", GPU_OVERLAY)])
            env = profile_env(cluster, clone)
    run["cmd"], run["start"] = cmd, time.monotonic()
    with open(tmp / "stdout.txt", "w") as out, open(tmp / "stderr.txt", "w") as err:
        run["proc"] = subprocess.Popen(cmd, cwd=clone, env=env, stdout=out, stderr=err, start_new_session=True)
    run["stdout"], run["stderr"] = tmp / "stdout.txt", tmp / "stderr.txt"
    try:
        yield run
    finally:
        if run["proc"].poll() is None:  # the session ended first (interrupted): nothing is left running
            os.killpg(run["proc"].pid, signal.SIGKILL)
            run["proc"].wait()
        run["recording"].close()  # a no-op once copied_smoke has closed it


@pytest.fixture(scope="session")
def copied_smoke(copied_smoke_started):
    """The copied checkout's smoke run (above), waited for: ``via`` (slurm / local; ``why`` not slurm), ``run``
    (the finished process), ``out``, ``results``, ``seconds``, ``checkout``; through SLURM also ``cmd``,
    ``logdir`` and ``jobs`` (every SLURM job's last record)."""
    import time

    h = copied_smoke_started
    rc = h["proc"].wait(timeout=3600)
    seconds = time.monotonic() - h["start"]
    h["recording"].close()  # the SLURM jobs' last records
    stdout, stderr = h["stdout"].read_text(), h["stderr"].read_text()
    return {**{k: v for k, v in h.items() if k not in ("proc", "stdout", "stderr", "start", "recording")},
            "run": subprocess.CompletedProcess(h["cmd"], rc, stdout, stderr), "out": stdout + stderr,
            "seconds": seconds}
