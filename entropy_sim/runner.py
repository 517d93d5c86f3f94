"""The run loop: ``jit`` of a ``lax.scan`` over steps of an update vmapped over seeds and the grid.

Layout of every batched array: ``[G, N, ...]`` (grid point, seed). One compiled chunk function
serves any hyperparameter values (they are traced arrays) and any chunk offset (the first step is
a traced argument), so a run compiles once per chunk length. Long runs go chunk by chunk: memory
holds one chunk of metrics, a progress bar advances per chunk, and the result does not depend on
the chunk size because the samples of step ``t`` use ``fold_in(seed key, t)``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from entropy_sim.diagnostics import NAN_ALLOWED, pass_at_k, step_metrics
from entropy_sim.envs.base import Evaluation
from entropy_sim.experiment import Experiment
from entropy_sim.algorithms import RULES
from entropy_sim.optim import make_optimizer

Array = jax.Array

# Target size of the metrics one chunk brings back to the host.
CHUNK_BYTES = 256 * 2 ** 20


class RunState(NamedTuple):
    """The carry of one seed at one grid point."""

    theta: Array     # [S, A] logits of pi_k
    opt_state: Any   # optax state
    ev: Evaluation   # exact evaluation of pi_k, reused as pi_{k+1}'s is computed once per step
    key: Array       # [2] this seed's key for update samples


class NonFiniteError(FloatingPointError):
    """A logit or metric became NaN or infinite; names where it happened."""


def init_state(theta: Array, env, hp: dict, key: Array, *, opt_name: str) -> RunState:
    """The carry before step 0 (unbatched)."""
    opt = make_optimizer(opt_name, hp)
    return RunState(theta, opt.init(theta), env.evaluate(theta, hp.get("tau", 0.0)), key)


def step(state: RunState, env, hp: dict, t: Array, *, rule: str, opt_name: str,
         pass_at: tuple[int, ...], options: tuple = ()) -> tuple[RunState, dict[str, Array]]:
    """One update ``pi_t -> pi_{t+1}`` of one seed at one grid point, and its diagnostics row."""
    opt = make_optimizer(opt_name, hp)
    tau = hp.get("tau", 0.0)
    theta_next, opt_state, info = RULES[rule].fn(
        state.theta, state.opt_state, state.ev, env, hp, jax.random.fold_in(state.key, t), opt,
        **dict(options))
    ev_next = env.evaluate(theta_next, tau)
    metrics = step_metrics(state.ev, ev_next, theta_next - state.theta)
    metrics.update(info)
    if opt_name != "sgd":  # the T4 closed forms describe the plain gradient step only
        metrics["dH_pred_closed"] = jnp.full_like(metrics["dH_pred_closed"], jnp.nan)
    if "tau" in hp:
        metrics["return_reg"] = state.ev.ret_reg
    if pass_at:
        metrics.update(pass_at_k(state.ev.success, env.rho, pass_at))
    return RunState(theta_next, opt_state, ev_next, state.key), metrics


def _over_grid_and_seeds(fn, env_axis):
    """``fn(state, env, hp, t)`` batched to states ``[G, N, ...]``, hp ``[G]``."""
    over_seeds = jax.vmap(fn, in_axes=(0, env_axis, None, None))
    return jax.vmap(over_seeds, in_axes=(0, None, 0, None))


@functools.lru_cache(maxsize=None)
def compiled_init(opt_name: str, env_per_seed: bool):
    """``(theta0 [N,S,A], env, hp [G], keys [N,2]) -> RunState [G, N, ...]``, jitted."""
    fn = functools.partial(init_state, opt_name=opt_name)
    over_seeds = jax.vmap(fn, in_axes=(0, 0 if env_per_seed else None, None, 0))
    return jax.jit(jax.vmap(over_seeds, in_axes=(None, None, 0, None)))


@functools.lru_cache(maxsize=None)
def compiled_chunk(rule: str, opt_name: str, pass_at: tuple[int, ...], env_per_seed: bool,
                   length: int, log_every: int, options: tuple = ()):
    """The jitted chunk ``(state, env, hp, t0) -> (state, metrics)``: ``length`` steps from step
    ``t0``, logging every ``log_every``-th; metrics are ``{name: [G, N, length // log_every]}``.
    ``options``: the rule's static options as sorted ``(name, value)`` pairs."""
    one = functools.partial(step, rule=rule, opt_name=opt_name, pass_at=pass_at, options=options)
    batched = _over_grid_and_seeds(one, 0 if env_per_seed else None)

    def chunk(state, env, hp, t0):
        def logged(state, t):
            state, metrics = batched(state, env, hp, t)
            # The remaining steps of the stride; their unused metrics are dead code for XLA.
            state = jax.lax.fori_loop(1, log_every, lambda i, s: batched(s, env, hp, t + i)[0], state)
            return state, metrics
        state, metrics = jax.lax.scan(logged, state, t0 + log_every * jnp.arange(length // log_every))
        return state, jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), metrics)

    return jax.jit(chunk, donate_argnums=0)


def plan_chunks(steps: int, log_every: int, chunk_steps: int, bytes_per_step: int) -> list[tuple[int, int]]:
    """``[(first step, length)]`` covering ``steps``; lengths are multiples of ``log_every``.
    Automatic size (``chunk_steps = 0``): at most ``CHUNK_BYTES`` of metrics per chunk and at most
    ~50 chunks' worth of progress granularity; equal chunks but for the last."""
    if chunk_steps <= 0:
        chunk_steps = max(1, CHUNK_BYTES // max(bytes_per_step, 1))
        chunk_steps = max(chunk_steps, -(-steps // 50)) if steps > 50 else steps
        chunk_steps = min(chunk_steps, steps)
        count = -(-steps // chunk_steps)
        chunk_steps = -(-steps // count)
    chunk_steps = max(log_every, chunk_steps // log_every * log_every)
    return [(t0, min(chunk_steps, steps - t0)) for t0 in range(0, steps, chunk_steps)]


def run_arrays(exp: Experiment, *, progress: bool = True) -> tuple[dict[str, np.ndarray], RunState]:
    """Run ``exp``; return metrics ``{name: [G, N, T_logged]}`` (numpy) and the final state."""
    cfg = exp.config
    opt_name = cfg["algo"]["optimizer"]
    pass_at = tuple(cfg["pass_at"]) if _binary_rewards(exp) else ()
    state = compiled_init(opt_name, exp.env_per_seed)(exp.theta0, exp.env, exp.hparams, exp.keys)
    steps, log_every = cfg["steps"], cfg["log_every"]
    per_step = 4 * 24 * exp.num_grid * exp.num_seeds // log_every
    chunks = plan_chunks(steps, log_every, cfg["chunk_steps"], per_step)
    bar = _progress(steps, exp, progress and len(chunks) > 1)
    out: dict[str, np.ndarray] = {}
    for t0, length in chunks:
        fn = compiled_chunk(exp.rule.name, opt_name, pass_at, exp.env_per_seed, length, log_every,
                            tuple(sorted(exp.options.items())))
        state, metrics = fn(state, exp.env, exp.hparams, jnp.asarray(t0, jnp.int32))
        metrics = jax.device_get(metrics)
        check_finite(metrics, t0, log_every, exp)
        if len(chunks) == 1:
            out = metrics
        for name, values in metrics.items() if len(chunks) > 1 else ():
            if name not in out:
                out[name] = np.empty(values.shape[:2] + (steps // log_every,), values.dtype)
            out[name][:, :, t0 // log_every:(t0 + length) // log_every] = values
        bar.update(length)
    bar.close()
    return out, state


def check_finite(metrics: dict[str, np.ndarray], t0: int, log_every: int, exp: Experiment) -> None:
    """Raise ``NonFiniteError`` at the earliest NaN or infinite metric, naming grid point, seed,
    step and the metrics affected. ``metrics: {name: [G, N, T]}``."""
    checked = {k: v for k, v in metrics.items() if k not in NAN_ALLOWED}
    bad = np.zeros(next(iter(checked.values())).shape, bool)
    for values in checked.values():
        bad |= ~np.isfinite(values)
    if not bad.any():
        return
    idx = np.argwhere(bad)
    g, n, t = (int(i) for i in idx[np.argmin(idx[:, 2])])
    names = ", ".join(f"{k} = {v[g, n, t]}" for k, v in checked.items() if not np.isfinite(v[g, n, t]))
    where = ", ".join(f"{k}={v}" for k, v in exp.swept[g].items()) or "the only grid point"
    raise NonFiniteError(f"non-finite values at step {t0 + t * log_every}, seed {n}, grid point {g} "
                         f"({where}): {names}; the logits may have overflowed (try a smaller eta "
                         f"or dtype = \"float64\")")


def _binary_rewards(exp: Experiment) -> bool:
    """pass@k is defined when every reward of a bandit or token tree is 0 or 1."""
    if not hasattr(exp.env, "rho"):
        return False
    rewards = exp.env.r if hasattr(exp.env, "r") else exp.env.reward
    return bool(jnp.all((rewards == 0) | (rewards == 1)))


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(steps: int, exp: Experiment, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    label = exp.config["name"] or exp.rule.name
    return tqdm(total=steps, desc=label, unit="step", leave=False)
