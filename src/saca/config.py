"""Typed configuration sections.

Each section of ``config/config.yaml`` maps onto a dataclass whose field names
are the paper's names and whose defaults are the paper's (or, marked
*reconstruction*, ours; see ``docs/reconstructions.md``). ``from_dict`` rejects
unknown keys with a did-you-mean hint naming the section, so a misspelled key
never silently falls back to a default.

The workflow passes each rule's section as JSON (``--params '{...}'``); run by
hand, a command can read the same section from ``--config config/config.yaml``.
Either way the section is checked against the workflow's own schema
(:data:`SCHEMA_PATH`, which the Snakefile validates the config with) before it
is converted, so the CLI refuses exactly what the workflow refuses, naming the
key (``sft.learning_rate: 'fast' is not of type 'number'``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

from saca import SacaError

T = TypeVar("T")

SCHEMA_PATH = Path(__file__).resolve().parent / "resources" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    """The workflow's config schema (JSON Schema as YAML)."""
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _is_integer(checker, value) -> bool:
    # JSON Schema calls 2.0 an integer; a job then fails on it (range(2.0)) after Snakemake has deleted its
    # outputs (changed params). Here an integer is a Python int, never a float and never a bool.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(checker, value) -> bool:
    # NaN passes every minimum/maximum (all comparisons are false) and inf every minimum: neither is a number here
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@functools.lru_cache(maxsize=1)
def strict_validator_class():
    """Draft 2020-12 with strict types: ``integer`` is an int (not 2.0, not 1e9), ``number`` is finite."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    return jsonschema.validators.extend(base, type_checker=checker)


def _error_line(err, where: str = "") -> str:
    """One line naming the dotted key of a jsonschema error: ``rft.max_steps: 2.0 is not of type 'integer'``."""
    path = where
    for p in err.absolute_path:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    message = err.message
    if err.validator == "type" and isinstance(err.instance, float) and not math.isfinite(err.instance):
        message = f"{err.instance} is not a finite number"
    elif err.validator == "type" and isinstance(err.instance, float) and "integer" in str(err.validator_value):
        message = f"{err.instance!r} is not an integer (write {int(err.instance) if err.instance.is_integer() else 'an integer'})"
    elif err.validator == "pattern" and isinstance(err.schema, dict) and err.schema.get("description"):
        message = f"{err.instance!r}: {err.schema['description']}"  # what the pattern means, not the regex
    return f"{path or '(top level)'}: {message}"


def schema_errors(value, schema: dict, where: str = "") -> list[str]:
    """Every violation of ``schema`` by ``value`` with strict types, one line each naming the key, best first."""
    import jsonschema

    v = strict_validator_class()({**schema, "definitions": load_schema().get("definitions", {})})
    errors = list(v.iter_errors(value))
    if not errors:
        return []
    best = jsonschema.exceptions.best_match(errors)
    rest = sorted((e for e in errors if e is not best), key=lambda e: list(map(str, e.absolute_path)))
    return [_error_line(e, where) for e in [best, *rest]]


def validate_config(config: dict) -> None:
    """The whole workflow config checked as the Snakefile checks it when the workflow is parsed, before any job is
    scheduled: unknown keys (with a did-you-mean hint), then the schema with strict types (an integer key refuses
    2.0 and 1e9, a number refuses NaN and inf). SacaError with one line naming the first offending key."""
    unknown_keys(config)
    errors = schema_errors(config, load_schema())
    if errors:
        raise SacaError(errors[0])


def section_schema(section: str) -> dict | None:
    """The schema of a dotted config section (``sft``, ``policy.agent``, ``datasets.<dataset>``), or None."""
    node = load_schema()
    for part in section.split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):  # datasets.<name>, sft.mixes.<name>
            node = node["additionalProperties"]
        else:
            return None
    return node


def dataclass_defaults(cls) -> dict:
    """``{field: default}`` of the fields of dataclass ``cls`` that have one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def check_section(data: dict, section: str, cls: type | None = None) -> None:
    """Check each key of ``data`` that the schema knows against the schema; SacaError naming ``section.key``.

    Keys the schema does not know are left to :func:`from_dict` (which names them with
    a did-you-mean hint), and no key is required: the dataclasses have defaults, and a
    rule passes only part of a section (``sft`` without ``mixes``, plus ``n_actions``).
    A value equal to the default of dataclass ``cls`` is accepted as it is (``sft.mixes:
    {}``, a workflow key the command ignores, is what ``asdict(SftConfig())`` holds).
    """
    node = section_schema(section)
    if node is None:
        return
    props = node.get("properties", {})
    defaults = dataclass_defaults(cls) if cls is not None else {}
    for key, value in data.items():
        if key not in props:
            continue
        if key in defaults and type(value) is type(defaults[key]) and value == defaults[key]:
            continue  # (2.0 == 2, but a float is no default of an integer key)
        errors = schema_errors(value, props[key], f"{section}.{key}")
        if errors:
            raise SacaError(errors[0])


def parse_json_section(text: str | None, section: str, flag: str = "--params", cls: type | None = None) -> dict:
    """A config section given as JSON on the command line: parsed, a JSON object, checked by the schema."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SacaError(f"{flag}: malformed JSON ({err})") from err
    if not isinstance(data, dict):
        raise SacaError(f"{flag}: expected a JSON object with the '{section}' settings, got {type(data).__name__}")
    check_section(data, section, cls)
    return data


def section_from_json(text: str | None, cls: type[T], section: str, flag: str = "--params") -> T:
    """Dataclass ``cls`` from a JSON config section on the command line, checked as the workflow checks it."""
    return from_dict(cls, parse_json_section(text, section, flag, cls), section)


def from_dict(cls: type[T], data: dict | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise SacaError naming ``where.key``."""
    if data is not None and not isinstance(data, dict):
        raise SacaError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data or {})
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
        try:
            validate(where)
        except (TypeError, ValueError) as err:  # a value of the wrong type reached a check
            raise SacaError(f"{where}: invalid value ({err})") from err
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


def params_from_args(args, cls: type[T], section_name: str, attr: str = "params") -> T:
    """The section from ``--params`` JSON or the ``--config`` file, checked by the schema, as dataclass ``cls``."""
    text = getattr(args, attr, None)
    if text:
        return section_from_json(text, cls, section_name, f"--{attr.replace('_', '-')}")
    data = {}
    if getattr(args, "config", None):
        data = section(load_yaml(args.config), section_name, args.config)
        if not isinstance(data, dict):
            raise SacaError(f"{args.config}: '{section_name}' must be a mapping")
        check_section(data, section_name, cls)
    return from_dict(cls, data, section_name)


def unknown_keys(data: dict, schema: dict | None = None, where: str = "") -> None:
    """SacaError for the first key of ``data`` that the schema does not allow, naming its dotted path and the
    closest known key (the workflow's config; jsonschema alone says only that a property was unexpected)."""
    node = schema if schema is not None else load_schema()
    props = node.get("properties", {})
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key in props:
            sub = props[key]
            if "$ref" in sub:
                sub = load_schema()["definitions"][sub["$ref"].rsplit("/", 1)[-1]]
            unknown_keys(value, sub, path)
        elif node.get("additionalProperties") is False:
            close = difflib.get_close_matches(str(key), list(props), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SacaError(f"unknown config key '{path}'{hint}; known keys: {', '.join(sorted(props))}")
        elif isinstance(node.get("additionalProperties"), dict) and isinstance(value, dict):
            unknown_keys(value, node["additionalProperties"], path)
