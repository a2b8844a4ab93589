"""The per-GPU memory model (saca.train.memory): hand-computed terms, DeepSpeed's own estimates, the 2B calibration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from saca import SacaError
from saca.train import memory
from saca.train.memory import ModelDims, Setup

ROOT = Path(__file__).resolve().parents[1]

# a toy model: 1,000 parameters, largest unit 100; 2 layers, hidden 10, MLP 20, kv 4; vision 1 layer of 6 / 12
TOY = ModelDims(name="toy", params=1000, largest_unit=100, layers=2, hidden=10, intermediate=20, kv_dim=4, vocab=50,
                vision_layers=1, vision_hidden=6, vision_intermediate=12, patches_per_frame=4, tokens_per_frame=3)


def test_model_states_by_strategy():
    s = Setup(world=4, bf16=True)
    assert memory.model_states(TOY, replace(s, sharding="none")) == {
        "weights": 4000, "grads": 4000, "optimizer": 8000, "step_temp": 4000, "compute": 2000}
    assert memory.model_states(TOY, replace(s, sharding="fsdp")) == {
        "weights": 1000, "grads": 1000, "optimizer": 2000, "step_temp": 1000, "compute": 600}  # 3 units x 2 B x 100
    assert memory.model_states(TOY, replace(s, sharding="fsdp", bf16=False))["compute"] == 1200
    assert memory.model_states(TOY, replace(s, sharding="none", bf16=False))["compute"] == 0
    z1 = memory.model_states(TOY, replace(s, sharding="zero1"))
    assert z1["weights"] + z1["grads"] + z1["optimizer"] == 2000 + 2000 + 4000  # 4N + 16N / W
    z0 = memory.model_states(TOY, replace(s, sharding="zero0"))
    assert z0["weights"] + z0["grads"] + z0["optimizer"] == 18000


def test_zero_stages_equal_deepspeeds_estimates():
    ds2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    ds3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
    for world in (1, 2, 4, 8):
        s = Setup(world=world, bf16=True)
        z2 = memory.model_states(TOY, replace(s, sharding="zero2"))
        _, gpu2 = ds2.estimate_zero2_model_states_mem_needs(TOY.params, world, 1, cpu_offload=False)
        assert z2["weights"] + z2["grads"] + z2["optimizer"] == pytest.approx(gpu2, abs=2)
        z3 = memory.model_states(TOY, replace(s, sharding="zero3"))
        _, gpu3, _ = ds3.estimate_zero3_model_states_mem_needs(TOY.params, TOY.largest_unit, world, 1, cpu_offload=False)
        assert z3["weights"] + z3["grads"] + z3["optimizer"] + z3["compute"] == pytest.approx(gpu3, abs=3)


def test_activation_kv_and_prefill_terms():
    assert memory.layer_activation_bytes(10, 20, 4) == 400 + 160 + 24
    s = Setup(job="rft", sharding="fsdp", bf16=True, micro_batch=2, frames=1, text_tokens=5, gen_tokens=2, G=2, groups=1)
    assert memory.seq_len(TOY, s) == 8  # 1 frame x 3 tokens + 5
    # rows 2 x (8 + 2) tokens x 2 layers x (K, V) x kv 4 x bf16
    assert memory.kv_cache_bytes(TOY, s) == 2 * 10 * 2 * 2 * 4 * 2
    assert memory.kv_cache_bytes(TOY, replace(s, sharding="none")) == 2 * 10 * 2 * 2 * 4 * 4  # fp32 weights generate
    assert memory.kv_cache_bytes(TOY, replace(s, gen_rows=1)) == 10 * 2 * 2 * 4 * 2
    # no checkpointing: tokens 16 x 584 x 2 layers + patches 8 x (240 + 96 + 36) x 1 layer, + logits 3 x 4 x 2 x 2 x 50
    assert memory.activation_bytes(TOY, replace(s, gradient_checkpointing=False)) == 16 * 584 * 2 + 8 * 372 + 2400
    # checkpointing: max(tokens 16 x (4 x 10 x 2 + 2 x 584) + patches 8 x 4 x 6 x 1, patches 8 x (24 + 2 x 372)) + logits
    assert memory.activation_bytes(TOY, s) == max(16 * (80 + 1168) + 8 * 24, 8 * (24 + 744)) + 2400
    # one row's prefill: 8 tokens x 2 x (40 + 60 + 8)
    assert memory.inference_bytes(TOY, s, 1) == 8 * 2 * 108


def test_phases_sum_their_terms_and_sharding_divides():
    s = Setup(job="rft", world=4, sharding="fsdp", bf16=True, micro_batch=1, frames=1, text_tokens=5, gen_tokens=2,
              G=2, groups=1)
    ph = memory.phases(TOY, s)
    assert set(ph) == {"train", "step", "rollout", "reference"}
    for terms in ph.values():
        assert terms["total"] == sum(v for k, v in terms.items() if k != "total")
    assert ph["rollout"]["generation_weights"] == 2000  # bf16 weights gathered for generation
    assert ph["train"]["reference"] == 500  # bf16 reference in 4 shards
    assert "rollout" not in memory.phases(TOY, replace(s, job="sft"))
    assert memory.phases(TOY, replace(s, job="sft"))["train"]["reference"] == 0
    first = memory.phases(TOY, replace(s, first_step=True))
    assert first["train"]["optimizer"] == 0 and first["step"]["optimizer"] == 2000
    with pytest.raises(SacaError, match="sharding 'zero9'"):
        memory.phases(TOY, replace(s, sharding="zero9"))


@pytest.mark.slow
def test_calibration_against_the_2b_measurement():
    """docs/rft.md: one RFT update at Qwen2-VL-2B shapes (B = 1, G = 8, bf16 autocast, gradient checkpointing,
    micro batch 4, no sharding, the first update) peaked at 49.5 GiB on an H200, while the benchmark held its own
    bf16 copy of the model (the rollout benchmark's policy)."""
    dims = memory.dims_of(memory.transformers_config("Qwen2-VL-2B-Instruct"), (224, 224))
    assert dims.params == 2_208_985_600  # benchmarks/sft_throughput.py's 2B shapes count the same
    assert dims.tokens_per_frame == 64
    s = Setup(job="rft", world=1, sharding="none", bf16=True, gradient_checkpointing=True, micro_batch=4, frames=16,
              text_tokens=120, gen_tokens=48, G=8, groups=1, first_step=True, extra_bytes=2 * dims.params)
    name, total = memory.peak(dims, s)
    assert name == "step"
    assert total == 24 * dims.params  # fp32 weights, grads, 2 moments, sqrt(v) temporary; bf16 reference and copy
    assert abs(total / 2**30 - 49.5) / 49.5 < 0.01


@pytest.mark.slow
def test_paper_config_fits_48_gb(capsys):
    from saca.cli import main

    assert main(["memory", "--config", str(ROOT / "config" / "paper.yaml"), "--limit-gb", "44"]) == 0
    out = capsys.readouterr().out
    assert "8.05 B parameters" in out and "12000 prompt tokens" in out
    jobs = [line for line in out.splitlines() if line.startswith(("| rft ", "| sft "))]
    assert len(jobs) == 2 * 16 and "rft g16_k3" in out  # both tables: SFT and every RFT variant
    assert all(line.endswith("| yes |") for line in jobs[:16])
    # the same jobs unsharded: far over (the 128 GB per GPU of fp32 states alone)
    assert main(["memory", "--config", str(ROOT / "config" / "paper.yaml"), "--sharding", "none"]) == 1
