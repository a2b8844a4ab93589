"""Typed configuration sections.

Each section of ``config/config.yaml`` maps onto a dataclass whose field names
are the paper's names and whose defaults are the paper's (or, marked
*reconstruction*, ours; see ``docs/reconstructions.md``). ``from_dict`` rejects
unknown keys with a did-you-mean hint naming the section, so a misspelled key
never silently falls back to a default.

The workflow passes each rule's section as JSON (``--params '{...}'``); run by
hand, a command can read the same section from ``--config config/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from saca import SacaError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise SacaError naming ``where.key``."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise SacaError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SacaError(f"unknown config key '{where}.{key}'{hint}; known keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise SacaError(f"{where}: {err}") from err
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.exists():
        raise SacaError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SacaError(f"{path}: malformed YAML ({err})") from err
    if not isinstance(data, dict):
        raise SacaError(f"{path}: expected a mapping at the top level")
    return data


def section(data: dict, dotted: str, source: str = "config") -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise SacaError(f"{source}: missing key '{dotted}'")
        cur = cur[part]
    return cur


def add_params_args(parser, section_name: str) -> None:
    """``--params JSON`` (what the workflow passes) or ``--config FILE`` (by hand)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--params", default=None, help=f"JSON object with the '{section_name}' settings")
    group.add_argument("--config", default=None, help=f"YAML config file; its '{section_name}' section is used")


def params_from_args(args, cls: type[T], section_name: str) -> T:
    if args.params:
        try:
            data = json.loads(args.params)
        except json.JSONDecodeError as err:
            raise SacaError(f"--params: malformed JSON ({err})") from err
    elif args.config:
        data = section(load_yaml(args.config), section_name, args.config)
    else:
        data = {}
    return from_dict(cls, data, section_name)
