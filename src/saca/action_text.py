"""Action option text (VLN-R1 §3.2-3.3): the format the policy reads and writes.

``A. Move forward 25 cm``, ``B. Turn left {angle} degrees``,
``C. Turn right {angle} degrees``, ``D. Stop``; n actions joined by ``", "``.
The angle is the simulator's real turn angle (15 for R2R-CE, 30 for RxR-CE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


# --- parsing model output ---------------------------------------------------------------------
#
# The policy's text is parsed defensively. The parser reads option items separated by commas,
# semicolons or line breaks (or bare letters separated by spaces) from the start of the text and
# keeps the longest well-formed prefix:
#
# * an item is a letter ``A``-``D`` optionally followed by ``.``, ``)`` or ``:`` and a description
#   (``"B. Turn left 15 degrees"``, ``"B"``, ``"B)"``); the letter decides the action (VLN-R1 §3.4
#   extracts the option identifier), a description that contradicts it marks the text non-canonical;
# * or a description alone (``"Turn left 15 degrees"``, ``"stop"``);
# * the last item may be cut off (``"C. Turn ri"``, ``"Move fo"``): truncated output keeps what
#   was complete enough to name an action;
# * parsing stops at the first item that names no action; later text is ignored.
#
# Status: ``valid`` when the text is exactly ``format_actions`` of ``n`` actions (the SFT target
# format), ``partial`` when some actions were recovered from non-canonical text (bare letters,
# wrong count, truncation, trailing junk, wrong angle), ``invalid`` when none was. What the agent
# does with each status is documented in docs/policy.md ("Invalid output").

PARSE_STATUSES = ("valid", "partial", "invalid")

_DESCRIPTIONS = {
    Action.MOVE_FORWARD: "move forward",
    Action.TURN_LEFT: "turn left",
    Action.TURN_RIGHT: "turn right",
    Action.STOP: "stop",
}
# full description with its optional quantity, e.g. "turn left 15 degrees", "move forward 25 cm"
_FULL_DESC = {
    Action.MOVE_FORWARD: re.compile(r"move\s+forward(?:\s+\d+(?:\.\d+)?\s*(?:cm|centimet(?:er|re)s?|m)?)?\.?", re.I),
    Action.TURN_LEFT: re.compile(r"turn\s+left(?:\s+\d+(?:\.\d+)?\s*(?:degrees?|deg|°)?)?\.?", re.I),
    Action.TURN_RIGHT: re.compile(r"turn\s+right(?:\s+\d+(?:\.\d+)?\s*(?:degrees?|deg|°)?)?\.?", re.I),
    Action.STOP: re.compile(r"stop\.?", re.I),
}
_ITEM_SPLIT = re.compile(r"\s*(?:,|;|\n|\band\b|\bthen\b)\s*", re.I)
_LETTER_ITEM = re.compile(r"^(?:[Oo]ption\s+)?([ABCD])(?:\s*([.):])\s*|\s+|$)(.*)$", re.S)
_BARE_LETTERS = re.compile(r"^(?:[ABCD](?:\s+[ABCD])+|[ABCD]{2,})$")


@dataclass(frozen=True)
class ParsedActions:
    """Actions recovered from model text (at most ``n`` when ``n`` was given) and how cleanly."""

    actions: tuple[int, ...]
    status: str  # one of PARSE_STATUSES
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "invalid"


def _description_action(desc: str, truncated_ok: bool) -> Action | None:
    """Action named by a description; a cut-off description counts when ``truncated_ok`` and unambiguous."""
    d = " ".join(desc.lower().split())
    if not d:
        return None
    for action, pattern in _FULL_DESC.items():
        if pattern.fullmatch(d):
            return action
    if truncated_ok:
        # "turn ri" -> TURN_RIGHT; "turn " is ambiguous; "move forward 2" is a cut quantity
        hits = [a for a, base in _DESCRIPTIONS.items() if base.startswith(d) or d.startswith(base)]
        if len(hits) == 1 and len(d) >= 2:
            return hits[0]
    return None


def _parse_item(item: str, is_last: bool) -> tuple[Action | None, bool]:
    """``(action, clean)`` for one item; ``clean`` is False when the item is not in canonical form."""
    m = _LETTER_ITEM.match(item)
    if m:
        letter, punct, rest = m.group(1), m.group(2), m.group(3).strip()
        action = LETTER_TO_ACTION[letter]
        if not rest:
            return action, False  # bare letter
        named = _description_action(rest, truncated_ok=is_last)
        if named is not None:
            return action, named == action and punct == "."
        if punct:
            return action, False  # "A. <junk>": the identifier decides
        # "A wall ahead": a capital letter that starts a sentence, not an option
    named = _description_action(item, truncated_ok=is_last)
    return named, False


def parse_actions(text: str, n: int | None = None, turn_angle: float | None = None) -> ParsedActions:
    """Parse model output into actions; never raises on any string.

    ``n``: the number of actions asked for; extra ones are dropped and fewer make the text
    ``partial``. ``turn_angle``: when given, a ``valid`` text must also show this angle.
    """
    if not isinstance(text, str):
        return ParsedActions((), "invalid", f"not text: {type(text).__name__}")
    body = text.strip()
    if not body:
        return ParsedActions((), "invalid", "empty output")
    items = [s for s in _ITEM_SPLIT.split(body)]
    if len(items) == 1 and _BARE_LETTERS.match(items[0]):
        items = list(items[0].replace(" ", ""))
    actions: list[int] = []
    clean = True
    reason = ""
    for idx, raw in enumerate(items):
        item = raw.strip()
        if not item:
            clean = False
            continue
        action, item_clean = _parse_item(item, is_last=idx == len(items) - 1)
        if action is None:
            clean = False
            reason = f"item {idx + 1} names no action: {item[:40]!r}"
            break
        actions.append(int(action))
        clean = clean and item_clean
    if not actions:
        return ParsedActions((), "invalid", reason or "no action found")
    if n is not None and len(actions) > n:
        actions = actions[:n]
        clean = False
        reason = reason or f"more than {n} actions"
    if n is not None and len(actions) < n:
        clean = False
        reason = reason or f"{len(actions)} of {n} actions"
    angle = turn_angle if turn_angle is not None else _angle_in(body)
    if clean and body != format_actions(actions, angle):
        clean = False
        reason = "not the canonical option text (angle, quantity or spacing)"
    return ParsedActions(tuple(actions), "valid" if clean else "partial", reason)


def _angle_in(text: str) -> float:
    m = re.search(r"Turn (?:left|right) (\d+(?:\.\d+)?) degrees", text)
    return float(m.group(1)) if m else 15.0


class ParseCounter:
    """Counts parse statuses (valid / partial / invalid) over many decisions."""

    def __init__(self) -> None:
        self.counts = {s: 0 for s in PARSE_STATUSES}

    def add(self, parsed: ParsedActions) -> ParsedActions:
        self.counts[parsed.status] += 1
        return parsed

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        total = self.total
        out = {f"n_{k}": v for k, v in self.counts.items()}
        out["n_decisions"] = total
        out["invalid_rate"] = self.counts["invalid"] / total if total else 0.0
        return out
