"""SFT (VLN-R1 Eq. 8): exact loss, data order, learning, kill + resume, DeepSpeed ZeRO-2 on CPU (schedule: test_train_state.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from saca import SacaError  # noqa: E402
from saca.policy.data import PolicyData  # noqa: E402
from saca.policy.model import load_policy  # noqa: E402
from saca.policy.processor import IGNORE_INDEX  # noqa: E402
from saca.train.sft import KILL_ENV, SftConfig, SftTrainer, fill_deepspeed_config, sft_loss  # noqa: E402
from saca.policy.synthetic import make_vln_ego  # noqa: E402
from saca.policy.tiny import TinyConfig, build_tiny_policy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "init", TinyConfig(seed=0))


@pytest.fixture(scope="module")
def ego(tmp_path_factory):
    root = tmp_path_factory.mktemp("ego")
    return {
        "train": make_vln_ego(root / "train", episodes=4, steps=8, seed=1),
        "val": make_vln_ego(root / "val", episodes=2, steps=8, seed=2, prefix="val"),
    }


def small_cfg(**kw) -> SftConfig:
    base = dict(
        learning_rate=3e-3, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=12,
        save_steps=4, logging_steps=2, seed=7, val_samples=0, device="cpu", frame_cache=1000,
    )
    base.update(kw)
    return SftConfig(**base)


# --- VLN-R1 Eq. 8 ------------------------------------------------------------------------------

def test_eq8_is_the_summed_nll_of_the_answer_tokens_only(tiny_dir, ego):
    pol = load_policy(tiny_dir)
    data = PolicyData([ego["train"]])
    encs = [data.encode(pol.processor, i) for i in (0, 9, 17)]
    batch = pol.processor.collate(encs)
    nll, n = sft_loss(pol.model, batch)
    # independent reference: full forward, log-softmax, pick the answer tokens by position
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logp = torch.log_softmax(pol.model(**inputs).logits.float(), -1)
    ref, count = 0.0, 0
    for row, e in enumerate(encs):
        start = e.prompt_length
        assert all(lbl == IGNORE_INDEX for lbl in e.labels[:start])
        for pos in range(start, len(e.input_ids)):
            ref -= float(logp[row, pos - 1, e.input_ids[pos]])
            count += 1
    assert n == count == sum(len(e.input_ids) - e.prompt_length for e in encs)
    assert abs(float(nll.detach()) - ref) < 1e-3 * max(1.0, abs(ref))
    # changing a prompt token's label to a real id would change the loss: the mask is what excludes it
    batch2 = dict(batch)
    labels = batch["labels"].clone()
    labels[0, 5] = batch["input_ids"][0, 5]
    batch2["labels"] = labels
    nll2, n2 = sft_loss(pol.model, batch2)
    assert n2 == n + 1 and float(nll2.detach()) > float(nll.detach())


def test_gradient_does_not_depend_on_micro_batching(tiny_dir, ego):
    pol = load_policy(tiny_dir)
    data = PolicyData([ego["train"]])
    encs = [data.encode(pol.processor, i) for i in (1, 4, 12, 20)]
    n_all = sum(len(e.input_ids) - e.prompt_length for e in encs)

    def grads(groups):
        pol.model.zero_grad(set_to_none=True)
        for g in groups:
            nll, _ = sft_loss(pol.model, pol.processor.collate(g))
            (nll / n_all).backward()
        return torch.cat([p.grad.flatten() for p in pol.model.parameters() if p.grad is not None])

    whole = grads([encs])
    split = grads([encs[:1], encs[1:3], encs[3:]])
    assert torch.allclose(whole, split, atol=1e-6, rtol=1e-4)


def test_paper_defaults():
    c = SftConfig()
    assert (c.adam_beta1, c.adam_beta2, c.weight_decay, c.warmup_ratio, c.max_grad_norm) == (0.9, 0.999, 0.01, 0.03, 1.0)
    assert (c.num_train_epochs, c.gradient_accumulation_steps, c.learning_rate, c.lr_scheduler_type) == (2, 2, 5e-6, "cosine")


def test_data_order_is_a_function_of_seed_and_step(tiny_dir, ego, tmp_path):
    tr = SftTrainer(tiny_dir, [ego["train"]], tmp_path / "o", small_cfg())
    tr._setup()
    order = [tr.micro_batch_indices(s, m) for s in range(tr.steps_per_epoch) for m in range(2)]
    flat = [i for mb in order for i in mb]
    assert sorted(flat) == list(range(len(tr.train)))[: len(flat)] or len(set(flat)) == len(flat)
    assert len(set(flat)) == len(flat) == tr.steps_per_epoch * tr.global_batch
    tr2 = SftTrainer(tiny_dir, [ego["train"]], tmp_path / "o2", small_cfg())
    tr2._setup()
    assert [tr2.micro_batch_indices(s, m) for s in range(tr.steps_per_epoch) for m in range(2)] == order
    assert tr.micro_batch_indices(tr.steps_per_epoch, 0) != order[0]  # next epoch: a new permutation


# --- a full run: learning, log, final save, resume ---------------------------------------------

def read_log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_sft_lowers_validation_loss_and_writes_everything(tiny_dir, ego, tmp_path):
    out = tmp_path / "run"
    summary = SftTrainer(tiny_dir, [ego["train"]], out, small_cfg(max_steps=16), val_dirs={"val": ego["val"]}).run()
    assert summary["val_loss_after"]["val"] < 0.7 * summary["val_loss_before"]["val"]
    rows = read_log(out / "train_log.jsonl")
    train = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(2, 17, 2))
    for r in train:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s"} <= set(r)
        assert r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in rows if r["event"] == "val"] == [0, 16]
    final = out / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert json.loads((final / "sft_summary.json").read_text())["steps"] == 16
    assert not (out / "checkpoints").exists()  # removed after the final save unless keep_checkpoints
    load_policy(final)  # loads like any checkpoint


def test_freeze_vision_tower_trains_everything_but_the_vision_tower(tiny_dir, ego, tmp_path):
    SftTrainer(tiny_dir, [ego["train"]], tmp_path / "run", small_cfg(max_steps=4, freeze_vision_tower=True)).run()
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(tmp_path / "run" / "final" / "model.safetensors")
    same = {k for k in before if torch.equal(before[k], after[k])}
    visual = {k for k in before if ".visual." in f".{k}"}
    assert visual and same == visual  # every vision-tower tensor kept, every other tensor trained


def _run_cli(args, env_extra=None, threads=1):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop(KILL_ENV, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "saca", *args], env=env, capture_output=True, text=True, timeout=600)


def _sft_args(tiny_dir, ego, out, cfg: SftConfig):
    from dataclasses import asdict

    return ["sft", "--init", str(tiny_dir), "--train", str(ego["train"]), "--val", f"val={ego['val']}",
            "--out", str(out), "--params", json.dumps(asdict(cfg))]


@pytest.mark.slow
def test_fsdp_two_processes_killed_and_resumed_equal_one_process(tiny_dir, ego, tmp_path):
    """sft.sharding fsdp on 2 CPU processes (torchrun, gloo), killed with SIGKILL after step 3 and resumed from the
    sharded checkpoint of step 2, ends with the weights of one unsharded process over the same global batches."""
    one = small_cfg(max_steps=4, save_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    two = small_cfg(max_steps=4, save_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                    sharding="fsdp", keep_checkpoints=True)
    alone = _run_cli(_sft_args(tiny_dir, ego, tmp_path / "one", one))
    assert alone.returncode == 0, alone.stderr[-3000:]

    def torchrun(env_extra=None):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
        env.update({"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env_extra or {})})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "saca", *_sft_args(tiny_dir, ego, tmp_path / "two", two)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)

    killed = torchrun({KILL_ENV: "3"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").glob("step-*")) == ["step-000002"]
    assert (tmp_path / "two" / "checkpoints" / "step-000002" / "__1_0.distcp").is_file()  # rank 1's shard
    resumed = torchrun()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    init = load_file(tiny_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    la = [r["loss"] for r in read_log(tmp_path / "one" / "train_log.jsonl") if r["event"] == "train"]
    lb = [r["loss"] for r in read_log(tmp_path / "two" / "train_log.jsonl") if r["event"] == "train"]
    assert la == pytest.approx(lb, rel=1e-5)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tiny_dir, ego, tmp_path):
    cfg = small_cfg(max_steps=12, save_steps=4, keep_checkpoints=True)
    straight = _run_cli(_sft_args(tiny_dir, ego, tmp_path / "straight", cfg))
    assert straight.returncode == 0, straight.stderr[-3000:]
    # kill -9 right after step 6: the checkpoint of step 4 survives, steps 5-6 are lost
    killed = _run_cli(_sft_args(tiny_dir, ego, tmp_path / "killed", cfg), {KILL_ENV: "6"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "final").exists()
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000004"]
    resumed = _run_cli(_sft_args(tiny_dir, ego, tmp_path / "killed", cfg))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the log of the resumed run is the log of the uninterrupted one (timings aside)
    strip = lambda rows: [{k: v for k, v in r.items() if "per_s" not in k} for r in rows]  # noqa: E731
    la = strip(read_log(tmp_path / "straight" / "train_log.jsonl"))
    lb = strip(read_log(tmp_path / "killed" / "train_log.jsonl"))
    assert [r for r in lb if r["event"] != "start"] == [r for r in la if r["event"] != "start"]


def test_weights_are_bitwise_reproducible_at_the_workflows_thread_count(tiny_dir, ego, tmp_path):
    """The determinism claim of docs/policy.md: same config, seed and thread count -> identical weights.

    The thread count is pinned to the one the sft rule gives its job (``threads: 2`` ->
    ``OMP_NUM_THREADS=2``); the run records it, since another count changes float summation order."""
    repo = Path(__file__).resolve().parents[1]
    # the command the workflow runs (a dry run prints it): 2 threads, one process on the laptop default
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "2", "--nolock",
                        "--config", f"results={tmp_path / 'dry'}", "--", str(tmp_path / "dry" / "sft" / "r2r_rxr" / "final")],
                       cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OMP_NUM_THREADS=2 python -m saca sft" in r.stdout, r.stdout[-3000:]
    cfg = small_cfg(max_steps=6)
    runs = [_run_cli(_sft_args(tiny_dir, ego, tmp_path / f"run{i}", cfg), threads=2) for i in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_file(tmp_path / f"run{i}" / "final" / "model.safetensors") for i in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for i in range(2):
        summary = json.loads((tmp_path / f"run{i}" / "final" / "sft_summary.json").read_text())
        assert summary["torch_threads"] == 2


def test_checkpoints_of_another_configuration_are_not_resumed(tiny_dir, ego, tmp_path):
    out = tmp_path / "run"
    tr = SftTrainer(tiny_dir, [ego["train"]], out, small_cfg(max_steps=4, save_steps=2, keep_checkpoints=True))
    tr.run()
    assert (out / "checkpoints").exists()
    tr2 = SftTrainer(tiny_dir, [ego["train"]], out, small_cfg(max_steps=4, save_steps=2, learning_rate=1e-4))
    tr2.out.mkdir(exist_ok=True)
    tr2._setup()
    assert tr2._resume() == 0
    assert not (out / "checkpoints").exists()


def _live_log(out: Path) -> Path:
    """The log a run appends to while it trains."""
    return next(p for p in (out / "train_log.partial.jsonl", out / "train_log.jsonl") if p.exists())


def _killed_before_the_final_save(tiny_dir, split, out, cfg, monkeypatch):
    def killed(self, summary):
        raise KeyboardInterrupt  # what a kill -9 after the last step leaves: checkpoints and the log

    with monkeypatch.context() as m:
        m.setattr(SftTrainer, "save_final", killed)
        with pytest.raises(KeyboardInterrupt):
            SftTrainer(tiny_dir, [split], out, cfg).run()
    assert not (out / "final").exists() and (out / "checkpoints").exists()


def _starts(out: Path) -> list[dict]:
    return [r for r in read_log(out / "train_log.jsonl") if r["event"] == "start"]


def test_a_moved_checkout_resumes_and_logs_the_same_fingerprint(tiny_dir, ego, tmp_path, monkeypatch, caplog):
    """Issue 25: the resume identity is the content of the weights and data, not their paths."""
    import shutil

    a = tmp_path / "a"
    shutil.copytree(tiny_dir, a / "init")
    shutil.copytree(ego["train"], a / "train")
    cfg = small_cfg(max_steps=4, save_steps=2, logging_steps=1)
    SftTrainer(a / "init", [a / "train"], tmp_path / "straight", cfg).run()
    _killed_before_the_final_save(a / "init", a / "train", a / "run", cfg, monkeypatch)
    shutil.copytree(a, tmp_path / "b")  # a clone of the checkout at another path ...
    shutil.move(a, tmp_path / "c")  # ... and the checkout moved
    for root in ("b", "c"):
        out = tmp_path / root / "run"
        with caplog.at_level("INFO", logger="saca.train.state"):
            SftTrainer(tmp_path / root / "init", [tmp_path / root / "train"], out, cfg).run()
        assert "starting afresh" not in caplog.text
        assert f"resumed from {out / 'checkpoints' / 'step-000002'}" in caplog.text
        starts = _starts(out)
        assert [s["step"] for s in starts] == [0, 2]
        assert starts[0]["fingerprint"] == starts[1]["fingerprint"] == _starts(tmp_path / "straight")[0]["fingerprint"]
        x, y = load_file(out / "final" / "model.safetensors"), load_file(tmp_path / "straight" / "final" / "model.safetensors")
        assert all(torch.equal(x[k], y[k]) for k in x)
        caplog.clear()


def test_a_finished_run_whose_final_was_deleted_is_restored_not_retrained(tiny_dir, ego, tmp_path, monkeypatch):
    """Issue 25: the rerun Snakemake makes after its controller was killed (final/ deleted) keeps the result."""
    import shutil

    from saca.train import state as state_mod

    out = tmp_path / "run"
    cfg = small_cfg(max_steps=4, save_steps=2)
    SftTrainer(tiny_dir, [ego["train"]], out, cfg).run()
    weights = (out / "final" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "final")
    with monkeypatch.context() as m:
        m.setattr(SftTrainer, "validate", lambda self: (_ for _ in ()).throw(AssertionError("trained again")))
        summary = SftTrainer(tiny_dir, [ego["train"]], out, cfg).run()
    assert summary["steps"] == 4 and (out / "final" / "model.safetensors").read_bytes() == weights
    # other code (the rule's src input changed): trained again
    shutil.rmtree(out / "final")
    monkeypatch.setattr(state_mod, "code_digest", lambda command: "edited")
    calls = []
    real = SftTrainer.validate
    monkeypatch.setattr(SftTrainer, "validate", lambda self: calls.append(1) or real(self))
    SftTrainer(tiny_dir, [ego["train"]], out, cfg).run()
    assert calls and (out / "final" / "model.safetensors").read_bytes() == weights  # the same weights, retrained


def test_changed_init_weights_start_afresh(tiny_dir, ego, tmp_path, monkeypatch, caplog):
    import shutil

    from saca.policy.tiny import TinyConfig, build_tiny_policy

    shutil.copytree(tiny_dir, tmp_path / "init")
    cfg = small_cfg(max_steps=4, save_steps=2, logging_steps=1)
    _killed_before_the_final_save(tmp_path / "init", ego["train"], tmp_path / "run", cfg, monkeypatch)
    shutil.rmtree(tmp_path / "init")
    build_tiny_policy(tmp_path / "init", TinyConfig(seed=1))  # other weights at the same path
    with caplog.at_level("WARNING", logger="saca.train.state"):
        SftTrainer(tmp_path / "init", [ego["train"]], tmp_path / "run", cfg).run()
    assert "checkpoints come from another configuration; starting afresh" in caplog.text
    assert [s["step"] for s in _starts(tmp_path / "run")] == [0]


def test_resume_drops_a_torn_last_log_line(tiny_dir, ego, tmp_path, monkeypatch):
    cfg = small_cfg(max_steps=4, save_steps=2, logging_steps=1)
    SftTrainer(tiny_dir, [ego["train"]], tmp_path / "straight", cfg).run()
    out = tmp_path / "killed"
    _killed_before_the_final_save(tiny_dir, ego["train"], out, cfg, monkeypatch)
    with open(_live_log(out), "a", encoding="utf-8") as fh:
        fh.write('{"event": "train", "epoch": 0.5, "gra')  # kill -9 in the middle of a write
    SftTrainer(tiny_dir, [ego["train"]], out, cfg).run()
    strip = lambda rows: [{k: v for k, v in r.items() if "per_s" not in k} for r in rows if r["event"] != "start"]  # noqa: E731
    assert strip(read_log(out / "train_log.jsonl")) == strip(read_log(tmp_path / "straight" / "train_log.jsonl"))


def test_log_corrupt_in_the_middle_names_file_and_line(tiny_dir, ego, tmp_path, monkeypatch):
    cfg = small_cfg(max_steps=4, save_steps=2, logging_steps=1)
    out = tmp_path / "killed"
    _killed_before_the_final_save(tiny_dir, ego["train"], out, cfg, monkeypatch)
    live = _live_log(out)
    live.write_text("not json\n" + live.read_text())
    with pytest.raises(SacaError, match=rf"{re.escape(str(live))}:1: malformed journal line"):
        SftTrainer(tiny_dir, [ego["train"]], out, cfg).run()


def test_failed_rerun_keeps_the_finished_runs_records(tiny_dir, tmp_path):
    split = make_vln_ego(tmp_path / "ego", episodes=4, steps=8, per_shard=1)
    out = tmp_path / "run"
    cfg = small_cfg(max_steps=4, logging_steps=1)
    SftTrainer(tiny_dir, [split], out, cfg).run()
    log_before = (out / "train_log.jsonl").read_bytes()
    assert len(log_before.splitlines()) == 7  # start, val before, 4 x train, val after
    final_before = {p.name: p.read_bytes() for p in (out / "final").iterdir()}
    (split / "frames" / "shard-00003.parquet").unlink()
    with pytest.raises(SacaError, match=r"VLN-Ego sample ep3:\d+: frame shard .*shard-00003.parquet does not exist"):
        SftTrainer(tiny_dir, [split], out, cfg).run()
    assert (out / "train_log.jsonl").read_bytes() == log_before
    assert {p.name: p.read_bytes() for p in (out / "final").iterdir()} == final_before
    assert sorted(p.name for p in out.iterdir()) == ["final", "finished", "train_log.jsonl"]


# --- bad input ---------------------------------------------------------------------------------

def test_missing_frame_shard_fails_sft_naming_the_sample(tiny_dir, tmp_path):
    split = make_vln_ego(tmp_path / "ego", episodes=2, steps=6, per_shard=1)
    (split / "frames" / "shard-00000.parquet").unlink()
    with pytest.raises(SacaError, match=r"VLN-Ego sample ep0:\d+: frame shard"):
        SftTrainer(tiny_dir, [split], tmp_path / "o", small_cfg(max_steps=2)).run()


def test_too_few_samples_and_bad_init(tiny_dir, tmp_path):
    split = make_vln_ego(tmp_path / "ego", episodes=1, steps=3)
    with pytest.raises(SacaError, match="fewer than one global batch"):
        SftTrainer(tiny_dir, [split], tmp_path / "o", small_cfg(per_device_train_batch_size=8)).run()
    with pytest.raises(SacaError, match=str(tmp_path / "missing")):
        SftTrainer(tmp_path / "missing", [split], tmp_path / "o", small_cfg()).run()


def test_unknown_sft_key_gets_a_hint():
    from saca.config import from_dict

    with pytest.raises(SacaError, match="did you mean 'learning_rate'"):
        from_dict(SftConfig, {"learning_rte": 1e-3}, "sft")


# --- DeepSpeed ---------------------------------------------------------------------------------

def test_deepspeed_configs_are_filled_from_the_sft_section():
    for stage in (2, 3):
        ds = json.loads((REPO / "config" / "deepspeed" / f"zero{stage}.json").read_text())
        assert ds["zero_optimization"]["stage"] == stage
        filled = fill_deepspeed_config(ds, SftConfig(per_device_train_batch_size=1, gradient_accumulation_steps=2), 8, "cuda")
        assert filled["train_batch_size"] == 16  # the paper's global batch: 8 GPUs x 1 x 2
        assert filled["gradient_clipping"] == 1.0 and filled["bf16"]["enabled"] is False
    with pytest.raises(SacaError, match="train_batch_size"):
        fill_deepspeed_config({"train_batch_size": 3}, SftConfig(), 1, "cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deepspeed_zero2_runs_on_cpu_world_size_1(tiny_dir, ego, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install '.[train]'); the ZeRO path is untested here")
    cfg = small_cfg(max_steps=6, save_steps=3, deepspeed=str(REPO / "config" / "deepspeed" / "zero2.json"))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"}
    res = _run_cli(_sft_args(tiny_dir, ego, tmp_path / "ds", cfg), env)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads((tmp_path / "ds" / "final" / "sft_summary.json").read_text())
    assert summary["val_loss_after"]["val"] < summary["val_loss_before"]["val"]
    # same run without DeepSpeed: ZeRO-2 on one rank is plain AdamW on flattened fp32 buffers
    plain = _run_cli(_sft_args(tiny_dir, ego, tmp_path / "plain", small_cfg(max_steps=6, save_steps=3)))
    assert plain.returncode == 0, plain.stderr[-3000:]
    a = load_file(tmp_path / "ds" / "final" / "model.safetensors")
    b = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, float((a[k] - b[k]).abs().max()))
