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
import numpy as np

from entropy_sim import envs, policies
from entropy_sim.config import Config
from entropy_sim.algorithms import RULES, RuleSpec

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


def enable_dtype(dtype: str) -> None:
    """float64 needs JAX's x64 mode, which is process-wide; float32 works either way."""
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def seed_keys(seed: int, num_seeds: int) -> tuple[Array, Array]:
    """``([N, 2] per-seed keys, shared key)`` derived from the master seed."""
    master = jax.random.PRNGKey(seed)
    per_seed = jax.vmap(lambda n: jax.random.fold_in(jax.random.fold_in(master, 0), n))(
        jnp.arange(num_seeds))
    return per_seed, jax.random.fold_in(master, 1)


def build(config: Config) -> Experiment:
    """Build the environments, initial logits and hyperparameter grid of ``config``."""
    enable_dtype(config["dtype"])
    dtype = jnp.dtype(config["dtype"])
    keys, shared_key = seed_keys(config["seed"], config["seeds"])
    sub = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)  # noqa: E731
    env, per_seed = _build_env(config["env"], sub(0), shared_key)
    env = _cast(env, dtype)
    rule = RULES[config["algo"]["name"]]
    options = {o.name: config["algo"][o.name] for o in rule.options}
    if config["env"]["kind"] == "mdp" and (rule.sampled or options.get("batch")):
        # Static (it fixes the rollout's shape): set only where something samples, so exact
        # rules on MDPs that differ only in gamma share one compiled program.
        env = dataclasses.replace(env, rollout_length=config["env"]["rollout_length"])
    theta0 = _build_policy(config["policy"], env, per_seed, sub(1), config["seeds"])
    hparams, swept = config.grid()
    return Experiment(config=config, env=env, env_per_seed=per_seed, theta0=theta0.astype(dtype),
                      keys=sub(2), hparams={k: jnp.asarray(v, dtype) for k, v in hparams.items()},
                      swept=swept, rule=rule, options=options)


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def _build_env(cfg, env_keys: Array, shared_key: Array):
    """``(env, per_seed)``; random generators are vmapped over the seeds' keys unless shared."""
    kind = cfg["kind"]
    gen = None
    if kind == "bandit" and "means" in cfg:
        return envs.bandit(list(cfg["means"]), noise=cfg["noise"], noise_std=cfg["noise_std"]), False
    if kind == "contextual_bandit" and "r" in cfg:
        rho = None if cfg["rho"] is None else list(cfg["rho"])
        return envs.contextual_bandit(_lists(cfg["r"]), rho, noise=cfg["noise"],
                                      noise_std=cfg["noise_std"]), False
    if kind in ("bandit", "contextual_bandit"):
        params = {k: cfg[k] for k in ("low", "high", "p", "loc", "scale", "num_correct") if k in cfg}
        gen = (envs.random_bandit, dict(
            arms=cfg["arms"] if kind == "bandit" else cfg["actions"],
            generator=cfg["generator"], contexts=cfg.get("contexts", 1), rho=cfg.get("rho"),
            noise=cfg["noise"], noise_std=cfg["noise_std"], **params))
    elif kind == "mdp":
        if "P" in cfg:
            return envs.mdp(_lists(cfg["P"]), _lists(cfg["r"]), cfg["gamma"],
                            None if cfg["mu"] is None else list(cfg["mu"])), False
        if "path" in cfg:
            return envs.load_npz(cfg["path"]), False
        if cfg["generator"] == "chain":
            return envs.chain(cfg["states"], cfg["actions"], cfg["gamma"], cfg["distractor"]), False
        if cfg["generator"] == "gridworld":
            return envs.gridworld(cfg["size"], cfg["gamma"], cfg["slip"]), False
        gen = (envs.garnet, dict(states=cfg["states"], actions=cfg["actions"],
                                 branching=cfg["branching"], gamma=cfg["gamma"]))
    elif kind == "token_tree":
        if "answers" in cfg:
            rho = None if cfg["rho"] is None else list(cfg["rho"])
            return envs.token_tree(cfg["vocab"], cfg["length"], _lists(cfg["answers"]), rho), False
        gen = (envs.random_token_tree, dict(vocab=cfg["vocab"], length=cfg["length"],
                                            prompts=cfg["prompts"], num_correct=cfg["num_correct"],
                                            rho=cfg.get("rho")))
    fn, kwargs = gen
    if cfg["shared"]:
        return _with_arrays(fn, kwargs)(shared_key), False
    return _over_keys(fn, tuple(sorted(kwargs.items())))(env_keys), True


def _with_arrays(fn, kwargs: dict):
    """``key -> fn(key, **kwargs)`` with list-valued arguments (``rho``) as arrays."""
    kwargs = {k: jnp.asarray(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}
    return lambda key: fn(key, **kwargs)


@functools.lru_cache(maxsize=64)
def _over_keys(fn, kwargs: tuple):
    """``fn`` vmapped over keys and jitted, cached: a new run with the same settings reuses it."""
    return jax.jit(jax.vmap(_with_arrays(fn, dict(kwargs))))


def _build_policy(cfg, env, per_seed: bool, keys: Array, num_seeds: int) -> Array:
    """Initial logits ``[N, S, A]``."""
    one = jax.tree.map(lambda x: x[0], env) if per_seed else env
    num_states, num_actions = one.num_states, one.num_actions
    init = cfg["init"]
    if init == "uniform":
        theta = policies.uniform(num_states, num_actions)
    elif init == "probs":
        theta = policies.from_probs(jnp.asarray(np.asarray(cfg["probs"])), num_states)
    elif init == "logits":
        theta = policies.from_logits(jnp.asarray(np.asarray(cfg["logits"])), num_states)
    elif init == "gaussian":
        return _over_keys(policies.gaussian, (("num_actions", num_actions),
                                              ("num_states", num_states), ("scale", cfg["scale"])))(keys)
    else:  # prior
        mass = cfg.get("correct_mass")
        if mass is None:
            return jax.vmap(lambda k: policies.prior(k, num_states, num_actions, cfg["peak"]))(keys)
        draw = lambda k, e: policies.prior(k, num_states, num_actions, cfg["peak"],  # noqa: E731
                                           e.correct_mask(), mass)
        return jax.vmap(draw, in_axes=(0, 0 if per_seed else None))(keys, env)
    return jnp.broadcast_to(theta, (num_seeds, num_states, num_actions))


def _lists(value):
    """Nested tuples (a frozen config) back to nested lists."""
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value
