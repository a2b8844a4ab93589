"""Reinforcement fine-tuning of the policy: online GRPO (SACA Table 2 row 1) and VLN-R1's offline RFT.

One update (``rft.max_steps`` of them), on every rank:

1. **samples**. ``mode: online``: B = ``groups_per_step`` training episodes, G
   trajectories each, sampled from the current policy in the simulator
   (:mod:`saca.train.rollout`); reward R = success (STOP within 3 m,
   method-notes §1); every decision of a trajectory is a training sample
   carrying its trajectory's advantage. ``mode: offline`` (VLN-R1 §3.4): B
   VLN-Ego training samples, G generations each in one ``generate`` call;
   reward = the Time-Decayed Reward of the parsed chunk against the expert's
   (:func:`saca.train.grpo.time_decayed_reward`, variant ``tdr``).
2. **advantages**: group-normalised within each group
   (:func:`saca.train.grpo.group_advantages`); a group whose rewards have zero
   spread is *collapsed*: it gives no gradient and is counted (an all-failure
   group of the online mode is the collapse SACA's AFR addresses).
   ``kl_mode: reward`` first lowers each trajectory's reward by
   :func:`saca.train.grpo.kl_reward_penalty`.
3. **loss** (:func:`saca.train.grpo.grpo_loss`): per-token clipped surrogate +
   ``beta`` x k3 KL to the frozen reference (the SFT checkpoint), aggregated
   ``token_mean`` over every generated token of the update on every rank
   (or ``sequence_mean``). ``num_iterations`` optimizer steps reuse one batch
   of samples; ``pi_old`` is the policy that sampled them (log-probs recomputed
   by a forward pass before the first iteration, as TRL does; with
   ``num_iterations: 1`` it is ``pi_theta`` detached, so the ratio is exactly 1).
4. gradients are summed over ranks (each rank's loss is already divided by the
   global token count), clipped at ``max_grad_norm``, AdamW step, schedule step.

Seams for SACA (issue 13): :meth:`RftTrainer.collect` returns per-trajectory
sample lists (groups may differ in size, samples carry their decision's token
span), and :meth:`RftTrainer.backward` accumulates into the same gradient that
extra loss terms (repair, alignment, contrastive) add to before the step.

Around the loop: checkpoints (model, optimizer, scheduler, RNG; resume continues
exactly, every random draw of an update being a function of ``(seed, update,
rank)``), the JSONL journal (one row per update), success rate on a fixed
validation subset every ``eval_steps`` updates (the data of SACA Fig. 5), a
non-finite loss stops the run with the last good checkpoint kept.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from saca import SacaError
from saca.auditor.config import AuditorConfig
from saca.io import atomic_dir, dumps_json, ensure_dir
from saca.policy.generate import SamplingConfig, sampling_log_softmax
from saca.train import grpo
from saca.train.state import Checkpoints, Dist, FinishedRun, Journal, content_digest, fingerprint, make_scheduler, maybe_kill, param_groups, pick_device, seed_everything

log = logging.getLogger(__name__)

MODES = ("online", "offline")
GRAD_DUMP_ENV = "SACA_TEST_DUMP_GRAD"  # test hook: write the first update's summed gradient (safetensors) here
SAMPLES_ENV = "SACA_TEST_SAMPLES"  # test hook for the distributed-gradient test


@dataclass
class RftConfig:
    """The ``rft`` section (after a variant's overrides). Names: method-notes §2-3.5 and TRL's GRPOConfig."""

    mode: str = "online"  # online: simulator rollouts (SACA) | offline: VLN-Ego samples (VLN-R1 RFT)
    G: int = 8  # group size: trajectories (online) or generations (offline) per instruction
    groups_per_step: int = 4  # B: instructions per update per rank
    max_steps: int = 100  # updates (rollout batches)
    num_iterations: int = 1  # optimizer steps per rollout batch (pi_old != pi_theta from the second on)
    learning_rate: float = 1e-6  # VLN-R1's RFT value
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    lr_scheduler_type: str = "constant"  # constant | cosine
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    eps_clip: float = 0.2
    beta: float = 0.04  # KL weight
    kl_mode: str = "loss"  # loss (k3 term in the loss) | reward (reconstruction: k1 penalty on the rewards)
    loss_aggregation: str = "token_mean"  # token_mean | sequence_mean
    adv_eps: float = 1e-4  # epsilon of the advantage's denominator
    tdr: str = "time_decayed"  # offline reward: hard | uniform | linear | time_decayed (VLN-R1 Table 3d)
    gamma: float = 0.9  # TDR decay (reconstruction)
    # SACA (§3.2-3.3, Table S2, method-notes §3.3); the base is the method, variant grpo turns the switches off
    soft_score: bool = True  # mixed-group reward r = R + lambda_ss * P (Table 2 "+SS")
    lambda_ss: float = 1.0  # reconstruction
    afr: bool = True  # All-Failure Rescue (Eq. 6-13; Table 2 "+AFR")
    rr: bool = True  # Repair Resampling of near-misses (Eq. 4-5; Table 2 "+RR")
    K: int = 3  # repair attempts per near-miss (Table 4)
    lambda_rep: float = 1.0  # weight of L_rep
    lambda_align: float = 1.0  # weight of L_align (Eq. 12; Table 3 "w/o L_align": 0)
    lambda_con: float = 1.0  # weight of L_con (Eq. 13; Table 3 "w/o L_con": 0)
    lambda_hn: float = 0.5  # hard-negative score's process-score weight (Eq. 7, reconstruction)
    n_hard_negatives: int = 3  # k of Eq. 7 (capped at G - 1)
    delta: float = 0.1  # margin of the rescue (Eq. 9-10)
    kappa: float = 0.5  # rescue factor (Eq. 10; Table 3 "w/o margin": 1)
    eta: float = 0.5  # negative-only scaling (Eq. 11; Table 3 "w/o neg. scaling": 1)
    audit_rollouts: bool = False  # audit rollouts even when no switch needs it (prefix-ratio logs of plain GRPO)
    auditor: AuditorConfig = field(default_factory=AuditorConfig)  # the run's auditor (rho: the near-miss threshold)
    generation: SamplingConfig = field(default_factory=lambda: SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=48))
    micro_batch_size: int = 16  # decisions per forward / backward pass
    eval_steps: int = 10  # success rate on the validation subset every N updates (0: only before and after)
    eval_episodes: int = 16  # validation episodes per dataset (val_seen, evenly spaced, fixed)
    eval_split: str = "val_seen"
    save_steps: int = 10
    save_total_limit: int = 2
    keep_checkpoints: bool = False
    logging_steps: int = 1
    bf16: bool = False  # autocast to bfloat16 (fp32 master weights); the frozen reference is then held in bfloat16
    gradient_checkpointing: bool = False
    sharding: str = "none"  # none (a full replica per GPU) | fsdp (saca.train.sharding; docs/memory.md)
    seed: int = 0
    device: str = "auto"
    # workflow keys (never reach a job's params)
    datasets: list = field(default_factory=list)
    sft_mix: str = ""
    variants: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)

    def validate(self, where: str) -> None:
        if self.mode not in MODES:
            raise SacaError(f"{where}.mode: '{self.mode}' is not one of {', '.join(MODES)}")
        if self.G < 2:
            raise SacaError(f"{where}.G: must be at least 2 (GRPO normalises rewards within a group), got {self.G}")
        if self.sharding not in ("none", "fsdp"):
            raise SacaError(f"{where}.sharding: none or fsdp, got '{self.sharding}'")
        for key in ("groups_per_step", "max_steps", "num_iterations", "micro_batch_size"):
            if getattr(self, key) < 1:
                raise SacaError(f"{where}.{key}: must be at least 1, got {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise SacaError(f"{where}.learning_rate: must be positive")
        if self.lr_scheduler_type not in ("constant", "cosine"):
            raise SacaError(f"{where}.lr_scheduler_type: constant or cosine")
        if not 0 < self.eps_clip < 1:
            raise SacaError(f"{where}.eps_clip: must be in (0, 1)")
        if self.beta < 0:
            raise SacaError(f"{where}.beta: must be >= 0")
        if self.kl_mode not in grpo.KL_MODES:
            raise SacaError(f"{where}.kl_mode: '{self.kl_mode}' is not one of {', '.join(grpo.KL_MODES)}")
        if self.loss_aggregation not in grpo.LOSS_AGGREGATIONS:
            raise SacaError(f"{where}.loss_aggregation: '{self.loss_aggregation}' is not one of {', '.join(grpo.LOSS_AGGREGATIONS)}")
        if self.tdr not in grpo.TDR_VARIANTS:
            raise SacaError(f"{where}.tdr: '{self.tdr}' is not one of {', '.join(grpo.TDR_VARIANTS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SacaError(f"{where}.device: auto, cpu or cuda")
        self.generation.validate(f"{where}.generation")
        if self.uses_auditor and self.mode != "online":
            on = [k for k in ("soft_score", "afr", "rr", "audit_rollouts") if getattr(self, k)]
            raise SacaError(f"{where}: {', '.join(on)} need mode online (simulator rollouts); "
                            f"set them to false for mode {self.mode}")
        for key in ("K", "n_hard_negatives"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise SacaError(f"{where}.{key}: must be an integer >= 1, got {getattr(self, key)!r}")
        for key in ("lambda_ss", "lambda_rep", "lambda_align", "lambda_con", "lambda_hn", "delta"):
            if not (isinstance(getattr(self, key), (int, float)) and getattr(self, key) >= 0):
                raise SacaError(f"{where}.{key}: must be a number >= 0, got {getattr(self, key)!r}")
        for key in ("kappa", "eta"):
            if not (isinstance(getattr(self, key), (int, float)) and 0 <= getattr(self, key) <= 1):
                raise SacaError(f"{where}.{key}: must be a number in [0, 1], got {getattr(self, key)!r}")
        if isinstance(self.auditor, dict):
            raise SacaError(f"{where}.auditor: build with saca.config.from_dict")

    @property
    def uses_auditor(self) -> bool:
        """Whether rollouts are audited (any SACA switch, or audit_rollouts)."""
        return self.soft_score or self.afr or self.rr or self.audit_rollouts

    def switches(self):
        from saca.train.saca import SacaSwitches

        return SacaSwitches(soft_score=self.soft_score, lambda_ss=self.lambda_ss, afr=self.afr, rr=self.rr,
                            rho=self.auditor.rho, lambda_hn=self.lambda_hn, n_hard_negatives=self.n_hard_negatives,
                            delta=self.delta, kappa=self.kappa, eta=self.eta, adv_eps=self.adv_eps)

    def fingerprint_dict(self) -> dict:
        d = asdict(self)
        for k in ("eval_steps", "eval_episodes", "eval_split", "save_steps", "save_total_limit", "keep_checkpoints",
                  "logging_steps", "device", "datasets", "sft_mix", "variants", "runs"):
            d.pop(k)
        if not self.uses_auditor:
            d.pop("auditor")
        if self.sharding == "none":
            d.pop("sharding")  # runs before the key existed keep their fingerprint
        return d


WORKFLOW_KEYS = ("datasets", "sft_mix", "variants", "runs")
AUDITOR_WORKFLOW_KEYS = ("runs", "splits", "group_size")  # the audit rule's keys, not the auditor's


def resolve_variant(section: dict, name: str, auditor: dict | None = None) -> dict:
    """The ``rft`` section with variant ``name``'s overrides applied (nested dicts merged), workflow keys dropped.

    ``auditor`` is the top-level ``auditor`` section: the run's ``auditor`` is it, updated by the section's and
    then the variant's ``auditor`` overrides (Table 5 changes ``modules``). A variant that audits nothing (no
    SACA switch, no ``audit_rollouts``) gets no ``auditor`` key, so editing the auditor does not touch it.
    Unknown names raise SacaError listing the defined variants."""
    variants = section.get("variants") or {}
    if name not in variants:
        known = ", ".join(sorted(variants)) or "(none defined)"
        raise SacaError(f"rft.variants: unknown variant '{name}'; defined variants: {known}")
    out = {k: v for k, v in section.items() if k not in WORKFLOW_KEYS}
    out["auditor"] = {k: v for k, v in (auditor or {}).items() if k not in AUDITOR_WORKFLOW_KEYS}
    out["auditor"] = _merge(out["auditor"], section.get("auditor") or {})
    for k, v in (variants[name] or {}).items():
        if k in WORKFLOW_KEYS:
            raise SacaError(f"rft.variants.{name}.{k}: a workflow key cannot be overridden per variant")
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    defaults = RftConfig()
    if not any(out.get(k, getattr(defaults, k)) for k in ("soft_score", "afr", "rr", "audit_rollouts")):
        out.pop("auditor")
    return out


def check_variant(section: dict, name: str, auditor: dict | None = None) -> "RftConfig":
    """Variant ``name`` resolved and built as an :class:`RftConfig` (schema and dataclass checks); an unknown or
    invalid key raises SacaError naming ``rft.variants.{name}.{key}`` (with a did-you-mean hint)."""
    import dataclasses
    import difflib

    from saca.config import check_section, from_dict

    resolved = resolve_variant(section, name, auditor)
    where = f"rft.variants.{name}"
    known = [f.name for f in dataclasses.fields(RftConfig)]
    for key in section.get("variants", {}).get(name) or {}:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SacaError(f"{where}: unknown key '{key}'{hint}")
    try:
        check_section({k: v for k, v in resolved.items() if k != "auditor"}, "rft", RftConfig)
    except SacaError as err:
        raise SacaError(f"{where}: {err}") from None
    return from_dict(RftConfig, resolved, where)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- samples and log-probs ------------------------------------------------------------------------

@dataclass
class Sample:
    """One training sample: a decision (encoded prompt + generated tokens) with its advantage."""

    encoded: object  # saca.policy.processor.Encoded of the prompt (no answer)
    token_ids: list[int]
    advantage: float
    group: object = None
    old_logp: object = None  # pi_old per token, (T,) tensor; None: pi_theta detached (num_iterations 1)
    ref_logp: object = None
    behav_logp: object = None  # the policy before the batch's first step (kl_mode reward)


def _generated_log_softmax(model, proc, encoded: Sequence, token_ids: Sequence[Sequence[int]], temperature: float):
    """Teacher-forced log-softmax rows at every generated position: ``(logsm (B, T, V), targets (B, T), mask (B, T))``."""
    import torch

    from saca.policy.processor import Encoded

    items = [Encoded(list(e.input_ids) + list(ids), None, e.vision, e.n_images, len(e.input_ids))
             for e, ids in zip(encoded, token_ids)]
    batch = proc.collate(items)  # right padding
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    B, L = batch["input_ids"].shape
    T = max(1, max(len(ids) for ids in token_ids))
    pos = torch.zeros((B, T), dtype=torch.long)
    tgt = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (e, ids) in enumerate(zip(encoded, token_ids)):
        n = len(ids)
        p0 = len(e.input_ids) - 1  # position whose logits predict the first generated token
        pos[i] = torch.clamp(torch.arange(p0, p0 + T), max=L - 1)
        if n:
            tgt[i, :n] = torch.tensor(ids, dtype=torch.long)
            mask[i, :n] = 1.0
    pos, tgt, mask = pos.to(device), tgt.to(device), mask.to(device)
    backbone = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if backbone is not None and head is not None:
        hidden = backbone(**batch, use_cache=False).last_hidden_state
        h = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        with torch.autocast(device_type=h.device.type, enabled=False):  # logits in the head's own precision
            logits = head(h.to(head.weight.dtype))
    else:  # pragma: no cover - families without the backbone / lm_head split
        full = model(**batch, use_cache=False).logits
        logits = full.gather(1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    return sampling_log_softmax(logits, proc, temperature), tgt, mask


def token_logprobs(model, proc, encoded: Sequence, token_ids: Sequence[Sequence[int]], temperature: float = 1.0):
    """``log pi(token)`` of each generated token given its prompt, by teacher forcing.

    Returns ``(logp, mask)``: ``(B, T)`` tensors, ``T`` the longest generation, the
    log-probabilities under ``logits / temperature`` with the image placeholder tokens
    suppressed (the distribution the rollout sampled from, before top-p / top-k) and 1 on
    real tokens. Only the generated positions go through the LM head.
    """
    import torch

    logsm, tgt, mask = _generated_log_softmax(model, proc, encoded, token_ids, temperature)
    logp = logsm.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask.bool(), logp, torch.zeros_like(logp)), mask


def option_logprobs(model, proc, samples: Sequence["ConSample"], temperature: float = 1.0):
    """``(logp(a*), logp(a_hat))`` per contrastive pair (SACA Eq. 13): the log-probabilities of the teacher's and
    the taken option token at the taken option's position, given the decision's prompt and its generated
    tokens before that position. Two ``(B,)`` tensors with the graph."""
    import torch

    logsm, _, _ = _generated_log_softmax(model, proc, [c.encoded for c in samples],
                                         [c.token_ids[: c.position + 1] for c in samples], temperature)
    rows = logsm[torch.arange(len(samples)), torch.tensor([c.position for c in samples])]
    teacher = rows.gather(-1, torch.tensor([[c.teacher_id] for c in samples], device=rows.device)).squeeze(-1)
    taken = rows.gather(-1, torch.tensor([[c.taken_id] for c in samples], device=rows.device)).squeeze(-1)
    return teacher, taken


@dataclass
class ConSample:
    """One contrastive-correction pair (SACA Eq. 13): the decision that produced the anchor's divergence step,
    the position of the taken option's letter token among its generated tokens, and the two option tokens."""

    encoded: object
    token_ids: list[int]
    position: int
    taken_id: int
    teacher_id: int
    group: object = None


SACA_COUNTS = (
    "role_successful", "role_near_miss", "role_repaired", "role_failed", "role_anchor", "role_hard_negative",
    "role_discarded", "groups_mixed", "groups_all_failure", "afr_groups", "afr_margin_rescued", "afr_zero_spread",
    "repair_attempts", "repair_successes", "rep_samples", "align_samples", "con_pairs", "con_skipped_same",
    "con_skipped_end", "con_skipped_token", "audit_calls", "audit_pairs",
)


@dataclass
class SacaBatch:
    """What group construction adds to an update's rollouts (:meth:`RftTrainer._construct_groups`).

    ``rewards``: per trajectory, the rewards GRPO normalises; ``override``: trajectory -> fixed advantage (the
    rescue's process advantages); ``excluded``: trajectories outside ``L_GRPO`` (discarded members); ``rep``,
    ``align``: behaviour-cloning samples of ``L_rep`` and ``L_align``; ``con``: the pairs of ``L_con``;
    ``log``: the counts and times of the update's log row."""

    rewards: list = field(default_factory=list)
    override: dict = field(default_factory=dict)
    excluded: set = field(default_factory=set)
    rep: list = field(default_factory=list)
    align: list = field(default_factory=list)
    con: list = field(default_factory=list)
    log: dict = field(default_factory=dict)


def _mean(xs):
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def pad_rows(rows: Sequence, T: int, device):
    import torch

    out = torch.zeros((len(rows), T), dtype=torch.float32, device=device)
    for i, r in enumerate(rows):
        n = min(len(r), T)
        if n:
            out[i, :n] = r[:n].to(device)
    return out


# --- the trainer -------------------------------------------------------------------------------

class RftTrainer:
    """One RFT run: SFT checkpoint -> ``out_dir/final``. See the module docstring."""

    def __init__(self, init: str, ref: str | None, out_dir, cfg: RftConfig, agent_cfg, train_data: dict,
                 val_episodes: dict | None = None, sim_args: dict | None = None, vln_ego_dirs: Sequence[str] = (),
                 landmarks: dict | None = None):
        """``train_data``: dataset -> list of training episodes (online); ``val_episodes``: dataset -> episodes of
        the validation subset; ``sim_args``: dataset -> (SimConfig, DatasetConfig, scenes_dir);
        ``vln_ego_dirs``: VLN-Ego training splits (offline); ``landmarks``: dataset -> {episode id: landmarks}
        of the training episodes (the ``landmarks`` rule's output; needed when the auditor runs)."""
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

    # --- setup --------------------------------------------------------------------------
    def _setup(self) -> None:
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

    def collect(self, update: int) -> tuple[list[Sample], list[float], dict]:
        """This rank's samples of ``update`` with rewards and advantages; plus the stats to log."""
        if self.cfg.mode == "online":
            return self._collect_online(update)
        return self._collect_offline(update)

    def _engine(self, seed: int, generation: SamplingConfig | None = None, audit_frames: bool = False):
        from dataclasses import replace

        from saca.train.rollout import RolloutEngine

        acfg = replace(self.agent_cfg, generation=generation or self.cfg.generation)
        return RolloutEngine(self.policy, acfg, make_sim=None, seed=seed, audit_frames=audit_frames)

    def _collect_online(self, update: int):
        from saca.train.rollout import group_outcomes, release

        cfg = self.cfg
        self.model.eval()
        audit = self.auditor is not None
        oracle = audit and cfg.auditor.backend == "oracle"
        engine = self._engine(self._seed(update), audit_frames=audit)
        trajs = []
        for b, (j, i) in enumerate(self._pick(update)):
            ds, ep = self.pool[i]
            trajs += engine.start_group(ep, cfg.G, group=j, dataset=ds, sim=self._sim(ds, b, instance=oracle))
        engine.run(trajs)
        stats = {**group_outcomes(trajs), **{f"rollout_{k}": v for k, v in engine.stats.as_dict().items()}}
        stats["traj_steps_mean"] = float(np.mean([tr.steps for tr in trajs]))
        stats["invalid_decisions"] = int(sum(tr.n_invalid for tr in trajs))
        stats["saca"] = self._construct_groups(engine, trajs)  # audit, routing, repair, rescue (SACA §3.2-3.3)
        self.model.train()
        rewards = stats["saca"].rewards
        samples_of = [[Sample(d.encoded, d.token_ids, 0.0, tr.group) for d in tr.decisions] for tr in trajs]
        groups = [tr.group for tr in trajs]
        release(trajs)
        return samples_of, rewards, groups, stats

    # --- SACA group construction --------------------------------------------------------------
    def _construct_groups(self, engine, trajs) -> "SacaBatch":
        """Audit the rollouts, route every group, repair near-misses, build the rescue's sub-groups and the
        samples of ``L_rep``, ``L_align`` and ``L_con`` (SACA §3.2-3.3; :mod:`saca.train.saca`)."""
        from saca.auditor.auditor import Trajectory as AuditTrajectory
        from saca.train.saca import plan_group

        cfg, sw = self.cfg, self.cfg.switches()
        out = SacaBatch(rewards=[tr.reward for tr in trajs])
        log = out.log
        res = None
        if self.auditor is not None:
            t0 = time.perf_counter()
            calls, pairs = self.auditor.stats["calls"], self.auditor.stats["pairs"]
            res = self.auditor.audit_group([AuditTrajectory(tr.audit[: tr.steps], self._landmarks(tr), tr.success)
                                            for tr in trajs])
            log["time_audit"] = time.perf_counter() - t0
            log["audit_calls"] = self.auditor.stats["calls"] - calls
            log["audit_pairs"] = self.auditor.stats["pairs"] - pairs
            failed = [r.rho for r in res if not r.success]
            log["failed_audited"], log["failed_rho_above"] = len(failed), sum(r > cfg.auditor.rho for r in failed)
            log["rho_hist_failed"] = np.histogram(failed, bins=10, range=(0.0, 1.0))[0].tolist()
            log["P_mean_success"] = _mean([r.P for r in res if r.success])
            log["P_mean_failed"] = _mean([r.P for r in res if not r.success])
        members: dict = {}
        for i, tr in enumerate(trajs):
            members.setdefault(tr.group, []).append(i)
        roles = [""] * len(trajs)
        plans = []
        for g, idx in members.items():
            plan = plan_group([trajs[i].success for i in idx], [res[i].P for i in idx] if res else None,
                              [res[i].rho for i in idx] if res else None, [trajs[i].actions for i in idx], sw)
            plans.append((plan, idx))
            log[f"groups_{plan.scenario}"] = log.get(f"groups_{plan.scenario}", 0) + 1
            for k, i in enumerate(idx):
                out.rewards[i] = plan.rewards[k]
                roles[i] = plan.roles[k]
                if k not in plan.grpo:
                    out.excluded.add(i)
            for k, a in plan.advantages.items():
                out.override[idx[k]] = a
            if plan.scenario == "all_failure" and plan.anchor is not None:
                log["afr_groups"] = log.get("afr_groups", 0) + 1
                log["afr_margin_rescued"] = log.get("afr_margin_rescued", 0) + int(plan.rescued)
                if all(plan.advantages[k] == 0.0 for k in plan.grpo):
                    log["afr_zero_spread"] = log.get("afr_zero_spread", 0) + 1
        # Repair Resampling (Eq. 4-5): branch every near-miss at t*, up to K batched attempts, first success kept
        if cfg.rr:
            t0 = time.perf_counter()
            pending = [idx[k] for plan, idx in plans if plan.scenario == "mixed" for k in plan.near_miss]
            attempts, repaired = 0, {}
            for _ in range(cfg.K):
                if not pending:
                    break
                branches = [engine.branch(trajs[i], res[i].t_star) for i in pending]
                engine.run(branches)
                attempts += len(branches)
                for i, br in zip(pending, branches):
                    if br.success:
                        repaired[i] = br
                pending = [i for i in pending if i not in repaired]
            for i, br in repaired.items():
                roles[i] = "repaired"
                out.rep += self._clone_samples(br, br.steps)
            log["repair_attempts"] = attempts
            log["repair_successes"] = len(repaired)
            log["time_repair"] = time.perf_counter() - t0
        # All-Failure Rescue's anchor terms: L_align on [0, t*) (Eq. 12), L_con at the decision of step t* (Eq. 13)
        for plan, idx in plans:
            if plan.anchor is None:
                continue
            tr = trajs[idx[plan.anchor]]
            t_star = res[idx[plan.anchor]].t_star
            if cfg.lambda_align > 0:
                out.align += self._clone_samples(tr, t_star)
            if cfg.lambda_con > 0:
                con, why = self._contrastive_pair(engine, tr, t_star)
                if con is not None:
                    out.con.append(con)
                else:
                    log[f"con_skipped_{why}"] = log.get(f"con_skipped_{why}", 0) + 1
        for r in roles:
            log[f"role_{r}"] = log.get(f"role_{r}", 0) + 1
        log["rep_samples"], log["align_samples"], log["con_pairs"] = len(out.rep), len(out.align), len(out.con)
        return out

    def _landmarks(self, tr) -> list[str]:
        lms = self.landmarks[tr.dataset]
        return lms.get(tr.episode.episode_id, lms.get(str(tr.episode.episode_id)))

    def _clone_samples(self, tr, t: int) -> list[Sample]:
        """Behaviour-cloning samples of ``tr``'s steps ``[0, t)`` (``L_rep`` on a repaired trajectory with
        ``t = T``, ``L_align`` on the anchor's valid prefix with ``t = t*``): every valid decision that started
        before ``t``; one that runs past ``t`` (or that a branch cut) keeps the tokens of its options before ``t``
        only. Decisions whose text did not parse (the agent's fallback action ran) are not cloned."""
        from saca.train.saca import kept_tokens

        out = []
        tok = self.proc.tokenizer
        for d in tr.decisions:
            if d.step >= t:
                break
            if d.status != "valid":
                continue
            n = min(len(d.executed), t - d.step)
            whole = n == len(d.executed) and not d.cut
            ntok = len(d.token_ids) if whole else kept_tokens(tok, d.token_ids, n)
            if ntok > 0:
                out.append(Sample(d.encoded, list(d.token_ids[:ntok]), 0.0, tr.group))
        return out

    def _contrastive_pair(self, engine, tr, t_star: int):
        """The Eq. 13 pair at the anchor's divergence step, or (None, reason): ``same`` when the taken action is
        the teacher's, ``end`` when t* is past the last action, ``token`` when the decision's option token
        cannot be located (its text did not parse)."""
        from saca.action_text import LETTERS
        from saca.sim.base import Action
        from saca.train.saca import letter_token_variant, option_letter_positions

        if t_star >= tr.steps:
            return None, "end"
        d = tr.decisions[tr.decision_at(t_star)]
        k = t_star - d.step
        taken = d.executed[k]
        teacher = engine.teacher_action_at(tr, t_star)
        if teacher == taken:
            return None, "same"
        if d.status != "valid":
            return None, "token"
        tok = self.proc.tokenizer
        pos = option_letter_positions(tok, d.token_ids)
        if len(pos) <= k or tok.decode([d.token_ids[pos[k]]]).strip() != LETTERS[Action(taken)]:
            return None, "token"
        teacher_id = letter_token_variant(tok, d.token_ids[pos[k]], LETTERS[Action(teacher)])
        if teacher_id is None:
            return None, "token"
        return ConSample(d.encoded, list(d.token_ids), pos[k], int(d.token_ids[pos[k]]), teacher_id, tr.group), ""

    def _collect_offline(self, update: int):
        from saca.action_text import parse_actions
        from saca.policy.generate import generate_encoded

        cfg = self.cfg
        self.model.eval()
        t0 = time.perf_counter()
        encoded, truths, angles, groups, token_ids, logprobs, texts = [], [], [], [], [], [], []
        for j, i in self._pick(update):
            # one generate call per group, seeded by (seed, update, group): the same generations
            # whichever rank the group lands on (the distributed-gradient test relies on it)
            pi = self.data.policy_input(i)
            enc = self.proc.encode(pi.prompt, pi.images)
            s = self.data.sample(i)
            seed = int(np.random.default_rng([cfg.seed, update, j]).integers(2**31 - 1))
            gen = generate_encoded(self.policy, [enc] * cfg.G, cfg.generation, seed=seed, return_logprobs=True)
            encoded += [enc] * cfg.G
            truths += [[int(a) for a in s["actions"]]] * cfg.G
            angles += [float(s["turn_angle"])] * cfg.G
            groups += [j] * cfg.G
            token_ids += gen.token_ids
            logprobs += gen.logprobs
            texts += gen.texts
        self.model.train()
        rewards, n_bad = [], 0
        for text, truth, ang in zip(texts, truths, angles):
            parsed = parse_actions(text, len(truth), ang)
            pred = list(parsed.actions) if parsed.ok else None
            n_bad += pred is None
            rewards.append(grpo.time_decayed_reward(pred, truth, cfg.tdr, cfg.gamma))
        samples_of = [[Sample(e, ids, 0.0, g)] for e, ids, g in zip(encoded, token_ids, groups)]
        dt = time.perf_counter() - t0
        stats = {"unparseable": n_bad, "rollout_time_total": dt, "rollout_decisions": len(encoded),
                 "rollout_generated_tokens": sum(len(x) for x in token_ids),
                 "success_rate": float(np.mean([r >= grpo.time_decayed_reward(t, t, cfg.tdr, cfg.gamma) for r, t in zip(rewards, truths)]))}
        return samples_of, rewards, groups, stats

    # --- the loss ---------------------------------------------------------------------------
    def _logprobs(self, model, samples: Sequence[Sample]):
        from saca.policy.generate import logprob_temperature

        return token_logprobs(model, self.proc, [s.encoded for s in samples], [s.token_ids for s in samples],
                              logprob_temperature(self.cfg.generation))

    def _micro(self, samples):
        mb = self.cfg.micro_batch_size
        return [samples[i : i + mb] for i in range(0, len(samples), mb)]

    def _fill_reference_logprobs(self, samples: list[Sample], need_old: bool, need_ref: bool, keep_old: bool) -> None:
        """Log-probs of every sample under the policy before this batch's first step (``behav_logp``; it is
        ``pi_old`` when ``keep_old``) and under the frozen reference, computed as the loss computes them."""
        import torch

        with torch.no_grad(), self._autocast():
            for mb in self._micro(samples):
                if need_old:
                    lp, mask = self._logprobs(self.model, mb)
                    for s, row, m in zip(mb, lp, mask):
                        s.behav_logp = row[: int(m.sum())].detach().float().cpu()
                        if keep_old:
                            s.old_logp = s.behav_logp
                if need_ref and self.ref is not None:
                    lp, mask = self._logprobs(self.ref.model, mb)
                    for s, row, m in zip(mb, lp, mask):
                        s.ref_logp = row[: int(m.sum())].detach().float().cpu()

    def backward(self, samples: Sequence[Sample], n_tokens_global: float, n_seqs_global: float) -> dict:
        """Accumulate the GRPO gradient of ``samples`` (this rank's part of the update's batch).

        Each micro batch's aggregated loss is rescaled so that the sum over micro batches and
        ranks equals the loss aggregated over the whole global batch."""
        import torch

        cfg = self.cfg
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0}
        for mb in self._micro(list(samples)):
            with self._autocast():
                logp, mask = self._logprobs(self.model, mb)
            T = logp.shape[1]
            old = logp.detach() if all(s.old_logp is None for s in mb) else pad_rows(
                [s.old_logp if s.old_logp is not None else torch.zeros(0) for s in mb], T, logp.device)
            ref = pad_rows([s.ref_logp for s in mb], T, logp.device) if self.ref is not None and cfg.beta > 0 else None
            adv = torch.tensor([[s.advantage] for s in mb], dtype=torch.float32, device=logp.device)
            loss, st = grpo.grpo_loss(logp, old, ref, adv, mask, eps_clip=cfg.eps_clip, beta=cfg.beta if ref is not None else 0.0,
                                      kl_mode=cfg.kl_mode, aggregation=cfg.loss_aggregation)
            # aggregate over the global batch: token_mean weights a micro batch by its tokens, sequence_mean by its rows
            w = float(mask.sum()) / n_tokens_global if cfg.loss_aggregation == "token_mean" else len(mb) / n_seqs_global
            (loss * w).backward()
            sums["loss"] += float(loss.detach()) * w
            for k in ("pg_loss", "kl", "ratio_mean"):
                sums[k] += float(st[k]) * w
            sums["clip_frac"] += float(st["clip_frac"]) * float(mask.sum()) / n_tokens_global
        return sums

    def backward_aux(self, saca: "SacaBatch", n_rep: float, n_align: float, n_con: float) -> dict:
        """Accumulate SACA's extra terms (weights applied here): ``lambda_rep * L_rep`` and ``lambda_align * L_align``
        (token-mean NLL of the cloned decisions over the whole update, every rank), ``lambda_con * L_con`` (mean of
        Eq. 13 over the update's pairs). A term with weight 0 is not computed. Returns the unweighted terms."""
        from saca.policy.generate import logprob_temperature
        from saca.train.saca import contrastive_correction

        cfg = self.cfg
        out = {"rep_loss": 0.0, "align_loss": 0.0, "con_loss": 0.0}
        for name, samples, lam, n in (("rep_loss", saca.rep, cfg.lambda_rep, n_rep),
                                      ("align_loss", saca.align, cfg.lambda_align, n_align)):
            if lam <= 0 or not samples:
                continue
            for mb in self._micro(samples):
                with self._autocast():
                    logp, mask = self._logprobs(self.model, mb)
                nll = -(logp * mask).sum() / max(n, 1.0)
                (lam * nll).backward()
                out[name] += float(nll.detach())
        if cfg.lambda_con > 0 and saca.con:
            for mb in self._micro(saca.con):
                with self._autocast():
                    teacher, taken = option_logprobs(self.model, self.proc, mb, logprob_temperature(cfg.generation))
                loss = contrastive_correction(teacher, taken).sum() / max(n_con, 1.0)
                (cfg.lambda_con * loss).backward()
                out["con_loss"] += float(loss.detach())
        return out

    def _autocast(self):
        import contextlib

        import torch

        if self.cfg.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _all_reduce_grads(self) -> None:
        import torch

        if self.dist.world == 1 or not torch.distributed.is_initialized():
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

    def update(self, update: int) -> dict:
        """One rollout batch and its ``num_iterations`` optimizer steps; returns the log row."""
        import torch

        cfg = self.cfg
        t0 = time.perf_counter()
        samples_of, rewards, groups, stats = self.collect(update)
        saca = stats.pop("saca", None) or SacaBatch()
        t_roll = time.perf_counter() - t0 - saca.log.get("time_audit", 0.0) - saca.log.get("time_repair", 0.0)
        t1 = time.perf_counter()
        r = np.asarray(rewards, dtype=np.float64)
        # GRPO advantages per group; a group without any spread in its rewards gives no gradient. The rescue's
        # reflection sub-groups carry their own (process) advantages instead, and discarded members train nothing.
        adv, _ = grpo.group_advantages(r, groups, eps=cfg.adv_eps)
        for i, a in saca.override.items():
            adv[i] = a
        spread = {g: False for g in groups}
        for i, g in enumerate(groups):
            if i not in saca.excluded:
                spread[g] = spread[g] or adv[i] != 0.0
        live_i = [i for i, g in enumerate(groups) if spread[g] and i not in saca.excluded]
        dead = {g for g, v in spread.items() if not v}
        flat = [s for i in live_i for s in samples_of[i]]
        kl_reward = cfg.kl_mode == "reward" and self.ref is not None and cfg.beta > 0
        # reference (and pi_old) log-probs of the samples that train, before any step of this batch
        t_ref0 = time.perf_counter()
        self._fill_reference_logprobs(flat, need_old=cfg.num_iterations > 1 or kl_reward,
                                      need_ref=cfg.beta > 0, keep_old=cfg.num_iterations > 1)
        t_ref = time.perf_counter() - t_ref0
        t_fb = 0.0
        reward_i = [i for i in live_i if i not in saca.override]  # advantages from rewards: the KL may lower them
        if kl_reward and reward_i:
            lps = [[float(v) for s in samples_of[i] for v in s.behav_logp] for i in reward_i]
            refs = [[float(v) for s in samples_of[i] for v in s.ref_logp] for i in reward_i]
            r_pen = r[reward_i] - grpo.kl_reward_penalty(lps, refs, cfg.beta)
            a_pen, _ = grpo.group_advantages(r_pen, [groups[i] for i in reward_i], eps=cfg.adv_eps)
            for i, a in zip(reward_i, a_pen):
                adv[i] = a
        keep = []
        for i in live_i:  # members of a collapsed group give no gradient (not even KL)
            for s in samples_of[i]:
                s.advantage = float(adv[i])
            keep += samples_of[i]
        n_tok = float(sum(len(s.token_ids) for s in keep))
        aux_counts = [float(sum(len(s.token_ids) for s in saca.rep)) if cfg.lambda_rep > 0 else 0.0,
                      float(sum(len(s.token_ids) for s in saca.align)) if cfg.lambda_align > 0 else 0.0,
                      float(len(saca.con)) if cfg.lambda_con > 0 else 0.0]
        n_tok, n_seq, *aux_counts = self.dist.all_reduce_sum([n_tok, float(len(keep)), *aux_counts], self.device)
        sums_all = {}
        zero = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0}
        for it in range(cfg.num_iterations):
            t_fb0 = time.perf_counter()
            sums = self.backward(keep, max(n_tok, 1.0), max(n_seq, 1.0)) if keep else dict(zero)
            sums.update(self.backward_aux(saca, *aux_counts))
            sums["loss"] += cfg.lambda_rep * sums["rep_loss"] + cfg.lambda_align * sums["align_loss"] + cfg.lambda_con * sums["con_loss"]
            t_fb += time.perf_counter() - t_fb0
            self._all_reduce_grads()
            red = self.dist.all_reduce_sum([sums[k] for k in sorted(sums)], self.device)
            sums = dict(zip(sorted(sums), red))
            if not math.isfinite(sums["loss"]):
                last = self.ckpts.list()
                raise SacaError(f"rft update {update + 1} (iteration {it + 1}): the loss is not finite ({sums['loss']}); "
                                f"stopped without a step; last good checkpoint: {last[-1] if last else 'none (restart from the SFT checkpoint)'}")
            if it == 0 and os.environ.get(GRAD_DUMP_ENV) and self.dist.is_main:
                from safetensors.torch import save_file

                save_file({n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().contiguous().cpu()
                           for n, p in self.model.named_parameters()}, os.environ[GRAD_DUMP_ENV])
            params = [p for p in self.model.parameters() if p.requires_grad]
            if n_seq == 0 and not any(aux_counts):  # nothing trains on any rank: no step (AdamW would still decay the weights)
                self.optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # the schedule counts updates, stepped or not
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
                sums_all = {**sums, "grad_norm": 0.0, "lr": self.optimizer.param_groups[0]["lr"], "skipped_step": True}
                continue
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if not math.isfinite(grad_norm):
                last = self.ckpts.list()
                raise SacaError(f"rft update {update + 1}: the gradient norm is not finite; stopped without a step; "
                                f"last good checkpoint: {last[-1] if last else 'none'}")
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            sums_all = {**sums, "grad_norm": grad_norm, "lr": lr}
        collapsed = sorted(dead, key=str)
        t_train = time.perf_counter() - t1
        n_groups = len(set(groups))
        red = self.dist.all_reduce_sum([float(np.sum(rewards)), float(len(rewards)), float(len(collapsed)), float(n_groups),
                                        float(stats.get("rollout_env_steps", 0)), float(stats.get("rollout_generated_tokens", 0)),
                                        float(stats.get("success_rate", 0.0)) * len(rewards), float(stats.get("all_failure_share", 0.0)) * n_groups,
                                        float(stats.get("mixed_share", 0.0)) * n_groups], self.device)
        row = {
            "event": "train", "step": update + 1, **sums_all,
            "reward_mean": red[0] / max(red[1], 1), "success_rate": red[6] / max(red[1], 1),
            "collapsed_share": red[2] / max(red[3], 1), "all_failure_share": red[7] / max(red[3], 1),
            "mixed_share": red[8] / max(red[3], 1), "groups": int(red[3]), "samples": int(n_seq),
            "tokens_trained": int(n_tok),
            "env_steps_per_s": red[4] / max(t_roll, 1e-9), "tokens_per_s": (red[5] + n_tok * cfg.num_iterations) / max(t_roll + t_train, 1e-9),
            "time_rollout": t_roll, "time_train": t_train, "time_ref_logprobs": t_ref, "time_forward_backward": t_fb,
        }
        for k in ("traj_steps_mean", "invalid_decisions", "unparseable", "rollout_rows_per_generate", "rollout_time_generate", "rollout_time_env"):
            if k in stats:
                row[k] = stats[k]
        if cfg.mode == "online":
            row.update(self._saca_log(saca.log))
        return row

    def _saca_log(self, log: dict) -> dict:
        """The update's SACA counts summed over ranks (roles, scenarios, repair, rescue, the prefix-ratio histogram
        of failed rollouts and the Appendix-A share), and this rank's audit and repair times."""
        hist = log.get("rho_hist_failed") or [0] * 10
        vals = [float(log.get(k, 0)) for k in SACA_COUNTS] + [float(h) for h in hist]
        vals += [float(log.get("failed_audited", 0)), float(log.get("failed_rho_above", 0))]
        red = self.dist.all_reduce_sum(vals, self.device)
        n = len(SACA_COUNTS)
        out = {k: int(v) for k, v in zip(SACA_COUNTS, red[:n])}
        if self.auditor is not None:
            out["rho_hist_failed"] = [int(v) for v in red[n : n + 10]]
            failed, above = red[n + 10], red[n + 11]
            out["appendix_a_share"] = above / failed if failed else None
            for k in ("P_mean_success", "P_mean_failed", "time_audit"):
                out[k] = log.get(k)
        out["time_repair"] = log.get("time_repair", 0.0)
        return out

    # --- validation (Fig. 5) ----------------------------------------------------------------
    def validate(self, update: int) -> dict:
        """Success rate of the current policy on the fixed validation subset (evaluation sampling settings)."""
        if not self.val_episodes:
            return {}
        # ranks split the episodes (k = rank mod world) and sum their successes; one simulator per scene
        engine = self._engine(self.cfg.seed + 7919 + self.dist.rank, generation=self.agent_cfg.generation)
        engine.record_logprobs = False
        was = self.model.training
        self.model.eval()
        trajs = []
        for ds in sorted(self.val_episodes):
            for k, ep in enumerate(self.val_episodes[ds]):
                if k % self.dist.world == self.dist.rank:
                    trajs += engine.start_group(ep, 1, group=k, dataset=ds, sim=self._sim(ds, f"val-{ep.scene_id}"))
        engine.run(trajs)  # one batched rollout: every dataset's decisions share generate calls
        counts = []
        for ds in sorted(self.val_episodes):
            mine = [tr for tr in trajs if tr.dataset == ds]
            counts += [float(sum(tr.success for tr in mine)), float(len(mine))]
        self.model.train(was)
        counts = self.dist.all_reduce_sum(counts, self.device)
        return {ds: counts[2 * i] / max(counts[2 * i + 1], 1.0) for i, ds in enumerate(sorted(self.val_episodes))}

    # --- run --------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        self._setup()
        ensure_dir(self.out, "RFT run directory")
        self.finished = FinishedRun(self.out, self.fingerprint, "rft", self.dist.rank, self.dist.world)
        restored = self.finished.restore(self.journal, "rft_summary.json")  # final/ deleted by a Snakemake rerun
        if restored is not None:
            return restored
        state = self.ckpts.resume(self.model, self.optimizer, self.scheduler, self.device)
        start = int(state["step"]) if state else 0
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
                self.ckpts.save(done, self.model, self.optimizer, self.scheduler, {"total_steps": cfg.max_steps})
            maybe_kill(done)
        val = self.validate(cfg.max_steps)
        self.journal.log({"event": "val", "step": cfg.max_steps, "val_sr": val})
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
        self.save_final(summary)
        self.finished.keep()
        if self.dist.is_main:
            self.journal.finish()
            if not cfg.keep_checkpoints:
                self.ckpts.clear()
        for sim in self.sims.values():
            sim.close()
        return summary

    def save_final(self, summary: dict) -> Path:
        final = self.out / "final"
        if self.dist.is_main:
            self.model.config.use_cache = True
            with atomic_dir(final) as tmp:
                self.model.save_pretrained(str(tmp))
                self.proc.save_pretrained(tmp)
                (tmp / "rft_summary.json").write_text(dumps_json(summary), encoding="utf-8")
                from saca.provenance import write_provenance

                write_provenance(tmp, {"rft": self.cfg, "agent": self.agent_cfg}, seed=self.cfg.seed,
                                 device=str(self.device), init=self.init, world_size=self.dist.world)
            self.model.config.use_cache = False
        self.dist.barrier()
        return final


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
