"""GRPO formulas and VLN-R1's Time-Decayed Reward (saca.train.grpo) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from saca import SacaError  # noqa: E402
from saca.sim.base import Action  # noqa: E402
from saca.train.grpo import (  # noqa: E402
    KL_MODES,
    LOSS_AGGREGATIONS,
    TDR_VARIANTS,
    aggregate,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    kl_reward_penalty,
    policy_ratio,
    time_decayed_reward,
)

EPS = 1e-4
TIGHT = dict(rel=1e-12, abs=1e-12)


def test_constants():
    assert TDR_VARIANTS == ("hard", "uniform", "linear", "time_decayed")
    assert KL_MODES == ("loss", "reward")
    assert LOSS_AGGREGATIONS == ("token_mean", "sequence_mean")


# --- group advantages -------------------------------------------------------------------------------------------------


def test_advantages_simple_group():
    # mean 0.5, population std 0.5
    adv, collapsed = group_advantages([1, 0, 0, 1], ["g"] * 4)
    assert adv.dtype == np.float64
    assert adv.tolist() == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, -0.5 / 0.5001, 0.5 / 0.5001], **TIGHT)
    assert collapsed == []


def test_advantages_ties_and_eps():
    # mean 2/3, std sqrt(((1/3)^2 * 2 + (2/3)^2) / 3) = sqrt(2)/3
    s = math.sqrt(2) / 3
    adv, _ = group_advantages([1.0, 1.0, 0.0], [7, 7, 7])
    assert adv.tolist() == pytest.approx([(1 / 3) / (s + EPS), (1 / 3) / (s + EPS), (-2 / 3) / (s + EPS)], **TIGHT)
    assert adv[0] == adv[1]
    adv0, _ = group_advantages([1.0, 1.0, 0.0], [7, 7, 7], eps=0.0)
    assert adv0.tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), -math.sqrt(2)], **TIGHT)


def test_advantages_zero_spread_and_single_member():
    adv, collapsed = group_advantages([0, 0, 1, 1, 0.3, 0.5, 0.5 + 1e-13], ["x", "x", "y", "y", "z", "w", "w"])
    assert np.all(adv == 0.0)
    assert collapsed == ["x", "y", "z", "w"]


def test_advantages_interleaved_groups_of_different_sizes():
    ids = ["a", "b", "a", "b", "a", "c"]
    adv, collapsed = group_advantages([1, 2, 0, 4, 2, 5], ids)
    sa = math.sqrt(2 / 3)  # group a: [1, 0, 2], mean 1
    sb = 1.0  # group b: [2, 4], mean 3
    expected = [0.0, -1 / (sb + EPS), -1 / (sa + EPS), 1 / (sb + EPS), 1 / (sa + EPS), 0.0]
    assert adv.tolist() == pytest.approx(expected, **TIGHT)
    assert adv[0] == 0.0 and adv[5] == 0.0
    assert collapsed == ["c"]


def test_advantages_bad_input():
    with pytest.raises(SacaError, match="group_ids"):
        group_advantages([1, 0, 1], ["a", "a"])
    with pytest.raises(SacaError, match="rewards"):
        group_advantages([[1, 0]], ["a"])
    with pytest.raises(SacaError, match="rewards"):
        group_advantages([1, float("nan")], ["a", "a"])
    with pytest.raises(SacaError, match="eps"):
        group_advantages([1, 0], ["a", "a"], eps=-1.0)
    with pytest.raises(SacaError, match=r"group_ids\[1\]"):
        group_advantages([1, 0], ["a", ["b"]])


# --- Time-Decayed Reward (VLN-R1 Eq. 9, Table 3d) -----------------------------------------------------------------------

TRUTH = [1, 2, 2, 3, 0, 1]  # n = 6
PRED = [1, 2, 3, 3, 1, 1]  # matches at k = 0, 1, 3, 5


def test_tdr_variants_hand_example():
    assert time_decayed_reward(PRED, TRUTH) == pytest.approx(1 + 0.9 + 0.9**3 + 0.9**5, **TIGHT)  # 3.21949
    assert time_decayed_reward(PRED, TRUTH, "time_decayed") == pytest.approx(3.21949, **TIGHT)
    assert time_decayed_reward(PRED, TRUTH, "time_decayed", gamma=0.5) == pytest.approx(1.65625, **TIGHT)
    assert time_decayed_reward(PRED, TRUTH, "uniform") == 4.0
    assert time_decayed_reward(PRED, TRUTH, "linear") == pytest.approx((6 + 5 + 3 + 1) / 6, **TIGHT)  # 2.5
    assert time_decayed_reward(PRED, TRUTH, "hard") == 0.0


def test_tdr_all_match_and_longer_prediction():
    longer = TRUTH + [2, 2]  # only the first n count
    for pred in (TRUTH, longer, [Action(a) for a in TRUTH]):
        assert time_decayed_reward(pred, TRUTH, "hard") == 1.0
        assert time_decayed_reward(pred, TRUTH, "uniform") == 6.0
        assert time_decayed_reward(pred, TRUTH, "linear") == pytest.approx(21 / 6, **TIGHT)
        assert time_decayed_reward(pred, TRUTH) == pytest.approx((1 - 0.9**6) / 0.1, **TIGHT)  # 4.68559


def test_tdr_short_prediction_and_unparseable():
    short = [1, 2, 2]  # positions 3..5 missing -> mismatches
    assert time_decayed_reward(short, TRUTH) == pytest.approx(2.71, **TIGHT)
    assert time_decayed_reward(short, TRUTH, "uniform") == 3.0
    assert time_decayed_reward(short, TRUTH, "linear") == pytest.approx(15 / 6, **TIGHT)
    assert time_decayed_reward(short, TRUTH, "hard") == 0.0
    assert time_decayed_reward([], TRUTH) == 0.0
    for variant in TDR_VARIANTS:
        assert time_decayed_reward(None, TRUTH, variant) == 0.0


def test_tdr_bad_input():
    with pytest.raises(SacaError, match="hard, uniform, linear, time_decayed"):
        time_decayed_reward(PRED, TRUTH, "exponential")
    with pytest.raises(SacaError, match="truth"):
        time_decayed_reward(PRED, [])
    with pytest.raises(SacaError, match="gamma"):
        time_decayed_reward(PRED, TRUTH, gamma=float("nan"))


# --- clipped surrogate ---------------------------------------------------------------------------------------------


def test_clipped_surrogate_cases_and_zero_gradient_when_clipped():
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1, 0.9, 1.5]
    adv = torch.tensor([[2.0, 2.0, -2.0, -2.0, 2.0, -2.0, 0.0]], dtype=torch.float64)
    old = torch.zeros(1, 7, dtype=torch.float64)
    logp = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_(True)
    loss, clipped = clipped_surrogate(logp, old, adv)
    expected = [
        -1.2 * 2,  # A > 0, rho 1.5: clipped at 1.2
        -0.5 * 2,  # A > 0, rho 0.5: min(0.5A, 0.8A) = 0.5A, unclipped
        -0.8 * -2,  # A < 0, rho 0.5: min(-1.0, -1.6) = 0.8A, clipped
        -1.5 * -2,  # A < 0, rho 1.5: min(-3.0, -2.4) = 1.5A, unclipped
        -1.1 * 2,  # inside the interval
        -0.9 * -2,  # inside the interval
        0.0,  # A = 0
    ]
    assert loss.detach().view(-1).tolist() == pytest.approx(expected, **TIGHT)
    assert clipped.view(-1).tolist() == [True, False, True, False, False, False, False]
    assert clipped.dtype == torch.bool
    loss.sum().backward()
    # d/dlogp (-rho * A) = -rho * A where unclipped; exactly 0 where clipped
    grad_expected = [0.0, -1.0, 0.0, 3.0, -2.2, 1.8, 0.0]
    assert logp.grad.view(-1).tolist() == pytest.approx(grad_expected, **TIGHT)
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 2].item() == 0.0


def test_clipped_surrogate_advantage_shapes():
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]], dtype=torch.float64))
    old = torch.zeros_like(logp)
    per_row = torch.tensor([1.0, -1.0], dtype=torch.float64)
    a, _ = clipped_surrogate(logp, old, per_row.view(2, 1))
    b, _ = clipped_surrogate(logp, old, per_row)  # (B,) taken as (B, 1)
    c, _ = clipped_surrogate(logp, old, per_row.view(2, 1).expand(2, 2))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert a.view(-1).tolist() == pytest.approx([-1.2, -1.0, 0.8, 1.0], **TIGHT)
    with pytest.raises(SacaError, match="advantages"):
        clipped_surrogate(logp, old, torch.ones(3))
    with pytest.raises(SacaError, match="old_logp"):
        clipped_surrogate(logp, old[:, :1], per_row)
    with pytest.raises(SacaError, match="eps_clip"):
        clipped_surrogate(logp, old, per_row, eps_clip=1.5)


def test_policy_ratio_detaches_old():
    logp = torch.tensor([0.0, -1.0], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([math.log(0.5), -1.0], dtype=torch.float64, requires_grad=True)
    rho = policy_ratio(logp, old)
    assert rho.tolist() == pytest.approx([2.0, 1.0], **TIGHT)
    rho.sum().backward()
    assert old.grad is None
    assert logp.grad.tolist() == pytest.approx([2.0, 1.0], **TIGHT)


# --- k3 KL ------------------------------------------------------------------------------------------------------------


def test_k3_kl():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        logp = torch.randn(64, 32, generator=g, dtype=dtype) * 3
        ref = torch.randn(64, 32, generator=g, dtype=dtype) * 3
        assert bool((k3_kl(logp, ref) >= 0).all())
        near = logp + torch.randn(64, 32, generator=g, dtype=dtype) * 1e-6
        assert bool((k3_kl(logp, near) >= 0).all())
        assert bool((k3_kl(logp, logp) == 0).all())
    hand = k3_kl(torch.tensor([0.0], dtype=torch.float64), torch.tensor([math.log(0.5)], dtype=torch.float64))
    assert hand.item() == pytest.approx(0.5 - math.log(0.5) - 1, **TIGHT)  # 0.19314718...


# --- aggregation ------------------------------------------------------------------------------------------------------


def test_aggregate_token_vs_sequence_mean():
    nan = float("nan")
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, nan, nan], [nan, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert aggregate(per_token, mask).item() == pytest.approx((1 + 2 + 3 + 4) / 4, **TIGHT)  # 2.5
    assert aggregate(per_token, mask, "sequence_mean").item() == pytest.approx((2 + 4) / 2, **TIGHT)  # 3.0
    assert aggregate(per_token, mask.bool(), "sequence_mean").item() == pytest.approx(3.0, **TIGHT)


def test_aggregate_empty_mask_keeps_graph():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    for mode in LOSS_AGGREGATIONS:
        out = aggregate(x, torch.zeros(1, 2), mode)
        assert out.item() == 0.0
        assert out.requires_grad
        out.backward()
        assert x.grad.tolist() == [[0.0, 0.0]]
        x.grad = None


def test_aggregate_bad_input():
    x = torch.ones(2, 3)
    with pytest.raises(SacaError, match="aggregation"):
        aggregate(x, torch.ones(2, 3), "batch_mean")
    with pytest.raises(SacaError, match="mask"):
        aggregate(x, torch.ones(2, 2))
    with pytest.raises(SacaError, match="mask"):
        aggregate(x, torch.full((2, 3), 0.5))


# --- GRPO loss ----------------------------------------------------------------------------------------------------------


def _batch():
    g = torch.Generator().manual_seed(1)
    logp0 = -torch.rand(2, 3, generator=g, dtype=torch.float64) * 2
    ref = logp0 + torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.3
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([0.5, -1.0], dtype=torch.float64)
    return logp0, ref, mask, adv


def test_grpo_loss_on_policy_equals_policy_gradient():
    logp0, ref, mask, adv = _batch()
    beta = 0.04
    logp = logp0.clone().requires_grad_(True)
    loss, stats = grpo_loss(logp, logp0.clone(), ref, adv, mask, beta=beta)
    # ratio exactly 1: surrogate = -A per token; token mean over 5 masked tokens = -(3*0.5 + 2*(-1))/5 = 0.1
    m = mask.bool().numpy()
    d = (ref - logp0).numpy()
    kl_hand = float(np.mean((np.exp(d) - d - 1)[m]))
    assert loss.item() == pytest.approx(0.1 + beta * kl_hand, rel=1e-12, abs=1e-14)
    assert stats["pg_loss"] == pytest.approx(0.1, **TIGHT)
    assert stats["kl"] == pytest.approx(kl_hand, **TIGHT)
    assert stats["clip_frac"] == 0.0
    assert stats["ratio_mean"] == 1.0
    assert set(stats) == {"pg_loss", "kl", "clip_frac", "ratio_mean"}
    assert all(isinstance(v, float) for v in stats.values())
    loss.backward()
    # same gradient as the plain policy gradient -(A * logp) plus beta * k3, aggregated
    logp2 = logp0.clone().requires_grad_(True)
    plain = aggregate(-(adv.view(2, 1) * logp2) + beta * k3_kl(logp2, ref), mask)
    plain.backward()
    assert torch.allclose(logp.grad, logp2.grad, rtol=0, atol=1e-15)
    assert logp.grad[1, 2].item() == 0.0  # padding gets no gradient

    # with ref == logp the KL term and its gradient vanish: pure policy gradient -A / 5 per masked token
    logp3 = logp0.clone().requires_grad_(True)
    loss3, stats3 = grpo_loss(logp3, logp0.clone(), logp0.clone(), adv, mask, beta=beta)
    assert loss3.item() == pytest.approx(0.1, **TIGHT)
    assert stats3["kl"] == 0.0
    loss3.backward()
    expected = torch.tensor([[-0.1, -0.1, -0.1], [0.2, 0.2, 0.0]], dtype=torch.float64)
    assert torch.allclose(logp3.grad, expected, rtol=0, atol=1e-15)


def test_grpo_loss_sequence_mean_and_clip_frac():
    # row 0: ratios 1.5, 1.0, 1.0 with A = 1 -> losses -1.2, -1, -1 (first clipped); row 1: ratio 0.5, A = -1 -> 0.8
    logp = torch.log(torch.tensor([[1.5, 1.0, 1.0], [0.5, 1.0, 1.0]], dtype=torch.float64))
    old = torch.zeros_like(logp)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, stats = grpo_loss(logp, old, None, adv, mask, beta=0.0, aggregation="sequence_mean")
    assert loss.item() == pytest.approx(((-1.2 - 1 - 1) / 3 + 0.8) / 2, **TIGHT)
    assert stats["clip_frac"] == pytest.approx(2 / 4, **TIGHT)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 1 + 1 + 0.5) / 4, **TIGHT)
    assert math.isnan(stats["kl"])  # no reference given
    loss_t, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert loss_t.item() == pytest.approx((-1.2 - 1 - 1 + 0.8) / 4, **TIGHT)


def test_grpo_loss_kl_mode_reward_excludes_kl():
    logp0, ref, mask, adv = _batch()
    old = logp0 - 0.05
    loss_l, stats_l = grpo_loss(logp0, old, ref, adv, mask, beta=0.04, kl_mode="loss")
    loss_r, stats_r = grpo_loss(logp0, old, ref, adv, mask, beta=0.04, kl_mode="reward")
    assert stats_r["kl"] == stats_l["kl"] > 0
    assert loss_r.item() == pytest.approx(stats_r["pg_loss"], **TIGHT)
    assert loss_l.item() == pytest.approx(stats_l["pg_loss"] + 0.04 * stats_l["kl"], **TIGHT)
    loss_n, _ = grpo_loss(logp0, old, None, adv, mask, beta=0.04, kl_mode="reward")
    assert loss_n.item() == loss_r.item()


def test_grpo_loss_bad_input():
    logp0, ref, mask, adv = _batch()
    with pytest.raises(SacaError, match="aggregation"):
        grpo_loss(logp0, logp0, ref, adv, mask, aggregation="sum")
    with pytest.raises(SacaError, match="kl_mode"):
        grpo_loss(logp0, logp0, ref, adv, mask, kl_mode="both")
    with pytest.raises(SacaError, match="ref_logp"):
        grpo_loss(logp0, logp0, None, adv, mask, beta=0.04)
    with pytest.raises(SacaError, match="beta"):
        grpo_loss(logp0, logp0, ref, adv, mask, beta=-0.1)


# --- KL folded into the rewards ------------------------------------------------------------------------------------------


def test_kl_reward_penalty():
    logps = [[-1.0, -2.0], [-0.5], []]
    refs = [[-1.5, -2.5], [-0.25], []]
    pen = kl_reward_penalty(logps, refs, beta=0.1)
    assert pen.dtype == np.float64
    # traj 0: mean(0.5, 0.5) = 0.5 -> 0.05; traj 1: -0.25 -> -0.025; traj 2: no tokens -> 0
    assert pen.tolist() == pytest.approx([0.05, -0.025, 0.0], **TIGHT)
    assert kl_reward_penalty(logps, refs, beta=0.0).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(SacaError, match="ref_logps"):
        kl_reward_penalty(logps, refs[:2], beta=0.1)
    with pytest.raises(SacaError, match=r"ref_logps\[1\]"):
        kl_reward_penalty(logps, [[-1.5, -2.5], [-0.25, -1.0], []], beta=0.1)
    with pytest.raises(SacaError, match="beta"):
        kl_reward_penalty(logps, refs, beta=-1.0)
