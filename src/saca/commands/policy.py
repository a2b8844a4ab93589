"""CLI commands: policy (the VLM navigation policy and its supervised fine-tuning).

* ``policy-init``: build the embedded tiny policy and ``save_pretrained`` it;
* ``vision-pretrain``: pretrain its vision tower on rendered frames of the train houses (mini-world lever);
* ``sft``: supervised fine-tuning on VLN-Ego (VLN-R1 Eq. 8);
* ``policy-agent``: write the agent spec (``agent.json``) that evaluation loads;
* ``policy-predict``: run the policy on VLN-Ego samples and report per-action accuracy.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub) -> None:
    from saca.config import add_params_args

    p = sub.add_parser(
        "policy-init",
        help="build the embedded tiny policy (random weights, offline tokenizer) and save_pretrained it",
        description="Build a tiny Qwen2-VL / Qwen2.5-VL / LLaVA-OneVision model from the 'policy.init' settings, "
        "train its byte-level BPE tokenizer offline, and write model + tokenizer + image processor with save_pretrained.",
    )
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    add_params_args(p, "policy.init")
    p.set_defaults(func=cmd_policy_init)

    p = sub.add_parser(
        "vision-pretrain",
        help="pretrain the tiny policy's vision tower on rendered frames of the train houses (issue 12 lever)",
        description="Render 'policy.vision_pretrain.frames' views of the embedded train houses (scenes index "
        "split 'train'), label each merged image token with the landmark that covers it and whether it fills it, "
        "and each frame with the free space ahead (simulator instance masks and navigation grid), train the vision "
        "tower on those targets and write the whole policy with save_pretrained (saca.policy.vision_pretrain).",
    )
    p.add_argument("--init", required=True, help="policy directory (the tiny model of policy-init)")
    p.add_argument("--scenes", required=True, help="embedded scenes directory (index.json and the house files)")
    p.add_argument("--sim", default=None, help="JSON object with the 'sim' settings (camera size and field of view)")
    p.add_argument("--image-format", default="jpeg", choices=["jpeg", "png"], help="VLN-Ego image codec (vln_ego.image_format)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="vln_ego.jpeg_quality")
    p.add_argument("--out", required=True, help="output policy directory (written atomically)")
    add_params_args(p, "policy.vision_pretrain")
    p.set_defaults(func=cmd_vision_pretrain)

    p = sub.add_parser(
        "sft",
        help="supervised fine-tuning of the policy on VLN-Ego (VLN-R1 Eq. 8)",
        description="Fine-tune a policy checkpoint on VLN-Ego samples: cross-entropy on the answer tokens only. "
        "Checks every input (init checkpoint, frame shards) before it touches OUT. Resumes from OUT/checkpoints "
        "after a kill; logs to OUT/train_log.partial.jsonl while it trains, which becomes OUT/train_log.jsonl "
        "(with OUT/final, save_pretrained) only when the run has finished. "
        "For several GPUs launch with torchrun/deepspeed and set sft.deepspeed (or --deepspeed).",
    )
    p.add_argument("--init", required=True, help="policy to start from: a save_pretrained directory or a hub id")
    p.add_argument("--train", nargs="+", required=True, help="VLN-Ego split directories of the training mix")
    p.add_argument("--val", nargs="*", default=[], metavar="NAME=DIR", help="validation splits, e.g. mini_r2r/val_seen=results/mini_r2r/vln_ego/val_seen")
    p.add_argument("--out", required=True, help="run directory (checkpoints/, train_log.jsonl, final/)")
    p.add_argument("--deepspeed", default=None, help="DeepSpeed ZeRO config file (overrides sft.deepspeed)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="overrides sft.device")
    add_params_args(p, "sft")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser(
        "policy-agent",
        help="write the agent spec (agent.json) that evaluation loads for a policy checkpoint",
        description="Write the agent spec OUT (a .json file, or OUT/agent.json for a directory): the checkpoint "
        "(relative to the spec) and the agent settings "
        "(policy.agent plus the VLN-Ego n_actions, memory sampler and image codec). saca.policy.agent.load_policy_agent(OUT) reads it.",
    )
    p.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    p.add_argument("--out", required=True, help="agent spec file (.json) or directory")
    add_params_args(p, "policy.agent")
    p.set_defaults(func=cmd_policy_agent)

    p = sub.add_parser(
        "policy-predict",
        help="run a policy (or agent spec) on VLN-Ego samples; report parse statuses and action accuracy",
    )
    p.add_argument("--policy", required=True, help="checkpoint directory or agent spec (agent.json)")
    p.add_argument("--vln-ego", required=True, help="VLN-Ego split directory")
    p.add_argument("--samples", type=int, default=64, help="evenly spaced samples to run (0: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None, help="JSON report (default: print)")
    p.set_defaults(func=cmd_policy_predict)


def cmd_policy_init(args: argparse.Namespace) -> int:
    from saca.config import params_from_args
    from saca.policy.tiny import TinyConfig, build_tiny_policy, describe

    cfg = params_from_args(args, TinyConfig, "policy.init")
    out = build_tiny_policy(args.out, cfg)
    log.info("tiny policy: %s", describe(out))
    return 0


def cmd_vision_pretrain(args: argparse.Namespace) -> int:
    from saca.config import params_from_args, section_from_json
    from saca.policy.vision_pretrain import VisionPretrainConfig, pretrain_vision
    from saca.sim.base import SimConfig

    cfg = params_from_args(args, VisionPretrainConfig, "policy.vision_pretrain")
    sim_cfg = section_from_json(args.sim, SimConfig, "sim", "--sim") if args.sim else SimConfig()
    summary = pretrain_vision(args.init, args.scenes, args.out, cfg, sim_cfg, args.image_format, args.jpeg_quality)
    log.info("vision pretraining: held-out before %s after %s", summary["val_before"], summary["val_after"])
    return 0


def cmd_sft(args) -> int:
    from saca.runlock import folder_lock

    with folder_lock(args.out, "SFT run folder"):  # one writer per output folder
        return _cmd_sft(args)


def _cmd_sft(args: argparse.Namespace) -> int:
    from saca import SacaError
    from saca.config import params_from_args
    from saca.train.sft import SftConfig, SftTrainer

    cfg = params_from_args(args, SftConfig, "sft")
    if args.deepspeed:
        cfg.deepspeed = args.deepspeed
    if args.device:
        cfg.device = args.device
    val = {}
    for item in args.val:
        if "=" not in item:
            raise SacaError(f"--val {item!r}: expected NAME=DIR")
        name, d = item.split("=", 1)
        val[name] = d
    summary = SftTrainer(args.init, args.train, args.out, cfg, val_dirs=val).run()
    log.info("val loss before %s after %s", summary["val_loss_before"], summary["val_loss_after"])
    return 0


def cmd_policy_agent(args: argparse.Namespace) -> int:
    from saca.config import params_from_args
    from saca.policy.agent import PolicyAgentConfig, write_agent_spec

    cfg = params_from_args(args, PolicyAgentConfig, "policy.agent")
    write_agent_spec(args.out, args.checkpoint, cfg)
    return 0


def cmd_policy_predict(args: argparse.Namespace) -> int:
    from saca.io import dumps_json, write_json
    from saca.policy.agent import predict_vln_ego

    report = predict_vln_ego(args.policy, args.vln_ego, args.samples, args.batch_size)
    if args.out:
        write_json(args.out, report)
    else:
        print(dumps_json(report), end="")
    return 0
