"""What the grid and profile schemas share: problems collected while reading nested
YAML data (each "key: why (got value)", keyed by dotted path, all reported together)
and the rules that check one value each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

Rule = tuple[Callable[[Any], bool], str]  # (check, what a good value is)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Problems(list):
    """Problems found so far, each "key: why (got value)"."""

    def bad(self, key: str, value: Any, why: str) -> None:
        self.append(f"{key}: {why} (got {value!r})")

    def unknown(self, data: Mapping[Any, Any], known: Iterable[str], prefix: str = "") -> None:
        known = list(known)
        for key in data:
            if key not in known:
                self.bad(f"{prefix}{key}", data[key], f"unknown key; known keys: {', '.join(known)}")

    def mapping(self, value: Any, key: str) -> dict[Any, Any]:
        """`value` as a dict: {} for null, and a problem for anything but a mapping."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.bad(key, value, "must be a mapping")
            return {}
        return dict(value)


def fill(problems: Problems, data: Mapping[Any, Any], prefix: str, rules: Mapping[str, Rule],
         floats: Iterable[str] = ()) -> dict[str, Any]:
    """The values of `data` that pass their rule (in the rules' order); each other one is
    a problem. Keys in `floats` become floats (an integer in YAML is a number too)."""
    floats = set(floats)
    values = {}
    for key, (check, why) in rules.items():
        if key not in data:
            continue
        value = data[key]
        if not check(value):
            problems.bad(prefix + key, value, why)
        else:
            values[key] = float(value) if key in floats and value is not None else value
    return values


def fill_dataclass(problems: Problems, cls: type, data: Mapping[Any, Any], prefix: str,
                   rules: Mapping[str, Rule], floats: Iterable[str] = ()) -> Any:
    """Dataclass `cls` from `data`: unknown keys and values failing their rule are problems
    (checked in field order), defaults stand in for them."""
    known = list(cls.__dataclass_fields__)
    problems.unknown(data, known, prefix)
    return cls(**fill(problems, data, prefix, {key: rules[key] for key in known if key in rules}, floats))
