"""The VLN policy as an evaluation / rollout agent (saca.evaluate.agent_api).

Per episode the agent keeps, in ``ctx.memory["policy"]``, every frame it has
seen (``ctx.sim.observe()`` once per environment step, frame ``t`` = the view
before action ``t``, as in VLN-Ego) and a queue of planned actions. When an
episode's queue is empty the agent needs a *decision*: the history frames are
chosen with :func:`saca.vln_ego.samplers.history_indices`, the prompt with
:func:`saca.prompt.build_prompt` (the simulator's real turn angle), and all
episodes that need a decision in this call are generated in one batched
``generate`` call. Each episode samples from its own random stream, seeded by
the run seed and its episode id (one seed per decision, drawn from it, and
:class:`saca.policy.generate.RowSampler`): an episode's actions do not depend on
the batch size, on which episodes share a call, or on a resume. The parsed chunk of ``n_actions`` actions is queued and the
first ``execute_actions`` of them are executed (0 = all), stopping early at STOP
(method-notes §3.1).

Invalid output (text that names no action at all) is counted and replaced by
``invalid_action`` (default ``stop``: the episode ends there and counts as a
failure unless the agent already stands within 3 m of the goal). Partial output
(bare letters, fewer than ``n_actions`` options, truncated text) executes the
actions that were recovered. ``agent.stats`` holds the counts.

Frames go through the same image codec as the VLN-Ego export (JPEG, quality
95 by default), so the policy sees at evaluation time the same kind of pixels
it was fine-tuned on.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from saca import SacaError
from saca.action_text import ParseCounter, parse_actions
from saca.config import from_dict
from saca.policy.generate import PolicyInput, SamplingConfig, generate_batch
from saca.prompt import build_prompt
from saca.sim.base import Action
from saca.vln_ego.samplers import MemoryConfig, history_indices

INVALID_ACTIONS = {"stop": int(Action.STOP), "forward": int(Action.MOVE_FORWARD)}


@dataclass
class PolicyAgentConfig:
    """Settings of the policy agent (``policy.agent`` plus the shared VLN-Ego settings)."""

    n_actions: int = 6
    execute_actions: int = 0  # 0: the whole chunk (stopping early at STOP); 1: re-plan every step
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    generation: SamplingConfig = field(default_factory=SamplingConfig)
    invalid_action: str = "stop"  # what an output with no action at all does: stop | forward
    dtype: str = "float32"
    device: str = "cpu"
    image_format: str = "jpeg"  # codec round trip of each frame, as in the VLN-Ego export: jpeg | png | none
    jpeg_quality: int = 95
    image_pixels: int | None = None
    max_batch: int = 0  # largest generate() batch; 0: all decisions of a step at once
    decoder: str = "static"  # static: our decode loop over a static KV cache; hf: model.generate (saca.policy.generate)
    record_decisions: bool = True  # keep text / status / actions of every decision in ctx.memory
    record_tokens: bool = False  # also keep each decision's generated token ids and log-probs (RL rollouts)
    seed: int | None = None  # overrides generation.seed
    name: str = "policy"

    def validate(self, where: str) -> None:
        if self.n_actions < 1:
            raise SacaError(f"{where}.n_actions: must be at least 1")
        if not 0 <= self.execute_actions <= self.n_actions:
            raise SacaError(f"{where}.execute_actions: must be between 0 (all) and n_actions={self.n_actions}")
        if self.invalid_action not in INVALID_ACTIONS:
            raise SacaError(f"{where}.invalid_action: '{self.invalid_action}' is not one of {', '.join(INVALID_ACTIONS)}")
        if self.image_format not in ("jpeg", "png", "none"):
            raise SacaError(f"{where}.image_format: must be jpeg, png or none")
        if self.decoder not in ("static", "hf"):
            raise SacaError(f"{where}.decoder: '{self.decoder}' is not one of static, hf")
        self.memory.validate(f"{where}.memory")
        self.generation.validate(f"{where}.generation")


def chunk_to_execute(actions: Sequence[int], execute_actions: int) -> list[int]:
    """The part of a planned chunk that is executed: the first ``execute_actions`` (0 = all), cut after STOP."""
    chunk = list(actions) if execute_actions <= 0 else list(actions[:execute_actions])
    if int(Action.STOP) in chunk:
        chunk = chunk[: chunk.index(int(Action.STOP)) + 1]
    return chunk


def policy_frame(rgb, cfg: PolicyAgentConfig):
    """The frame as the policy sees it: the VLN-Ego export's image codec round trip (``image_format``)."""
    if cfg.image_format == "none":
        return rgb.copy()
    from saca.vln_ego.store import decode_image, encode_image

    return decode_image(encode_image(rgb, cfg.image_format, cfg.jpeg_quality))


def plan_chunk(text: str, cfg: PolicyAgentConfig, turn_angle: float, counter: ParseCounter):
    """Parse a decision's output: ``(parsed, chunk to execute, invalid)``; an output naming no action
    executes ``invalid_action`` (method-notes §3.1)."""
    parsed = counter.add(parse_actions(text, cfg.n_actions, turn_angle))
    if parsed.ok:
        return parsed, chunk_to_execute(parsed.actions, cfg.execute_actions), False
    return parsed, [INVALID_ACTIONS[cfg.invalid_action]], True


class PolicyAgent:
    """Batched VLM agent; see the module docstring for its behaviour."""

    def __init__(self, policy, config: PolicyAgentConfig):
        self.policy = policy
        self.cfg = config
        self.name = config.name
        self.identity = None  # the resume identity of evaluations (load_policy_agent: weights and settings)
        self.counter = ParseCounter()
        self._calls = 0
        self._seed = config.generation.seed if config.seed is None else int(config.seed)

    # --- agent protocol ---------------------------------------------------------------------
    def reset(self, contexts) -> None:
        import numpy as np

        from saca.evaluate.agents import episode_seed

        for ctx in contexts:
            # the episode's own random stream (run seed, episode id): its decisions draw the same numbers
            # whatever other episodes share their generate calls, the batch size, or a resume
            rng = np.random.default_rng(episode_seed(self._seed, ctx.episode.episode_id))
            ctx.memory["policy"] = {"frames": [], "queue": [], "decisions": [], "n_invalid": 0, "rng": rng}

    def queued_actions(self, ctx) -> int:
        """Planned actions ``ctx``'s episode still has; 0: its next step needs a decision. The
        evaluation runner lets such episodes wait so that decisions share ``generate`` calls."""
        mem = ctx.memory.get("policy")
        return len(mem["queue"]) if mem else 0

    def act(self, contexts) -> list[int]:
        need = []
        for ctx in contexts:
            mem = ctx.memory.get("policy")
            if mem is None:
                self.reset([ctx])
                mem = ctx.memory["policy"]
            frames = mem["frames"]
            if len(frames) != ctx.step:
                raise SacaError(
                    f"episode {ctx.episode.episode_id}: the policy agent holds {len(frames)} frames at step "
                    f"{ctx.step}; act() must be called once per environment step"
                )
            frames.append(self._frame(ctx))
            if not mem["queue"]:
                need.append(ctx)
        if need:
            self._decide(need)
        return [int(ctx.memory["policy"]["queue"].pop(0)) for ctx in contexts]

    # --- internals --------------------------------------------------------------------------
    def _frame(self, ctx):
        return policy_frame(ctx.sim.observe().rgb, self.cfg)

    def history(self, ctx) -> list[int]:
        return history_indices(ctx.step, self.cfg.memory)

    def build_input(self, ctx) -> PolicyInput:
        """The decision input at ``ctx.step``: prompt and frames (history, then the current one)."""
        frames = ctx.memory["policy"]["frames"]
        t = ctx.step
        hist = self.history(ctx)
        prompt = build_prompt(ctx.episode.instruction_text, len(hist), ctx.sim.turn_angle, self.cfg.n_actions)
        return PolicyInput(prompt, [frames[i] for i in hist] + [frames[t]])

    def _decide(self, contexts) -> None:
        inputs = [self.build_input(ctx) for ctx in contexts]
        gen = generate_batch(
            self.policy,
            inputs,
            self.cfg.generation,
            seed=self._seed + self._calls,
            return_logprobs=self.cfg.record_tokens,
            max_batch=self.cfg.max_batch or None,
            row_seeds=[int(ctx.memory["policy"]["rng"].integers(2**63 - 1)) for ctx in contexts],
            decoder=self.cfg.decoder,
        )
        self._calls += 1
        for k, (ctx, text) in enumerate(zip(contexts, gen.texts)):
            mem = ctx.memory["policy"]
            parsed, chunk, invalid = plan_chunk(text, self.cfg, ctx.sim.turn_angle, self.counter)
            mem["n_invalid"] += int(invalid)
            mem["queue"] = list(chunk)
            if self.cfg.record_decisions:
                rec = {"step": ctx.step, "history": self.history(ctx), "text": text, "status": parsed.status,
                       "actions": list(parsed.actions), "executed": chunk}
                if self.cfg.record_tokens:
                    rec["token_ids"] = gen.token_ids[k]
                    rec["logprobs"] = gen.logprobs[k]
                mem["decisions"].append(rec)

    @property
    def stats(self) -> dict:
        """Decision counts: valid / partial / invalid outputs and the invalid rate."""
        return self.counter.as_dict()


AGENT_SPEC = "agent.json"


def write_agent_spec(out, checkpoint, cfg: PolicyAgentConfig) -> Path:
    """Write an agent spec: ``out`` is the JSON file, or a directory that gets ``agent.json``.

    The spec holds the checkpoint as a path relative to the spec's directory and the
    agent settings; :func:`load_policy_agent` reads it.
    """
    from saca.io import write_json

    out = Path(out)
    spec_file = out if out.suffix == ".json" else out / AGENT_SPEC
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise SacaError(f"{ckpt}: policy checkpoint directory does not exist")
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(ckpt.resolve(), spec_file.parent.resolve())
    write_json(spec_file, {"checkpoint": rel, "options": asdict(cfg)})
    return spec_file


def resolve_agent_spec(path) -> tuple[Path, dict]:
    """``(checkpoint directory, options)`` for an agent spec (a ``.json`` file, or a directory holding
    ``agent.json``) or a plain checkpoint directory (no options)."""
    from saca.io import read_json

    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        spec_file = path
    elif (path / AGENT_SPEC).is_file():
        spec_file = path / AGENT_SPEC
    else:
        return path, {}
    spec = read_json(spec_file)
    if not isinstance(spec, dict) or "checkpoint" not in spec:
        raise SacaError(f"{spec_file}: expected an object with 'checkpoint' and 'options'")
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise SacaError(f"{spec_file}: 'options' must be an object")
    return (spec_file.parent / spec["checkpoint"]).resolve(), dict(options)


def load_policy_agent(path, **kwargs) -> PolicyAgent:
    """Agent for a policy: ``path`` is an agent spec (``agent.json`` or a directory holding one,
    see ``saca policy-agent``) or a checkpoint directory. ``kwargs`` (the evaluation runner passes ``seed`` and
    ``evaluation.agent_options``) override the spec's options; keys are :class:`PolicyAgentConfig`
    fields, and unknown keys raise SacaError with a did-you-mean hint."""
    from saca.policy.model import load_policy

    from saca.digest import content_digest, fingerprint

    ckpt, options = resolve_agent_spec(path)
    options.update(kwargs)
    cfg = from_dict(PolicyAgentConfig, options, "policy.agent")
    policy = load_policy(ckpt, dtype=cfg.dtype, device=cfg.device, image_pixels=cfg.image_pixels)
    agent = PolicyAgent(policy, cfg)
    # what the evaluation's resume identity compares (run.json): the weights' content and the settings that
    # change the actions, not the checkpoint's path
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("device", "max_batch", "record_decisions", "name")}
    agent.identity = f"policy:{fingerprint({'weights': content_digest(ckpt), 'settings': settings})}"
    return agent


def majority_baseline(truths: Sequence[Sequence[int]]) -> dict:
    """Accuracy of always answering the most frequent action at each chunk position (ties: lowest id).

    The yardstick for :func:`predict_vln_ego`: a policy that ignores its instruction and frames
    and outputs the marginal mode scores this."""
    if not truths:
        return {"first_action_accuracy": 0.0, "per_position_accuracy": [], "exact_match": 0.0, "actions": []}
    n_pos = len(truths[0])
    mode = []
    for k in range(n_pos):
        counts: dict[int, int] = {}
        for t in truths:
            counts[int(t[k])] = counts.get(int(t[k]), 0) + 1
        mode.append(min(counts, key=lambda a: (-counts[a], a)))
    n = len(truths)
    per_pos = [sum(int(t[k]) == mode[k] for t in truths) / n for k in range(n_pos)]
    return {
        "actions": mode,
        "first_action_accuracy": per_pos[0],
        "per_position_accuracy": per_pos,
        "exact_match": sum([int(a) for a in t] == mode for t in truths) / n,
    }


def predict_vln_ego(path, split_dir, samples: int = 64, batch_size: int = 16) -> dict:
    """Run the policy on VLN-Ego samples (their own history frames): parse statuses and action accuracy,
    beside the accuracy of the majority baseline (:func:`majority_baseline`) on the same samples."""
    from saca.policy.data import PolicyData, evenly_spaced
    from saca.policy.model import load_policy

    ckpt, options = resolve_agent_spec(path)
    cfg = from_dict(PolicyAgentConfig, options, "policy.agent")
    policy = load_policy(ckpt, dtype=cfg.dtype, device=cfg.device, image_pixels=cfg.image_pixels)
    data = PolicyData([split_dir], cfg.n_actions)
    idx = evenly_spaced(len(data), samples)
    counter = ParseCounter()
    exact = first = 0
    per_pos = [0] * cfg.n_actions
    examples = []
    truths = []
    for lo in range(0, len(idx), batch_size):
        chunk = idx[lo : lo + batch_size]
        gen = generate_batch(policy, [data.policy_input(i) for i in chunk], cfg.generation, seed=cfg.generation.seed + lo)
        for i, text in zip(chunk, gen.texts):
            s = data.sample(i)
            truth = [int(a) for a in s["actions"]]
            truths.append(truth)
            parsed = counter.add(parse_actions(text, cfg.n_actions, float(s["turn_angle"])))
            pred = list(parsed.actions) + [-1] * (cfg.n_actions - len(parsed.actions))
            exact += int(pred == truth)
            first += int(pred[0] == truth[0])
            for k in range(cfg.n_actions):
                per_pos[k] += int(pred[k] == truth[k])
            if len(examples) < 8:
                examples.append({"sample_id": s["sample_id"], "answer": s["answer"], "output": text, "status": parsed.status})
    n = max(len(idx), 1)
    return {
        "checkpoint": str(ckpt), "split_dir": str(split_dir), "samples": len(idx),
        "exact_match": exact / n, "first_action_accuracy": first / n,
        "per_position_accuracy": [c / n for c in per_pos], "majority_baseline": majority_baseline(truths),
        **counter.as_dict(), "examples": examples,
    }
