"""Simulator backends behind one interface (:class:`saca.sim.base.Simulator`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from saca import SacaError
from saca.sim.base import (  # noqa: F401
    DATASET_SIM_KEYS,
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


def check_dataset_sim(overrides, where: str) -> None:
    """Check a dataset's ``sim`` overrides (``datasets.<name>.sim``): a mapping of :data:`DATASET_SIM_KEYS`.

    ``where`` is the dataset's config path (``datasets.r2r_ce``); errors name ``where.sim.<key>``.
    """
    if not isinstance(overrides, dict):
        raise SacaError(f"{where}.sim: expected a mapping of sim settings, got {type(overrides).__name__}")
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    for key in overrides:
        if key not in fields:
            raise SacaError(f"unknown config key '{where}.sim.{key}'; a dataset may set {', '.join(DATASET_SIM_KEYS)}")
        if key not in DATASET_SIM_KEYS:
            raise SacaError(f"{where}.sim.{key}: not a per-dataset setting, set it in the global 'sim' section "
                            f"(a dataset may set {', '.join(DATASET_SIM_KEYS)})")


def dataset_sim_config(sim_cfg: SimConfig, ds_cfg, where: str = "datasets.<dataset>") -> SimConfig:
    """The simulator settings of one dataset: the global ``sim`` section with the dataset's
    ``sim`` overrides (``datasets.<name>.sim``) applied, then validated.

    The one place the two are merged (``saca.commands.data.sim_from_args`` and the RFT
    trainer's simulators use it). ``ds_cfg`` is a :class:`saca.episodes.generate.DatasetConfig`
    (or anything with a ``sim`` mapping); ``where`` names the dataset in errors.
    """
    overrides = dict(getattr(ds_cfg, "sim", None) or {})
    if not overrides:
        return sim_cfg
    check_dataset_sim(overrides, where)
    merged = dataclasses.replace(sim_cfg, **overrides)
    try:
        merged.validate(f"{where}.sim")
    except (TypeError, ValueError) as err:  # a value of the wrong type reached a check
        raise SacaError(f"{where}.sim: invalid value ({err})") from err
    return merged


def make_simulator(backend: str, config: SimConfig, turn_angle: float, scenes_dir: str | Path) -> Simulator:
    """Create a simulator. ``scenes_dir`` holds the scene files the backend loads."""
    if backend == "embedded":
        from saca.sim.embedded.sim import EmbeddedSimulator

        if config.allow_sliding:
            raise SacaError("sim.allow_sliding: the embedded backend does not slide along walls "
                            "(a blocked step leaves the agent where it is); set it for Habitat datasets only")
        return EmbeddedSimulator(config, turn_angle, scenes_dir)
    if backend == "habitat":
        from saca.sim.habitat import HabitatSimulator

        return HabitatSimulator(config, turn_angle, scenes_dir)
    raise SacaError(f"unknown simulator backend '{backend}'; choose one of {', '.join(BACKENDS)}")
