"""Supervised fine-tuning of the policy on VLN-Ego (VLN-R1 §3.3, Eq. 8).

A readable single loop (nanoGPT style):

* data: the training mix's VLN-Ego samples; epoch ``e`` visits them in the order
  ``default_rng(seed + e).permutation(N)``; optimizer step ``s`` consumes the
  next ``global_batch = per_device_train_batch_size * gradient_accumulation_steps
  * world_size`` samples (an incomplete last batch of an epoch is dropped), so
  the data order is a function of ``(seed, step)`` alone;
* loss: :func:`sft_loss` (VLN-R1 Eq. 8), cross-entropy on the answer tokens
  only, summed and divided by the number of answer tokens in the whole global
  batch: the gradient does not depend on how the batch is split into micro
  batches or ranks;
* optimizer: AdamW (beta1, beta2) = (0.9, 0.999), weight decay 0.01 on matrices
  (not on biases and norm weights, as the HF Trainer that VLN-R1 / LLaMA-Factory
  use), cosine schedule with linear warm-up over ``warmup_ratio`` of the steps,
  gradient clipping at ``max_grad_norm`` (method-notes §3.5);
* ``bf16``: autocast to bfloat16 with fp32 master weights; ``gradient_checkpointing``;
  ``freeze_vision_tower`` (LLaMA-Factory's switch): the vision tower gets no updates;
* checkpoints every ``save_steps`` under ``{out}/checkpoints/step-NNNNNN/``
  (:class:`saca.train.state.Checkpoints`: model weights as safetensors,
  optimizer / scheduler / RNG state as tensors loaded with
  ``torch.load(weights_only=True)``, the step counter and the data-order seed
  in ``trainer_state.json``); a restarted run resumes from the newest complete
  checkpoint and, on CPU, ends with bit-identical weights;
* log: ``{out}/train_log.jsonl``, one row per ``logging_steps`` (loss, lr, grad
  norm, tokens/s, samples/s) and one per validation (token-mean answer NLL per
  validation split, before training, every ``eval_steps`` and at the end). While
  the run trains, rows go to the journal ``{out}/train_log.partial.jsonl``
  (:class:`saca.train.state.Journal`; a torn last line from a kill is dropped
  on resume, see :func:`saca.io.read_journal`); it becomes ``train_log.jsonl``
  only when the run has finished, so a run that fails never rewrites the log of
  a finished one;
* inputs (the init checkpoint, every frame shard of the training and validation
  splits, the DeepSpeed config) are checked before the run directory is touched;
* result: ``{out}/final/`` written by ``save_pretrained`` (model, tokenizer,
  image processor) plus ``sft_summary.json`` and a copy of the log.

With ``deepspeed`` (a ZeRO config file from ``config/deepspeed/``; launched with
``deepspeed`` or ``torchrun`` on GPUs, or world size 1 with the gloo backend on
CPU) the same loop runs through ``deepspeed.initialize``; the engine then owns
the optimizer step, clipping and its own checkpoint format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from saca import SacaError
from saca.io import atomic_dir, dumps_json, ensure_dir, write_json
from saca.policy.processor import IGNORE_INDEX
from saca.train.state import (  # noqa: F401  (KILL_ENV: the test hook, re-exported)
    KILL_ENV,
    Checkpoints,
    Dist,
    FinishedRun,
    Journal,
    content_digest,
    fingerprint,
    make_scheduler,
    maybe_kill,
    param_groups,
    pick_device,
    seed_everything,
)

log = logging.getLogger(__name__)


@dataclass
class SftConfig:
    """The ``sft`` section of config.yaml. Names follow the HF Trainer / LLaMA-Factory arguments VLN-R1 used."""

    learning_rate: float = 5e-6  # VLN-R1's SFT value for Qwen2-VL-2B/7B
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    lr_scheduler_type: str = "cosine"  # cosine | constant
    warmup_ratio: float = 0.03
    num_train_epochs: int = 2
    max_steps: int = 0  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 2
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    freeze_vision_tower: bool = False  # LLaMA-Factory's name; the vision tower keeps its weights (docs/policy.md)
    max_seq_length: int = 4096
    seed: int = 0
    n_actions: int = 6
    device: str = "auto"  # auto | cpu | cuda
    save_steps: int = 100
    save_total_limit: int = 2
    keep_checkpoints: bool = False  # keep checkpoints/ after the final model is written
    logging_steps: int = 10
    eval_steps: int = 0  # 0: validate before and after training only
    val_samples: int = 256  # per validation split (evenly spaced); 0: all
    per_device_eval_batch_size: int = 8
    frame_cache: int = 0  # processed frames kept in memory (Qwen families); 0: off
    deepspeed: str | None = None  # ZeRO config file, e.g. config/deepspeed/zero2.json
    sharding: str = "none"  # none | fsdp: torch FSDP2 shards (saca.train.sharding; docs/memory.md); not with deepspeed
    # workflow keys: which datasets each training mix holds, and which mix is evaluated as run "sft"
    mixes: dict = field(default_factory=dict)
    dagger: dict = field(default_factory=dict)  # workflow key (sft.dagger, saca.vln_ego.dagger); SFT ignores it
    eval_mix: dict = field(default_factory=dict)
    val_splits: list = field(default_factory=lambda: ["val_seen"])
    train_seeds: list = field(default_factory=list)  # workflow key: further training seeds (mixes "{mix}-t{seed}")

    def validate(self, where: str) -> None:
        if self.learning_rate <= 0:
            raise SacaError(f"{where}.learning_rate: must be positive")
        if self.lr_scheduler_type not in ("cosine", "constant"):
            raise SacaError(f"{where}.lr_scheduler_type: must be cosine or constant")
        if not 0 <= self.warmup_ratio < 1:
            raise SacaError(f"{where}.warmup_ratio: must be in [0, 1)")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size", "n_actions"):
            if getattr(self, key) < 1:
                raise SacaError(f"{where}.{key}: must be at least 1")
        if self.num_train_epochs < 1 and self.max_steps < 1:
            raise SacaError(f"{where}: set num_train_epochs or max_steps")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SacaError(f"{where}.device: auto, cpu or cuda")
        if self.sharding not in ("none", "fsdp"):
            raise SacaError(f"{where}.sharding: none or fsdp, got '{self.sharding}'")
        if self.sharding == "fsdp" and self.deepspeed:
            raise SacaError(f"{where}: sharding fsdp and deepspeed are two mechanisms for the same job; set one")
        for name, datasets in self.mixes.items():
            if not isinstance(datasets, list) or not datasets:
                raise SacaError(f"{where}.mixes.{name}: must be a non-empty list of datasets")
        for ds, mix in self.eval_mix.items():
            if mix not in self.mixes:
                raise SacaError(f"{where}.eval_mix.{ds}: unknown mix '{mix}'; defined mixes: {', '.join(self.mixes)}")

    def fingerprint_dict(self) -> dict:
        """The settings that change the trained weights (not logging, saving, validation or workflow keys)."""
        d = asdict(self)
        for k in ("save_steps", "save_total_limit", "keep_checkpoints", "logging_steps", "eval_steps", "val_samples",
                  "per_device_eval_batch_size", "frame_cache", "mixes", "eval_mix", "val_splits", "device",
                  "train_seeds"):
            d.pop(k)
        if self.sharding == "none":
            d.pop("sharding")  # runs before the key existed keep their fingerprint
        return d


# --- VLN-R1 Eq. 8 ------------------------------------------------------------------------------

def sft_loss(model, batch: dict):
    """VLN-R1 Eq. 8: ``L_SFT = - sum_k sum_j log P(w*_j | w*_<j, H_t, v_t, I)`` over the answer tokens.

    ``batch["labels"]`` holds the target token id on answer tokens (the ``n`` option
    strings and the closing end-of-turn token) and ``-100`` everywhere else (system
    text, instruction, image tokens, padding). Position ``t`` predicts token ``t+1``.
    Returns ``(nll_sum, n_tokens)``: the summed negative log-likelihood (a 0-d tensor
    with gradient) and the number of answer tokens; callers divide by the answer
    tokens of the whole global batch. Only the answer positions go through the LM
    head, so a 150k-token vocabulary costs nothing on the prompt.
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    n_tokens = int(mask.sum())
    backbone = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if backbone is not None and head is not None:
        hidden = backbone(**inputs, use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][mask])
    else:  # pragma: no cover - families without the backbone / lm_head split
        logits = model(**inputs, use_cache=False).logits[:, :-1][mask]
    nll = F.cross_entropy(logits.float(), target[mask], reduction="sum")
    if n_tokens == 0:
        nll = nll * 0.0
    return nll, n_tokens


def answer_tokens(encoded) -> int:
    return sum(1 for t in encoded.labels if t != IGNORE_INDEX)


# --- the trainer ------------------------------------------------------------------------------

class SftTrainer:
    """One SFT run: ``init`` checkpoint + training mix + validation splits -> ``out_dir/final``."""

    def __init__(
        self,
        init: str,
        train_dirs: Sequence[str | os.PathLike],
        out_dir: str | os.PathLike,
        cfg: SftConfig,
        val_dirs: dict[str, str | os.PathLike] | None = None,
    ):
        self.init = str(init)
        self.train_dirs = [str(d) for d in train_dirs]
        self.val_dirs = {k: str(v) for k, v in (val_dirs or {}).items()}
        self.out = Path(out_dir)
        self.cfg = cfg
        self.ckpt_root = self.out / "checkpoints"
        self.dist = Dist()
        self.world, self.rank, self.local_rank = self.dist.world, self.dist.rank, self.dist.local_rank
        self.journal = Journal(self.out, "train_log", rank=self.rank)  # train_log.partial.jsonl -> train_log.jsonl
        self.engine = None
        self.fsdp = cfg.sharding == "fsdp" and self.world > 1  # alone, fsdp is the unsharded path

    # --- setup --------------------------------------------------------------------------
    def _setup(self) -> None:
        import torch

        from saca.policy.data import PolicyData
        from saca.policy.model import load_policy

        cfg = self.cfg
        if self.world > 1 and not cfg.deepspeed and cfg.sharding != "fsdp":
            raise SacaError(f"WORLD_SIZE={self.world}: multi-process training needs sft.sharding: fsdp or sft.deepspeed "
                            "(a ZeRO config)")
        seed_everything(cfg.seed)
        self.device = pick_device(cfg.device, self.local_rank, "sft.device")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.policy = load_policy(self.init, dtype="float32", device=str(self.device))
        self.model = self.policy.model
        self.proc = self.policy.processor
        self.model.config.use_cache = False
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.freeze_vision_tower:
            from saca.policy.model import vision_tower

            for p in vision_tower(self.model).parameters():
                p.requires_grad_(False)
        self.train = PolicyData(self.train_dirs, cfg.n_actions, frame_cache=cfg.frame_cache)
        self.val = {name: PolicyData([d], cfg.n_actions, frame_cache=cfg.frame_cache) for name, d in self.val_dirs.items()}
        # every frame shard the run will read, before anything is trained or written
        for data in (self.train, *self.val.values()):
            for part in data.parts:
                part.check_frames()
        self.global_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * self.world
        self.steps_per_epoch = len(self.train) // self.global_batch
        if self.steps_per_epoch == 0:
            raise SacaError(
                f"{', '.join(self.train_dirs)}: {len(self.train)} training samples, fewer than one global batch "
                f"of {self.global_batch}"
            )
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_train_epochs * self.steps_per_epoch
        self.warmup_steps = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.model.train()
        if self.fsdp:
            from saca.train import sharding

            self.dist.init(self.device.type)
            sharding.wrap(self.model, bf16=cfg.bf16)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
        )
        self.scheduler = make_scheduler(self.optimizer, cfg.lr_scheduler_type, self.total_steps, self.warmup_steps)
        if cfg.deepspeed:
            self._setup_deepspeed()
        self.fingerprint = self._fingerprint()
        self.ckpts = Checkpoints(self.ckpt_root, self.fingerprint, keep=cfg.save_total_limit, rank=self.rank, world=self.world)

    def _setup_deepspeed(self) -> None:
        import torch

        try:
            import deepspeed
        except ImportError as err:
            raise SacaError("sft.deepspeed is set but deepspeed is not installed (pip install 'saca[train]')") from err
        from saca.external import check_deepspeed_config

        ds = check_deepspeed_config(self.cfg.deepspeed, "sft.deepspeed")  # the workflow's parse-time check
        ds = fill_deepspeed_config(ds, self.cfg, self.world, self.device.type)
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=ds
        )
        self.ds_config = ds

    def _fingerprint(self) -> str:
        """Settings and the content of the init weights and training data, not their paths (issue 25)."""
        data = {
            "cfg": self.cfg.fingerprint_dict(),
            "init": content_digest(self.init),
            "train": [(content_digest(d), len(p)) for d, p in zip(self.train_dirs, self.train.parts)],
            "world": self.world,
        }
        return fingerprint(data)

    # --- data order ---------------------------------------------------------------------
    def micro_batch_indices(self, step: int, micro: int) -> list[int]:
        """Sample indices of micro batch ``micro`` of optimizer step ``step`` on this rank."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._perm(epoch)
        bs = self.cfg.per_device_train_batch_size
        start = k * self.global_batch + (micro * self.world + self.rank) * bs
        return [int(i) for i in perm[start : start + bs]]

    def _perm(self, epoch: int) -> np.ndarray:
        cached = getattr(self, "_perm_cache", None)
        if cached is None or cached[0] != epoch:
            self._perm_cache = (epoch, np.random.default_rng(self.cfg.seed + epoch).permutation(len(self.train)))
        return self._perm_cache[1]

    # --- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        import torch

        state = {"seed": self.cfg.seed, "global_batch": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
                 "total_steps": self.total_steps, "n_train": len(self.train)}
        if self.fsdp:  # torch.distributed.checkpoint shards (saca.train.sharding)
            from saca.train import sharding

            path = sharding.save_checkpoint(self.ckpt_root / f"step-{step:06d}", self.model, self.optimizer,
                                            self.scheduler, {"step": step, "fingerprint": self.fingerprint, **state})
            self.ckpts.prune()
            self.dist.barrier()
            return path
        if self.engine is None:
            return self.ckpts.save(step, self.model, self.optimizer, self.scheduler, state)
        # DeepSpeed: the engine's own (sharded) checkpoint format, our trainer_state.json and torch RNG beside it
        tag = f"step-{step:06d}"
        state = {"step": step, "fingerprint": self.fingerprint, **state}
        self.engine.save_checkpoint(str(self.ckpt_root), tag=tag, client_state={"trainer": state})
        if self.rank == 0:
            torch.save({"torch": torch.get_rng_state()}, self.ckpt_root / tag / "rng.pt")
            write_json(self.ckpt_root / tag / "trainer_state.json", state)
        self.dist.barrier()
        self.ckpts.prune()
        return self.ckpt_root / tag

    def _resume(self) -> int:
        """Load the newest checkpoint of this configuration; returns the step to continue from."""
        import torch

        if self.fsdp:
            from saca.train import sharding

            found = self.ckpts.latest()
            if found is None:
                return 0
            state = sharding.load_checkpoint(found[0], self.model, self.optimizer, self.scheduler)
            log.info("resumed from %s (step %d of %d)", found[0], state["step"], self.total_steps)
            return int(state["step"])
        if self.engine is None:
            state = self.ckpts.resume(self.model, self.optimizer, self.scheduler, self.device)
            return 0 if state is None else int(state["step"])
        found = self.ckpts.latest()
        if found is None:
            return 0
        last, state = found
        try:
            self.engine.load_checkpoint(str(self.ckpt_root), tag=last.name)
            rng = torch.load(last / "rng.pt", weights_only=True)
            torch.set_rng_state(rng["torch"])
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            raise SacaError(f"{last}: cannot resume from this checkpoint ({err}); delete it to start afresh") from err
        log.info("resumed from %s (step %d of %d)", last, state["step"], self.total_steps)
        return int(state["step"])

    # --- validation -----------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Token-mean answer NLL (Eq. 8 per token) on each validation split."""
        import torch

        from saca.policy.data import evenly_spaced

        out = {}
        model = self.model
        was_training = model.training
        model.eval()
        for name, data in self.val.items():
            idx = evenly_spaced(len(data), self.cfg.val_samples)
            idx = idx[self.rank :: self.world]
            nll, n = 0.0, 0
            bs = self.cfg.per_device_eval_batch_size
            # sharded forwards are collective: every rank runs as many batches (a rank short of samples
            # repeats one and discards it)
            n_batches = -(-len(evenly_spaced(len(data), self.cfg.val_samples)[0 :: self.world]) // bs)
            with torch.no_grad():
                for b in range(n_batches if self.fsdp else -(-len(idx) // bs)):
                    chunk = idx[b * bs : (b + 1) * bs]
                    encs = [data.encode(self.proc, i) for i in (chunk or idx[:1] or [0])]
                    batch = {k: v.to(self.device) for k, v in self.proc.collate(encs).items()}
                    with self._autocast():
                        s, k = sft_loss(model, batch)
                    if chunk:
                        nll += float(s)
                        n += k
            nll, n = self._all_reduce_pair(nll, n)
            out[name] = nll / max(n, 1)
        if self.fsdp:  # FSDP roots stay gathered after a forward without backward: give the memory back
            from saca.train import sharding

            sharding.reshard(model)
        model.train(was_training)
        return out

    def _all_reduce_pair(self, a: float, b: int) -> tuple[float, int]:
        a, b = self.dist.all_reduce_sum([a, b], device=self.device)
        return a, int(b)

    def _autocast(self):
        import contextlib

        import torch

        if self.cfg.bf16 and self.engine is None and not self.fsdp:  # FSDP: bf16 through its MixedPrecisionPolicy
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> dict:
        import torch

        cfg = self.cfg
        self._setup()  # reads and checks every input; nothing in the run directory is touched before
        ensure_dir(self.out, "SFT run directory")
        self.finished = FinishedRun(self.out, self.fingerprint, "sft", self.rank, self.world)
        restored = self.finished.restore(self.journal, "sft_summary.json")  # final/ deleted by a Snakemake rerun
        if restored is not None:
            return restored
        start = self._resume()
        self.journal.start(start, self.fingerprint)
        self.journal.log({"event": "start", "step": start, "total_steps": self.total_steps, "n_train": len(self.train),
                   "global_batch": self.global_batch, "world_size": self.world, "seed": cfg.seed,
                   "deepspeed": cfg.deepspeed, "init": self.init, "fingerprint": self.fingerprint,
                   "torch_threads": torch.get_num_threads()})
        if start == 0:
            val_before = self.validate()
            self.journal.log({"event": "val", "step": 0, "val_loss": val_before})
        else:
            val_before = None
        params = [p for p in self.model.parameters() if p.requires_grad]
        window = {"loss": 0.0, "tokens": 0, "answer_tokens": 0, "samples": 0, "time": 0.0, "steps": 0}
        from saca.progress import Progress

        progress = Progress(self.total_steps, "sft", unit="step", initial=start, mode=None if self.rank == 0 else "off")
        for step in progress.iterate(range(start, self.total_steps)):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            micro = []
            for m in range(cfg.gradient_accumulation_steps):
                encs = []
                for i in self.micro_batch_indices(step, m):
                    e = self.train.encode(self.proc, i)
                    if len(e.input_ids) > cfg.max_seq_length:
                        raise SacaError(
                            f"VLN-Ego sample {self.train.sample(i)['sample_id']} ({self.train.source(i)}): "
                            f"{len(e.input_ids)} tokens exceed sft.max_seq_length={cfg.max_seq_length}"
                        )
                    encs.append(e)
                micro.append(encs)
            n_local = sum(answer_tokens(e) for mb in micro for e in mb)
            _, n_global = self._all_reduce_pair(0.0, n_local)
            step_nll = 0.0
            n_tokens = 0
            model = self.engine.module if self.engine is not None else self.model
            for mb in micro:
                batch = {k: v.to(self.device) for k, v in self.proc.collate(mb).items()}
                n_tokens += int(batch["attention_mask"].sum())
                with self._autocast():
                    nll, _ = sft_loss(model, batch)
                # token mean over the whole global batch; ZeRO averages over ranks, hence * world (FSDP sums)
                loss = nll * ((self.world if self.engine is not None else 1) / max(n_global, 1))
                step_nll += float(nll.detach())
                if self.engine is not None:
                    self.engine.backward(loss, scale_wrt_gas=False)
                    self.engine.step()
                else:
                    loss.backward()
            if self.engine is not None:
                grad_norm = self.engine.get_global_grad_norm()
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            step_nll, n_tokens = self._all_reduce_pair(step_nll, n_tokens)
            window["loss"] += step_nll / max(n_global, 1)
            window["tokens"] += n_tokens
            window["steps"] += 1
            window["answer_tokens"] += n_global
            window["samples"] += self.global_batch
            window["time"] += dt
            done = step + 1
            if done % max(1, cfg.logging_steps) == 0 or done == self.total_steps:
                self.journal.log({
                    "event": "train", "step": done, "epoch": round(done / self.steps_per_epoch, 4),
                    "loss": window["loss"] / max(1, window["steps"]), "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_s": window["tokens"] / max(window["time"], 1e-9),
                    "answer_tokens_per_s": window["answer_tokens"] / max(window["time"], 1e-9),
                    "samples_per_s": window["samples"] / max(window["time"], 1e-9),
                })
                window = {k: 0 * v for k, v in window.items()}
            if cfg.eval_steps and done % cfg.eval_steps == 0 and done < self.total_steps:
                self.journal.log({"event": "val", "step": done, "val_loss": self.validate()})
            if cfg.save_steps and done % cfg.save_steps == 0 and done < self.total_steps:
                self.save_checkpoint(done)
            maybe_kill(done)
        val_after = self.validate()
        self.journal.log({"event": "val", "step": self.total_steps, "val_loss": val_after})
        summary = {
            "init": self.init, "train": self.train_dirs, "val": self.val_dirs, "n_train": len(self.train),
            "steps": self.total_steps, "global_batch": self.global_batch, "seed": cfg.seed,
            "val_loss_before": val_before if val_before is not None else self._logged_val(0),
            "val_loss_after": val_after, "config": asdict(cfg), "world_size": self.world,
            # CPU weights are bitwise reproducible for one thread count (float summation order), see docs/policy.md
            "torch_threads": torch.get_num_threads(),
        }
        self.save_final(summary)
        self.finished.keep()
        self.journal.finish()  # the finished run's log, after its final/
        if not cfg.keep_checkpoints:
            self.ckpts.clear()
        return summary

    def _logged_val(self, step: int):
        for row in self.journal.rows():
            if row.get("event") == "val" and row.get("step") == step:
                return row["val_loss"]
        return None

    def save_final(self, summary: dict) -> Path:
        final = self.out / "final"
        state_dict = None
        if self.engine is not None and self.engine.zero_optimization_stage() == 3:
            state_dict = self.engine._zero3_consolidated_16bit_state_dict()
        if self.fsdp:
            from saca.train import sharding

            state_dict = sharding.full_state_dict(self.model)  # every rank takes part; rank 0 gets the weights
        if self.rank == 0:
            model = self.engine.module if self.engine is not None else self.model
            model.config.use_cache = True
            with atomic_dir(final) as tmp:
                if state_dict is not None:
                    model.save_pretrained(str(tmp), state_dict=state_dict)
                else:
                    model.save_pretrained(str(tmp))
                self.proc.save_pretrained(tmp)
                if self.journal.partial.exists():
                    shutil.copyfile(self.journal.partial, tmp / "train_log.jsonl")
                (tmp / "sft_summary.json").write_text(dumps_json(summary), encoding="utf-8")
                from saca.provenance import write_provenance

                write_provenance(tmp, self.cfg, seed=self.cfg.seed, device=str(self.device), init=str(self.init))
        self.dist.barrier()
        return final


def fill_deepspeed_config(ds: dict, cfg: SftConfig, world: int, device_type: str) -> dict:
    """Resolve the ``"auto"`` entries of a DeepSpeed config from the ``sft`` section."""
    ds = json.loads(json.dumps(ds))
    values = {
        "train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for k, v in values.items():
        if ds.get(k, "auto") == "auto":
            ds[k] = v
        elif ds[k] != v:
            raise SacaError(f"DeepSpeed config sets {k}={ds[k]} but the sft section implies {v}; use \"auto\"")
    bf16 = bool(cfg.bf16) and device_type == "cuda"
    ds.setdefault("bf16", {})
    if ds["bf16"].get("enabled", "auto") == "auto":
        ds["bf16"]["enabled"] = bf16
    ds.setdefault("fp16", {"enabled": False})
    ds["zero_allow_untested_optimizer"] = True
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds

