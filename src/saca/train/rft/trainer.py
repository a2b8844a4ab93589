"""The RFT trainer: the loop around the stages (SACA Table 2 row 1's online GRPO, SACA, VLN-R1's offline RFT).

One update (``rft.max_steps`` of them), on every rank, as :meth:`RftTrainer.update` reads:

1. **collect** (:mod:`saca.train.rft.collect`): this rank's B = ``groups_per_step`` groups of G rollouts
   (online) or generations (offline), their outcome rewards from the reward seam, and (online) SACA's
   group construction (:mod:`saca.train.rft.groups`: audit, routing, ``repair_resample``, the rescue,
   ``alignment_samples``, ``contrastive_pair``);
2. **advantages** (:func:`saca.train.rft.objective.advantages`): group-normalised, the rescue's process
   advantages in their place; collapsed groups give no gradient; ``kl_mode: reward`` lowers the rewards first;
3. **objective** (:func:`saca.train.rft.objective.objective`): ``L = L_GRPO + lambda_rep L_rep + lambda_align
   L_align + lambda_con L_con``, back-propagated micro batch by micro batch (:meth:`RftTrainer.backward`);
   ``num_iterations`` optimizer steps reuse one batch (``pi_old`` the policy that sampled it);
4. gradients summed over ranks, clipped at ``max_grad_norm``, AdamW step, schedule step; the log row's sums
   reduced by name (:func:`reduce_by_name`).

``rft.sharding: fsdp`` under torchrun (docs/memory.md): the policy and the reference are torch FSDP2 shards
(:mod:`saca.train.sharding`); rollouts and validation decode inside ``gathered_for_generation``; every rank runs
as many forward / backward passes as the busiest one (sharded forwards are collective; the extra passes are
padding with a zero loss); FSDP reduce-scatters the summed gradient; checkpoints are DCP shards. Alone
(``WORLD_SIZE`` 1) ``fsdp`` is the unsharded path.

Around the loop (:meth:`RftTrainer.run`): checkpoints (model, optimizer, scheduler, RNG;
:meth:`RftTrainer.resume` / :meth:`RftTrainer.save_checkpoint`; resume continues exactly, every random draw of
an update being a function of ``(seed, update, rank)``), the JSONL journal (one row per update), success rate on
a fixed validation subset every ``eval_steps`` updates (the data of SACA Fig. 5), a non-finite loss stops the
run with the last good checkpoint kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from saca import SacaError
from saca.io import atomic_dir, dumps_json, ensure_dir
from saca.policy.generate import SamplingConfig
from saca.train import grpo
from saca.train.rft.collect import Batch, RewardFn, collect_offline, collect_online, default_reward
from saca.train.rft.config import RftConfig
from saca.train.rft.groups import SACA_COUNTS, construct_groups
from saca.train.rft.objective import (advantages, cloning_term, contrastive_term, grpo_term, kl_reward_advantages,
                                      objective)
from saca.train.rft.samples import Sample, option_logprobs, token_logprobs
from saca.train.state import Checkpoints, Dist, FinishedRun, Journal, content_digest, fingerprint, make_scheduler, maybe_kill, param_groups, pick_device, seed_everything

log = logging.getLogger(__name__)

GRAD_DUMP_ENV = "SACA_TEST_DUMP_GRAD"  # test hook: write the first update's summed gradient (safetensors) here
TERMS = ("grpo", "rep", "align", "con")  # the objective's terms, as objective()'s arguments
TERM_LOGS = {"rep": "rep_loss", "align": "align_loss", "con": "con_loss"}  # their names in the log row (L_GRPO: loss)


def reduce_by_name(dist: Dist, sums: dict, device=None) -> dict:
    """``{name: value}`` summed over the ranks by name, in one all-reduce of the values stacked in name order
    (every rank passes the same names)."""
    names = sorted(sums)
    return dict(zip(names, dist.all_reduce_sum([sums[k] for k in names], device)))


class RftTrainer:
    """One RFT run: SFT checkpoint -> ``out_dir/final``. See the module docstring."""

    def __init__(self, init: str, ref: str | None, out_dir, cfg: RftConfig, agent_cfg, train_data: dict,
                 val_episodes: dict | None = None, sim_args: dict | None = None, vln_ego_dirs: Sequence[str] = (),
                 landmarks: dict | None = None, reward: RewardFn | None = None):
        """``train_data``: dataset -> list of training episodes (online); ``val_episodes``: dataset -> episodes of
        the validation subset; ``sim_args``: dataset -> (SimConfig, DatasetConfig, scenes_dir);
        ``vln_ego_dirs``: VLN-Ego training splits (offline); ``landmarks``: dataset -> {episode id: landmarks}
        of the training episodes (the ``landmarks`` rule's output; needed when the auditor runs); ``reward``: the
        outcome reward (:mod:`saca.train.rft.collect`; default: success online, the Time-Decayed Reward offline)."""
        self.init = str(init)
        self.ref_path = str(ref) if ref else self.init
        self.out = Path(out_dir)
        self.cfg = cfg
        self.agent_cfg = agent_cfg
        self.train_data = train_data
        self.val_episodes = val_episodes or {}
        self.sim_args = sim_args or {}
        self.vln_ego_dirs = [str(d) for d in vln_ego_dirs]
        self.landmarks = landmarks or {}
        self.dist = Dist()
        self.sims: dict = {}
        self.auditor = None
        self.reward = reward if reward is not None else default_reward(cfg)
        self.fsdp = cfg.sharding == "fsdp" and self.dist.world > 1  # alone, fsdp is the unsharded path
        self._pad_sample = None  # the sample padding passes run on (sharded forwards are collective)

    # --- setup --------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the policy (and the frozen reference), the training pool, the auditor, optimizer, schedule,
        checkpoints and journal."""
        import torch

        from saca.policy.model import load_policy

        cfg = self.cfg
        seed_everything(cfg.seed)
        self.device = pick_device(cfg.device, self.dist.local_rank, "rft.device")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # before the process group: NCCL collectives use the current device
        self.dist.init(self.device.type)
        self.policy = load_policy(self.init, dtype="float32", device=str(self.device))
        self.model = self.policy.model
        self.proc = self.policy.processor
        self.model.config.use_cache = False
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.ref = None
        if cfg.beta > 0:
            self.ref = load_policy(self.ref_path, dtype="bfloat16" if cfg.bf16 else "float32", device=str(self.device))
            check_same_architecture(self.policy, self.ref, self.init, self.ref_path)
            self.ref.model.requires_grad_(False)
            self.ref.model.eval()
        if cfg.mode == "online":
            self.pool = [(ds, ep) for ds in sorted(self.train_data) for ep in self.train_data[ds]]
            if not self.pool:
                raise SacaError("rft: no training episodes (rft.datasets and their train splits)")
            if cfg.uses_auditor:
                from saca.auditor.auditor import Auditor

                for ds, ep in self.pool:
                    lms = self.landmarks.get(ds)
                    if lms is None:
                        raise SacaError(f"rft: the auditor needs the landmarks of dataset '{ds}' (--landmarks {ds}=FILE, "
                                        "the landmarks rule's train split)")
                    if ep.episode_id not in lms and str(ep.episode_id) not in lms:
                        raise SacaError(f"rft: the landmarks of dataset '{ds}' have no row for training episode "
                                        f"{ep.episode_id!r} (regenerate the landmarks file)")
                self.auditor = Auditor(cfg.auditor)
        else:
            from saca.policy.data import PolicyData

            if not self.vln_ego_dirs:
                raise SacaError("rft.mode offline needs VLN-Ego training splits (--vln-ego)")
            self.data = PolicyData(self.vln_ego_dirs, self.agent_cfg.n_actions)
            for part in self.data.parts:
                part.check_frames()
            self.pool = list(range(len(self.data)))
        self.model.train()
        if self.fsdp:  # shards of the fp32 policy (bf16 forwards under rft.bf16) and of the frozen reference
            from saca.train import sharding

            sharding.wrap(self.model, bf16=cfg.bf16)
            if self.ref is not None:
                sharding.shard_reference(self.ref.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.learning_rate,
                                           betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
        self.total_opt_steps = cfg.max_steps * cfg.num_iterations
        self.scheduler = make_scheduler(self.optimizer, cfg.lr_scheduler_type, self.total_opt_steps,
                                        math.ceil(cfg.warmup_ratio * self.total_opt_steps))
        self.fingerprint = self._fingerprint()
        self.ckpts = Checkpoints(self.out / "checkpoints", self.fingerprint, keep=cfg.save_total_limit,
                                 rank=self.dist.rank, world=self.dist.world)
        self.journal = Journal(self.out, rank=self.dist.rank)

    def _fingerprint(self) -> str:  # settings and content (weights, data, simulator settings), not paths
        init = content_digest(self.init)
        data = {"cfg": self.cfg.fingerprint_dict(), "agent": {k: v for k, v in asdict(self.agent_cfg).items() if k not in ("device", "record_decisions", "record_tokens", "name")}, "init": init,
                "ref": init if self.ref_path == self.init else content_digest(self.ref_path), "world": self.dist.world,
                "pool": len(self.pool), "data": [self.train_data, self.landmarks] if self.cfg.mode == "online" else [content_digest(d) for d in self.vln_ego_dirs],
                "sim": {ds: a[:2] for ds, a in self.sim_args.items()}}
        return fingerprint(data)

    def _sim(self, dataset: str, slot, instance: bool = False):
        key = (dataset, slot)
        if key not in self.sims:
            from dataclasses import replace

            from saca.sim import dataset_sim_config, make_simulator

            sim_cfg, ds_cfg, scenes = self.sim_args[dataset]
            sim_cfg = dataset_sim_config(sim_cfg, ds_cfg, f"datasets.{dataset}")  # the dataset's sim overrides
            if instance and not sim_cfg.instance:  # the oracle auditor reads the instance channel
                sim_cfg = replace(sim_cfg, instance=True)
            self.sims[key] = make_simulator(ds_cfg.backend, sim_cfg, ds_cfg.turn_angle, scenes)
        return self.sims[key]

    def _seed(self, update: int, salt: int = 0) -> int:
        """The seed of every random draw of ``update`` on this rank: a function of (seed, update, rank)."""
        return int(np.random.default_rng([self.cfg.seed, update, self.dist.rank, salt]).integers(2**31 - 1))

    # --- sampling ---------------------------------------------------------------------------
    def _pick(self, update: int) -> list[tuple[int, int]]:
        """``(global group index, pool index)`` of this rank's B instructions of ``update``.

        The pool is visited in epochs of a seeded permutation; group ``j`` of the whole update
        (all ranks) is ``update * world * B + rank * B + k``, so how groups are spread over ranks
        does not change which instructions an update trains on."""
        B, n = self.cfg.groups_per_step, len(self.pool)
        out = []
        for k in range(B):
            j = (update * self.dist.world + self.dist.rank) * B + k
            epoch, r = divmod(j, n)
            out.append((j, int(np.random.default_rng([self.cfg.seed, epoch]).permutation(n)[r])))
        return out

    def collect(self, update: int) -> Batch:
        """Stage 1: this rank's samples of ``update`` with their rewards (the reward seam) and, online, SACA's
        group construction (audit, routing, repair, rescue; SACA §3.2-3.3)."""
        from saca.train.rollout import release

        cfg = self.cfg
        self.model.eval()
        with self._gathered():  # sharded: whole bf16 weights while decoding (ranks decode different lengths)
            if cfg.mode == "online":
                oracle = self.auditor is not None and cfg.auditor.backend == "oracle"
                engine = self._engine(self._seed(update), audit_frames=self.auditor is not None)
                starts = ((j, *self.pool[i], self._sim(self.pool[i][0], b, instance=oracle))  # lazily: one sim per group
                          for b, (j, i) in enumerate(self._pick(update)))
                batch = collect_online(engine, starts, cfg.G)
                batch.rewards = [float(r) for r in self.reward(batch)]
                batch.saca = construct_groups(engine, batch.trajectories, batch.rewards, cfg, self.proc.tokenizer,
                                              self.auditor, self._landmarks)
                batch.rewards = batch.saca.rewards
                release(batch.trajectories)
                batch.trajectories = None
            else:
                batch = collect_offline(self.policy, self.data, self._pick(update), cfg.G, cfg.generation, cfg.seed, update)
                batch.rewards = [float(r) for r in self.reward(batch)]
                best = [grpo.time_decayed_reward(t, t, cfg.tdr, cfg.gamma) for t in batch.truths]
                batch.stats["success_rate"] = float(np.mean([r >= b for r, b in zip(batch.rewards, best)]))
        self.model.train()
        return batch

    def _gathered(self):
        """Sharded: the policy's units all-gathered for a block of decoding (``sharding.gathered_for_generation``):
        no collective per decode step, so ranks may run different numbers of generate calls. Unsharded: nothing."""
        if not self.fsdp:
            return contextlib.nullcontext()
        from saca.train import sharding

        return sharding.gathered_for_generation(self.model)

    def _engine(self, seed: int, generation: SamplingConfig | None = None, audit_frames: bool = False):
        from dataclasses import replace

        from saca.train.rollout import RolloutEngine

        acfg = replace(self.agent_cfg, generation=generation or self.cfg.generation)
        return RolloutEngine(self.policy, acfg, make_sim=None, seed=seed, audit_frames=audit_frames)

    def _landmarks(self, tr) -> list[str]:
        lms = self.landmarks[tr.dataset]
        return lms.get(tr.episode.episode_id, lms.get(str(tr.episode.episode_id)))

    # --- log-probs ----------------------------------------------------------------------------
    def _logprobs(self, model, samples: Sequence[Sample]):
        from saca.policy.generate import logprob_temperature

        return token_logprobs(model, self.proc, [s.encoded for s in samples], [s.token_ids for s in samples],
                              logprob_temperature(self.cfg.generation))

    def _micro(self, samples):
        mb = self.cfg.micro_batch_size
        return [samples[i : i + mb] for i in range(0, len(samples), mb)]

    def _padding(self, n: int) -> int:
        """How many padding forward passes this rank adds to its ``n``: sharded forwards are collective (each unit
        all-gathers, each backward reduce-scatters), so every rank runs the busiest rank's number; 0 unsharded."""
        if not self.fsdp:
            return 0
        import torch

        t = torch.tensor([n], dtype=torch.long, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        pad = int(t.item()) - n
        if pad and self._pad_sample is None:
            raise SacaError(f"rft rank {self.dist.rank}: no sample to run the padding forward passes on")
        return pad

    def _autocast(self):
        import torch

        if self.cfg.bf16 and not self.fsdp:  # FSDP: bf16 forwards through its MixedPrecisionPolicy
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fill_reference_logprobs(self, samples: list[Sample], need_old: bool, need_ref: bool, keep_old: bool) -> None:
        """Log-probs of every sample under the policy before this batch's first step (``behav_logp``; it is
        ``pi_old`` when ``keep_old``) and under the frozen reference, computed as the loss computes them."""
        import torch

        mbs = self._micro(samples)
        if need_old or (need_ref and self.ref is not None):
            mbs += [[] for _ in range(self._padding(len(mbs)))]  # sharded: padding passes, their results dropped
        with torch.no_grad(), self._autocast():
            for mb in mbs:
                if need_old:
                    lp, mask = self._logprobs(self.model, mb or [self._pad_sample])
                    for s, row, m in zip(mb, lp, mask):
                        s.behav_logp = row[: int(m.sum())].detach().float().cpu()
                        if keep_old:
                            s.old_logp = s.behav_logp
                if need_ref and self.ref is not None:
                    lp, mask = self._logprobs(self.ref.model, mb or [self._pad_sample])
                    for s, row, m in zip(mb, lp, mask):
                        s.ref_logp = row[: int(m.sum())].detach().float().cpu()
        if self.fsdp:  # FSDP's roots stay gathered after a forward without backward: give the memory back
            from saca.train import sharding

            sharding.reshard(self.model)
            if self.ref is not None:
                sharding.reshard(self.ref.model)

    # --- the objective's gradient -------------------------------------------------------------
    def shares(self, samples: Sequence[Sample], saca, counts: dict):
        """Every micro batch's share of every term of the objective, in turn: ``(term, share, stats)`` with the
        graph (``L_GRPO`` over ``samples``, then ``L_rep``, ``L_align``, ``L_con`` over ``saca``'s samples; a
        term with weight 0 is not computed). ``counts``: the update's global counts (every rank)."""
        from saca.policy.generate import logprob_temperature

        cfg = self.cfg
        ref_on = self.ref is not None and cfg.beta > 0
        plan = [("grpo", mb) for mb in self._micro(list(samples))]
        for term, items, lam in (("rep", saca.rep, cfg.lambda_rep), ("align", saca.align, cfg.lambda_align),
                                 ("con", saca.con, cfg.lambda_con)):
            if lam > 0 and items:
                plan += [(term, mb) for mb in self._micro(items)]
        plan += [("pad", [self._pad_sample]) for _ in range(self._padding(len(plan)))]
        for term, mb in plan:
            with self._autocast():
                if term == "con":
                    teacher, taken = option_logprobs(self.model, self.proc, mb, logprob_temperature(cfg.generation))
                else:
                    logp, mask = self._logprobs(self.model, mb)
            if term == "grpo":
                share, st = grpo_term(logp, mask, mb, cfg, ref_on, max(counts["tokens"], 1.0), max(counts["samples"], 1.0))
                yield "grpo", share, st
            elif term == "con":
                yield "con", contrastive_term(teacher, taken, counts["con_pairs"]), {}
            elif term == "pad":  # sharded: a forward / backward with a zero loss (its collectives, no gradient)
                yield "pad", (logp * 0.0).sum(), {}
            else:
                yield term, cloning_term(logp, mask, counts[f"{term}_tokens"]), {}

    def backward(self, samples: Sequence[Sample], saca, counts: dict) -> dict:
        """Accumulate the gradient of :func:`~saca.train.rft.objective.objective` over this rank's part of the
        update: each micro batch's share of each term goes through the objective and back. Returns this rank's
        unweighted terms and ``L_GRPO``'s stats, by log name."""
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0,
                "rep_loss": 0.0, "align_loss": 0.0, "con_loss": 0.0}
        for term, share, st in self.shares(samples, saca, counts):
            if term == "pad":
                share.backward()
                continue
            objective(self.cfg, **{"grpo_loss" if term == "grpo" else term: share}).backward()
            if term == "grpo":
                for k, v in st.items():
                    sums[k] += v
            else:
                sums[TERM_LOGS[term]] += float(share.detach())
        return sums

    def all_reduce_grads(self) -> None:
        """Sum the gradients over the ranks (each rank's loss is already divided by the global counts): one flat
        all-reduce per step, after every micro batch (``sharding: none``; DDP's per-backward hooks would need the
        same number of backward passes on every rank, docs/memory.md). Sharded, FSDP has reduce-scattered them."""
        import torch

        if self.fsdp or self.dist.world == 1 or not torch.distributed.is_initialized():
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        off = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[off : off + n].view_as(p))
            off += n

    def step(self, update: int, it: int, sums: dict, counts: dict) -> dict:
        """One optimizer step on the accumulated gradient (clipped at ``max_grad_norm``), or none when nothing
        trains on any rank (AdamW would still decay the weights); a non-finite loss or gradient norm stops the
        run. Returns the step's log entries."""
        import torch

        cfg = self.cfg
        if not math.isfinite(sums["loss"]):
            last = self.ckpts.list()
            raise SacaError(f"rft update {update + 1} (iteration {it + 1}): the loss is not finite ({sums['loss']}); "
                            f"stopped without a step; last good checkpoint: {last[-1] if last else 'none (restart from the SFT checkpoint)'}")
        if it == 0 and os.environ.get(GRAD_DUMP_ENV) and (self.dist.is_main or self.fsdp):  # sharded: all gather
            from safetensors.torch import save_file

            grads = {n: _full(p.grad if p.grad is not None else torch.zeros_like(p)).detach().contiguous().cpu()
                     for n, p in self.model.named_parameters()}
            if self.dist.is_main:
                save_file(grads, os.environ[GRAD_DUMP_ENV])
        if counts["samples"] == 0 and not any(counts[k] for k in ("rep_tokens", "align_tokens", "con_pairs")):
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the schedule counts updates, stepped or not
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            return {"grad_norm": 0.0, "lr": self.optimizer.param_groups[0]["lr"], "skipped_step": True}
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(_full(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))  # sharded: a DTensor
        if not math.isfinite(grad_norm):
            last = self.ckpts.list()
            raise SacaError(f"rft update {update + 1}: the gradient norm is not finite; stopped without a step; "
                            f"last good checkpoint: {last[-1] if last else 'none'}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm, "lr": lr}

    # --- one update ---------------------------------------------------------------------------
    def update(self, update: int) -> dict:
        """One rollout batch and its ``num_iterations`` optimizer steps; returns the log row."""
        cfg = self.cfg
        t0 = time.perf_counter()
        batch = self.collect(update)
        saca = batch.saca
        t_roll = time.perf_counter() - t0 - saca.log.get("time_audit", 0.0) - saca.log.get("time_repair", 0.0)
        t1 = time.perf_counter()
        self._pad_sample = next((s for ss in batch.samples_of for s in ss), None)
        adv, live, collapsed = advantages(batch.rewards, batch.groups, saca.override, saca.excluded, cfg.adv_eps)
        kl_reward = cfg.kl_mode == "reward" and self.ref is not None and cfg.beta > 0
        t_ref0 = time.perf_counter()
        self.fill_reference_logprobs([s for i in live for s in batch.samples_of[i]], need_old=cfg.num_iterations > 1 or kl_reward,
                                     need_ref=cfg.beta > 0, keep_old=cfg.num_iterations > 1)
        t_ref = time.perf_counter() - t_ref0
        if kl_reward:  # the KL lowers the rewards of both scenarios: GRPO's and the rescue sub-groups' (P)
            alive = set(live)
            reward_i = [i for i in live if i not in saca.override]
            rescue = [(m, P) for m, P in saca.subgroups if all(i in alive for i in m)]
            for i, a in kl_reward_advantages(batch.rewards, batch.groups, reward_i, rescue, batch.samples_of, cfg.beta,
                                             cfg.switches()).items():
                adv[i] = a
        keep = []
        for i in live:  # members of a collapsed group give no gradient (not even KL)
            for s in batch.samples_of[i]:
                s.advantage = float(adv[i])
            keep += batch.samples_of[i]
        counts = reduce_by_name(self.dist, {
            "tokens": float(sum(len(s.token_ids) for s in keep)), "samples": float(len(keep)),
            "rep_tokens": float(sum(len(s.token_ids) for s in saca.rep)) if cfg.lambda_rep > 0 else 0.0,
            "align_tokens": float(sum(len(s.token_ids) for s in saca.align)) if cfg.lambda_align > 0 else 0.0,
            "con_pairs": float(len(saca.con)) if cfg.lambda_con > 0 else 0.0}, self.device)
        t_fb, logged = 0.0, {}
        for it in range(cfg.num_iterations):
            t_fb0 = time.perf_counter()
            sums = self.backward(keep, saca, counts)
            sums["loss"] = objective(cfg, sums["loss"], sums["rep_loss"], sums["align_loss"], sums["con_loss"])
            t_fb += time.perf_counter() - t_fb0
            self.all_reduce_grads()
            sums = reduce_by_name(self.dist, sums, self.device)
            logged = {**sums, **self.step(update, it, sums, counts)}
        t_train = time.perf_counter() - t1
        return self.log_row(update, batch, logged, counts, len(collapsed),
                            {"rollout": t_roll, "train": t_train, "ref_logprobs": t_ref, "forward_backward": t_fb})

    def log_row(self, update: int, batch: Batch, logged: dict, counts: dict, n_collapsed: int, times: dict) -> dict:
        """The update's journal row: the loss terms and step, rewards and group shares summed over the ranks by
        name, throughput and times, and (online) SACA's counts."""
        cfg, stats, n = self.cfg, batch.stats, len(batch.rewards)
        n_groups = len(set(batch.groups))
        red = reduce_by_name(self.dist, {
            "reward": float(np.sum(batch.rewards)), "rollouts": float(n), "collapsed": float(n_collapsed),
            "groups": float(n_groups), "env_steps": float(stats.get("rollout_env_steps", 0)),
            "generated_tokens": float(stats.get("rollout_generated_tokens", 0)),
            "successes": float(stats.get("success_rate", 0.0)) * n,
            "all_failure": float(stats.get("all_failure_share", 0.0)) * n_groups,
            "mixed": float(stats.get("mixed_share", 0.0)) * n_groups}, self.device)
        t_roll, t_train = times["rollout"], times["train"]
        row = {
            "event": "train", "step": update + 1, **logged,
            "reward_mean": red["reward"] / max(red["rollouts"], 1), "success_rate": red["successes"] / max(red["rollouts"], 1),
            "collapsed_share": red["collapsed"] / max(red["groups"], 1), "all_failure_share": red["all_failure"] / max(red["groups"], 1),
            "mixed_share": red["mixed"] / max(red["groups"], 1), "groups": int(red["groups"]), "samples": int(counts["samples"]),
            "tokens_trained": int(counts["tokens"]), "env_steps_per_s": red["env_steps"] / max(t_roll, 1e-9),
            "tokens_per_s": (red["generated_tokens"] + counts["tokens"] * cfg.num_iterations) / max(t_roll + t_train, 1e-9),
            **{f"time_{k}": v for k, v in times.items()},
        }
        for k in ("traj_steps_mean", "invalid_decisions", "unparseable", "rollout_rows_per_generate", "rollout_time_generate", "rollout_time_env"):
            if k in stats:
                row[k] = stats[k]
        if cfg.mode == "online":
            row.update(self._saca_log(batch.saca.log))
        return row

    def _saca_log(self, log: dict) -> dict:
        """The update's SACA counts summed over ranks by name (roles, scenarios, repair, rescue, the prefix-ratio
        histogram of failed rollouts and the Appendix-A share), and this rank's audit and repair times."""
        hist = log.get("rho_hist_failed") or [0] * 10
        vals = {k: float(log.get(k, 0)) for k in SACA_COUNTS}
        vals.update({f"rho_hist_{b}": float(h) for b, h in enumerate(hist)})
        vals.update({k: float(log.get(k, 0)) for k in ("failed_audited", "failed_rho_above")})
        red = reduce_by_name(self.dist, vals, self.device)
        out = {k: int(red[k]) for k in SACA_COUNTS}
        if self.auditor is not None:
            out["rho_hist_failed"] = [int(red[f"rho_hist_{b}"]) for b in range(10)]
            failed, above = red["failed_audited"], red["failed_rho_above"]
            out["appendix_a_share"] = above / failed if failed else None
            for k in ("P_mean_success", "P_mean_failed", "time_audit"):
                out[k] = log.get(k)
        out["time_repair"] = log.get("time_repair", 0.0)
        return out

    # --- validation (Fig. 5) ----------------------------------------------------------------
    def validate(self, update: int) -> dict:
        """Success rate of the current policy on the fixed validation subset, sampled as its evaluation will be
        (``rft.eval_sampling``: the rollouts' ``generation`` or the agent's)."""
        if not self.val_episodes:
            return {}
        # ranks split the episodes (k = rank mod world) and sum their successes; one simulator per scene
        engine = self._engine(self.cfg.seed + 7919 + self.dist.rank,
                              generation=self.cfg.eval_generation(self.agent_cfg.generation))
        engine.record_logprobs = False
        was = self.model.training
        self.model.eval()
        trajs = []
        for ds in sorted(self.val_episodes):
            for k, ep in enumerate(self.val_episodes[ds]):
                if k % self.dist.world == self.dist.rank:
                    trajs += engine.start_group(ep, 1, group=k, dataset=ds, sim=self._sim(ds, f"val-{ep.scene_id}"))
        with self._gathered():
            engine.run(trajs)  # one batched rollout: every dataset's decisions share generate calls
        counts = []
        for ds in sorted(self.val_episodes):
            mine = [tr for tr in trajs if tr.dataset == ds]
            counts += [float(sum(tr.success for tr in mine)), float(len(mine))]
        self.model.train(was)
        counts = self.dist.all_reduce_sum(counts, self.device)
        return {ds: counts[2 * i] / max(counts[2 * i + 1], 1.0) for i, ds in enumerate(sorted(self.val_episodes))}

    # --- run --------------------------------------------------------------------------------
    def resume(self) -> int:
        """Load the newest checkpoint of these settings, if any; the number of updates it had done (0: none).
        Sharded: the newest complete DCP checkpoint of these settings (``sharding.load_checkpoint``)."""
        if self.fsdp:
            from saca.train import sharding

            found = self.ckpts.latest()
            if found is None:
                return 0
            state = sharding.load_checkpoint(found[0], self.model, self.optimizer, self.scheduler)
            log.info("resumed from %s (step %d)", found[0], state["step"])
            return int(state["step"])
        state = self.ckpts.resume(self.model, self.optimizer, self.scheduler, self.device)
        return int(state["step"]) if state else 0

    def save_checkpoint(self, done: int) -> None:
        """Checkpoint after ``done`` updates (model, optimizer, scheduler, RNG). Sharded: every rank writes its
        ``torch.distributed.checkpoint`` shards and its RNG state (``sharding.save_checkpoint``)."""
        state = {"total_steps": self.cfg.max_steps}
        if self.fsdp:
            from saca.train import sharding

            sharding.save_checkpoint(self.ckpts.root / f"step-{done:06d}", self.model, self.optimizer, self.scheduler,
                                     {"step": done, "fingerprint": self.fingerprint, **state})
            self.ckpts.prune()
            self.dist.barrier()
            return
        self.ckpts.save(done, self.model, self.optimizer, self.scheduler, state)

    def run(self) -> dict:
        cfg = self.cfg
        self.setup()
        ensure_dir(self.out, "RFT run directory")
        self.finished = FinishedRun(self.out, self.fingerprint, "rft", self.dist.rank, self.dist.world)
        restored = self.finished.restore(self.journal, "rft_summary.json")  # final/ deleted by a Snakemake rerun
        if restored is not None:
            return restored
        start = self.resume()
        self.journal.start(start, self.fingerprint)
        self.journal.log({"event": "start", "step": start, "total_steps": cfg.max_steps, "mode": cfg.mode, "G": cfg.G,
                          "groups_per_step": cfg.groups_per_step, "world_size": self.dist.world, "seed": cfg.seed,
                          "init": self.init, "ref": self.ref_path, "fingerprint": self.fingerprint})
        if start == 0:
            self.journal.log({"event": "val", "step": 0, "val_sr": self.validate(0)})
        from saca.progress import Progress

        progress = Progress(cfg.max_steps, f"rft ({cfg.mode})", unit="update", initial=start,
                            mode=None if self.dist.is_main else "off")
        for update in progress.iterate(range(start, cfg.max_steps)):
            row = self.update(update)
            done = update + 1
            if done % max(1, cfg.logging_steps) == 0 or done == cfg.max_steps:
                self.journal.log(row)
            if cfg.eval_steps and done % cfg.eval_steps == 0 and done < cfg.max_steps:
                self.journal.log({"event": "val", "step": done, "val_sr": self.validate(done)})
            if cfg.save_steps and done % cfg.save_steps == 0 and done < cfg.max_steps:
                self.save_checkpoint(done)
            maybe_kill(done)
        val = self.validate(cfg.max_steps)
        self.journal.log({"event": "val", "step": cfg.max_steps, "val_sr": val})
        summary = self.summary(val)
        self.save_final(summary)
        self.finished.keep()
        if self.dist.is_main:
            self.journal.finish()
            if not cfg.keep_checkpoints:
                self.ckpts.clear()
        for sim in self.sims.values():
            sim.close()
        return summary

    def summary(self, val: dict) -> dict:
        """The run's summary (``rft_summary.json``) from the journal."""
        cfg = self.cfg
        rows = self.journal.rows()
        train_rows = [r for r in rows if r.get("event") == "train"]
        summary = {
            "init": self.init, "ref": self.ref_path, "mode": cfg.mode, "steps": cfg.max_steps, "seed": cfg.seed,
            "world_size": self.dist.world, "config": asdict(cfg), "val_sr_after": val,
            "val_sr_before": next((r["val_sr"] for r in rows if r.get("event") == "val" and r.get("step") == 0), None),
            "all_failure_share_mean": float(np.mean([r["all_failure_share"] for r in train_rows])) if train_rows else None,
            "collapsed_share_mean": float(np.mean([r["collapsed_share"] for r in train_rows])) if train_rows else None,
            "rollout_success_mean": float(np.mean([r["success_rate"] for r in train_rows])) if train_rows else None,
        }
        if cfg.mode == "online":  # SACA's totals over the run (zero for plain GRPO)
            for k in ("repair_attempts", "repair_successes", "afr_groups", "rep_samples", "align_samples", "con_pairs"):
                summary[f"{k}_total"] = int(sum(r.get(k, 0) for r in train_rows))
            shares = [r["appendix_a_share"] for r in train_rows if r.get("appendix_a_share") is not None]
            summary["appendix_a_share_mean"] = float(np.mean(shares)) if shares else None
        return summary

    def save_final(self, summary: dict) -> Path:
        final = self.out / "final"
        kw = {}
        if self.fsdp:  # the whole model from the shards (every rank takes part; rank 0 gets the weights)
            from saca.train import sharding

            kw["state_dict"] = sharding.full_state_dict(self.model)
        if self.dist.is_main:
            self.model.config.use_cache = True
            with atomic_dir(final) as tmp:
                self.model.save_pretrained(str(tmp), **kw)
                self.proc.save_pretrained(tmp)
                (tmp / "rft_summary.json").write_text(dumps_json(summary), encoding="utf-8")
                from saca.provenance import write_provenance

                write_provenance(tmp, {"rft": self.cfg, "agent": self.agent_cfg}, seed=self.cfg.seed,
                                 device=str(self.device), init=self.init, world_size=self.dist.world)
            self.model.config.use_cache = False
        self.dist.barrier()
        return final


def _full(t):
    """A sharded (DTensor) tensor as the whole tensor (a collective); any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def check_same_architecture(policy, ref, policy_path: str, ref_path: str) -> None:
    """The reference must be the same network as the policy (same parameter names and shapes, same tokenizer)."""
    a = {n: tuple(p.shape) for n, p in policy.model.named_parameters()}
    b = {n: tuple(p.shape) for n, p in ref.model.named_parameters()}
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))[:3]
        raise SacaError(f"reference checkpoint {ref_path} does not match the policy {policy_path}: "
                        f"parameters differ (first differences: {diff})")
    if policy.processor.tokenizer.get_vocab() != ref.processor.tokenizer.get_vocab():
        raise SacaError(f"reference checkpoint {ref_path} has another tokenizer than the policy {policy_path}")
