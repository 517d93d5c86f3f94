"""Experiment configuration: TOML in, a validated and fully resolved config out.

A config has top-level run settings and three tables, ``[env]``, ``[policy]`` and ``[algo]``::

    seed = 0            # master seed; seed n of the run derives from it
    seeds = 1000        # independent runs
    steps = 200         # updates per run
    [env]
    kind = "bandit"     # bandit | contextual_bandit | mdp | token_tree
    arms = 10           # means drawn per seed, uniform on [0, 1] by default
    [policy]
    init = "uniform"
    [algo]
    name = "npg"
    eta = [0.05, 0.1, 0.2]   # a list is a sweep axis

``resolve`` checks every field before anything is compiled or written and raises
``ConfigError`` naming the field; the result has every default filled in and is what
``config.json`` stores. Every key is declared (``parts.Field``): the top level in ``TOP``, the
environment kinds in ``envs`` (each module registers its kinds), the initial policies in
``policies.INITS``, the rules in ``rules.RULES``; ``schema.Section`` validates a table from
its declarations.
"""

from __future__ import annotations

import difflib
import itertools
import json
import tomllib
from pathlib import Path
from types import MappingProxyType

import numpy as np

from entropy_sim import envs, policies, sweeps
from entropy_sim.diagnostics import DIAGNOSTICS
from entropy_sim.diagnostics.columns import run_columns
from entropy_sim.errors import ConfigError
from entropy_sim.optim import OPTIMIZERS
from entropy_sim.parts import REQUIRED, Cases, Field
from entropy_sim.rules.registry import RULES
from entropy_sim.schema import Section, names

DTYPES = ("float32", "float64")
OUTPUTS = ("full", "summary")
ON_NONFINITE = ("error", "mark")


def _log_every_divides_steps(v, ctx) -> None:
    if v["steps"] % v["log_every"]:
        raise ConfigError("log_every", f"must divide steps = {v['steps']}, got {v['log_every']}")


def _diagnostics_are_known(v, ctx) -> None:
    for i, name in enumerate(v["diagnostics"]):
        if name not in DIAGNOSTICS:
            raise ConfigError(f"diagnostics[{i}]", f"unknown column group {name!r}; choose from "
                                                   f"{', '.join(DIAGNOSTICS)}")


TOP = (
    Field("name", "str", "", "a label for the run (free text)"),
    Field("description", "str", "", "free text"),
    Field("seed", "int", 0, "master seed; every seed, environment and sample derives from it", low=0),
    Field("seeds", "int", 100, "number of independent runs", low=1),
    Field("steps", "int", 100, "number of updates per run", low=1),
    Field("log_every", "int", 1, "log every n-th step (must divide steps)", low=1),
    Field("chunk_steps", "int", 0, "steps per compiled chunk (0 = automatic); results do not "
          "depend on it", low=0),
    Field("dtype", "str", "float32", "float32 or float64", choices=DTYPES),
    Field("output", "str", "full", "full (one row per grid point, seed and step) or summary "
          "(statistics over seeds, computed inside the scan: memory independent of the number of "
          "seeds)", choices=OUTPUTS),
    Field("on_nonfinite", "str", "error", "error (stop, naming grid point, seed and step) or mark "
          "(flag the rows, go on)", choices=ON_NONFINITE),
    Field("devices", "int", 0, "number of devices to split grid points and seeds over (0 = all "
          "that help)", low=0),
    Field("grid_batch", "int", 0, "grid points per compiled call (0 = all); results do not depend "
          "on it", low=0),
    Field("seed_block", "int", 0, "seeds per compiled block (0 = min(seeds, 256)); results are "
          "bitwise identical for any devices, grid_batch and chunk_steps at a given seed_block",
          low=0),
    Field("quantiles", "list", (0.025, 0.5, 0.975), "quantiles over seeds of the summary",
          item="float", low=0.0, high=1.0, low_open=True, high_open=True, distinct=True),
    Field("quantile_metrics", "list", ("entropy", "return", "cov_error"), "metrics whose quantiles "
          "the summary computes (each costs a sort over the seeds per step; the others get mean, "
          "std and n)", item="str"),
    _log_every_divides_steps,
    Field("pass_at", "list", (1, 8), "k of the exact pass@k columns (binary rewards only)",
          item="int", low=1, nonempty=True),
    Field("diagnostics", "list", (), "optional column groups: improvement (the performance-"
          "difference lemma, the surrogate, its gap and their bounds; docs/theory.md §7), "
          "second_order (the entropy change to second order, the varentropy and its bound; §8)",
          item="str", distinct=True),
    _diagnostics_are_known,
)
TABLES = {"env": "table: the environment", "policy": "table: the initial policy",
          "algo": "table: the update rule and its hyperparameters"}
TOP_LEVEL = {**{f.name: f.doc for f in TOP if isinstance(f, Field)}, **TABLES}
POLICY = (Field("init", "str", "uniform", "how the initial logits are set",
                choices=tuple(policies.INITS)), Cases("init", policies.INITS))


def resolve(raw: dict) -> dict:
    """Validate a raw config (parsed TOML) and return it with every default filled in."""
    top = Section("", raw, [*names(TOP), *TABLES], explain=unknown_key)
    out = top.values
    top.walk(TOP)
    env_values, env = _resolve_env(top.raw("env"))
    out["env"] = env_values
    policy = Section("policy", top.raw("policy", {"init": "uniform"}), names(POLICY), ctx=env,
                     explain=unknown_key)
    policy.walk(POLICY)
    out["policy"] = policy.finish()
    out["algo"] = _resolve_algo(top.raw("algo"), env.num_actions)
    _check_quantile_metrics(out, env.binary)
    top.finish()
    return out


TABLE_NAMES = tuple(TABLES)


def table_keys() -> dict[str, set[str]]:
    """Every key some setting of each table accepts (``""``: the top level)."""
    algo = {d.name for r in RULES.values() for d in (*r.hparams, *r.options)}
    return {"": {*names(TOP), *TABLES}, "env": set(names(envs.registry.schema())),
            "policy": set(names(POLICY)), "algo": {"name", "optimizer", *algo}}


def unknown_key(table: str, key: str, value) -> str:
    """What is wrong with ``key``, which no setting of ``table`` accepts: a misnamed table, a
    top-level key written after a ``[table]`` header (TOML puts it inside that table), a key of
    another table, or a typo (with the closest valid name)."""
    keys = table_keys()
    if not table and isinstance(value, dict):
        hint = [t for t in TABLE_NAMES if key and (key.startswith(t) or t.startswith(key))]
        hint = hint or difflib.get_close_matches(key, TABLE_NAMES, n=1, cutoff=0.5)
        tables = ", ".join(f"[{t}]" for t in TABLE_NAMES)
        return "unknown table; " + (f"did you mean [{hint[0]}]?" if hint else f"the tables are {tables}")
    homes = " or ".join(f"[{t}]" for t in TABLE_NAMES if t != table and key in keys[t])
    here = f"a key of [{table}]" if table else "a top-level key"
    if table and key in keys[""] and key not in TABLE_NAMES:
        also = f" (or a key of {homes})" if homes else ""
        return (f"{key!r} is a top-level key{also}, not {here}; in a TOML file top-level keys "
                f"must come before the first [table] header")
    if homes:
        return f"{key!r} is a key of {homes}, not {here}"
    hint = difflib.get_close_matches(str(key), sorted(keys[table]), n=1)
    return "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")


def _resolve_env(data) -> tuple[dict, envs.registry.EnvInfo]:
    """The resolved ``[env]`` table and what is known of the environment: its shape, correct
    answers and rewards (a deterministic one is built, which validates its arrays)."""
    schema = envs.registry.schema()
    chosen: list = []
    sec = Section("env", data, names(schema), explain=unknown_key)
    sec.ctx = info = envs.registry.EnvInfo(sec.values, chosen)
    sec.walk(schema, chosen)
    sec.call(lambda v, ctx: ctx.shape)
    return sec.finish(), info


def _resolve_algo(data, num_actions: int) -> dict:
    known = {d.name for r in RULES.values() for d in (*r.hparams, *r.options)}
    sec = Section("algo", data, {"name", "optimizer", *known}, explain=unknown_key)
    name = sec.raw("name")
    if name not in RULES:
        raise ConfigError("algo.name", f"unknown algorithm {name!r}; choose from {', '.join(RULES)}")
    sec.read(Field("optimizer", "str", "sgd", choices=tuple(OPTIMIZERS)))
    spec = RULES[name]
    for hparam in spec.hparams:
        value = sec.raw(hparam.name, REQUIRED if hparam.default is None else hparam.default)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(sec.field(hparam.name), "a sweep list needs at least one value")
        for i, v in enumerate(values):
            hparam.check(sec.field(hparam.name) + (f"[{i}]" if isinstance(value, list) else ""), v)
    for option in spec.options:
        # A static option: one value per run (a list was expanded into runs, sweeps.py).
        sec.read(Field(option.name, "str" if option.choices else "int", option.default,
                       option.doc, choices=option.choices,
                       low=None if option.choices else option.minimum))
    for check in spec.checks:
        check(sec.values, num_actions)
    takes = [d.name for d in (*spec.hparams, *spec.options)]
    for key in sec.data:
        if key in known and key not in takes:
            hint = f"; for entropy regularisation use {name}_entropy" if f"{name}_entropy" in RULES else ""
            raise ConfigError(sec.field(key), f"{name} takes no {key}; it takes "
                                              f"{', '.join(takes)}{hint}")
    return sec.finish()


def _check_quantile_metrics(cfg: dict, binary: bool | None) -> None:
    """Every ``quantile_metrics`` entry is a column this run logs (pass@k columns unless the
    rewards are known not to be binary), in either output mode."""
    spec = RULES[cfg["algo"]["name"]]
    logged = {c.name for c in run_columns(spec, cfg, binary=binary is not False)}
    unknown = [m for m in cfg["quantile_metrics"] if m not in logged]
    if not unknown:
        return
    if binary is False and set(unknown) <= {c.name for c in run_columns(spec, cfg, binary=True)}:
        raise ConfigError("quantile_metrics", f"{unknown[0]!r} is logged only where every reward "
                                              f"is 0 or 1, and this environment's rewards are not")
    hint = difflib.get_close_matches(unknown[0], sorted(logged), n=1)
    raise ConfigError("quantile_metrics", f"unknown metric(s) {unknown}"
                                          + (f"; did you mean {hint[0]!r}?" if hint else "")
                                          + f" (this run logs {', '.join(sorted(logged))})")


# ----------------------------------------------------------------------------- the Config object

class Config:
    """A validated, fully resolved, read-only experiment configuration."""

    def __init__(self, raw: dict):
        found, runs = sweeps.expand(raw)
        self._axes = found
        self._runs = None
        if not found:
            self._data = resolve(raw)
            return
        self._runs = []
        for values, part in runs:
            try:
                config = Config(part)
            except ConfigError as err:
                raise ConfigError(err.field, f"{err.message} (in the run with "
                                             f"{sweeps.describe(values)})") from None
            self._runs.append((values, config))
        self._data = sweeps.merged(found, [c._data for _, c in self._runs])

    @classmethod
    def from_toml(cls, path, overrides=()) -> "Config":
        """Load ``path`` and apply ``key=value`` overrides (``algo.eta=[0.1, 0.2]``)."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("", f"config file {str(path)!r} not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("", f"{path}: invalid TOML: {err}") from None
        raw = apply_overrides(raw, overrides)
        env = raw.get("env")
        for key in envs.registry.path_fields(env.get("kind")) if isinstance(env, dict) else ():
            if isinstance(env.get(key), str):  # a file is relative to the config file naming it
                env[key] = str((path.parent / env[key]).resolve())
        return cls(raw)

    def __getitem__(self, key):
        return _frozen(self._data[key])

    def __eq__(self, other):
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict:
        """A deep copy of the resolved config, JSON-serialisable."""
        return json.loads(json.dumps(self._data))

    def replace(self, **changes) -> "Config":
        """A new config with top-level keys or ``section__key`` entries changed."""
        raw = self.to_dict()
        for key, value in changes.items():
            section, _, sub = key.partition("__")
            if sub:
                raw[section][sub] = value
            else:
                raw[section] = value
        return Config(raw)

    @property
    def sweep(self) -> dict[str, list[float]]:
        """Swept traced hyperparameters (algo fields given as lists), in config order; a sweep
        over static fields (``static_sweep``) is not among them."""
        return {k: list(v) for k, v in self._data["algo"].items()
                if isinstance(v, list) and ("algo", k) not in self._axes}

    @property
    def static_sweep(self) -> dict[str, list]:
        """Swept static fields, ``{column: values}`` (``{"name": ["grpo", "aepo"]}``): each
        combination is a run of its own (``runs``); empty when nothing static is swept."""
        columns = sweeps.column_names(self._axes)
        return {columns[axis]: list(values) for axis, values in self._axes.items()}

    def runs(self) -> list[tuple[dict, "Config"]]:
        """``[(values, config)]``: per combination of the swept static fields, their values
        (``{column: value}``) and the config of that run; ``[({}, self)]`` when nothing static is
        swept."""
        if self._runs is None:
            return [({}, self)]
        columns = sweeps.column_names(self._axes)
        return [({columns[axis]: v for axis, v in values.items()}, config)
                for values, config in self._runs]

    def grid(self) -> tuple[dict[str, np.ndarray], list[dict]]:
        """The hyperparameter grid: ``{name: [G] array}`` for every hyperparameter of the rule, and
        the swept values of each grid point. Grid points are the Cartesian product of the sweep
        lists, the last list varying fastest. A sweep over static fields has one grid per run
        (``runs``)."""
        if self._runs is not None:
            raise ValueError(f"this config sweeps static fields ({', '.join(self.static_sweep)}): "
                             f"one compiled run each; use config.runs()")
        algo = self._data["algo"]
        names = [h.name for h in RULES[algo["name"]].hparams]
        axes = [algo[n] if isinstance(algo[n], list) else [algo[n]] for n in names]
        points = list(itertools.product(*axes))
        hparams = {n: np.array([p[i] for p in points], dtype=np.float64) for i, n in enumerate(names)}
        swept = [{n: p[i] for i, n in enumerate(names) if isinstance(algo[n], list)} for p in points]
        return hparams, swept

    def __repr__(self):
        return f"Config({json.dumps(self._data)[:200]})"


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply ``section.key=value`` strings; values are TOML (``0.1``, ``[0.1, 0.2]``, ``"npg"``),
    bare words are taken as strings."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        *sections, leaf = key.strip().split(".")
        node = raw
        for i, sec in enumerate(sections):
            node = node.setdefault(sec, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(sections[:i + 1]), "is not a table")
        node[leaf] = value
    return raw


def _frozen(value):
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
