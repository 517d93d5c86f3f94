"""Exact (expected-gradient) update rules for tabular softmax policies. docs/theory.md §3, §4.

Each rule (exact here, REINFORCE-type in ``sampled.py``, the GRPO family chained from pieces in
``objectives.py``) is one pure, unbatched function

    rule(theta, opt_state, ev, env, hp, key, opt, **options) -> (theta_next, opt_state_next, info)

with ``theta: [S, A]`` logits, ``ev`` the exact ``Evaluation`` of ``softmax(theta)``, ``hp`` a dict of
scalar hyperparameter arrays (``eta``, ``tau``, ``temp``...), and ``opt`` the optax transformation
that turns the rule's ascent direction into the logit change ``dz``; ``options`` are static
settings such as batch sizes (a new value compiles anew; a new ``hp`` value does not). With ``sgd`` at learning rate
``eta`` the step is ``dz = eta * direction``, the textbook rule, and ``info["dH_pred_closed"]`` is
the rule's T4 closed form aggregated as ``sum_s d(s) dH(s)``. Under any other optimiser the
closed form does not describe the step; the runner reports it as NaN.
The runner vmaps rules over seeds and over the hyperparameter grid. ``algorithms.py`` registers
each rule with its declarations (``parts.RuleSpec``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropy_sim import softmax
from entropy_sim.diagnostics import temperature_law
from entropy_sim.envs.base import Evaluation
from entropy_sim.optim import OPTIMIZERS, apply_direction, make_optimizer  # noqa: F401 (re-exported)
from entropy_sim.sampling import response_table, score_from_table

Array = jax.Array


def finish(opt, theta, opt_state, direction, closed_s, ev, extra=None):
    """Apply the step; aggregate the per-state closed form as ``sum_s d(s) dH(s)``."""
    theta_next, opt_state = apply_direction(opt, theta, opt_state, direction)
    info = {"dH_pred_closed": jnp.sum(ev.occ * closed_s)}
    info.update(extra or {})
    return theta_next, opt_state, info


def pg(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """Softmax policy gradient ascent on ``J`` (``J_tau`` with ``tau > 0``, Mei et al. 2020):

        dz[s, a] = eta * horizon * d(s) * pi(a|s) * A_tau(s, a),

    ``horizon = 1/(1 - gamma)`` for an MDP, ``L`` for the token tree, 1 for bandits. This is the
    exact gradient ``dJ_tau/dtheta``. Closed form (T4): ``-eta h d(s) Cov(log pi, pi * A_tau)``.
    """
    weight = env.horizon * ev.occ  # [S]
    direction = weight[:, None] * ev.pi * ev.adv
    return finish(opt, theta, opt_state, direction, pg_closed(ev, env, hp["eta"]), ev)


def pg_closed(ev: Evaluation, env, eta: Array) -> Array:
    """T4 for PG, per state: ``-eta h d(s) Cov(log pi, pi * A_tau)``. ``[S]``."""
    return -eta * env.horizon * ev.occ * softmax.cov(ev.pi, ev.log_pi, ev.pi * ev.adv)


def npg(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """Natural policy gradient in the project's convention (docs/theory.md §3.7),
    ``dz[s, a] = eta * A_tau(s, a)`` (Cen et al. 2021 with ``tau > 0``; Agarwal et al.'s ``eta'`` is
    ``eta (1 - gamma)``).

    Closed form (T4): ``-eta Cov(log pi, A)``; with ``tau > 0``
    ``-eta [Cov(log pi, Q_tau) - tau Var(log pi)]``.
    """
    direction = ev.adv
    tau = hp.get("tau", 0.0)
    closed_s = -hp["eta"] * (softmax.cov(ev.pi, ev.log_pi, ev.q) - tau * softmax.var(ev.pi, ev.log_pi))
    return finish(opt, theta, opt_state, direction, closed_s, ev)


def temp_reinforce(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, batch: int = 0):
    """Temperature-guided REINFORCE (Assumption 4.2 of the AEPO paper, docs/theory.md §4.1):
    responses drawn from ``pi_T = softmax(theta / T)``, score function at ``T = 1``, no importance
    correction.

    With ``batch = 0`` the step is its expectation,

        dz[s, a] = eta * horizon * d_T(s) * sum_b pi_T(b|s) Q_T(s, b) (1[a = b] - pi(a|s)),

    with ``d_T, Q_T`` the occupancy and values of ``pi_T`` (in a bandit ``d_T = rho``,
    ``Q_T = r``; for binary rewards the sum runs over the correct answers ``A*(s)``); at ``T = 1``
    it is exactly ``pg``. With ``batch = B`` it is the average of ``R grad log pi`` over ``B``
    responses sampled at temperature ``T``, whose expectation is the step above. Closed form (T4):
    ``-eta h d_T(s) sum_b pi_T(b|s) Q_T(s, b) Cov_pi(theta, 1[. = b] - pi)``. Also logs
    Theorem 4.3's quantities (``diagnostics.temperature_law``).
    """
    temp = hp["temp"]
    ev_t = env.evaluate(theta / temp, 0.0)
    weight = env.horizon * ev_t.occ  # [S]
    w_b = ev_t.pi * ev_t.q  # [S, B]  pi_T(b|s) Q_T(s, b)
    if batch:
        table, _ = response_table(env, key, theta / temp, ev_t.pi, batch, "none", ev.v)
        direction = score_from_table(table, ev.pi) / batch
    else:
        direction = weight[:, None] * (w_b - ev.pi * jnp.sum(w_b, axis=-1, keepdims=True))
    closed_s = -hp["eta"] * weight * jnp.sum(w_b * softmax.indicator_cov(ev.pi, theta), axis=-1)
    extra = temperature_law(ev, theta, temp, hp["eta"], env.horizon)
    return finish(opt, theta, opt_state, direction, closed_s, ev, extra)
