"""params.yaml: loading and validation.

Each stage reads only its own section(s) and validates them when it starts, so a typo or a value
out of range fails at once with the key's full name instead of deep inside TensorFlow.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from .common import PipelineError

PARAMS_FILE = "params.yaml"

Check = Callable[[str, Any], Any]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-06` (no dot) as a string; DVC (YAML 1.2) reads it as a number and writes
    `-S` values that way, so the pipeline reads such exponents as numbers too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def _fail(key: str, value: Any, expected: str) -> None:
    raise PipelineError(f"{PARAMS_FILE}: {key} = {value!r}: expected {expected}")


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, value, "an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            _fail(key, value, f"an integer in [{lo}, {hi if hi is not None else 'inf'}]")
        return value

    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Check:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(key, value, "a finite number")
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        if too_low or (hi is not None and value > hi):
            bracket = "(" if lo_open else "["
            _fail(key, value, f"a number in {bracket}{lo}, {hi if hi is not None else 'inf'}]")
        return float(value)

    return check


def boolean() -> Check:
    def check(key, value):
        if not isinstance(value, bool):
            _fail(key, value, "true or false")
        return value

    return check


def string(nonempty: bool = True) -> Check:
    def check(key, value):
        if not isinstance(value, str) or (nonempty and not value.strip()):
            _fail(key, value, "a non-empty string")
        return value

    return check


def choice(*options: Any) -> Check:
    def check(key, value):
        if value not in options:
            _fail(key, value, "one of " + ", ".join(map(str, options)))
        return value

    return check


def list_of(item: Check, unique: bool = True, nonempty: bool = False) -> Check:
    def check(key, value):
        if not isinstance(value, list):
            _fail(key, value, "a list")
        if nonempty and not value:
            _fail(key, value, "a non-empty list")
        out = [item(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if unique and len(set(map(repr, out))) != len(out):
            _fail(key, value, "a list without repeats")
        return out

    return check


def pair(item: Check) -> Check:
    def check(key, value):
        if not isinstance(value, list) or len(value) != 2:
            _fail(key, value, "a list of two values")
        return [item(f"{key}[{i}]", v) for i, v in enumerate(value)]

    return check


def mapping(schema: dict[str, Check]) -> Check:
    """A nested mapping with exactly `schema`'s keys."""

    def check(key, value):
        return validate(key, value, schema)

    return check


def optional(inner: Check) -> Check:
    def check(key, value):
        return None if value is None else inner(key, value)

    return check


def validate(section: str, values: Any, schema: dict[str, Check]) -> dict[str, Any]:
    """Check `values` (the mapping at `section`) against `schema`: every key required, none unknown."""
    if not isinstance(values, dict):
        raise PipelineError(f"{PARAMS_FILE}: {section}: expected a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise PipelineError(
            f"{PARAMS_FILE}: {section}.{unknown[0]}: unknown key (known: {', '.join(schema)})"
        )
    missing = [k for k in schema if k not in values]
    if missing:
        raise PipelineError(f"{PARAMS_FILE}: {section}.{missing[0]}: missing")
    return {k: check(f"{section}.{k}", values[k]) for k, check in schema.items()}


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PipelineError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of stage sections")
    return data


def section(params: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key such as `train.cnn`; a missing one names the key."""
    node: Any = params
    for i, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            raise PipelineError(f"{PARAMS_FILE}: {'.'.join(dotted.split('.')[: i + 1])}: missing")
        node = node[part]
    return node


def stage_params(name: str, schema: dict[str, Check], path: str | Path = PARAMS_FILE,
                 params: dict | None = None) -> dict[str, Any]:
    """The section `name` (a dotted key) of params.yaml, validated against `schema`: every stage
    reads its sections this way. `params`: the file already loaded (a stage reading several)."""
    return validate(name, section(load_params(path) if params is None else params, name), schema)
