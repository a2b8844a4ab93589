"""CLI commands: rft (reinforcement fine-tuning: online GRPO, VLN-R1's offline RFT; docs/rft.md)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "rft",
        help="reinforcement fine-tuning of a policy (online GRPO over simulator rollouts, or VLN-R1's offline RFT)",
        description="Fine-tune a policy checkpoint (normally the SFT result) with GRPO. mode online: groups of G "
        "trajectories per training episode in the simulator, reward = success; mode offline: G generations per "
        "VLN-Ego sample, reward = VLN-R1's Time-Decayed Reward. Resumes from OUT/checkpoints after a kill; logs to "
        "OUT/train_log.partial.jsonl, which becomes OUT/train_log.jsonl (with OUT/final) when the run has finished. "
        "For several processes launch with torchrun (gradients are summed over ranks).",
    )
    p.add_argument("--init", required=True, help="policy to start from (the SFT checkpoint directory)")
    p.add_argument("--ref", default=None, help="frozen KL reference (default: --init)")
    p.add_argument("--out", required=True, help="run directory (checkpoints/, train_log.jsonl, final/)")
    p.add_argument("--data", nargs="*", default=[], metavar="NAME=DIR",
                   help="dataset roots (episodes in DIR/episodes/), e.g. mini_r2r=results/mini_r2r")
    p.add_argument("--datasets", default=None, help="JSON of the 'datasets' config entries of those datasets")
    p.add_argument("--scenes", default=None, help="directory of scene files (results/scenes)")
    p.add_argument("--sim", default=None, help="JSON of the 'sim' config section")
    p.add_argument("--vln-ego", nargs="*", default=[], help="VLN-Ego training split directories (mode offline)")
    p.add_argument("--landmarks", nargs="*", default=[], metavar="NAME=FILE",
                   help="landmarks of each dataset's training episodes (results/NAME/landmarks/train.jsonl); "
                   "needed when the auditor runs (SACA's soft score, AFR, RR)")
    p.add_argument("--agent", default=None, help="JSON of the agent settings (policy.agent + VLN-Ego n_actions, memory, codec)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--params", default=None, help="JSON of the rft settings of one variant (the workflow resolves it)")
    group.add_argument("--config", default=None, help="YAML config file; its 'rft' section with --variant is used")
    p.add_argument("--variant", default=None, help="variant name under rft.variants (with --config)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="overrides rft.device")
    p.set_defaults(func=cmd_rft)

    m = sub.add_parser(
        "memory",
        help="per-GPU memory of SFT and every RFT variant of a config (docs/memory.md)",
        description="Predict the per-GPU peak memory of the SFT job and of every RFT variant of a config: model "
        "states under its sharding (rft.sharding, sft.sharding or sft.deepspeed's ZeRO stage), the bf16 reference, "
        "activations (with or without gradient checkpointing), the rollouts' KV cache and prefill. The policy's "
        "shapes come from policy.model's config.json or, before the download, from the built-in preset of its name. "
        "Prints a markdown table; exits 1 when a job exceeds --limit-gb.",
    )
    m.add_argument("--config", required=True, help="YAML config file (e.g. config/paper.yaml)")
    m.add_argument("--world", type=int, default=None, help="GPUs per job (default: resources.sft.gpu / resources.rft.gpu)")
    m.add_argument("--sharding", default=None, help="override every job's sharding (none, fsdp, zero0-3)")
    m.add_argument("--micro-batch", type=int, default=None, help="override every job's micro batch")
    m.add_argument("--text-tokens", type=int, default=320, help="prompt text tokens per decision besides the frames'")
    m.add_argument("--limit-gb", type=float, default=44.0, help="per-GPU budget in GB (1e9 bytes)")
    m.add_argument("--out", default=None, help="also write the phases of every job as JSON here")
    m.set_defaults(func=cmd_memory)


def cmd_memory(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from saca import SacaError
    from saca.config import load_yaml
    from saca.io import write_json
    from saca.train import memory

    cfg = load_yaml(args.config)
    model = ((cfg.get("policy") or {}).get("model"))
    if not model:
        raise SacaError(f"{args.config}: policy.model is not set")
    sim = cfg.get("sim") or {}
    dims = memory.dims_of(memory.transformers_config(model), (int(sim.get("height", 480)), int(sim.get("width", 640))),
                          name=Path(model).name)
    jobs = memory.jobs_from_config(cfg, args.world, args.text_tokens, base=str(Path(args.config).resolve().parent.parent))
    for job in jobs:
        if args.sharding:
            job.setup = replace(job.setup, sharding=args.sharding)
        if args.micro_batch:
            job.setup = replace(job.setup, micro_batch=args.micro_batch)
    print(f"# {dims.name}: {dims.params / 1e9:.2f} B parameters, {memory.seq_len(dims, jobs[0].setup)} prompt tokens "
          f"({jobs[0].setup.frames} frames x {dims.tokens_per_frame} + {args.text_tokens} text)")
    print(memory.table(dims, jobs, args.limit_gb))
    print()
    print(memory.phase_table(dims, jobs))
    if args.out:
        write_json(args.out, {"model": asdict(dims), "limit_gb": args.limit_gb, "jobs": [
            {"name": j.name, "setup": asdict(j.setup), "phases": memory.phases(dims, j.setup)} for j in jobs]})
    over = [j.name for j in jobs if memory.peak(dims, j.setup)[1] > args.limit_gb * memory.GB]
    if over:
        print(f"over {args.limit_gb:g} GB: {', '.join(over)}")
        return 1
    return 0


def _pairs(items, flag):
    from saca import SacaError

    out = {}
    for item in items:
        if "=" not in item:
            raise SacaError(f"{flag} {item!r}: expected NAME=DIR")
        name, d = item.split("=", 1)
        out[name] = Path(d)
    return out


def rft_config(args):
    """The resolved RftConfig from ``--params`` or ``--config`` + ``--variant``."""
    from saca import SacaError
    from saca.config import load_yaml, section, section_from_json
    from saca.train.rft import RftConfig, check_variant

    if args.params:
        return section_from_json(args.params, RftConfig, "rft")
    if not args.config:
        cfg = RftConfig()  # the defaults (online SACA), as every command without --params
        cfg.validate("rft")
        return cfg
    full = load_yaml(args.config)
    data = section(full, "rft", args.config)
    if not isinstance(data, dict):
        raise SacaError(f"{args.config}: 'rft' must be a mapping")
    if not args.variant:
        raise SacaError(f"--config {args.config}: name the variant with --variant (defined: {', '.join(sorted(data.get('variants') or {}))})")
    return check_variant(data, args.variant, full.get("auditor"))


def cmd_rft(args, reward=None) -> int:
    """``saca rft``; ``reward``: the trainer's reward seam (:class:`saca.train.rft.RewardFn`; None: the mode's)."""
    from saca.runlock import folder_lock

    with folder_lock(args.out, "RFT run folder"):  # one writer per output folder
        return _cmd_rft(args, reward)


def _cmd_rft(args: argparse.Namespace, reward=None) -> int:
    from saca import SacaError
    from saca.config import from_dict, parse_json_section, section_from_json
    from saca.episodes import load_split
    from saca.episodes.generate import DatasetConfig
    from saca.policy.agent import PolicyAgentConfig
    from saca.policy.data import evenly_spaced
    from saca.policy.model import check_checkpoint_dir
    from saca.sim.base import SimConfig
    from saca.train.rft import RftTrainer

    # every JSON option first (naming the option or key), then the paths
    cfg = rft_config(args)
    if args.device:
        cfg.device = args.device
    agent = section_from_json(args.agent, PolicyAgentConfig, "policy.agent", "--agent") if args.agent else PolicyAgentConfig()
    sim_cfg = section_from_json(args.sim, SimConfig, "sim", "--sim") if args.sim else SimConfig()
    ds_cfgs = parse_json_section(args.datasets, "datasets", "--datasets") if args.datasets else {}
    for flag, path in (("--init", args.init), ("--ref", args.ref)):
        if path is not None and not Path(path).is_dir():
            raise SacaError(f"{flag} {path}: policy checkpoint directory does not exist (run the sft rule first)")
        if path is not None:
            check_checkpoint_dir(path)
    roots = _pairs(args.data, "--data")
    sim_args, train, val = {}, {}, {}
    if roots:
        if not args.scenes or not Path(args.scenes).is_dir():
            raise SacaError(f"--scenes {args.scenes}: directory does not exist (run the 'scenes' step)")
        for name, root in roots.items():
            if name not in ds_cfgs:
                raise SacaError(f"--datasets: no entry for dataset '{name}' (given: {', '.join(ds_cfgs) or 'none'})")
            dcfg = from_dict(DatasetConfig, ds_cfgs[name], f"datasets.{name}")
            sim_args[name] = (sim_cfg, dcfg, args.scenes)
            if cfg.mode == "online":
                train[name] = load_split(root / "episodes", "train")
            eps = load_split(root / "episodes", cfg.eval_split)
            val[name] = [eps[i] for i in evenly_spaced(len(eps), cfg.eval_episodes)] if cfg.eval_episodes else []
    elif cfg.mode == "online":
        raise SacaError("rft mode online: give the training datasets with --data NAME=DIR")
    for d in args.vln_ego:
        if not Path(d).is_dir():
            raise SacaError(f"--vln-ego {d}: VLN-Ego split directory does not exist")
    landmarks = {}
    if cfg.uses_auditor:
        from saca.landmarks import read_landmarks

        for name, path in _pairs(args.landmarks, "--landmarks").items():
            if not path.is_file():
                raise SacaError(f"--landmarks {name}={path}: file does not exist (run the landmarks rule for the train split)")
            landmarks[name] = read_landmarks(path)
        missing = [n for n in train if n not in landmarks]
        if missing:
            raise SacaError(f"--landmarks: no landmarks file for dataset '{missing[0]}' (the auditor of SACA's "
                            "soft score, AFR and RR needs results/NAME/landmarks/train.jsonl)")
    trainer = RftTrainer(args.init, args.ref, args.out, cfg, agent, train, val, sim_args, args.vln_ego, landmarks,
                          reward=reward)
    summary = trainer.run()
    log.info("validation SR before %s after %s", summary["val_sr_before"], summary["val_sr_after"])
    print(json.dumps({k: summary[k] for k in ("val_sr_before", "val_sr_after", "all_failure_share_mean")}, sort_keys=True))
    return 0
