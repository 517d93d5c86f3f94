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
``config.json`` stores. ``docs`` below lists every key.
"""

from __future__ import annotations

import difflib
import itertools
import json
import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from entropy_sim import errors
from entropy_sim.errors import ConfigError
from entropy_sim.algorithms import RULES
from entropy_sim.optim import OPTIMIZERS

ENV_KINDS = ("bandit", "contextual_bandit", "mdp", "token_tree")
POLICY_INITS = ("uniform", "probs", "logits", "gaussian", "prior")
DTYPES = ("float32", "float64")
OUTPUTS = ("full", "summary")
ON_NONFINITE = ("error", "mark")
_REQUIRED = object()

TOP_LEVEL = {
    "name": "a label for the run (free text)",
    "description": "free text",
    "seed": "master seed (int >= 0); every seed, environment and sample derives from it",
    "seeds": "number of independent runs (int >= 1)",
    "steps": "number of updates per run (int >= 1)",
    "log_every": "log every n-th step (int >= 1, must divide steps)",
    "chunk_steps": "steps per compiled chunk (0 = automatic); results do not depend on it",
    "dtype": "float32 (default) or float64",
    "pass_at": "list of k for the exact pass@k columns (binary rewards only)",
    "output": "full (one row per grid point, seed and step) or summary (statistics over seeds, "
              "computed inside the scan: memory independent of the number of seeds)",
    "quantiles": "quantiles over seeds of the summary (list of probabilities in (0, 1))",
    "quantile_metrics": "metrics whose quantiles the summary mode computes (each costs a sort "
                        "over the seeds per step; the others get mean, std and n)",
    "on_nonfinite": "error (stop, naming grid point, seed and step) or mark (flag the rows, go on)",
    "devices": "number of devices to split grid points and seeds over (0 = all that help)",
    "grid_batch": "grid points per compiled call (0 = all); results do not depend on it",
    "seed_block": "seeds per compiled block (0 = min(seeds, 256)); results are bitwise identical "
                  "for any devices, grid_batch and chunk_steps at a given seed_block",
    "env": "table: the environment",
    "policy": "table: the initial policy",
    "algo": "table: the update rule and its hyperparameters",
}


class Section:
    """Reads one table of a raw config, checking each field and recording its resolved value;
    ``finish`` rejects any key that was never read (a typo) and suggests the closest name."""

    def __init__(self, name: str, data: Any):
        if not isinstance(data, dict):
            raise ConfigError(name, f"expected a table, got {type(data).__name__}")
        self.name = name
        self.data = dict(data)
        self.resolved: dict[str, Any] = {}
        self.known: set[str] = set()  # keys read for these settings
        self.hints: set[str] = set()  # keys valid in other settings of this table
        if name in TABLE_NAMES or not name:
            self.check_keys()

    def check_keys(self) -> None:
        """Reject a key that no setting of this table accepts, before any field is read: a typo,
        a misnamed table or a key in the wrong table is named first, even where a required key
        is missing too (``algo.etta`` rather than ``algo.eta: is required``)."""
        valid = table_keys()[self.name]
        for key, value in self.data.items():
            if key not in valid:
                raise ConfigError(self.field(key), _unknown_key(self.name, key, value))

    def field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def has(self, key: str) -> bool:
        self.known.add(key)
        return key in self.data

    def raw(self, key: str, default=_REQUIRED):
        self.known.add(key)
        if key in self.data:
            value = self.data[key]
        elif default is _REQUIRED:
            raise ConfigError(self.field(key), "is required")
        else:
            value = default
        self.resolved[key] = value
        return value

    def integer(self, key: str, default=_REQUIRED, minimum: int | None = None) -> int:
        return errors.integer(self.field(key), self.raw(key, default), minimum=minimum)

    def number(self, key: str, default=_REQUIRED, **bounds) -> float:
        return errors.number(self.field(key), self.raw(key, default), **bounds)

    def choice(self, key: str, options, default=_REQUIRED) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or value not in options:
            raise ConfigError(self.field(key), f"unknown value {value!r}; choose from "
                                               f"{', '.join(options)}")
        return value

    def boolean(self, key: str, default=_REQUIRED) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.field(key), f"expected true or false, got {value!r}")
        return value

    def string(self, key: str, default=_REQUIRED) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise ConfigError(self.field(key), f"expected a string, got {value!r}")
        return value

    def finish(self) -> dict:
        unknown = [k for k in self.data if k not in self.known]
        if unknown:
            key = unknown[0]
            if key in self.hints:
                raise ConfigError(self.field(key), f"is not used with these settings "
                                                   f"({self._settings()})")
            hint = difflib.get_close_matches(key, sorted(self.known | self.hints), n=1)
            raise ConfigError(self.field(key), "unknown key" + (f"; did you mean {hint[0]!r}?"
                                                                if hint else ""))
        return self.resolved

    def _settings(self) -> str:
        return ", ".join(f"{k} = {v!r}" for k, v in self.resolved.items() if isinstance(v, str))


TABLE_NAMES = ("env", "policy", "algo")


def table_keys() -> dict[str, set[str]]:
    """Every key some setting of each table accepts (``""``: the top level)."""
    algo = {d.name for r in RULES.values() for d in (*r.hparams, *r.options)}
    return {"": set(TOP_LEVEL), "env": {"kind", *_ENV_KEYS}, "policy": set(_POLICY_KEYS),
            "algo": {"name", "optimizer", *algo}}


def _unknown_key(table: str, key: str, value) -> str:
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
    if table and key in TOP_LEVEL and key not in TABLE_NAMES:
        also = f" (or a key of {homes})" if homes else ""
        return (f"{key!r} is a top-level key{also}, not {here}; in a TOML file top-level keys "
                f"must come before the first [table] header")
    if homes:
        return f"{key!r} is a key of {homes}, not {here}"
    hint = difflib.get_close_matches(key, sorted(keys[table]), n=1)
    return "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")


def resolve(raw: dict) -> dict:
    """Validate a raw config (parsed TOML) and return it with every default filled in."""
    top = Section("", raw)
    out = {
        "name": top.string("name", ""),
        "description": top.string("description", ""),
        "seed": top.integer("seed", 0, minimum=0),
        "seeds": top.integer("seeds", 100, minimum=1),
        "steps": top.integer("steps", 100, minimum=1),
        "log_every": top.integer("log_every", 1, minimum=1),
        "chunk_steps": top.integer("chunk_steps", 0, minimum=0),
        "dtype": top.choice("dtype", DTYPES, "float32"),
        "output": top.choice("output", OUTPUTS, "full"),
        "on_nonfinite": top.choice("on_nonfinite", ON_NONFINITE, "error"),
        "devices": top.integer("devices", 0, minimum=0),
        "grid_batch": top.integer("grid_batch", 0, minimum=0),
        "seed_block": top.integer("seed_block", 0, minimum=0),
    }
    quantiles = top.raw("quantiles", [0.025, 0.5, 0.975])
    if not isinstance(quantiles, list):
        raise ConfigError("quantiles", f"expected a list of probabilities, got {quantiles!r}")
    out["quantiles"] = [errors.number(f"quantiles[{i}]", q, low=0.0, high=1.0, low_open=True,
                                      high_open=True) for i, q in enumerate(quantiles)]
    if len(set(out["quantiles"])) != len(out["quantiles"]):
        raise ConfigError("quantiles", f"values must be distinct, got {quantiles!r}")
    names = top.raw("quantile_metrics", ["entropy", "return", "cov_error"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("quantile_metrics", f"expected a list of metric names, got {names!r}")
    out["quantile_metrics"] = names
    if out["steps"] % out["log_every"]:
        raise ConfigError("log_every", f"must divide steps = {out['steps']}, got {out['log_every']}")
    pass_at = top.raw("pass_at", [1, 8])
    if not isinstance(pass_at, list) or not pass_at:
        raise ConfigError("pass_at", f"expected a non-empty list of integers, got {pass_at!r}")
    out["pass_at"] = [errors.integer(f"pass_at[{i}]", k, minimum=1) for i, k in enumerate(pass_at)]
    env, (num_states, num_actions) = _resolve_env(Section("env", top.raw("env")))
    out["env"] = env
    out["policy"] = _resolve_policy(Section("policy", top.raw("policy", {"init": "uniform"})),
                                    env, num_states, num_actions)
    out["algo"] = _resolve_algo(Section("algo", top.raw("algo")), num_actions)
    top.finish()
    return out


# ----------------------------------------------------------------------------- environments

_ENV_KEYS = ("means", "arms", "generator", "low", "high", "p", "loc", "scale", "noise", "noise_std",
             "shared", "r", "rho", "contexts", "actions", "num_correct", "P", "gamma", "mu", "path",
             "states", "branching", "distractor", "size", "slip", "vocab", "length", "answers",
             "prompts", "rollout_length")

_GENERATOR_KEYS = ("low", "high", "p", "loc", "scale", "num_correct")


def _resolve_env(sec: Section) -> tuple[dict, tuple[int, int]]:
    """Resolved ``[env]`` table and the policy shape ``(S, A)`` it implies."""
    kind = sec.choice("kind", ENV_KINDS)
    sec.hints.update(_ENV_KEYS)
    try:
        shape = {"bandit": _env_bandit, "contextual_bandit": _env_contextual,
                 "mdp": _env_mdp, "token_tree": _env_token_tree}[kind](sec)
    except ConfigError as err:
        raise (err if err.field.startswith("env.") else err.within("env")) from None
    return sec.finish(), shape


def _bandit_generator(sec: Section, generators, arms: int) -> None:
    gen = sec.choice("generator", generators, "uniform")
    if gen == "uniform":
        low = sec.number("low", 0.0)
        sec.number("high", 1.0, low=low)
    elif gen == "bernoulli":
        sec.number("p", 0.5, low=0.0, high=1.0)
    elif gen == "gaussian":
        sec.number("loc", 0.0)
        sec.number("scale", 1.0, low=0.0)
    elif gen == "verifiable":
        sec.integer("num_correct", 1, minimum=1)
        if sec.resolved["num_correct"] >= arms:
            raise ConfigError(sec.field("num_correct"), f"must be below the number of actions "
                                                        f"{arms}, got {sec.resolved['num_correct']}")
    sec.boolean("shared", False)
    sec.hints.update(_GENERATOR_KEYS)


def _noise(sec: Section) -> None:
    sec.choice("noise", ("deterministic", "bernoulli", "gaussian"), "deterministic")
    sec.number("noise_std", 1.0, low=0.0)


def _env_bandit(sec: Section) -> tuple[int, int]:
    _noise(sec)
    if sec.has("means") == sec.has("arms"):
        raise ConfigError("env.means", "give exactly one of env.means (explicit) or env.arms "
                                       "(means drawn per seed)")
    if sec.has("means"):
        from entropy_sim.envs import bandit
        bandit(sec.raw("means"), noise=sec.resolved["noise"], noise_std=sec.resolved["noise_std"])
        return 1, len(sec.resolved["means"])
    arms = sec.integer("arms", minimum=2)
    _bandit_generator(sec, ("uniform", "bernoulli", "gaussian"), arms)
    _check_bernoulli_noise(sec)
    return 1, arms


def _env_contextual(sec: Section) -> tuple[int, int]:
    _noise(sec)
    if sec.has("r"):
        from entropy_sim.envs import contextual_bandit
        rho = sec.raw("rho", None)
        contextual_bandit(sec.raw("r"), rho, noise=sec.resolved["noise"],
                          noise_std=sec.resolved["noise_std"])
        r = np.asarray(sec.resolved["r"])
        return r.shape[0], r.shape[1]
    contexts = sec.integer("contexts", minimum=1)
    actions = sec.integer("actions", minimum=2)
    _prompt_weights(sec, contexts)
    _bandit_generator(sec, ("uniform", "bernoulli", "gaussian", "verifiable"), actions)
    _check_bernoulli_noise(sec)
    return contexts, actions


def _check_bernoulli_noise(sec: Section) -> None:
    if sec.resolved["noise"] != "bernoulli":
        return
    gen = sec.resolved["generator"]
    if gen == "gaussian" or (gen == "uniform" and (sec.resolved["low"] < 0 or sec.resolved["high"] > 1)):
        raise ConfigError(sec.field("noise"), "bernoulli rewards need mean rewards in [0, 1]")


def _prompt_weights(sec: Section, count: int) -> None:
    rho = sec.raw("rho", None)
    if rho is not None:
        rho = errors.as_array(sec.field("rho"), rho, ndim=1)
        if rho.shape[0] != count:
            raise ConfigError(sec.field("rho"), f"has {rho.shape[0]} entries for {count} prompts")
        errors.probabilities(sec.field("rho"), rho)


def _env_mdp(sec: Section) -> tuple[int, int]:
    from entropy_sim.envs import load_npz, mdp
    sources = [k for k in ("P", "path", "generator") if sec.has(k)]
    if len(sources) != 1:
        raise ConfigError("env.P", "give exactly one of env.P (with r, gamma, mu), env.path "
                                   "(an .npz file) or env.generator (garnet, chain, gridworld)")
    if sources[0] == "P":
        sec.raw("P"), sec.raw("r"), sec.raw("gamma"), sec.raw("mu", None)
        env = mdp(sec.resolved["P"], sec.resolved["r"], sec.resolved["gamma"], sec.resolved["mu"])
        _rollout_length(sec, float(env.gamma))
        return env.num_states, env.num_actions
    if sources[0] == "path":
        env = load_npz(sec.string("path"))
        _rollout_length(sec, float(env.gamma))
        return env.num_states, env.num_actions
    gen = sec.choice("generator", ("garnet", "chain", "gridworld"))
    _rollout_length(sec, sec.number("gamma", 0.9, low=0.0, high=1.0, high_open=True))
    if gen == "garnet":
        states = sec.integer("states", minimum=1)
        actions = sec.integer("actions", minimum=2)
        branching = sec.integer("branching", min(states, 2), minimum=1)
        if branching > states:
            raise ConfigError("env.branching", f"must be <= states = {states}, got {branching}")
        sec.boolean("shared", False)
        return states, actions
    if gen == "chain":
        states = sec.integer("states", minimum=2)
        actions = sec.integer("actions", 2, minimum=2)
        sec.number("distractor", 0.01)
        return states, actions
    size = sec.integer("size", minimum=2)
    sec.number("slip", 0.0, low=0.0, high=1.0)
    return size * size, 4


def _rollout_length(sec: Section, gamma: float) -> None:
    """Steps of a sampled MDP rollout; by default the least H with gamma^H <= 1e-3."""
    from entropy_sim.envs import default_rollout_length
    sec.integer("rollout_length", default_rollout_length(gamma), minimum=1)


def _env_token_tree(sec: Section) -> tuple[int, int]:
    vocab = sec.integer("vocab", minimum=2)
    length = sec.integer("length", minimum=1)
    if vocab ** length > 2 ** 22:
        raise ConfigError("env.length", f"vocab^length = {vocab ** length} responses is too many "
                                        f"for exact evaluation (limit 2^22)")
    nodes = sum(vocab ** t for t in range(length))
    if sec.has("answers"):
        from entropy_sim.envs import token_tree
        env = token_tree(vocab, length, sec.raw("answers"), sec.raw("rho", None))
        return env.num_states, vocab
    prompts = sec.integer("prompts", 1, minimum=1)
    num_correct = sec.integer("num_correct", 1, minimum=1)
    if num_correct > vocab ** length:
        raise ConfigError("env.num_correct", f"must be <= vocab^length = {vocab ** length}")
    _prompt_weights(sec, prompts)
    sec.boolean("shared", False)
    return prompts * nodes, vocab


# ----------------------------------------------------------------------------- policy and algo

_POLICY_KEYS = ("init", "probs", "logits", "scale", "peak", "correct_mass")


def _resolve_policy(sec: Section, env: dict, num_states: int, num_actions: int) -> dict:
    init = sec.choice("init", POLICY_INITS, "uniform")
    if init in ("probs", "logits"):
        values = errors.as_array(sec.field(init), sec.raw(init))
        if values.shape not in ((num_actions,), (num_states, num_actions)):
            raise ConfigError(sec.field(init), f"expected {num_actions} values (one per action) "
                                               f"or a [{num_states}][{num_actions}] table, got "
                                               f"shape {list(values.shape)}")
        if init == "probs":
            errors.probabilities(sec.field("probs"), values, strictly_positive=True)
    elif init == "gaussian":
        sec.number("scale", 1.0, low=0.0)
    elif init == "prior":
        sec.number("peak", 0.9, low=1.0 / num_actions, high=1.0, high_open=True)
        if sec.raw("correct_mass", None) is not None:
            if env["kind"] == "mdp":
                raise ConfigError(sec.field("correct_mass"), "needs correct answers; mdp envs "
                                                             "have none (use a bandit or token_tree)")
            sec.number("correct_mass", low=0.0, high=1.0, low_open=True, high_open=True)
    sec.hints.update(_POLICY_KEYS[1:])
    return sec.finish()


def _resolve_algo(sec: Section, num_actions: int) -> dict:
    name = sec.raw("name")
    if name not in RULES:
        raise ConfigError("algo.name", f"unknown algorithm {name!r}; choose from {', '.join(RULES)}")
    sec.choice("optimizer", OPTIMIZERS, "sgd")
    spec = RULES[name]
    for hparam in spec.hparams:
        value = sec.raw(hparam.name, _REQUIRED if hparam.default is None else hparam.default)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(sec.field(hparam.name), "a sweep list needs at least one value")
        for i, v in enumerate(values):
            hparam.check(sec.field(hparam.name) + (f"[{i}]" if isinstance(value, list) else ""), v)
    for option in spec.options:
        _resolve_option(sec, option)
    for check in spec.checks:
        check(sec.resolved, num_actions)
    known = {d.name for r in RULES.values() for d in (*r.hparams, *r.options)}
    takes = [d.name for d in (*spec.hparams, *spec.options)]
    for key in sec.data:
        if key in known and key not in takes:
            hint = f"; for entropy regularisation use {name}_entropy" if f"{name}_entropy" in RULES else ""
            raise ConfigError(sec.field(key), f"{name} takes no {key}; it takes "
                                              f"{', '.join(takes)}{hint}")
    sec.hints.update(known)
    return sec.finish()


def _resolve_option(sec: Section, option) -> None:
    """A static option: one value, not a sweep (it fixes shapes, so each value compiles anew)."""
    key = option.name
    if isinstance(sec.raw(key, option.default), list):
        raise ConfigError(sec.field(key), "is a static option (it fixes array shapes) and cannot "
                                          "be swept; run one config per value")
    if option.choices:
        sec.choice(key, option.choices, option.default)
    else:
        sec.integer(key, option.default, minimum=option.minimum)


# ----------------------------------------------------------------------------- the Config object

class Config:
    """A validated, fully resolved, read-only experiment configuration."""

    def __init__(self, raw: dict):
        self._data = resolve(raw)

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
        if isinstance(raw.get("env"), dict) and isinstance(raw["env"].get("path"), str):
            # An .npz path is relative to the config file that names it.
            raw["env"]["path"] = str((path.parent / raw["env"]["path"]).resolve())
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
        """Swept hyperparameters (algo fields given as lists), in config order."""
        return {k: list(v) for k, v in self._data["algo"].items() if isinstance(v, list)}

    def grid(self) -> tuple[dict[str, np.ndarray], list[dict]]:
        """The hyperparameter grid: ``{name: [G] array}`` for every hyperparameter of the rule, and
        the swept values of each grid point. Grid points are the Cartesian product of the sweep
        lists, the last list varying fastest."""
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
