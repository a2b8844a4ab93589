"""Action-text codec: format <-> parse round trip, robust parsing, counting, chunk execution."""

from __future__ import annotations

import itertools
import random

import pytest

from saca.action_text import (
    LETTERS,
    ParseCounter,
    format_actions,
    option_menu,
    option_text,
    parse_actions,
)
from saca.policy.agent import chunk_to_execute
from saca.sim.base import Action

STOP, FWD, LEFT, RIGHT = (int(a) for a in (Action.STOP, Action.MOVE_FORWARD, Action.TURN_LEFT, Action.TURN_RIGHT))


def test_option_strings_are_the_vln_r1_format():
    assert option_text(FWD, 15) == "A. Move forward 25 cm"
    assert option_text(LEFT, 15) == "B. Turn left 15 degrees"
    assert option_text(RIGHT, 30) == "C. Turn right 30 degrees"
    assert option_text(STOP, 30) == "D. Stop"
    assert option_menu(15) == "A. Move forward 25 cm, B. Turn left 15 degrees, C. Turn right 15 degrees, D. Stop"


@pytest.mark.parametrize("angle", [15, 30, 22.5])
def test_round_trip_every_sequence_of_three_and_random_sixes(angle):
    seqs = [list(s) for s in itertools.product(range(4), repeat=3)]
    rng = random.Random(0)
    seqs += [[rng.randrange(4) for _ in range(6)] for _ in range(200)]
    for seq in seqs:
        text = format_actions(seq, angle)
        parsed = parse_actions(text, n=len(seq), turn_angle=angle)
        assert parsed.actions == tuple(seq), text
        assert parsed.status == "valid", (text, parsed.reason)
        # without the expected count and angle the canonical text is still valid
        assert parse_actions(text).status == "valid"


@pytest.mark.parametrize(
    "text, actions",
    [
        ("A, B, C, D", (FWD, LEFT, RIGHT, STOP)),
        ("A B C D", (FWD, LEFT, RIGHT, STOP)),
        ("ABCD", (FWD, LEFT, RIGHT, STOP)),
        ("A) Move forward 25 cm; C: Turn right 15 degrees", (FWD, RIGHT)),
        ("Option B", (LEFT,)),
        ("turn left, stop", (LEFT, STOP)),
        ("Move forward\nMove forward\nStop", (FWD, FWD, STOP)),
        ("  A. Move forward 25 cm ,B. Turn left 15 degrees  ", (FWD, LEFT)),
        # truncated output: the cut item still names an action
        ("A. Move forward 25 cm, B. Turn left 15 degrees, C. Turn ri", (FWD, LEFT, RIGHT)),
        ("A. Move forward 25 cm, C. Tu", (FWD, RIGHT)),
        ("A. Move forward 25 cm, Move fo", (FWD, FWD)),
        ("A. Move forward 25 cm, D. St", (FWD, STOP)),
        # the option letter decides when the description disagrees (VLN-R1 extracts the identifier)
        ("B. Turn right 15 degrees", (LEFT,)),
        # wrong angle: the action is still clear
        ("B. Turn left 30 degrees, C. Turn right 30 degrees", (LEFT, RIGHT)),
        # parsing stops at the first item that names no action
        ("A. Move forward 25 cm, junk, B. Turn left 15 degrees", (FWD,)),
        ("A. Move forward 25 cm, Turn", (FWD,)),
    ],
)
def test_non_canonical_text_is_partial(text, actions):
    parsed = parse_actions(text, n=6, turn_angle=15)
    assert parsed.actions == actions
    assert parsed.status == "partial"
    assert parsed.ok


@pytest.mark.parametrize(
    "text",
    ["", "   ", "hello world", "A wall is ahead of me", "I think I should go", "Tur", "\x00\xff\ufffd", "12345", "E. Fly", ". , ;", "a b c"],
)
def test_garbage_is_invalid(text):
    parsed = parse_actions(text, n=6, turn_angle=15)
    assert parsed.status == "invalid"
    assert parsed.actions == ()
    assert not parsed.ok
    assert parsed.reason


def test_non_text_is_invalid():
    assert parse_actions(None).status == "invalid"  # type: ignore[arg-type]
    assert parse_actions(b"A. Move forward 25 cm").status == "invalid"  # type: ignore[arg-type]


def test_count_handling():
    seven = format_actions([FWD] * 7, 15)
    p = parse_actions(seven, n=6, turn_angle=15)
    assert p.actions == (FWD,) * 6 and p.status == "partial"
    five = format_actions([FWD] * 5, 15)
    p = parse_actions(five, n=6, turn_angle=15)
    assert p.actions == (FWD,) * 5 and p.status == "partial"
    p = parse_actions(format_actions([LEFT] * 6, 30), n=6, turn_angle=15)  # right count, wrong angle
    assert p.actions == (LEFT,) * 6 and p.status == "partial"


def test_fuzz_never_raises_and_only_returns_actions():
    rng = random.Random(1)
    alphabet = "ABCDabcd .,;:)\n0123456789MoveforwardTurnleftrightStopdegreescm\x00\u00e9"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        p = parse_actions(text, n=6, turn_angle=15)
        assert p.status in ("valid", "partial", "invalid")
        assert len(p.actions) <= 6
        assert all(a in (0, 1, 2, 3) for a in p.actions)
        assert (p.status == "invalid") == (len(p.actions) == 0)


def test_letters_table_matches_actions():
    assert LETTERS == {Action.MOVE_FORWARD: "A", Action.TURN_LEFT: "B", Action.TURN_RIGHT: "C", Action.STOP: "D"}


def test_parse_counter_counts_every_status():
    c = ParseCounter()
    for text in [format_actions([FWD] * 6, 15), "A, B", "garbage", "", "D. Stop"]:
        c.add(parse_actions(text, n=6, turn_angle=15))
    d = c.as_dict()
    assert d == {"n_valid": 1, "n_partial": 2, "n_invalid": 2, "n_decisions": 5, "invalid_rate": 0.4}


@pytest.mark.parametrize(
    "actions, execute, expected",
    [
        ([FWD, FWD, LEFT, FWD, RIGHT, FWD], 0, [FWD, FWD, LEFT, FWD, RIGHT, FWD]),
        ([FWD, FWD, LEFT, FWD, RIGHT, FWD], 2, [FWD, FWD]),
        ([FWD, STOP, STOP, STOP, STOP, STOP], 0, [FWD, STOP]),
        ([FWD, FWD, STOP, FWD], 1, [FWD]),
        ([STOP, FWD], 0, [STOP]),
    ],
)
def test_chunk_execution_stops_at_stop(actions, execute, expected):
    assert chunk_to_execute(actions, execute) == expected
