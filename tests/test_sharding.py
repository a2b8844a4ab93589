"""FSDP2 sharding (saca.train.sharding) on CPU with gloo: a 2-process sharded run equals a 1-process unsharded run;
kill -9 in the middle of a step and resume gives the uninterrupted run's weights; the final model is one
save_pretrained folder. The runs are tests/sharding_worker.py under torchrun (4 AdamW steps of SFT's loss).
Sharded RFT: `saca rft` itself under torchrun with rft.sharding fsdp against the unsharded trainer, killed and
resumed (the fixtures and command helpers of test_rft.py)."""

from __future__ import annotations

import json
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


# --- sharded RFT: the trainer itself (`saca rft` under torchrun, rft.sharding: fsdp) ------------------------------

def test_tied_embeddings_are_refused_naming_the_model(tmp_path):
    from saca import SacaError
    from saca.policy.model import load_policy
    from saca.train import sharding

    tiny = build_tiny_policy(tmp_path / "tiny", TinyConfig(seed=0))
    model = load_policy(tiny).model
    model.lm_head.weight = model.get_input_embeddings().weight  # what tie_word_embeddings does
    with pytest.raises(SacaError, match=rf"sharding fsdp: {tiny} ties its input and output embeddings"):
        sharding.wrap(model)  # refused before it asks for a process group


RFT_STEPS = 2


def _rft(run, out, nproc, env=None, **params):
    """``saca rft`` with test_rft's token rewards (its reward seam); ``run(out, **params)``: the command's arguments."""
    from test_rft import _cli

    return _cli(run(out, **params), env, nproc=nproc, rewards=True, tmp=out.parent)


@pytest.fixture(scope="module")
def saca_runs(mini_world, tmp_path_factory):
    """SACA on the mini world with test_saca's scripted decisions (the teacher's chunks, near-misses and
    wanderers: repair, L_rep, the rescue with L_align and L_con all run), a KL reference (beta 0.04, sharded),
    3 updates, micro batch 2: 1 process x 2 groups unsharded; 2 processes x 1 group sharded (the same groups:
    RftTrainer._pick; the scripted decisions draw nothing from the rank's seed)."""
    from saca.episodes import load_split
    from saca.io import write_jsonl
    from saca.landmarks import LandmarkConfig, extract_split
    from test_saca import PATCH, _saca_args

    root = tmp_path_factory.mktemp("rft_saca")
    tiny = build_tiny_policy(root / "tiny", TinyConfig(seed=0, image_size=28))
    lm = root / "train.jsonl"
    write_jsonl(lm, extract_split(load_split(mini_world["root"] / "mini_r2r" / "episodes", "train"), LandmarkConfig()))
    script = root / "saca_scripted.py"
    script.write_text(PATCH.format(tests=str(WORKER.parent)))

    def run(out, B, sharding, nproc):
        args = _saca_args(mini_world, tiny, out, lm)
        i = args.index("--params")
        args[i + 1] = json.dumps({**json.loads(args[i + 1]), "groups_per_step": B, "sharding": sharding,
                                  "micro_batch_size": 2})
        env = {**os.environ, "PYTHONPATH": str(WORKER.parents[1] / "src"), "OMP_NUM_THREADS": "1",
               "SACA_TEST_DUMP_GRAD": str(out.parent / f"{out.name}.grad.safetensors")}
        launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc_per_node={nproc}"]
        return subprocess.run([*launch, str(script), *args], env=env, capture_output=True, text=True, timeout=600)

    return {"tiny": tiny, "root": root, "one": run(root / "one", 2, "none", 1), "two": run(root / "two", 1, "fsdp", 2)}


@pytest.fixture(scope="module")
def online_runs(mini_world, tmp_path_factory):
    """Online GRPO with a KL reference and validation rollouts, 2 updates, micro batch 2, 2 processes x 1 group:
    unsharded (the flat gradient all-reduce) and sharded; the sharded run again, every rank SIGKILLed after
    update 1's checkpoint, then resumed. (Online rollouts draw from (seed, update, rank): 1 and 2 processes
    sample different rollouts, so the online pair is 2 processes either way.)"""
    from test_rft import _online_args

    root = tmp_path_factory.mktemp("rft_online")
    tiny = build_tiny_policy(root / "tiny", TinyConfig(seed=0, image_size=28))

    def args(out, sharding):
        return _online_args(mini_world, tiny, out, max_steps=RFT_STEPS, groups_per_step=1, micro_batch_size=2,
                            eval_episodes=1, sharding=sharding)

    out = {"tiny": tiny, "root": root}
    out["none"] = _rft(args, root / "none", 2, sharding="none")
    out["fsdp"] = _rft(args, root / "fsdp", 2, sharding="fsdp")
    out["killed"] = _rft(args, root / "killed", 2, {"SACA_TEST_KILL_AFTER_STEP": "1"}, sharding="fsdp")
    out["ckpts_after_kill"] = sorted(p.name for p in (root / "killed" / "checkpoints").iterdir())
    out["resumed"] = _rft(args, root / "killed", 2, sharding="fsdp")
    return out


def _train_rows(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "train"]


def _same_run(a_dir, b_dir, init, rel=1e-4, steps=RFT_STEPS):
    """The two runs' final weights agree to float rounding (and moved), their logged losses to ``rel``.

    AdamW's first steps move every weight by about ``lr`` whatever its gradient's size, so where a gradient is
    itself rounding noise (1e-8) the two runs may step differently: all but a handful of weights agree to 1e-6
    and none is off by more than 5 % of the distance the runs moved (seen in an offline pair: 10 of 435,968
    weights off by 1e-6 to 2e-5 after a 2e-3 move)."""
    a, b, w0 = _weights(a_dir / "final"), _weights(b_dir / "final"), _weights(init)
    assert set(a) == set(b) == set(w0)
    moved = max(float((a[k] - w0[k]).abs().max()) for k in a)
    assert moved > 1e-4
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 0.05 * moved
    off = sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a)
    assert off <= 1e-4 * sum(v.numel() for v in a.values())
    r1, r2 = _train_rows(a_dir), _train_rows(b_dir)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == list(range(1, steps + 1))
    for x, y in zip(r1, r2):
        assert (y["samples"], y["tokens_trained"]) == (x["samples"], x["tokens_trained"])
        assert y["reward_mean"] == pytest.approx(x["reward_mean"], rel=1e-12)  # soft scores summed in another order
        assert y["loss"] == pytest.approx(x["loss"], rel=rel, abs=1e-7)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=rel)


@pytest.mark.slow
def test_two_process_sharded_rft_update_equals_one_process_unsharded(saca_runs):
    root = saca_runs["root"]
    for k in ("one", "two"):
        assert saca_runs[k].returncode == 0, saca_runs[k].stderr[-3000:]
    # the first update's summed gradient: FSDP's reduce-scatter gives what 1 process accumulates
    from safetensors.torch import load_file

    g1, g2 = load_file(root / "one.grad.safetensors"), load_file(root / "two.grad.safetensors")
    assert set(g1) == set(g2) and sum(float(v.abs().sum()) for v in g1.values()) > 0
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-5, atol=1e-7), k
    _same_run(root / "one", root / "two", saca_runs["tiny"], steps=3)
    rows = _train_rows(root / "two")  # every term of SACA's objective trained on the shards
    for k in ("repair_successes", "rep_samples", "afr_groups", "align_samples", "con_pairs"):
        assert sum(r[k] for r in rows) > 0, k
    # the final model is one save_pretrained folder that the normal loader reads
    from saca.policy.model import load_policy

    b = _weights(root / "two" / "final")
    sd = load_policy(root / "two" / "final").model.state_dict()
    assert all(torch.equal(sd[k], b[k]) for k in b if k in sd)
    assert not list((root / "two" / "final").glob("*.distcp"))


@pytest.mark.slow
def test_sharded_online_rft_equals_unsharded_and_resumes_after_kill_9(online_runs):
    root = online_runs["root"]
    for k in ("none", "fsdp", "resumed"):
        assert online_runs[k].returncode == 0, online_runs[k].stderr[-3000:]
    # rollouts and validation decode with gathered weights, ranks run padded micro batches: the same run
    _same_run(root / "none", root / "fsdp", online_runs["tiny"])
    # kill -9 after update 1's (DCP) checkpoint, resume: the uninterrupted sharded run, bitwise
    assert online_runs["killed"].returncode != 0
    assert online_runs["ckpts_after_kill"] == ["step-000001"]  # no partial checkpoint
    assert list((root / "fsdp" / "final").glob("model*.safetensors"))
    a, b = _weights(root / "killed" / "final"), _weights(root / "fsdp" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows, full = _train_rows(root / "killed"), _train_rows(root / "fsdp")
    assert [r["step"] for r in rows] == [1, 2]  # the journal is not duplicated ...
    starts = [json.loads(x) for x in (root / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in starts if r["event"] == "start"] == [0, 1]  # ... and the rerun started at update 1
    assert [r["loss"] for r in rows] == [r["loss"] for r in full]
