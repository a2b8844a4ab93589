"""The agent protocol the evaluation runner (and RL rollouts) drive.

The runner keeps up to ``batch_size`` episodes active, each with its own
simulator, and once per environment step calls ``agent.act`` with the
contexts of all active episodes. An agent that plans action chunks (the VLN
policy, method-notes §3.1 ``execute_actions``) keeps its queue per episode in
``ctx.memory``; one that needs pixels calls ``ctx.sim.observe()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from saca.episodes import Episode
from saca.sim.base import Simulator


@dataclass
class EpisodeContext:
    """One active episode as an agent sees it."""

    episode: Episode
    sim: Simulator
    step: int = 0
    actions: list[int] = field(default_factory=list)  # actions taken so far
    memory: dict[str, Any] = field(default_factory=dict)  # per-episode agent state (frames, action queue)


class Agent(Protocol):
    name: str

    def reset(self, contexts: Sequence[EpisodeContext]) -> None:
        """Called once for episodes that have just started (their ``memory`` is empty)."""

    def act(self, contexts: Sequence[EpisodeContext]) -> list[int]:
        """Next action (``saca.sim.base.Action`` value) for each episode passed (once per step of each)."""

    # Optional: ``queued_actions(ctx) -> int``, the actions an episode has planned (0: its next
    # step needs a decision). An agent that has it is only passed the episodes with planned
    # actions while there are any, so that decisions are batched (``saca.evaluate.runner``).
