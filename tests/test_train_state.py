"""saca.train.state: schedule, checkpoints (weights, optimizer, scheduler, RNG), journal, ranks, devices."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from saca import SacaError  # noqa: E402
from saca.train.state import (  # noqa: E402
    KILL_ENV,
    Checkpoints,
    Dist,
    Journal,
    file_sha256,
    make_scheduler,
    maybe_kill,
    param_groups,
    pick_device,
    seed_everything,
)

SRC = Path(__file__).resolve().parents[1] / "src"


# --- schedule ------------------------------------------------------------------------------------

def _factors(kind: str, total: int, warmup: int, steps: int | None = None) -> list[float]:
    """The multiplier of the peak learning rate at optimizer steps 0 .. steps (what the trainer applies)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
    sched = make_scheduler(opt, kind, total, warmup)
    out = []
    for _ in range((total if steps is None else steps) + 1):
        out.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_with_warmup_hand_values():
    f = _factors("cosine", 100, 3)
    assert f[0] == 0.0  # linear warm-up from 0
    assert abs(f[1] - 1 / 3) < 1e-12 and abs(f[2] - 2 / 3) < 1e-12
    assert f[3] == 1.0  # peak at the end of warm-up
    assert abs(f[3 + 97 // 2] - 0.5 * (1 + math.cos(math.pi * 48 / 97))) < 1e-12  # ~0.5 half way
    assert abs(f[3 + 97 // 2] - 0.5) < 0.02
    assert abs(f[100]) < 1e-12  # cosine to 0 at the last step
    assert all(a >= b for a, b in zip(f[3:], f[4:]))


def test_constant_schedule_with_warmup_hand_values():
    f = _factors("constant", 100, 3)
    assert f[:4] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert f[50] == 1.0 and f[100] == 1.0
    assert _factors("constant", 10, 0)[0] == 1.0  # no warm-up: the peak at once


def test_schedule_is_the_hf_cosine_with_warmup_exactly():
    """The formula SFT used before the schedule came from transformers: the same numbers, bit for bit."""

    def lr_factor(step, total, warmup, kind):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        if kind == "constant":
            return 1.0
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    for kind in ("cosine", "constant"):
        for total, warmup in [(100, 3), (24, 1), (7, 0), (5, 5), (1000, 30)]:
            opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            sched = make_scheduler(opt, kind, total, warmup)
            assert [sched.lr_lambdas[0](s) for s in range(total + 1)] == [
                lr_factor(s, total, warmup, kind) for s in range(total + 1)
            ]


def test_unknown_schedule_is_an_error():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(SacaError, match="linear"):
        make_scheduler(opt, "linear", 10, 1)


def test_param_groups_decay_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3)]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(4,), (4,), (4,)]


# --- seeds, devices, ranks -------------------------------------------------------------------------

def _draws():
    return float(torch.rand(1)), random.random(), float(np.random.rand())


def test_seed_everything_seeds_torch_python_numpy():
    seed_everything(5)
    a = _draws()
    seed_everything(5)
    assert _draws() == a
    seed_everything(6)
    assert _draws() != a


def test_pick_device():
    assert pick_device("cpu", 3, "x.device").type == "cpu"
    with pytest.raises(SacaError, match=r"rl\.device"):
        pick_device("tpu", 0, "rl.device")
    if not torch.cuda.is_available():
        assert pick_device("auto", 0, "x.device").type == "cpu"
        with pytest.raises(SacaError, match=r"sft\.device is 'cuda' but no CUDA device"):
            pick_device("cuda", 0, "sft.device")
    else:  # pragma: no cover - GPU machines
        assert pick_device("cuda", 0, "x.device") == torch.device("cuda", 0)


def test_dist_from_the_environment(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    d = Dist()
    assert (d.world, d.rank, d.local_rank, d.is_main) == (1, 0, 0, True)
    d.init("cpu")  # alone: no process group
    assert not torch.distributed.is_initialized()
    d.barrier()
    assert d.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = Dist()
    assert (d.world, d.rank, d.local_rank, d.is_main) == (4, 3, 1, False)
    assert d.all_reduce_sum([3]) == [3.0]  # no process group initialised: identity


def test_maybe_kill_sigkills_at_the_named_step_only():
    code = "from saca.train.state import maybe_kill\nfor s in range(1, 5):\n    maybe_kill(s)\n    print(s, flush=True)\n"
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[KILL_ENV] = "2"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["1"]
    os.environ.pop(KILL_ENV, None)
    maybe_kill(2)  # unset: nothing happens


# --- checkpoints -----------------------------------------------------------------------------------

def _objects(seed: int = 0, total: int = 20):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-2)
    sched = make_scheduler(opt, "cosine", total, 2)
    return model, opt, sched


def _train(model, opt, sched, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(5, 4)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def test_checkpoint_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = _objects()
    _train(model, opt, sched, 3)
    ckpts = Checkpoints(tmp_path / "ckpt", "fp1", keep=2)
    random.seed(11)
    np.random.seed(12)
    path = ckpts.save(3, model, opt, sched, {"seed": 7, "n_train": 40})
    assert path == tmp_path / "ckpt" / "step-000003"
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "optimizer.pt", "rng.pt", "scheduler.pt", "trainer_state.json",
    ]
    for name in ("optimizer.pt", "rng.pt", "scheduler.pt"):
        torch.load(path / name, weights_only=True)  # no unpickling of arbitrary objects
    after_save = _draws()
    lr_at_save = opt.param_groups[0]["lr"]
    _train(model, opt, sched, 2)  # what the run did next (it is then killed)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_lr = opt.param_groups[0]["lr"]

    seed_everything(99)  # a fresh process
    model2, opt2, sched2 = _objects(seed=1)
    state = Checkpoints(tmp_path / "ckpt", "fp1").resume(model2, opt2, sched2, torch.device("cpu"))
    digests = {n: file_sha256(path / n) for n in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")}
    assert state == {"step": 3, "fingerprint": "fp1", "seed": 7, "n_train": 40, "sha256": digests}
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == lr_at_save == sched2.get_last_lr()[0]
    assert _draws() == after_save  # torch, python and numpy generators where they were at the save
    # the resumed objects continue exactly as the original ones did
    _train(model2, opt2, sched2, 2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert opt2.param_groups[0]["lr"] == expected_lr
    assert sched2.last_epoch == sched.last_epoch == 5
    for (a, sa), (b, sb) in zip(opt.state.items(), opt2.state.items()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert float(sa["step"]) == float(sb["step"]) == 5


def test_checkpoints_keep_the_newest_and_ignore_incomplete_ones(tmp_path):
    model, opt, sched = _objects()
    ckpts = Checkpoints(tmp_path / "ckpt", "fp", keep=2)
    assert ckpts.list() == [] and ckpts.resume(model, opt, sched, "cpu") is None
    for step in (2, 4, 6):
        ckpts.save(step, model, opt, sched)
    assert [p.name for p in ckpts.list()] == ["step-000004", "step-000006"]
    (tmp_path / "ckpt" / "step-000008").mkdir()  # a checkpoint without trainer_state.json is not complete
    assert [p.name for p in ckpts.list()] == ["step-000004", "step-000006"]
    assert ckpts.resume(model, opt, sched, "cpu")["step"] == 6
    ckpts.clear()
    assert not (tmp_path / "ckpt").exists()


def test_checkpoints_of_another_fingerprint_are_deleted_not_resumed(tmp_path):
    model, opt, sched = _objects()
    Checkpoints(tmp_path / "ckpt", "old", keep=2).save(2, model, opt, sched)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model2, opt2, sched2 = _objects(seed=3)
    weights2 = {k: v.clone() for k, v in model2.state_dict().items()}
    assert Checkpoints(tmp_path / "ckpt", "new").resume(model2, opt2, sched2, "cpu") is None
    assert not (tmp_path / "ckpt").exists()
    assert all(torch.equal(v, weights2[k]) for k, v in model2.state_dict().items())  # nothing was loaded
    assert any(not torch.equal(v, before[k]) for k, v in model2.state_dict().items())


CKPT_FILES = ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # garbled: the same length, bytes in the middle overwritten
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(255 - b for b in data[mid : mid + 64]) + data[mid + 64 :])


@pytest.mark.parametrize("name", CKPT_FILES)
def test_a_corrupt_checkpoint_is_an_error_naming_the_file_in_one_line(tmp_path, name):
    model, opt, sched = _objects()
    path = Checkpoints(tmp_path / "ckpt", "fp").save(2, model, opt, sched)
    _damage(path / name, "truncated")
    objs = _objects(seed=5)
    before = {k: v.clone() for k, v in objs[0].state_dict().items()}
    with pytest.raises(SacaError) as err:
        Checkpoints(tmp_path / "ckpt", "fp").resume(*objs, "cpu")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert msg.startswith(str(path / name) + ": ")
    assert msg.endswith(f"no intact checkpoint in {tmp_path / 'ckpt'}: delete it to start afresh")
    assert all(torch.equal(v, before[k]) for k, v in objs[0].state_dict().items())  # nothing was loaded


@pytest.mark.parametrize("how", ["truncated", "garbled"])
@pytest.mark.parametrize("name", CKPT_FILES)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog, name, how):
    model, opt, sched = _objects()
    ckpts = Checkpoints(tmp_path / "ckpt", "fp", keep=3)
    _train(model, opt, sched, 2)
    ckpts.save(2, model, opt, sched)
    at_2 = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, opt, sched, 2)
    newest = ckpts.save(4, model, opt, sched)
    if how == "garbled" and name == "trainer_state.json":
        (newest / name).write_text('{"step": 4, "fingerprint": "fp"')  # a torn JSON
    else:
        _damage(newest / name, how)
    model2, opt2, sched2 = _objects(seed=5)
    with caplog.at_level("WARNING", logger="saca.train.state"):
        state = Checkpoints(tmp_path / "ckpt", "fp").resume(model2, opt2, sched2, "cpu")
    assert state["step"] == 2 and sched2.last_epoch == 2
    assert all(torch.equal(v, at_2[k]) for k, v in model2.state_dict().items())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings), warnings
    assert warnings[0].startswith(f"{newest / name}: ") and warnings[0].endswith("; falling back to step-000002")
    assert warnings[1] == f"{tmp_path / 'ckpt'}: resuming from step-000002, the newest intact checkpoint"


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    model, opt, sched = _objects()
    path = Checkpoints(tmp_path / "ckpt", "fp").save(2, model, opt, sched)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "evil": Path("x")}, path / "rng.pt")
    with pytest.raises(SacaError, match=re.escape(str(path / "rng.pt"))) as err:
        Checkpoints(tmp_path / "ckpt", "fp").resume(*_objects(), "cpu")
    assert "\n" not in str(err.value)


def test_other_ranks_write_nothing(tmp_path):
    model, opt, sched = _objects()
    Checkpoints(tmp_path / "ckpt", "fp", rank=1).save(2, model, opt, sched)
    assert not (tmp_path / "ckpt").exists()


# --- journal -----------------------------------------------------------------------------------------

def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_journal_start_log_finish(tmp_path):
    j = Journal(tmp_path, "train_log")
    assert (j.partial, j.final) == (tmp_path / "train_log.partial.jsonl", tmp_path / "train_log.jsonl")
    j.partial.write_text('{"step": 9}\n')  # a journal of an earlier attempt: a fresh start drops it
    j.start(0, "fp")
    assert not j.partial.exists()
    j.log({"event": "start", "step": 0, "fingerprint": "fp"})
    for step in (1, 2, 3):
        j.log({"step": step, "event": "train", "loss": 1.0 / step})
    assert j.partial.read_text().splitlines()[1] == '{"event": "train", "loss": 1.0, "step": 1}'  # sorted keys
    assert [r["step"] for r in j.rows()] == [0, 1, 2, 3]
    assert not j.final.exists()
    # a kill in the middle of a write, then a resume from the checkpoint of step 2
    with open(j.partial, "a", encoding="utf-8") as fh:
        fh.write('{"step": 4, "ev')
    j.start(2, "fp")
    assert [r["step"] for r in _lines(j.partial)] == [0, 1, 2]
    j.log({"step": 3, "event": "train"})
    j.finish()
    assert not j.partial.exists()
    assert [r["step"] for r in _lines(j.final)] == [0, 1, 2, 3]


def test_journal_resume_without_partial_starts_from_the_finished_log_of_the_same_settings(tmp_path):
    j = Journal(tmp_path, "rl_log")
    rows = [{"event": "start", "step": 0, "fingerprint": "fp"}, {"event": "train", "step": 2}, {"event": "train", "step": 4}]
    j.final.write_text("".join(json.dumps(r) + "\n" for r in rows))
    j.start(2, "fp")
    assert _lines(j.partial) == rows[:2]
    j.partial.unlink()
    j.start(2, "other")  # the finished log of other settings is not this run's
    assert _lines(j.partial) == []
    assert _lines(j.final) == rows  # the finished run's log is never rewritten by start


def test_journal_of_another_rank_writes_nothing(tmp_path):
    j = Journal(tmp_path, rank=1)
    j.start(0, "fp")
    j.log({"step": 1})
    j.finish()
    assert list(tmp_path.iterdir()) == []
