"""The simulator interface that every backend implements (embedded pybullet, Habitat).

Conventions follow VLN-CE / Habitat (method-notes §1):

* positions are ``[x, y, z]`` in metres with ``y`` up; the floor is the x-z plane;
* the agent's heading is a yaw angle about +y in radians: 0 faces -z, positive
  angles turn left (counter-clockwise seen from above); the rotation quaternion
  is ``[x, y, z, w] = [0, sin(h/2), 0, cos(h/2)]``;
* actions are ``STOP=0, MOVE_FORWARD=1, TURN_LEFT=2, TURN_RIGHT=3``; forward is
  0.25 m; turns are 15 deg (R2R-CE) or 30 deg (RxR-CE); an episode ends on STOP
  or after ``max_steps`` (500) environment steps;
* a forward step whose end pose would collide sets ``collided`` and moves the
  agent less than a full step, along its heading: the embedded backend leaves it
  where it is; Habitat moves it up to the contact point with the navmesh's edge
  (``allow_sliding: false``) or slides it along the wall (``allow_sliding: true``),
  and sets ``collided`` as Habitat does (see ``saca.sim.habitat``).

``step`` does not render: call ``observe()`` when a frame is needed (it is
cached until the state changes), so that agents that need no pixels (the
oracle, the evaluation of a replayed trajectory) run at simulator speed.
"""

from __future__ import annotations

import abc
import enum
import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from saca import SacaError


class Action(enum.IntEnum):
    STOP = 0
    MOVE_FORWARD = 1
    TURN_LEFT = 2
    TURN_RIGHT = 3


FORWARD_STEP_M = 0.25
DEPTH_NEAR, DEPTH_FAR = 0.05, 30.0  # metres: the camera's clip planes (embedded: pybullet projection; Habitat: CameraSensorSpec near/far)
MAX_STEPS = 500
SUCCESS_DISTANCE_M = 3.0
FRAME_CACHE_BYTES = 64 << 20  # Simulator.observe's per-pose frame store


def heading_to_quaternion(heading: float) -> list[float]:
    """Yaw about +y (radians) -> quaternion ``[x, y, z, w]`` (Habitat order)."""
    return [0.0, math.sin(heading / 2.0), 0.0, math.cos(heading / 2.0)]


def quaternion_to_heading(q: Sequence[float]) -> float:
    """Quaternion ``[x, y, z, w]`` of a rotation about +y -> yaw in radians."""
    x, y, z, w = (float(v) for v in q)
    if abs(x) > 1e-4 or abs(z) > 1e-4:
        raise SacaError(f"start_rotation {list(q)} is not a rotation about the vertical (y) axis")
    return 2.0 * math.atan2(y, w)


def forward_vector(heading: float) -> np.ndarray:
    """Unit vector the agent faces, in the x-z plane: heading 0 faces -z."""
    return np.array([-math.sin(heading), 0.0, -math.cos(heading)])


@dataclass(frozen=True)
class AgentState:
    """Everything that defines the agent in a static scene: restoring it reproduces frames exactly."""

    position: tuple[float, float, float]
    heading: float
    steps: int = 0
    stopped: bool = False
    collided: bool = False

    @property
    def rotation(self) -> list[float]:
        return heading_to_quaternion(self.heading)

    def moved(self, **changes) -> "AgentState":
        return replace(self, **changes)


@dataclass
class Observation:
    """One egocentric frame, the same conventions in every backend.

    * ``rgb``: ``uint8`` ``(H, W, 3)``;
    * ``depth``: ``float32`` ``(H, W)``, metres along the optical axis (z-depth), in
      ``[DEPTH_NEAR, DEPTH_FAR]``; where nothing is rendered it is ``DEPTH_FAR``
      (the far clip plane), never 0;
    * ``instance``: ``int32`` ``(H, W)``, the object instance id of each pixel, -1
      where no labelled object is (background, walls without a label); the labels
      are :attr:`Simulator.instance_labels`.
    """

    rgb: np.ndarray
    depth: Optional[np.ndarray] = None
    instance: Optional[np.ndarray] = None


@dataclass
class SimConfig:
    """Agent and sensor settings shared by every backend (the ``sim`` config section).

    ``agent_height``, ``allow_sliding`` and ``recompute_navmesh`` matter to the Habitat
    backend only (docs/habitat.md gives each VLN-CE value and its source); their
    defaults are the Habitat backend's behaviour before they existed (agent 1.5 m,
    no sliding, navmesh recomputed for ``agent_radius``). The embedded backend has no
    navmesh and refuses ``allow_sliding: true`` (:func:`saca.sim.make_simulator`).
    A dataset may override the keys of :data:`DATASET_SIM_KEYS` (``datasets.<name>.sim``,
    merged by :func:`saca.sim.dataset_sim_config`).
    """

    width: int = 128
    height: int = 128
    hfov: float = 90.0
    camera_height: float = 1.25
    agent_radius: float = 0.18
    agent_height: float = 1.5  # Habitat AgentConfiguration.height / NavMeshSettings.agent_height
    allow_sliding: bool = False  # Habitat: a blocked step slides along the wall (VLN-CE R2R-CE) or stops at it (RxR-CE)
    recompute_navmesh: bool = True  # Habitat: rebuild the navmesh for agent_radius/agent_height; false: the scene's .navmesh
    gpu_device_id: int = 0  # Habitat: CUDA device of its EGL context; -1: the default EGL display (llvmpipe, no GPU)
    forward_step: float = FORWARD_STEP_M
    max_steps: int = MAX_STEPS
    stop_radius: float = 0.5  # teacher calls STOP once this close (geodesic) to the goal
    depth: bool = True
    instance: bool = True

    def validate(self, where: str) -> None:
        if self.width < 16 or self.height < 16:
            raise SacaError(f"{where}.width/height: must be at least 16 pixels")
        if not 10.0 <= self.hfov <= 170.0:
            raise SacaError(f"{where}.hfov: must be between 10 and 170 degrees, got {self.hfov}")
        if self.stop_radius >= SUCCESS_DISTANCE_M:
            raise SacaError(f"{where}.stop_radius: must be below the success distance {SUCCESS_DISTANCE_M} m")
        if not self.agent_height > 0:
            raise SacaError(f"{where}.agent_height: must be positive (metres), got {self.agent_height}")


# The keys a dataset may set for itself (``datasets.<name>.sim``): the agent's body and camera,
# which VLN-CE sets per dataset (vlnce_task.yaml vs rxr_vlnce_english_task.yaml). The episode
# limits (forward_step, max_steps, stop_radius) are the same for R2R-CE and RxR-CE, and the
# depth / instance channels are what a consumer needs (the oracle auditor turns instance on).
DATASET_SIM_KEYS = ("width", "height", "hfov", "camera_height", "agent_radius", "agent_height",
                    "allow_sliding", "recompute_navmesh")


def _channels(ob: Observation) -> list[np.ndarray]:
    """The arrays an observation holds (rgb, and depth / instance when rendered)."""
    return [a for a in (ob.rgb, ob.depth, ob.instance) if a is not None]


class Simulator(abc.ABC):
    """One agent in one scene at a time. Backends: ``embedded`` (pybullet), ``habitat``."""

    backend: str = "abstract"

    def __init__(self, config: SimConfig, turn_angle: float):
        if turn_angle <= 0 or turn_angle >= 180:
            raise SacaError(f"turn_angle must be in (0, 180) degrees, got {turn_angle}")
        self.config = config
        self.turn_angle = float(turn_angle)
        self.episode = None
        self._state: AgentState | None = None
        self._frames: OrderedDict[tuple, Observation] = OrderedDict()
        self._frames_bytes = 0

    # --- scene and episode -------------------------------------------------
    @abc.abstractmethod
    def load_scene(self, scene_id: str) -> None:
        """Load ``scene_id`` (no-op when already loaded). Unknown scenes raise SacaError naming it."""

    def reset(self, episode) -> AgentState:
        """Load the episode's scene and put the agent at its start pose."""
        self.load_scene(episode.scene_id)
        self.episode = episode
        if getattr(episode, "has_goal", True):  # a leaderboard episode has none: it runs, but has no distance to goal
            self._prepare_goal(episode.goal_position)
        self._set_state(
            AgentState(
                position=self.snap_to_floor(episode.start_position),
                heading=quaternion_to_heading(episode.start_rotation),
            )
        )
        return self._state

    def _prepare_goal(self, goal) -> None:
        """Hook for backends that precompute a distance field to the goal."""

    # --- agent -------------------------------------------------------------
    @property
    def state(self) -> AgentState:
        if self._state is None:
            raise SacaError("simulator has no episode: call reset(episode) first")
        return self._state

    @property
    def episode_over(self) -> bool:
        s = self.state
        return s.stopped or s.steps >= self.config.max_steps

    def step(self, action: int | Action) -> AgentState:
        """Apply one action; returns the new state. Stepping a finished episode raises."""
        action = Action(int(action))
        s = self.state
        if self.episode_over:
            raise SacaError(f"episode {getattr(self.episode, 'episode_id', '?')} is over; reset first")
        if action == Action.STOP:
            new = s.moved(steps=s.steps + 1, stopped=True, collided=False)
        elif action == Action.MOVE_FORWARD:
            target = np.asarray(s.position) + self.config.forward_step * forward_vector(s.heading)
            pos, collided = self.forward_move(s.position, tuple(float(v) for v in target))
            new = s.moved(position=pos, steps=s.steps + 1, collided=collided)
        else:
            delta = math.radians(self.turn_angle) * (1 if action == Action.TURN_LEFT else -1)
            heading = math.remainder(s.heading + delta, 2 * math.pi)
            new = s.moved(heading=heading, steps=s.steps + 1, collided=False)
        self._set_state(new)
        return new

    def snapshot(self) -> AgentState:
        """The full agent state (immutable); ``restore`` puts it back exactly."""
        return self.state

    def restore(self, state: AgentState) -> None:
        if not isinstance(state, AgentState):
            raise SacaError(f"restore() needs an AgentState, got {type(state).__name__}")
        self._set_state(state)

    def _set_state(self, state: AgentState) -> None:
        self._state = state

    def observe(self) -> Observation:
        """Render the current egocentric frame.

        Frames are kept per pose (position, heading) in a least-recently-used store of at most
        ``FRAME_CACHE_BYTES``: the G members of a group start at one pose and share their first
        actions, and a blocked step or a turn and its reverse returns to a pose, so their frames are
        rendered once. A frame is a pure function of the scene and the pose, so the store changes
        no result; its arrays are read-only. Loading another scene empties it (:meth:`_forget_frames`).
        """
        s = self.state
        key = (s.position, s.heading)
        ob = self._frames.get(key)
        if ob is not None:
            self._frames.move_to_end(key)
            return ob
        ob = self.render(s.position, s.heading)
        for a in _channels(ob):
            a.setflags(write=False)
        self._frames[key] = ob
        self._frames_bytes += sum(a.nbytes for a in _channels(ob))
        while self._frames_bytes > FRAME_CACHE_BYTES and len(self._frames) > 1:
            _, old = self._frames.popitem(last=False)
            self._frames_bytes -= sum(a.nbytes for a in _channels(old))
        return ob

    def _forget_frames(self) -> None:
        """Empty the frame store (a backend calls it when the scene changes)."""
        self._frames.clear()
        self._frames_bytes = 0

    # --- geometry a backend provides ----------------------------------------
    @abc.abstractmethod
    def render(self, position, heading: float) -> Observation:
        """Egocentric frame at a pose (camera at ``camera_height`` above the floor)."""

    @abc.abstractmethod
    def move_to(self, start, target) -> tuple[float, float, float] | None:
        """End position of a straight move, or ``None`` when it collides (the agent stays)."""

    def forward_move(self, start, target) -> tuple[tuple[float, float, float], bool]:
        """``(end position, collided)`` of a forward step. Default: :meth:`move_to`'s
        contract, a blocked step leaves the agent at ``start``. Habitat overrides it
        (a blocked step ends at the contact point, or slides with ``allow_sliding``)."""
        end = self.move_to(start, target)
        return (start, True) if end is None else (end, False)

    @abc.abstractmethod
    def snap_to_floor(self, position) -> tuple[float, float, float]:
        """The navigable floor point under ``position``; raises SacaError if it is not navigable."""

    @abc.abstractmethod
    def geodesic_distance(self, a, b) -> float:
        """Shortest navigable path length between two points (``inf`` if unreachable)."""

    @abc.abstractmethod
    def shortest_path(self, a, b) -> list[tuple[float, float, float]]:
        """Waypoints of a shortest navigable path from ``a`` to ``b`` (both included)."""

    @property
    def instance_labels(self) -> dict[int, str]:
        """Instance id -> landmark name, for the ``instance`` channel (empty if none)."""
        return {}

    def distance_to_goal(self) -> float:
        return self.geodesic_distance(self.state.position, self.episode.goal_position)

    def teacher_action(self, goal=None) -> Action:
        """The shortest-path follower's next action toward ``goal`` (default: the episode goal).

        STOP once the geodesic distance is below ``stop_radius``; otherwise turn
        toward the next waypoint of the shortest path until it lies within half a
        turn angle of the heading, then move forward. If the forward move would
        collide, turn toward the side with the smaller angle error instead.
        """
        s = self.state
        goal = self.episode.goal_position if goal is None else goal
        near = math.hypot(s.position[0] - goal[0], s.position[2] - goal[2]) < self.config.stop_radius  # geodesic >= Euclidean
        if near and self.geodesic_distance(s.position, goal) < self.config.stop_radius:
            return Action.STOP
        target = self._lookahead_point(s.position, goal)
        dx, dz = target[0] - s.position[0], target[2] - s.position[2]
        desired = math.atan2(-dx, -dz)
        err = math.remainder(desired - s.heading, 2 * math.pi)
        half = math.radians(self.turn_angle) / 2.0
        if abs(err) <= half + 1e-9:
            nxt = np.asarray(s.position) + self.config.forward_step * forward_vector(s.heading)
            if self.move_to(s.position, tuple(float(v) for v in nxt)) is not None:
                return Action.MOVE_FORWARD
        return Action.TURN_LEFT if err > 0 else Action.TURN_RIGHT

    def _lookahead_point(self, position, goal):
        """The first shortest-path waypoint at least one forward step away."""
        path = self.shortest_path(position, goal)
        p = np.asarray(position)
        for w in path[1:]:
            if np.hypot(w[0] - p[0], w[2] - p[2]) >= self.config.forward_step * 0.999:
                return w
        return path[-1]

    def close(self) -> None:
        """Release backend resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
