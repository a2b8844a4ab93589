"""Simulator backends behind one interface (:class:`saca.sim.base.Simulator`)."""

from __future__ import annotations

from pathlib import Path

from saca import SacaError
from saca.sim.base import (  # noqa: F401
    Action,
    AgentState,
    Observation,
    SimConfig,
    Simulator,
    forward_vector,
    heading_to_quaternion,
    quaternion_to_heading,
)

BACKENDS = ("embedded", "habitat")


def make_simulator(backend: str, config: SimConfig, turn_angle: float, scenes_dir: str | Path) -> Simulator:
    """Create a simulator. ``scenes_dir`` holds the scene files the backend loads."""
    if backend == "embedded":
        from saca.sim.embedded.sim import EmbeddedSimulator

        return EmbeddedSimulator(config, turn_angle, scenes_dir)
    if backend == "habitat":
        from saca.sim.habitat import HabitatSimulator

        return HabitatSimulator(config, turn_angle, scenes_dir)
    raise SacaError(f"unknown simulator backend '{backend}'; choose one of {', '.join(BACKENDS)}")
