"""Sweeps over static fields: one compiled run per combination, one table.

A list given for a traced hyperparameter (``algo.eta = [0.1, 0.2]``) is a grid inside one compiled
program. A list given for a *static* field, one that fixes the program (``algo.name``, a rule's
options such as ``group``, the environment's kind, sizes and parameters, the initial policy, the
master ``seed``), is a sweep over runs: ``expand`` splits the config into one config per
combination (the Cartesian product of the lists, the last varying fastest, after the grid's
rule), each is validated and run on its own, and ``SweepResults`` puts their tables together,
with one column per swept static field.

Fields that only some values of a swept ``algo.name``, ``env.kind`` or ``policy.init`` take go to
the runs whose value takes them (``entropy_target`` to AEPO's runs of ``name = ["grpo",
"aepo"]``); a field no value takes is still an error.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pandas as pd

from entropy_sim import envs, policies
from entropy_sim.errors import ConfigError
from entropy_sim.parts import fields_of
from entropy_sim.rules.registry import RULES

# Top-level fields that label a result folder as a whole or fix its layout: one value per folder.
UNSWEPT = {"output": "fixes the files of the result folder",
           "name": "labels the result folder", "description": "describes the result folder"}
# The field of each table whose value decides which other fields the table takes.
SELECTORS = {"env": "kind", "policy": "init", "algo": "name"}
# Column names a swept field cannot take as they are (identifiers of the result tables).
RESERVED = {"seed", "step", "state", "action", "logit", "prob", "metric", "mean", "std", "ci_low",
            "ci_high", "n", "nonfinite"}


def _top_fields() -> dict:
    from entropy_sim.config import TOP  # config imports this module

    return {f.name: f for f in fields_of(TOP)}


def _scalar(nodes, key: str) -> bool:
    """Whether ``key`` is declared in ``nodes`` as a scalar only (a list given for it is a sweep,
    not its value)."""
    kinds = [f.scalar for f in fields_of(nodes) if f.name == key]
    return bool(kinds) and all(kinds)


def _takes(table: str, value) -> set[str] | None:
    """The keys ``table`` takes when its selector has ``value`` (None: an unknown value, left for
    validation to name)."""
    if table == "env":
        spec = envs.registry.KINDS.get(value) if isinstance(value, str) else None
        return None if spec is None else {"kind"} | {f.name for f in fields_of(spec.fields)}
    if table == "policy":
        init = policies.INITS.get(value) if isinstance(value, str) else None
        return None if init is None else {"init"} | {f.name for f in fields_of(init.fields)}
    rule = RULES.get(value) if isinstance(value, str) else None
    return None if rule is None else {"name", "optimizer"} | {d.name for d in
                                                              (*rule.hparams, *rule.options)}


def axes(raw: dict) -> dict[tuple[str, str], list]:
    """The static sweep axes of a raw config: ``{(table, key): values}`` in config order (table
    ``""`` for top-level fields). Lists for traced hyperparameters and for fields whose value is a
    list (``quantiles``, ``env.means``) are no axes."""
    if not isinstance(raw, dict):
        return {}
    found: dict[tuple[str, str], list] = {}
    top = _top_fields()
    for key, value in raw.items():
        if isinstance(value, list) and key in top and top[key].scalar:
            if key in UNSWEPT:
                raise ConfigError(key, f"cannot be swept: it {UNSWEPT[key]}; run one config per "
                                       f"value")
            found[("", key)] = value
    declared = {"env": envs.registry.schema(), "policy": _policy_nodes()}
    for table in ("env", "policy"):
        data = raw.get(table)
        for key, value in (data.items() if isinstance(data, dict) else ()):
            if isinstance(value, list) and _scalar(declared[table], key):
                found[(table, key)] = value
    algo = raw.get("algo")
    if isinstance(algo, dict):
        names = algo.get("name")
        candidates = [RULES[n] for n in (names if isinstance(names, list) else [names])
                      if isinstance(n, str) and n in RULES] or list(RULES.values())
        options = {o.name for r in candidates for o in r.options}
        for key, value in algo.items():
            if isinstance(value, list) and (key in ("name", "optimizer") or key in options):
                found[("algo", key)] = value
    for (table, key), values in found.items():
        if not values:
            raise ConfigError(f"{table}.{key}" if table else key,
                              "a sweep list needs at least one value")
    return found


def _policy_nodes():
    from entropy_sim.config import POLICY  # config imports this module

    return POLICY


def expand(raw: dict) -> tuple[dict[tuple[str, str], list], list[tuple[dict, dict]]]:
    """``(axes, runs)``: the static axes of ``raw`` and, per combination of their values, the
    values (``{(table, key): value}``) and the raw config of that run (see the module
    docstring). No axes: ``({}, [({}, raw)])``."""
    found = axes(raw)
    if not found:
        return {}, [({}, raw)]
    runs = []
    for combo in itertools.product(*found.values()):
        values = dict(zip(found, combo))
        part = copy.deepcopy(raw)
        for (table, key), value in values.items():
            (part[table] if table else part)[key] = value
        for table, selector in SELECTORS.items():
            if (table, selector) in found:
                _drop_foreign(part[table], table, values[(table, selector)],
                              [v for v in found[(table, selector)] if v != values[(table, selector)]])
        runs.append((values, part))
    return found, runs


def _drop_foreign(data: dict, table: str, value, others: list) -> None:
    """Remove from ``data`` the keys ``value`` does not take that another swept value does."""
    mine = _takes(table, value)
    if mine is None:
        return
    theirs = set().union(*(_takes(table, v) or set() for v in others))
    for key in [k for k in data if k not in mine and k in theirs]:
        del data[key]


def column_names(found: dict[tuple[str, str], list]) -> dict[tuple[str, str], str]:
    """The result tables' column for each axis: the field's key (``group``), or, where that
    names something else already (an identifier, a hyperparameter, another axis), the dotted
    field (``env.seed``); the master ``seed`` is ``master_seed``."""
    hparams = {h.name for r in RULES.values() for h in r.hparams}
    leaves = [key for _, key in found]
    out = {}
    for table, key in found:
        clash = key in RESERVED or key in hparams or leaves.count(key) > 1
        out[(table, key)] = key if not clash else (f"{table}.{key}" if table else f"master_{key}")
    return out


def describe(values: dict) -> str:
    """``name = 'aepo', group = 8``: one run's values, for messages."""
    return ", ".join(f"{f'{t}.{k}' if t else k} = {v!r}" for (t, k), v in values.items())


def merged(found: dict, resolved: list[dict]) -> dict:
    """One config standing for all runs: the swept fields as their lists, the fields every run
    that has them agrees on as their value; fields whose resolved value differs between runs
    (defaults that depend on a swept field) are left out, so they resolve to the same values
    again. ``Config(merged(...))`` expands into the same runs."""
    def join(table: str, dicts: list[dict]) -> dict:
        out = {}
        keys = list(dict.fromkeys(k for d in dicts for k in d))
        for key in keys:
            if (table, key) in found:
                out[key] = list(found[(table, key)])
                continue
            present = [d[key] for d in dicts if key in d]
            if isinstance(present[0], dict):
                out[key] = join(key, present)
            elif all(v == present[0] for v in present):
                out[key] = present[0]
        return out

    return join("", resolved)


@dataclasses.dataclass
class SweepResults:
    """The outcome of a sweep over static fields: the ``Results`` of each run, with the values
    of the swept fields (``{column: value}``). Its tables (``metrics``, ``summary()``,
    ``final_policy``, ``final_policy_summary()``) are the runs' tables one under the other, with
    a column per swept field in front; a metric or hyperparameter only some runs have is NaN in
    the others. ``save`` writes one result folder, as ``Results.save`` does."""

    config: object  # the sweep's Config
    runs: list  # [(values, Results)]
    provenance: dict | None = None

    @property
    def swept(self) -> list[dict]:
        """The swept values (static and traced) of every grid point of every run."""
        return [{**values, **point} for values, res in self.runs for point in res.swept]

    @property
    def steps(self):
        return self.runs[0][1].steps

    @property
    def metrics(self) -> pd.DataFrame:
        return self._stack(lambda r: r.metrics)

    def summary(self) -> pd.DataFrame:
        return self._stack(lambda r: r.summary())

    @property
    def final_policy(self) -> pd.DataFrame:
        return self._stack(lambda r: r.final_policy)

    def final_policy_summary(self) -> pd.DataFrame:
        return self._stack(lambda r: r.final_policy_summary())

    def _stack(self, table) -> pd.DataFrame:
        frames, traced = [], {}
        for values, res in self.runs:
            frame = table(res)
            traced.update(dict.fromkeys(res.swept[0] if res.swept else ()))
            frames.append(frame.assign(**values))
        out = pd.concat(frames, ignore_index=True)
        lead = [*self.runs[0][0], *traced]
        return out[lead + [c for c in out.columns if c not in lead]]

    def save(self, out_dir, *, overwrite: bool = False):
        from entropy_sim.results import save_folder

        return save_folder(self, out_dir, overwrite=overwrite)
