"""The ``rft`` config section: :class:`RftConfig` (names: method-notes §2-3.5 and TRL's GRPOConfig) and the
workflow's variants (named overrides of the base section, the paper's Tables 2-5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from saca import SacaError
from saca.auditor.config import AuditorConfig
from saca.policy.generate import SamplingConfig
from saca.train import grpo

MODES = ("online", "offline")
EVAL_SAMPLING = ("rollout", "agent")


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
    # how the RFT policy is sampled in validation (Fig. 5) and in its evaluation (rule rft_agent): rollout, with
    # `generation` (the distribution RL optimised); agent, with policy.agent.generation (the SFT policy's setting)
    eval_sampling: str = "rollout"
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
        if self.eval_sampling not in EVAL_SAMPLING:
            raise SacaError(f"{where}.eval_sampling: '{self.eval_sampling}' is not one of {', '.join(EVAL_SAMPLING)}")
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

    def eval_generation(self, agent_generation: SamplingConfig) -> SamplingConfig:
        """The sampling the RFT policy is validated (Fig. 5) and evaluated with: ``generation``, the rollouts'
        (``eval_sampling: rollout``), or the agent's ``agent_generation`` (``eval_sampling: agent``)."""
        return self.generation if self.eval_sampling == "rollout" else agent_generation

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
        for k in ("eval_steps", "eval_episodes", "eval_split", "eval_sampling", "save_steps", "save_total_limit", "keep_checkpoints",
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


def eval_agent_settings(resolved: dict, agent: dict) -> dict:
    """The agent settings an RFT policy's ``agent.json`` holds (rule rft_agent): ``agent`` (policy.agent), its
    ``generation`` replaced by :meth:`RftConfig.eval_generation`'s when the variant's ``eval_sampling`` is rollout
    (the default). ``resolved`` (a :func:`resolve_variant` result) is built as the trainer builds it, so the
    sampling is the one its rollouts used and an invalid value raises SacaError naming ``rft.{key}``."""
    from saca.config import from_dict

    cfg = from_dict(RftConfig, resolved, "rft")
    if cfg.eval_sampling == "agent":
        return dict(agent)
    return {**agent, "generation": {**(agent.get("generation") or {}), **asdict(cfg.eval_generation(None))}}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
