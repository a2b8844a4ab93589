"""Action option text (VLN-R1 §3.2-3.3): the format the policy reads and writes.

``A. Move forward 25 cm``, ``B. Turn left {angle} degrees``,
``C. Turn right {angle} degrees``, ``D. Stop``; n actions joined by ``", "``.
The angle is the simulator's real turn angle (15 for R2R-CE, 30 for RxR-CE).
"""

from __future__ import annotations

from typing import Sequence

from saca.sim.base import Action

LETTERS = {Action.MOVE_FORWARD: "A", Action.TURN_LEFT: "B", Action.TURN_RIGHT: "C", Action.STOP: "D"}
LETTER_TO_ACTION = {v: k for k, v in LETTERS.items()}
SEPARATOR = ", "


def option_text(action: int | Action, turn_angle: float, forward_cm: int = 25) -> str:
    """One option string, e.g. ``B. Turn left 15 degrees``."""
    a = Action(int(action))
    angle = _fmt_angle(turn_angle)
    body = {
        Action.MOVE_FORWARD: f"Move forward {forward_cm} cm",
        Action.TURN_LEFT: f"Turn left {angle} degrees",
        Action.TURN_RIGHT: f"Turn right {angle} degrees",
        Action.STOP: "Stop",
    }[a]
    return f"{LETTERS[a]}. {body}"


def format_actions(actions: Sequence[int], turn_angle: float, forward_cm: int = 25) -> str:
    """The answer text for a sequence of actions."""
    return SEPARATOR.join(option_text(a, turn_angle, forward_cm) for a in actions)


def option_menu(turn_angle: float, forward_cm: int = 25) -> str:
    """All four options in letter order, as listed in the prompt."""
    order = (Action.MOVE_FORWARD, Action.TURN_LEFT, Action.TURN_RIGHT, Action.STOP)
    return SEPARATOR.join(option_text(a, turn_angle, forward_cm) for a in order)


def _fmt_angle(angle: float) -> str:
    return str(int(angle)) if float(angle).is_integer() else f"{angle:g}"


def target_actions(actions: Sequence[int], t: int, n: int) -> list[int]:
    """VLN-Ego target at frame ``t``: ``actions[t .. t+n-1]`` padded with STOP.

    ``actions[t]`` is the action taken at frame ``t`` (the public VLN-R1
    converter used ``actions[t+1 .. t+n]``, which is off by one).
    """
    if not 0 <= t < len(actions):
        raise IndexError(f"frame {t} outside a trajectory of {len(actions)} actions")
    out = [int(a) for a in actions[t : t + n]]
    return out + [int(Action.STOP)] * (n - len(out))
