"""Validation of a config table from its declarations (``parts.Field``, ``OneOf``, ``Cases`` and
checks): a small walker, so that every check names the field and suggests the key meant.

A ``Section`` reads one table. Its vocabulary (every key valid in the table under any settings)
is known up front, so a key outside it is refused first, with the closest valid name
(``algo.etta: unknown key; did you mean 'eta'?``) even when a required key is missing too.
``walk`` then reads the declared fields in order (type, bounds, choices, defaults), enters the
alternative the table chose, and runs each check when the fields before it are read. ``finish``
refuses the keys that are valid elsewhere but not under the settings chosen.

Checks, and functions given as defaults or bounds, take ``(values, ctx)``: the values read so far
and the section's context (for ``[policy]``, what is known of the environment); a
``ConfigError`` they raise names the field relative to the table (``"rho"``) and the section puts
the table's name in front.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from entropy_sim.errors import ConfigError
from entropy_sim.parts import REQUIRED, Cases, Field, OneOf, Variant, fields_of


class Section:
    """Reads one table of a raw config, checking each field and recording its resolved value."""

    def __init__(self, name: str, data: Any, vocabulary: Iterable[str], ctx: Any = None,
                 explain=None):
        """``explain(table, key, value) -> message`` says what is wrong with a key outside the
        vocabulary (the config's tables know about each other: ``config.unknown_key``); by
        default, the closest valid name."""
        if not isinstance(data, dict):
            raise ConfigError(name, f"expected a table, got {type(data).__name__}")
        self.name, self.data, self.ctx = name, dict(data), ctx
        self.vocabulary = set(vocabulary)
        self.values: dict[str, Any] = {}
        self.read_keys: set[str] = set()
        for key in self.data:
            if key not in self.vocabulary:
                if explain is not None:
                    raise ConfigError(self.field(key), explain(name, key, self.data[key]))
                hint = difflib.get_close_matches(str(key), sorted(self.vocabulary), n=1)
                raise ConfigError(self.field(key), "unknown key" + (f"; did you mean {hint[0]!r}?"
                                                                    if hint else ""))

    def field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def has(self, key: str) -> bool:
        self.read_keys.add(key)
        return key in self.data

    def raw(self, key: str, default=REQUIRED):
        """The value of ``key`` as given (or ``default``), recorded unchecked."""
        self.read_keys.add(key)
        if key in self.data:
            value = self.data[key]
        elif default is REQUIRED:
            raise ConfigError(self.field(key), "is required")
        else:
            value = default
        self.values[key] = value
        return value

    def read(self, spec: Field):
        """The checked value of ``spec`` (its default when absent), recorded."""
        default = spec.default
        if spec.name not in self.data and callable(default):
            default = self.call(default)
        value = self.raw(spec.name, default)
        if value is None and spec.default is None:  # an optional field left out
            return None
        self.values[spec.name] = value = spec.check(self.field(spec.name), value, self.values,
                                                    self.ctx)
        return value

    def call(self, fn):
        """``fn(values, ctx)``; a ``ConfigError`` gets the table's name in front of its field."""
        try:
            return fn(self.values, self.ctx)
        except ConfigError as err:
            raise (err.within(self.name) if self.name else err) from None

    def walk(self, nodes: Iterable, chosen: list | None = None) -> list[Variant]:
        """Read ``nodes`` in order; returns the alternatives chosen (appended to ``chosen``)."""
        chosen = [] if chosen is None else chosen
        for node in nodes:
            if isinstance(node, Field):
                self.read(node)
            elif isinstance(node, (OneOf, Cases)):
                variant = (node.pick(self.has, self.field) if isinstance(node, OneOf)
                           else node.pick(self.values))
                chosen.append(variant)
                self.walk(variant.fields, chosen)
            else:
                self.call(node)
        return chosen

    def finish(self) -> dict:
        """The resolved table; a key valid only under other settings is an error."""
        unused = [k for k in self.data if k not in self.read_keys]
        if unused:
            settings = ", ".join(f"{k} = {v!r}" for k, v in self.values.items() if isinstance(v, str))
            raise ConfigError(self.field(unused[0]), f"is not used with these settings ({settings})")
        return self.values


def names(nodes: Iterable) -> set[str]:
    """Every key ``nodes`` declare, in any alternative."""
    return {f.name for f in fields_of(nodes)}


def select(nodes: Iterable, values: dict, chosen: list | None = None) -> list[Variant]:
    """The alternatives a resolved table chose, without checking anything (for the builders)."""
    chosen = [] if chosen is None else chosen
    for node in nodes:
        if isinstance(node, (OneOf, Cases)):
            variant = (node.pick(values.__contains__) if isinstance(node, OneOf)
                       else node.pick(values))
            chosen.append(variant)
            select(variant.fields, values, chosen)
    return chosen
