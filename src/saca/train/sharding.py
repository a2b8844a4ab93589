"""Sharded training with torch FSDP2 (``torch.distributed.fsdp.fully_shard``): docs/memory.md.

The interface a trainer uses (``rft.sharding: fsdp``):

* :func:`wrap` ``(model, bf16)`` shards a policy in place and returns it: every decoder layer, vision
  block and embedding is its own FSDP unit; the backbone (``model.model``) and the LM head are the two
  roots, so the trainers' ``model.model(...)`` + ``model.lm_head(...)`` calls (only the generated
  positions go through the head) and ``model(...)`` / generation all run FSDP's hooks. Each rank then
  holds ``1 / W`` of the fp32 weights, gradients and AdamW moments; with ``bf16`` the forward runs on
  all-gathered bf16 copies (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``). Gradients
  are **summed** over ranks (as ``RftTrainer`` sums them: its losses are scaled by global counts).
* :func:`shard_reference` ``(ref)``: the frozen reference sharded the same way, kept in its own dtype
  (bf16 shards on GPUs).
* :func:`gathered_for_generation` ``(model)``: a context in which every unit stays all-gathered (bf16
  with ``bf16``) across forward calls, so a rollout's decode steps do not all-gather per token;
  :func:`reshard` ``(model)`` after any other forward without backward (reference / old-policy log-probs,
  validation) before the next training forward.
* :func:`save_checkpoint` / :func:`load_checkpoint`: sharded, resumable checkpoints with
  ``torch.distributed.checkpoint`` (every rank writes its shards of the weights and the optimizer; the
  scheduler, the trainer state and each rank's RNG beside them), written under a temporary name and
  renamed when complete; :func:`save_final`: the whole model as one ``save_pretrained`` folder.

The optimizer is built after :func:`wrap` over ``model.parameters()`` (DTensor shards); ``torch.nn.utils
.clip_grad_norm_`` computes the global norm over the shards. Tied input / output embeddings cannot be
split into the two roots: such models are refused (untie them first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from saca import SacaError
from saca.io import read_json, write_json

UNIT_SUFFIXES = ("DecoderLayer", "EncoderLayer", "VisionBlock")


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    return FSDPModule, MixedPrecisionPolicy, fully_shard


def units(model) -> list:
    """The modules sharded as units of their own, innermost first: transformer layers and embeddings."""
    import torch

    out = [m for m in model.modules() if type(m).__name__.endswith(UNIT_SUFFIXES)]
    emb = model.get_input_embeddings()
    if isinstance(emb, torch.nn.Embedding):
        out.append(emb)
    return out


def wrap(model, bf16: bool = False, mesh=None):
    """Shard ``model`` in place over the default process group (or ``mesh``) and return it."""
    import torch

    FSDPModule, MixedPrecisionPolicy, fully_shard = _fsdp()
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    backbone = getattr(model, "model", None)
    head = model.get_output_embeddings()
    if backbone is None or head is None:
        raise SacaError(f"sharding fsdp: {name} ({type(model).__name__}) has no model.model / lm_head split")
    if head.weight is model.get_input_embeddings().weight:
        raise SacaError(f"sharding fsdp: {name} ties its input and output embeddings (tie_word_embeddings), which "
                        "the two FSDP roots cannot share; use sharding: none or an untied checkpoint")
    if not torch.distributed.is_initialized():
        raise SacaError("sharding fsdp: no process group (launch with torchrun; gloo on CPU, nccl on CUDA)")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    kw = {"mp_policy": mp} if mesh is None else {"mp_policy": mp, "mesh": mesh}
    for m in units(backbone):
        fully_shard(m, **kw)
    fully_shard(backbone, **kw)
    fully_shard(head, **kw)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum over ranks, as the trainers' loss scaling expects
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    return model


def shard_reference(ref, mesh=None):
    """The frozen reference, sharded as :func:`wrap` shards the policy, in its own dtype (no gradients)."""
    ref.requires_grad_(False)
    ref.eval()
    return wrap(ref, bf16=False, mesh=mesh)


def fsdp_modules(model) -> list:
    FSDPModule, _, _ = _fsdp()
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model) -> bool:
    return bool(fsdp_modules(model))


@contextlib.contextmanager
def gathered_for_generation(model):
    """Every FSDP unit of ``model`` all-gathered (in the forward's dtype) for the whole block: decoding runs
    on whole weights without an all-gather per token; the shards come back on exit. A no-op when unsharded."""
    mods = fsdp_modules(model)
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
    for m in mods:
        m.unshard()
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def reshard(model) -> None:
    """Give every unit's gathered weights back. Needed after forwards without a backward (validation, reference /
    old-policy log-probs) outside :func:`gathered_for_generation`: FSDP's roots stay gathered after such a forward,
    and a training step started from that state reduced wrong gradients here (2-process SFT drifted from the
    1-process run by one step's update until validation ended with this call)."""
    for m in fsdp_modules(model):
        m.reshard()


def _rank_world():
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier():
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_checkpoint(path, model, optimizer, scheduler=None, state: dict | None = None) -> Path:
    """Write a sharded checkpoint at ``path`` (every rank calls it): ``torch.distributed.checkpoint`` shards of the
    model and optimizer, ``scheduler.pt``, ``rng-{rank}.pt``, ``trainer_state.json`` (``state``). It is written as
    ``.partial-{name}`` and renamed when every rank has finished, so a kill leaves no half checkpoint under ``path``."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from saca.train.state import rng_state

    path = Path(path)
    rank, _ = _rank_world()
    tmp = path.parent / f".partial-{path.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    _barrier()
    if rank == 0:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        write_json(tmp / "trainer_state.json", dict(state or {}))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    _barrier()
    return path


def load_checkpoint(path, model, optimizer, scheduler=None) -> dict:
    """Load a :func:`save_checkpoint` checkpoint into the sharded objects (every rank); its ``trainer_state``."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from saca.train.state import set_rng_state

    path = Path(path)
    rank, _ = _rank_world()
    if not (path / "trainer_state.json").is_file():
        raise SacaError(f"{path}: not a complete sharded checkpoint (no trainer_state.json)")
    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optimizer": osd}
    try:
        dcp.load(sd, checkpoint_id=str(path))
    except Exception as err:  # noqa: BLE001 - DCP raises CheckpointException / RuntimeError / OSError
        raise SacaError(f"{path}: cannot resume from this checkpoint ({err}); delete it to start afresh") from err
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / f"rng-{rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=True))
    return read_json(path / "trainer_state.json")


def full_state_dict(model) -> dict:
    """The whole model's weights as plain CPU tensors (every rank calls it; rank 0 gets them, the others ``{}``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_final(out_dir, model, processor=None) -> Path | None:
    """The whole model as one ``save_pretrained`` folder (rank 0 writes; every rank calls it)."""
    out_dir = Path(out_dir)
    sd = full_state_dict(model)
    rank, _ = _rank_world()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), state_dict=sd)
        if processor is not None:
            processor.save_pretrained(out_dir)
    _barrier()
    return out_dir if rank == 0 else None
