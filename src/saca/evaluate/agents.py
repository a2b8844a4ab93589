"""Reference agents (random, forward-until-blocked, shortest-path oracle) and ``make_agent``.

All agents follow :class:`saca.evaluate.agent_api.Agent`: ``reset`` for newly
started episodes, ``act`` once per environment step for every active one.
Per-episode state lives in ``ctx.memory`` so that an episode's actions do not
depend on which other episodes share its batch, shard or resumed run.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from saca import SacaError
from saca.evaluate.agent_api import EpisodeContext
from saca.sim.base import Action

# VLN-CE's RandomAgent (vlnce_baselines/nonlearning_agents.py): the oracle action
# distribution of the R2R-CE training set, order STOP, MOVE_FORWARD, TURN_LEFT, TURN_RIGHT.
VLNCE_RANDOM_PROBS = (0.02, 0.68, 0.15, 0.15)


def episode_seed(seed: int, episode_id: int | str) -> list[int]:
    """A seed for one episode that depends only on the run seed and the episode id."""
    return [int(seed), zlib.crc32(str(episode_id).encode("utf-8"))]


class RandomAgent:
    """VLN-CE's random baseline: each step samples an action from ``probs``.

    ``probs`` defaults to VLN-CE's ``[0.02, 0.68, 0.15, 0.15]`` (STOP, FORWARD,
    LEFT, RIGHT), so the agent usually walks a few metres and stops after
    about 50 steps, as in the published random baselines. Each episode
    draws from its own generator seeded by ``(seed, crc32(episode_id))``.
    """

    name = "random"

    def __init__(self, seed: int = 0, probs: Sequence[float] = VLNCE_RANDOM_PROBS):
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (4,) or (p < 0).any() or abs(p.sum() - 1.0) > 1e-9:
            raise SacaError(f"random agent: probs must be 4 non-negative numbers summing to 1, got {list(probs)}")
        self.seed = int(seed)
        self.probs = p

    def reset(self, contexts: Sequence[EpisodeContext]) -> None:
        for ctx in contexts:
            ctx.memory["rng"] = np.random.default_rng(episode_seed(self.seed, ctx.episode.episode_id))

    def act(self, contexts: Sequence[EpisodeContext]) -> list[int]:
        return [int(ctx.memory["rng"].choice(4, p=self.probs)) for ctx in contexts]


class ForwardAgent:
    """Moves forward until a forward step is blocked (``sim.state.collided``), then calls STOP."""

    name = "forward"

    def reset(self, contexts: Sequence[EpisodeContext]) -> None:
        pass

    def act(self, contexts: Sequence[EpisodeContext]) -> list[int]:
        return [int(Action.STOP if ctx.sim.state.collided else Action.MOVE_FORWARD) for ctx in contexts]


class OracleAgent:
    """The shortest-path follower (``Simulator.teacher_action``): an upper bound that checks metrics and simulator agree."""

    name = "oracle"

    def reset(self, contexts: Sequence[EpisodeContext]) -> None:
        pass

    def act(self, contexts: Sequence[EpisodeContext]) -> list[int]:
        return [int(ctx.sim.teacher_action()) for ctx in contexts]


AGENTS: dict[str, Callable[..., Any]] = {
    "random": lambda seed=0, **_: RandomAgent(seed),
    "forward": lambda **_: ForwardAgent(),
    "oracle": lambda **_: OracleAgent(),
}


def make_agent(spec: str, seed: int = 0, options: dict | None = None):
    """An agent from a spec: a reference agent name, or a policy checkpoint path.

    ``random``, ``forward``, ``oracle`` build the reference agents. Any other
    spec must be an existing path: it is loaded with
    ``saca.policy.agent.load_policy_agent(path, seed=seed, **options)``
    (imported only then). Anything else raises SacaError naming the spec.
    """
    if spec in AGENTS:
        return AGENTS[spec](seed=seed)
    path = Path(spec)
    if not path.exists():
        raise SacaError(
            f"agent '{spec}': not a reference agent ({', '.join(AGENTS)}) and no checkpoint exists at that path"
        )
    try:
        from saca.policy.agent import load_policy_agent
    except ImportError as err:
        raise SacaError(f"agent '{spec}': loading a policy checkpoint needs saca.policy.agent ({err})") from err
    options = dict(options or {})
    if "seed" in options:
        raise SacaError(
            f"agent '{spec}': evaluation.agent_options.seed is not allowed; the evaluation seed "
            "(evaluation.seed) seeds the agent"
        )
    return load_policy_agent(path, seed=seed, **options)
