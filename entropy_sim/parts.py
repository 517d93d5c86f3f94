"""Declarations every part of entropy_sim makes about itself: its traced hyperparameters, its
static options and the columns it logs.

A part (an update rule, a piece of a policy-optimisation objective, the diagnostics) lists these
once; config validation, the hyperparameter grid, the column set of a run (so the NaN-allowed
columns, the memory budget and the check of ``quantile_metrics``), ``entropy-sim list`` and the
README's reference tables are all derived from the declarations.

- ``Hparam``: a number that enters the compiled step as a traced array. A list in the config is a
  sweep axis, and every value runs in one compiled program.
- ``Option``: a static setting (an integer or one of a few choices) that fixes array shapes or a
  code path; each value compiles its own program.
- ``Column``: a per-step metric column, its meaning, and whether NaN is a legitimate value.
- ``Field``: a static config field of a table (``[env]``, ``[policy]``, the top level): its type,
  default, bounds, choices and meaning. ``OneOf`` (alternatives told apart by which key is
  given: a bandit's ``means`` or ``arms``) and ``Cases`` (alternatives told apart by a field's
  value: ``generator = "garnet"``) hold ``Variant``s, each with its own fields and, for an
  environment, the function that builds it. A cross-field check is a plain function
  ``(values, ctx) -> None`` placed among the fields, run once the fields before it are read.
  ``schema.Section`` walks these declarations to validate a table, and the builders read the
  same declarations to pick what to build.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from entropy_sim import errors
from entropy_sim.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Hparam:
    """A traced hyperparameter: ``default`` (None = required), bounds, and a one-line meaning."""

    name: str
    default: float | None
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def check(self, field: str, value) -> float:
        """``value`` as a float, or a ``ConfigError`` naming ``field``."""
        value = errors.number(field, value, low=self.low, high=self.high, low_open=self.low_open,
                              high_open=self.high_open)
        if self.integer and value != int(value):
            raise ConfigError(field, f"expected a whole number, got {value}")
        return value

    @property
    def bounds(self) -> str:
        """The admissible range as text, e.g. ``> 0``, ``in (0, 1]``, ``any``."""
        lo, hi = self.low, self.high
        if lo is None and hi is None:
            return "any"
        if hi is None:
            return f"{'>' if self.low_open else '>='} {lo:g}"
        if lo is None:
            return f"{'<' if self.high_open else '<='} {hi:g}"
        return f"in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"

    @property
    def default_text(self) -> str:
        return "required" if self.default is None else f"{self.default:g}"


@dataclasses.dataclass(frozen=True)
class Option:
    """A static setting: an integer ``>= minimum``, or one of ``choices``."""

    name: str
    default: int | str
    doc: str
    minimum: int = 1
    choices: tuple = ()

    @property
    def bounds(self) -> str:
        return " | ".join(self.choices) if self.choices else f">= {self.minimum}"


@dataclasses.dataclass(frozen=True)
class Column:
    """A metric column: its name, its meaning, and whether NaN is a legitimate value there."""

    name: str
    doc: str
    nan_allowed: bool = False


def merge(kind: str, owner: str, *groups: Iterable) -> tuple:
    """The declarations of ``groups`` in order, each name once. The same declaration may appear
    in several groups (two pieces sharing ``eps``); two different ones with one name are an error
    (rename one), since a config key or a column can mean only one thing."""
    out: dict = {}
    for group in groups:
        for item in group:
            if item.name in out and out[item.name] != item:
                raise ValueError(f"{owner}: two different {kind} named {item.name!r} "
                                 f"({out[item.name].doc!r} and {item.doc!r}); rename one "
                                 f"(dataclasses.replace(declaration, name=...))")
            out[item.name] = item
    return tuple(out.values())


def by_name(items: Iterable) -> dict:
    """``{declaration.name: declaration}``."""
    return {item.name: item for item in items}


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """An update rule and what it declares.

    ``fn(theta, opt_state, ev, env, hp, key, opt, **options) -> (theta_next, opt_state, info)``
    (``rules/exact.py``); ``hparams`` its traced hyperparameters (``hp`` holds them as arrays);
    ``options`` its static settings; ``columns`` the keys of ``info`` beyond ``dH_pred_closed``;
    ``checks`` functions ``(values, num_actions) -> None`` over the resolved ``[algo]`` table;
    ``sampled``: the step draws samples; ``pieces``: the objective pieces it is chained from
    (``objectives/``), if any; ``init(theta, hp, opt)``: the state the rule carries from step to
    step (its ``opt_state`` argument) before step 0, None for the optimiser's own ``opt.init(theta)``
    (a rule with a KL reference or an adaptive coefficient carries them next to it)."""

    name: str
    fn: Callable
    summary: str
    hparams: tuple[Hparam, ...]
    options: tuple[Option, ...] = ()
    columns: tuple[Column, ...] = ()
    checks: tuple[Callable, ...] = ()
    sampled: bool = False
    pieces: tuple = ()
    init: Callable | None = None

    @property
    def defaults(self) -> dict:
        """``{hyperparameter: default}`` (None = required)."""
        return {h.name: h.default for h in self.hparams}

    @property
    def option_defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a field that must be given
FIELD_KINDS = ("int", "float", "str", "bool", "path", "list", "array")
_NOUNS = {"int": "integers", "float": "numbers", "str": "strings", "": "values"}


@dataclasses.dataclass(frozen=True)
class Field:
    """A static config field: one value per run, fixed when the run is compiled.

    ``kind``: ``int``, ``float``, ``str``, ``bool``, ``path`` (a file, relative to the config file
    that names it), ``list`` (of ``item``s: ``int``, ``float``, ``str``, or any when empty) or
    ``array`` (numbers, nested lists of ``ndim`` dimensions, every entry finite). ``default``:
    ``REQUIRED``, ``None`` (optional: absent means None, never checked), a value, or a function
    ``(values, ctx) -> value`` of the fields read before it. ``low``/``high`` bound a number (or
    every entry of a list), open or closed (an integer's bounds are closed); they too may be
    functions ``(values, ctx)``.
    ``choices``: the admissible strings. ``nonempty`` and ``distinct`` constrain a list.

    The value stored in the resolved config is the one given (integers as ``int``, list entries
    converted). A scalar field (``scalar``) holds one value per config; a later sweep over static
    fields can expand a list given for it into one compiled run per value, calling ``check`` on
    each."""

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    low: Any = None
    high: Any = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    item: str = ""
    ndim: int | None = None
    nonempty: bool = False
    distinct: bool = False

    def __post_init__(self):
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field {self.name!r}: kind {self.kind!r} is not one of "
                             f"{', '.join(FIELD_KINDS)}")

    @property
    def scalar(self) -> bool:
        return self.kind in ("int", "float", "str", "bool", "path")

    def check(self, field: str, value, values: dict | None = None, ctx=None):
        """``value`` checked, as it is stored; a ``ConfigError`` naming ``field`` otherwise.
        ``values``, ``ctx``: what bounds given as functions read."""
        low, high = (b(values, ctx) if callable(b) else b for b in (self.low, self.high))
        if self.choices and (not isinstance(value, str) or value not in self.choices):
            raise ConfigError(field, f"unknown value {value!r}; choose from "
                                     f"{', '.join(self.choices)}")
        if self.kind == "list":
            if not isinstance(value, (list, tuple)) or (self.nonempty and not value):
                raise ConfigError(field, f"expected a {'non-empty ' if self.nonempty else ''}list of "
                                         f"{_NOUNS[self.item]}, got {value!r}")
            value = [self._one(self.item, f"{field}[{i}]", v, low, high) for i, v in enumerate(value)]
            if self.distinct and len(set(value)) != len(value):
                raise ConfigError(field, f"values must be distinct, got {value!r}")
            return value
        if self.kind == "array":
            errors.as_array(field, value, ndim=self.ndim)
            return value
        return self._one(self.kind, field, value, low, high)

    def _one(self, kind: str, field: str, value, low, high):
        if kind == "int":
            value = errors.integer(field, value, minimum=low)
            if high is not None and value > high:
                raise ConfigError(field, f"must be <= {high}, got {value}")
            return value
        if kind == "float":
            errors.number(field, value, low=low, high=high, low_open=self.low_open,
                          high_open=self.high_open)
            return float(value) if self.kind == "list" else value
        if kind in ("str", "path") and not isinstance(value, str):
            raise ConfigError(field, f"expected a string, got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(field, f"expected true or false, got {value!r}")
        return value


@dataclasses.dataclass(frozen=True)
class Variant:
    """One alternative of a table: its ``fields`` (declarations: ``Field``, ``OneOf``, ``Cases``
    and checks), and what its owner needs from it. Environments: ``build(values) -> env or
    envs.Draw``; ``shape(values) -> (S, A)`` when it is known without building; ``binary``
    (a bool or a function of the values): whether every reward is 0 or 1, for drawn rewards
    (None: ask the built environment, or for a draw, unknown). Policies:
    ``build(values, start) -> theta0``."""

    doc: str = ""
    fields: tuple = ()
    build: Callable | None = None
    shape: Callable | None = None
    binary: bool | Callable | None = None


@dataclasses.dataclass(frozen=True)
class OneOf:
    """Alternatives told apart by which of their marker keys the table gives: exactly one
    (``fallback`` None), or at most one, and ``fallback`` when none."""

    variants: dict  # {marker key: Variant}
    fallback: Variant | None = None

    def pick(self, given: Callable[[str], bool], name: Callable[[str], str] = str) -> Variant:
        """The variant whose marker is ``given``; ``name(key)``: the key's dotted name."""
        present = [key for key in self.variants if given(key)]
        if len(present) == 1:
            return self.variants[present[0]]
        if not present and self.fallback is not None:
            return self.fallback
        raise ConfigError(name(next(iter(self.variants))), "give exactly one of " + _alternatives(
            [f"{name(key)} ({v.doc})" for key, v in self.variants.items()]))

    @property
    def alternatives(self) -> tuple:
        return (*self.variants.values(), *([self.fallback] if self.fallback else []))


@dataclasses.dataclass(frozen=True)
class Cases:
    """Alternatives told apart by the value of the field ``key``, read before (its ``choices``
    are the keys of ``variants``)."""

    key: str
    variants: dict  # {value: Variant}

    def pick(self, values: dict) -> Variant:
        return self.variants[values[self.key]]

    @property
    def alternatives(self) -> tuple:
        return tuple(self.variants.values())


def _alternatives(items: list) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def fields_of(nodes: Iterable) -> Iterable[Field]:
    """Every ``Field`` declared in ``nodes``, alternatives included (a name may repeat)."""
    for node in nodes:
        if isinstance(node, Field):
            yield node
        elif isinstance(node, (OneOf, Cases)):
            for variant in node.alternatives:
                yield from fields_of(variant.fields)
