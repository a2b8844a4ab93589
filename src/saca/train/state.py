"""What every training loop shares: devices, seeds, the schedule, checkpoints, the journal, ranks.

* :func:`seed_everything`, :func:`pick_device`, :class:`Dist` (world / rank /
  local rank from ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; process group,
  barrier, float64 sums over ranks);
* :func:`param_groups` (weight decay on matrices only, as the HF Trainer) and
  :func:`make_scheduler` (``transformers.get_scheduler``: ``cosine`` or
  ``constant_with_warmup``, linear warm-up from 0);
* :class:`Checkpoints`: ``{root}/step-NNNNNN/`` written atomically by rank 0
  (``model.safetensors``, ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` with
  the torch, Python, NumPy and CUDA generator states, ``trainer_state.json``
  with the step and a fingerprint of the settings), pruned to the newest
  ``keep``; a resume restores all of it, so a killed run continues as if it had
  not stopped (bit-identical weights on CPU), and checkpoints of other settings
  are discarded with a warning;
* :class:`Journal`: the JSONL log of a run in progress (``{name}.partial.jsonl``,
  a torn last line from a kill dropped on resume) that becomes ``{name}.jsonl``
  only when the run has finished;
* :func:`maybe_kill`: the test hook that SIGKILLs the process after a given step.

Why not ``accelerate``'s ``save_state`` / ``load_state``: in accelerate 1.15 every
object registered with ``register_for_checkpointing`` (``custom_checkpoint_N.pkl``,
where a trainer state beyond model / optimizer / scheduler would go) is loaded
with ``torch.load(weights_only=False)``, i.e. unpickled, and its RNG file
(``random_states_N.pkl``) holds Python's and NumPy's generator states as pickled
objects that load only with NumPy's array reconstruction and ``codecs.encode``
allow-listed as safe globals. This project reads checkpoints only with
safetensors and plain ``torch.load(weights_only=True)``, so every state here is
stored as tensors, numbers, strings and lists. The learning-rate schedule is
``transformers``' own (``get_scheduler``, what the HF Trainer that VLN-R1 /
LLaMA-Factory use runs).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import signal
from pathlib import Path

import numpy as np

from saca import SacaError
from saca.digest import content_digest, file_sha256, fingerprint  # noqa: F401  (re-exported: the resume identity)
from saca.io import atomic_dir, read_journal, read_json, write_json, write_jsonl

log = logging.getLogger(__name__)

KILL_ENV = "SACA_TEST_KILL_AFTER_STEP"  # test hook: SIGKILL the process right after this optimizer step

SCHEDULERS = {"cosine": "cosine", "constant": "constant_with_warmup"}  # config value -> transformers name


def maybe_kill(step: int) -> None:
    """SIGKILL this process when ``$SACA_TEST_KILL_AFTER_STEP`` is ``step`` (tests of kill + resume)."""
    if os.environ.get(KILL_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(device: str, local_rank: int, key: str):
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` (device ``local_rank``); ``key`` names the setting in errors."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise SacaError(f"{key}: auto, cpu or cuda (got {device!r})")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SacaError(f"{key} is 'cuda' but no CUDA device is available")
    return torch.device("cuda", local_rank)


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: ``weight_decay`` on matrices (ndim >= 2), none on biases and norm weights."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_scheduler(optimizer, kind: str, total_steps: int, warmup_steps: int):
    """The HF schedule: linear warm-up from 0 over ``warmup_steps``, then ``cosine`` (to 0 at ``total_steps``) or ``constant``.

    A ``LambdaLR``: its multiplier at optimizer step ``s`` is ``s / max(1, warmup)``
    during warm-up, then ``0.5 * (1 + cos(pi * (s - warmup) / max(1, total - warmup)))``
    (cosine) or 1 (constant).
    """
    from transformers import get_scheduler

    if kind not in SCHEDULERS:
        raise SacaError(f"lr scheduler {kind!r}: {' or '.join(SCHEDULERS)}")
    return get_scheduler(SCHEDULERS[kind], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


# --- ranks ----------------------------------------------------------------------------------------

class Dist:
    """This process's place in a multi-process run (``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; 1 / 0 / 0 alone)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def _active() -> bool:
        import torch

        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def init(self, device_type: str) -> None:
        """Join the process group (gloo on CPU, nccl on CUDA) when there are several processes."""
        import torch

        if self.world > 1 and not self._active():
            torch.distributed.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    def barrier(self) -> None:
        import torch

        if self.world > 1 and self._active():
            torch.distributed.barrier()

    def all_reduce_sum(self, values, device=None) -> list[float]:
        """Element-wise float64 sum of ``values`` over the ranks (the values themselves when alone)."""
        import torch

        values = [float(v) for v in values]
        if self.world == 1 or not self._active():
            return values
        if device is None:
            nccl = torch.distributed.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return [float(x) for x in t.tolist()]


def _barrier(world: int) -> None:
    import torch

    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


# --- RNG state as plain tensors / lists (torch.load(weights_only=True) reads it) ---------------------

def rng_state() -> dict:
    import torch

    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    import torch

    torch.set_rng_state(rng["torch"])
    py = rng["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"]))
    if "numpy" in rng:  # absent in checkpoints of saca.policy.sft, which did not store it
        n = rng["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                             float(n["cached_gaussian"])))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _load_errors() -> tuple:
    errors = [OSError, RuntimeError, KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError, SacaError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - older safetensors
        pass
    return tuple(errors)


# --- checkpoints ------------------------------------------------------------------------------------

CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")


def _one_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's text (PyTorch's unpickling errors run to several), at most ``limit`` chars."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checkpoints:
    """``{root}/step-NNNNNN/`` checkpoints of one run; those of other settings (``fingerprint``) are never resumed."""

    def __init__(self, root, fingerprint: str, keep: int = 2, rank: int = 0, world: int = 1):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.keep = keep
        self.rank = rank
        self.world = world

    def list(self) -> list[Path]:
        """Complete checkpoints (those with ``trainer_state.json``), oldest first."""
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.glob("step-*") if (p / "trainer_state.json").exists())

    def save(self, step: int, model, optimizer, scheduler, state: dict | None = None) -> Path:
        """Write ``step-NNNNNN`` atomically (rank 0), keep the newest ``keep``; all ranks call it."""
        import torch
        from safetensors.torch import save_model

        path = self.root / f"step-{step:06d}"
        if self.rank == 0:
            with atomic_dir(path) as tmp:
                save_model(model, str(tmp / "model.safetensors"))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                torch.save(rng_state(), tmp / "rng.pt")
                digests = {name: file_sha256(tmp / name) for name in CHECKPOINT_FILES}  # checked on resume
                write_json(tmp / "trainer_state.json",
                           {"step": step, "fingerprint": self.fingerprint, **(state or {}), "sha256": digests})
            self.prune()
        _barrier(self.world)
        return path

    def prune(self) -> None:
        """Remove all but the newest ``keep`` checkpoints (rank 0)."""
        if self.rank != 0:
            return
        for old in self.list()[: -max(1, self.keep)]:
            shutil.rmtree(old, ignore_errors=True)

    def _state(self, ckpt: Path) -> dict:
        """A checkpoint's ``trainer_state.json``; SacaError naming the file when it cannot be read."""
        try:
            state = read_json(ckpt / "trainer_state.json")
        except SacaError as err:
            raise SacaError(_one_line(err)) from err
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise SacaError(f"{ckpt / 'trainer_state.json'}: not a trainer state (no integer 'step')")
        return state

    def latest(self, check=None) -> tuple[Path, dict] | None:
        """The newest intact checkpoint of these settings and its ``trainer_state.json``, or None.

        A checkpoint that cannot be read (``trainer_state.json``, or what ``check(path)`` loads, raises
        SacaError naming the file) is skipped with a one-line warning naming the file, and the next older
        one is tried ("falling back"); when none is intact, SacaError names the newest corrupt file.
        Checkpoints of other settings (the newest readable one has another fingerprint) are deleted
        (rank 0) with a warning; all ranks call it.
        """
        ckpts = self.list()
        found, first_error = None, None
        for ckpt in reversed(ckpts):
            try:
                state = self._state(ckpt)
                if state.get("fingerprint") == self.fingerprint and check is not None:
                    check(ckpt, state)
            except SacaError as err:
                first_error = first_error or err
                older = ckpts[: ckpts.index(ckpt)]
                then = f"falling back to {older[-1].name}" if older else "no older checkpoint"
                log.warning("%s; %s", err, then)
                continue
            found = (ckpt, state)
            break
        _barrier(self.world)  # every rank has read the checkpoints before rank 0 may delete them
        if found is None:
            if first_error is not None:
                raise SacaError(f"{first_error}; no intact checkpoint in {self.root}: delete it to start afresh")
            return None
        if found[1].get("fingerprint") != self.fingerprint:
            log.warning("%s: checkpoints come from another configuration; starting afresh", self.root)
            self.clear()
            _barrier(self.world)
            return None
        if first_error is not None:
            log.warning("%s: resuming from %s, the newest intact checkpoint", self.root, found[0].name)
        return found

    def resume(self, model, optimizer, scheduler, device) -> dict | None:
        """Load the newest intact checkpoint of these settings into the objects; its ``trainer_state`` or None.

        Every file of a checkpoint is read (and checked) before anything is loaded into the objects, so a
        corrupt file leaves them untouched and the next older checkpoint is tried (:meth:`latest`).
        """
        import torch
        from safetensors.torch import load_file, load_model

        loaded = {}

        def check(ckpt: Path, state: dict) -> None:
            loaded.clear()
            for name in CHECKPOINT_FILES:
                want = (state.get("sha256") or {}).get(name)  # absent in checkpoints of earlier versions
                if want is not None and (ckpt / name).is_file() and file_sha256(ckpt / name) != want:
                    raise SacaError(f"{ckpt / name}: corrupt (its sha256 is not the one trainer_state.json recorded)")
                try:
                    if name == "model.safetensors":
                        load_file(ckpt / name, device="cpu")  # reads and checks every tensor
                    else:
                        loaded[name] = torch.load(ckpt / name, weights_only=True,
                                                  map_location=device if name == "optimizer.pt" else None)
                except _load_errors() as err:
                    raise SacaError(f"{ckpt / name}: corrupt or unreadable ({_one_line(err)})") from err

        found = self.latest(check)
        if found is None:
            return None
        last, state = found
        try:
            load_model(model, str(last / "model.safetensors"), device=str(device))
            optimizer.load_state_dict(loaded["optimizer.pt"])
            scheduler.load_state_dict(loaded["scheduler.pt"])
            set_rng_state(loaded["rng.pt"])
        except _load_errors() as err:
            raise SacaError(f"{last}: cannot resume from this checkpoint ({_one_line(err)}); "
                            "delete it to start afresh") from err
        log.info("resumed from %s (step %d)", last, state["step"])
        return state

    def clear(self) -> None:
        """Delete every checkpoint (rank 0)."""
        if self.rank == 0:
            shutil.rmtree(self.root, ignore_errors=True)


# --- the finished result, kept beside the declared output ----------------------------------------------

def code_digest(command: str) -> str:
    """sha256 over the package files ``saca <command>`` can execute (:func:`saca.codegraph.command_sources`,
    the files the workflow's rule lists as its ``src`` input), by content and path within the repository."""
    from saca.codegraph import PACKAGE_DIR, command_sources

    repo = PACKAGE_DIR.parent.parent
    return fingerprint([(f, file_sha256(repo / f if not Path(f).is_absolute() else f)) for f in command_sources(command)])


class FinishedRun:
    """``{out}/finished/``: hard links to the files of a finished run's ``final/``, with ``finished.json``.

    Snakemake deletes a job's declared output (``final/``) before it runs the job again: after its controller
    was killed (the job itself ran on and finished) and ``--unlock``, it counts the output as incomplete; the
    job had already cleared its checkpoints, so the rerun trained again from step 0 (issue 25). A run that
    finishes therefore also links its result here (no extra disk space: the same files), and a run whose
    ``final/`` is missing restores it from here, without training, when ``finished.json`` names the same
    settings and inputs (the resume fingerprint) and the same code (:func:`code_digest`). Delete the folder
    to train again. Rank 0 writes; all ranks call both methods.
    """

    def __init__(self, out_dir, run_fingerprint: str, command: str, rank: int = 0, world: int = 1):
        out = Path(out_dir)
        self.final = out / "final"
        self.kept = out / "finished"
        self.rank, self.world = rank, world
        self.identity = {"fingerprint": run_fingerprint, "code": code_digest(command)}

    def keep(self) -> None:
        """Link the files of ``final/`` (just written) into ``finished/`` (rank 0)."""
        if self.rank == 0:
            with atomic_dir(self.kept) as tmp:
                _link_tree(self.final, tmp)
                write_json(tmp / "finished.json", self.identity)
        _barrier(self.world)

    def restore(self, journal: "Journal | None" = None, summary: str | None = None):
        """Restore a missing ``final/`` from the kept result of this identity: its ``summary`` file's content
        (or True), after finishing the ``journal`` a kill left unfinished; None when there is nothing to restore."""
        try:
            kept = read_json(self.kept / "finished.json") if (self.kept / "finished.json").exists() else None
        except SacaError:
            kept = None
        use = kept == self.identity and not self.final.exists()
        _barrier(self.world)  # every rank has decided before rank 0 writes final/
        if use and self.rank == 0:
            with atomic_dir(self.final) as tmp:
                _link_tree(self.kept, tmp, skip=("finished.json",))
            if journal is not None and journal.partial.exists():
                journal.finish()
            log.warning("%s: restored the finished result of an earlier run of these settings, inputs and code from "
                        "%s (not trained again); delete %s to train again", self.final, self.kept, self.kept)
        _barrier(self.world)
        if not use:
            return None
        return read_json(self.final / summary) if summary else True


def _link_tree(src: Path, dst: Path, skip: tuple = ()) -> None:
    """Hard-link every file under ``src`` into ``dst`` (a copy where the file system has no hard links)."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if rel == Path(".") and name in skip:
                continue
            try:
                os.link(Path(root) / name, dst / rel / name)
            except OSError:
                shutil.copy2(Path(root) / name, dst / rel / name)


# --- the journal --------------------------------------------------------------------------------------

class Journal:
    """The JSONL log of a run: ``{name}.partial.jsonl`` while it runs, ``{name}.jsonl`` once it has finished.

    A run that fails therefore never rewrites the log of a finished one, and the
    torn last line a kill leaves is dropped on resume (:func:`saca.io.read_journal`).
    Only rank 0 writes.
    """

    def __init__(self, out_dir, name: str = "train_log", rank: int = 0):
        out = Path(out_dir)
        self.partial = out / f"{name}.partial.jsonl"  # the log of the run in progress
        self.final = out / f"{name}.jsonl"  # the finished run's log
        self.rank = rank

    def start(self, step: int, fingerprint: str) -> None:
        """The journal of this run: empty for a fresh start; after a resume, the rows up to the checkpoint's step.

        A resumed run whose journal is gone (a finished run with kept checkpoints
        rerun, or a run of a version that logged to ``{name}.jsonl`` directly) starts
        from that log when it is the log of this configuration (its ``event: start``
        row has this ``fingerprint``).
        """
        if self.rank != 0:
            return
        if step == 0:
            self.partial.unlink(missing_ok=True)
            return
        if self.partial.exists():
            rows = read_journal(self.partial)
        else:
            rows = read_journal(self.final, repair=False)
            starts = [r for r in rows if r.get("event") == "start"]
            if not starts or starts[0].get("fingerprint", fingerprint) != fingerprint:
                rows = []
        write_jsonl(self.partial, [r for r in rows if r.get("step", 0) <= step])

    def log(self, row: dict) -> None:
        if self.rank != 0:
            return
        with open(self.partial, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
        log.info("%s", row)

    def rows(self) -> list[dict]:
        return read_journal(self.partial, repair=False)

    def finish(self) -> None:
        """The run has finished: its journal becomes ``{name}.jsonl`` (rank 0)."""
        if self.rank == 0:
            os.replace(self.partial, self.final)
