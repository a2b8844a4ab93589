"""FSDP2 sharding (saca.train.sharding) on CPU with gloo: a 2-process sharded run equals a 1-process unsharded run;
kill -9 in the middle of a step and resume gives the uninterrupted run's weights; the final model is one
save_pretrained folder. The runs are tests/sharding_worker.py under torchrun (4 AdamW steps of SFT's loss)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from saca.policy.tiny import TinyConfig, build_tiny_policy  # noqa: E402

WORKER = Path(__file__).resolve().parent / "sharding_worker.py"
STEPS = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(init, out, shard: bool, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1] / "src")}
    args = [str(WORKER), "--init", str(init), "--out", str(out), "--steps", str(STEPS)]
    if kill_at:
        args += ["--kill-at", str(kill_at)]
    if shard:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_port()), *args, "--shard"]
    else:
        cmd = [sys.executable, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _losses(proc) -> list[float]:
    return [float(line.split()[3]) for line in proc.stdout.splitlines() if line.startswith("step ")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    init = build_tiny_policy(root / "tiny", TinyConfig(seed=0))
    out = {"init": init}
    for name, shard in (("unsharded", False), ("sharded", True)):
        p = _run(init, root / name, shard)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = (root / name, p)
    killed = _run(init, root / "killed", True, kill_at=3)
    out["killed"] = (root / "killed", killed)
    out["resumed"] = (root / "killed", _run(init, root / "killed", True))
    return out


@pytest.mark.slow
def test_two_process_sharded_steps_equal_one_process_unsharded(runs):
    (d1, p1), (d2, p2) = runs["unsharded"], runs["sharded"]
    a, b, init = _weights(d1 / "final"), _weights(d2 / "final"), _weights(runs["init"])
    assert set(a) == set(b) == set(init)
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-4  # the steps changed the weights ...
    assert diff < 1e-5  # ... and both runs the same way, to float rounding
    # rollouts with the gathered weights generate what the unsharded model generates
    gen = [line for line in p1.stdout.splitlines() if line.startswith("generated")]
    assert gen and gen == [line for line in p2.stdout.splitlines() if line.startswith("generated")]
    l1, l2 = _losses(p1), _losses(p2)
    assert len(l1) == len(l2) == STEPS
    assert l1 == pytest.approx(l2, rel=1e-5)
    # the final model is one ordinary save_pretrained folder
    from saca.policy.model import load_policy

    pol = load_policy(d2 / "final")
    sd = {k: v for k, v in pol.model.state_dict().items()}
    assert any(torch.equal(v, b[k]) for k, v in sd.items() if k in b)


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_uninterrupted_weights(runs):
    d, killed = runs["killed"]
    assert killed.returncode != 0  # rank 0 SIGKILLed itself during step 3
    _, resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert ckpts == [f"step-{s:06d}" for s in range(1, STEPS + 1)]  # no partial checkpoint left behind
    assert _losses(killed) == _losses(runs["sharded"][1])[:2]
    assert _losses(resumed) == _losses(runs["sharded"][1])[2:]
    a, b = _weights(d / "final"), _weights(runs["sharded"][0] / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise


def test_wrap_needs_a_process_group_and_untied_embeddings(tmp_path):
    from saca import SacaError
    from saca.policy.model import load_policy
    from saca.train import sharding

    pol = load_policy(build_tiny_policy(tmp_path / "tiny", TinyConfig(seed=0)))
    assert not sharding.is_sharded(pol.model)
    with sharding.gathered_for_generation(pol.model):  # unsharded: nothing to gather
        pass
    with pytest.raises(SacaError, match="no process group"):
        sharding.wrap(pol.model)
    names = [type(m).__name__ for m in sharding.units(pol.model.model)]
    assert names.count("Embedding") == 1 and any(n.endswith("DecoderLayer") for n in names)
    assert any(n.endswith("VisionBlock") for n in names)
    sd = sharding.full_state_dict(pol.model)
    assert set(sd) == set(pol.model.state_dict())
    with pytest.raises(SacaError, match="not a complete sharded checkpoint"):
        sharding.load_checkpoint(tmp_path / "nowhere", pol.model, None)
