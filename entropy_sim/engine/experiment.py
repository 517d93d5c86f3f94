"""From a validated ``Config`` to the arrays a run needs: environments, initial logits, the grid.

Random streams: ``PRNGKey(seed)`` is split by ``fold_in`` into one key per seed index ``n`` (and one
for environments shared by all seeds); seed ``n`` then folds in 0 for its environment, 1 for its
initial policy and 2 for its update samples. Seed ``n`` therefore gets the same environment, start
and samples whatever the number of seeds, the grid or the chunking, and every grid point sees the
same seeds (common random numbers).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from entropy_sim import envs, policies
from entropy_sim.config import Config
from entropy_sim.envs.registry import one_shot_jit
from entropy_sim.envs.registry import over_keys as _over_keys  # noqa: F401  (tests clear its cache)
from entropy_sim.rules.registry import RULES, RuleSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built from a config.

    Attributes:
      config: the resolved config.
      env: the environment; leaves carry a leading seed axis ``[N, ...]`` when ``env_per_seed``.
      env_per_seed: whether each seed has its own environment.
      theta0: initial logits, ``[N, S, A]``.
      keys: per-seed keys for the update samples, ``[N, 2]``.
      hparams: every hyperparameter of the rule as a ``[G]`` array (G grid points).
      swept: for each grid point, the values of the swept hyperparameters.
      rule: the update rule.
      options: the rule's static options (batch sizes, baseline...).
    """

    config: Config
    env: Any
    env_per_seed: bool
    theta0: Array
    keys: Array
    hparams: dict[str, Array]
    swept: list[dict]
    rule: RuleSpec
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def num_seeds(self) -> int:
        return self.theta0.shape[0]

    @property
    def num_grid(self) -> int:
        return len(self.swept)

    @property
    def dtype(self):
        return jnp.dtype(self.config["dtype"])


def precision(dtype: str):
    """A context in which JAX's x64 mode is on for a float64 run and off for a float32 one, and
    the caller's setting is restored after: a float64 run does not switch x64 on for the rest of
    the process, and a float32 run gives the same numbers whether or not the process (a notebook,
    a test module) turned it on. (Under x64, JAX's random draws without an explicit dtype are made
    in float64: a Gaussian start would be another start.)"""
    return jax.enable_x64(dtype == "float64")


def seed_keys(seed: int, num_seeds: int) -> tuple[Array, Array]:
    """``([N, 2] per-seed keys, shared key)`` derived from the master seed."""
    return _seed_keys(num_seeds)(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=16)
def _seed_keys(num_seeds: int):
    """Threefry's integer arithmetic: the bits of JAX's eager ``PRNGKey`` and ``fold_in``, in one
    program compiled once per seed count (eagerly, every call compiles three)."""
    def keys(master):
        per_seed = jax.vmap(lambda n: jax.random.fold_in(jax.random.fold_in(master, 0), n))(
            jnp.arange(num_seeds))
        return per_seed, jax.random.fold_in(master, 1)
    return one_shot_jit(keys)


def build(config: Config) -> Experiment:
    """Build the environments, initial logits and hyperparameter grid of ``config``: the
    environment by its kind's build function, the initial policy by its ``init``'s (both chosen
    from the same declarations that validated the config), under the run's ``precision``."""
    with precision(config["dtype"]):
        return _build(config)


def _build(config: Config) -> Experiment:
    dtype = jnp.dtype(config["dtype"])
    keys, shared_key = seed_keys(config["seed"], config["seeds"])
    sub = lambda i: _fold_each(keys, jnp.asarray(i, jnp.uint32))  # noqa: E731
    rule = RULES[config["algo"]["name"]]
    options = {o.name: config["algo"][o.name] for o in rule.options}
    samples = rule.sampled or bool(options.get("batch"))
    env, per_seed = envs.build(config["env"], sub(0), shared_key, samples=samples)
    env = _cast(env, dtype)
    one = jax.tree.map(lambda x: x[0], env) if per_seed else env
    start = policies.Start(env, per_seed, sub(1), one.num_states, one.num_actions)
    theta0 = policies.INITS[config["policy"]["init"]].build(config["policy"], start)
    hparams, swept = config.grid()
    return Experiment(config=config, env=env, env_per_seed=per_seed, theta0=theta0.astype(dtype),
                      keys=sub(2), hparams={k: jnp.asarray(v, dtype) for k, v in hparams.items()},
                      swept=swept, rule=rule, options=options)


def _fold_each(keys: Array, i: Array) -> Array:
    """``fold_in(key, i)`` for every key. ``[N, 2] -> [N, 2]``."""
    return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)


_fold_each = one_shot_jit(_fold_each)


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)
