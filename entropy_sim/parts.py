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
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

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
    (``rules.py``); ``hparams`` its traced hyperparameters (``hp`` holds them as arrays);
    ``options`` its static settings; ``columns`` the keys of ``info`` beyond ``dH_pred_closed``;
    ``checks`` functions ``(values, num_actions) -> None`` over the resolved ``[algo]`` table;
    ``sampled``: the step draws samples; ``pieces``: the objective pieces it is chained from
    (``objectives.py``), if any."""

    name: str
    fn: Callable
    summary: str
    hparams: tuple[Hparam, ...]
    options: tuple[Option, ...] = ()
    columns: tuple[Column, ...] = ()
    checks: tuple[Callable, ...] = ()
    sampled: bool = False
    pieces: tuple = ()

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
