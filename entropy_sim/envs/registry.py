"""Environment kinds: each registers under a name with the declarations of its ``[env]`` fields
and the function that builds it, so that a new kind is one module (or a few lines of a script).

A kind is an ``EnvKind``: ``fields`` (``parts.Field``, ``OneOf``, ``Cases`` and checks, walked by
``schema.Section`` to validate the table) and ``build(values)``, which returns either an
environment (anything implementing ``envs.Environment``) or a ``Draw``: a pure function of a key,
called once per seed with the seed's environment key (vmapped, jitted and cached) or, when the
draw is ``shared``, once with the run's shared key. Alternatives (``Variant``) may carry their own
``build``; the deepest one on the chosen path builds.

``register`` adds a kind; ``kind`` is the same as a decorator::

    @es.envs.kind("two_state", Field("p", "float", 0.5, "P(action 1 reaches state 1)", low=0, high=1))
    def two_state(cfg):
        p = cfg["p"]
        return es.envs.mdp([[[1.0, 0.0], [1 - p, p]], [[0.0, 1.0], [0.0, 1.0]]],
                           [[0.0, 0.0], [1.0, 1.0]], gamma=0.9, mu=[1.0, 0.0])
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from entropy_sim.envs.base import Environment
from entropy_sim.parts import REQUIRED, Cases, Field, Variant, fields_of
from entropy_sim.schema import select

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EnvKind:
    """An environment kind. ``build(values) -> env | Draw`` (None: each alternative of ``fields``
    builds its own); ``fields``: the declarations of its ``[env]`` keys besides ``kind``;
    ``prepare(env, values, samples) -> env``: settings only sampled rules need (``samples``: the
    rule draws samples), applied after building."""

    name: str
    build: Callable | None = None
    fields: tuple = ()
    doc: str = ""
    prepare: Callable | None = None

    @property
    def variant(self) -> Variant:
        return Variant(self.doc, self.fields, self.build)


class Draw(NamedTuple):
    """A random environment ``fn(key, **kwargs)``: one per seed, or one for all seeds when
    ``shared``. ``fn`` must be pure (it is vmapped over the seeds' keys)."""

    fn: Callable
    kwargs: dict
    shared: bool = False


KINDS: dict[str, EnvKind] = {}


def register(spec: EnvKind, *, replace: bool = False) -> EnvKind:
    """Add ``spec`` under ``spec.name`` (then ``[env] kind = ...`` builds it)."""
    if spec.name in KINDS and not replace:
        raise ValueError(f"an environment kind named {spec.name!r} is registered already "
                         f"(replace=True to replace it)")
    if any(f.name == "kind" for f in fields_of(spec.fields)):
        raise ValueError(f"{spec.name}: 'kind' names the environment kind; rename the field")
    KINDS[spec.name] = spec
    return spec


def kind(name: str, *fields, doc: str = "", prepare: Callable | None = None,
         replace: bool = False) -> Callable:
    """Decorator: register the decorated ``build(values) -> env | Draw`` as kind ``name`` with
    ``fields``; the function is returned unchanged."""
    def decorate(build: Callable) -> Callable:
        register(EnvKind(name, build, tuple(fields), doc or (build.__doc__ or "").strip(),
                         prepare), replace=replace)
        return build
    return decorate


def schema() -> tuple:
    """The declarations of the ``[env]`` table: ``kind``, then the chosen kind's fields."""
    return (Field("kind", "str", REQUIRED, "the environment kind", choices=tuple(KINDS)),
            Cases("kind", {name: spec.variant for name, spec in KINDS.items()}))


def path_fields(name) -> list[str]:
    """The fields of kind ``name`` that name files (relative to the config file)."""
    spec = KINDS.get(name) if isinstance(name, str) else None
    return [] if spec is None else [f.name for f in fields_of(spec.fields) if f.kind == "path"]


def _recipe(chosen: list[Variant], values: dict):
    for variant in reversed(chosen):
        if variant.build is not None:
            return variant.build(values)
    raise ValueError(f"environment kind {values['kind']!r} declares no build function")


class EnvInfo:
    """What validation knows of an environment before it is built: its shape, whether it has
    correct answers and whether its rewards are binary. A deterministic environment is built
    (which validates it: the constructors check their arrays); a random one is not: its shape is
    declared or found by ``jax.eval_shape``."""

    def __init__(self, values: dict, chosen: list[Variant]):
        self.values, self.chosen = values, chosen  # both filled in as the table is read

    @property
    def kind(self) -> EnvKind:
        return KINDS[self.values["kind"]]

    @functools.cached_property
    def recipe(self):
        return _recipe(self.chosen, self.values)

    @functools.cached_property
    def env(self) -> Environment:
        """The environment, or for a ``Draw`` its abstract value (shapes only)."""
        recipe = self.recipe
        if isinstance(recipe, Draw):
            return jax.eval_shape(_with_arrays(recipe.fn, recipe.kwargs), jax.random.PRNGKey(0))
        return recipe

    @property
    def shape(self) -> tuple[int, int]:
        """``(num_states, num_actions)``."""
        for variant in reversed(self.chosen):
            if variant.shape is not None:
                return variant.shape(self.values)
        return self.env.num_states, self.env.num_actions

    @property
    def num_states(self) -> int:
        return self.shape[0]

    @property
    def num_actions(self) -> int:
        return self.shape[1]

    @property
    def correct_answers(self) -> bool:
        return self.env.correct_answers

    @property
    def binary(self) -> bool | None:
        """Whether every reward is 0 or 1; None when only the drawn environments can tell."""
        for variant in reversed(self.chosen):
            if variant.binary is not None:
                return variant.binary(self.values) if callable(variant.binary) else variant.binary
        return None if isinstance(self.recipe, Draw) else self.env.binary_rewards()


def build(cfg: Mapping, env_keys: Array, shared_key: Array, *, samples: bool = False
          ) -> tuple[Any, bool]:
    """``(env, per_seed)`` from a resolved ``[env]`` table: the chosen alternative's build, its
    draws vmapped over the seeds' keys (``env_keys: [N, 2]``) unless shared."""
    values = _plain(cfg)
    spec = KINDS[values["kind"]]
    recipe = _recipe(select(schema(), values), values)
    per_seed = isinstance(recipe, Draw) and not recipe.shared
    if isinstance(recipe, Draw) and recipe.shared:
        env = _with_arrays(recipe.fn, recipe.kwargs)(shared_key)
    elif per_seed:
        env = over_keys(recipe.fn, _hashable(recipe.kwargs))(env_keys)
    else:
        env = recipe
    if not isinstance(env, Environment):
        raise TypeError(f"environment kind {spec.name!r} built a {type(env).__name__}, which does "
                        f"not implement entropy_sim.envs.Environment")
    if spec.prepare is not None:
        env = spec.prepare(env, values, samples)
    return env, per_seed


def _with_arrays(fn, kwargs: dict):
    """``key -> fn(key, **kwargs)`` with list-valued arguments (``rho``) as arrays."""
    kwargs = {k: jnp.asarray(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}
    return lambda key: fn(key, **kwargs)


@functools.lru_cache(maxsize=64)
def over_keys(fn, kwargs: tuple):
    """``fn`` vmapped over keys and jitted for one call (``one_shot_jit``), cached: a new run with
    the same settings reuses it. ``kwargs``: sorted ``(name, value)`` pairs, lists as tuples."""
    return one_shot_jit(jax.vmap(_with_arrays(fn, dict(kwargs))))


def one_shot_jit(fn):
    """``jax.jit(fn)`` for a program that runs once per run (draws of environments, initial
    policies and keys), compiled on a CPU at XLA's backend optimisation level 1 instead of the
    default 3: a fifth of the compile time (a vmapped Gaussian draw: 1.0 s to 0.2 s on the 2-core
    test machine) and the same bits, where the default level only pays off in the long loop of
    steps (``runner.compiled_chunk`` keeps it: level 1 runs GRPO's step 1.4x slower)."""
    @functools.cache
    def compiled():  # built at the first call: asking for the backend starts it
        cpu = jax.default_backend() == "cpu"
        return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 1} if cpu else None)

    return functools.wraps(fn)(lambda *args: compiled()(*args))


def _hashable(kwargs: dict) -> tuple:
    freeze = lambda v: tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return tuple(sorted((k, freeze(v)) for k, v in kwargs.items()))


def _plain(value):
    """A frozen config (mappings, tuples) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
