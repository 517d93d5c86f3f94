"""Exact (expected-gradient) update rules for tabular softmax policies. THEORY.md sections 3 and 4.

Each rule is one pure, unbatched function

    rule(theta, opt_state, ev, env, hp, key, opt) -> (theta_next, opt_state_next, info)

with ``theta: [S, A]`` logits, ``ev`` the exact ``Evaluation`` of ``softmax(theta)``, ``hp`` a dict of
scalar hyperparameter arrays (``eta``, ``tau``, ``temp``...), and ``opt`` the optax transformation
that turns the rule's ascent direction into the logit change ``dz``. With ``sgd`` at learning rate
``eta`` the step is ``dz = eta * direction``, the textbook rule, and ``info["dH_pred_closed"]`` is
the rule's T4 closed form aggregated as ``sum_s d(s) dH(s)``. Under any other optimiser the
closed form does not describe the step; the runner reports it as NaN.
The runner vmaps rules over seeds and over the hyperparameter grid.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from entropy_sim import softmax
from entropy_sim.envs.base import Evaluation

Array = jax.Array

OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, hp: dict) -> optax.GradientTransformation:
    """The optax transformation ``name`` with learning rate ``hp["eta"]`` (a traced array, so a
    new value never recompiles). Rules hand it ``-direction``: optax minimises."""
    if name == "sgd":
        return optax.sgd(hp["eta"])
    if name == "adam":
        return optax.adam(hp["eta"])
    raise ValueError(f"unknown optimizer {name!r}")


def apply_direction(opt: optax.GradientTransformation, theta: Array, opt_state, direction: Array):
    """One optimiser step along the ascent ``direction``. ``[S, A] -> [S, A]``."""
    updates, opt_state = opt.update(-direction, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state


def _finish(opt, theta, opt_state, direction, closed_s, ev, extra=None):
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
    closed_s = -hp["eta"] * weight * softmax.cov(ev.pi, ev.log_pi, ev.pi * ev.adv)
    return _finish(opt, theta, opt_state, direction, closed_s, ev)


def npg(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """Natural policy gradient, seed convention ``dz[s, a] = eta * A_tau(s, a)`` (Cen et al. 2021
    with ``tau > 0``; Agarwal et al.'s ``eta'`` is ``eta (1 - gamma)``).

    Closed form (T4): ``-eta Cov(log pi, A)``; with ``tau > 0``
    ``-eta [Cov(log pi, Q_tau) - tau Var(log pi)]``.
    """
    direction = ev.adv
    tau = hp.get("tau", 0.0)
    closed_s = -hp["eta"] * (softmax.cov(ev.pi, ev.log_pi, ev.q) - tau * softmax.var(ev.pi, ev.log_pi))
    return _finish(opt, theta, opt_state, direction, closed_s, ev)


def temp_reinforce(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """Temperature-guided REINFORCE in expectation (AEPO Assumption 4.2): responses drawn from
    ``pi_T = softmax(theta / T)``, score function at ``T = 1``, no importance correction:

        dz[s, a] = eta * horizon * d_T(s) * sum_b pi_T(b|s) Q_T(s, b) (1[a = b] - pi(a|s)),

    with ``d_T, Q_T`` the occupancy and values of ``pi_T`` (in a bandit ``d_T = rho``,
    ``Q_T = r``; for binary rewards the sum runs over the correct answers ``A*(s)``). At ``T = 1``
    this is exactly ``pg``. Closed form (T4):
    ``-eta h d_T(s) sum_b pi_T(b|s) Q_T(s, b) Cov_pi(theta, 1[. = b] - pi)``.
    """
    temp = hp["temp"]
    ev_t = env.evaluate(theta / temp, 0.0)
    weight = env.horizon * ev_t.occ  # [S]
    w_b = ev_t.pi * ev_t.q  # [S, B]  pi_T(b|s) Q_T(s, b)
    direction = weight[:, None] * (w_b - ev.pi * jnp.sum(w_b, axis=-1, keepdims=True))
    # Cov_pi(theta, 1[.=b] - pi) = pi_b (theta_b - E_pi theta) - Cov_pi(theta, pi), for every b.
    centred = theta - softmax.mean(ev.pi, theta)[:, None]
    cov_b = ev.pi * centred - softmax.cov(ev.pi, theta, ev.pi)[:, None]  # [S, B]
    closed_s = -hp["eta"] * weight * jnp.sum(w_b * cov_b, axis=-1)
    extra = {"temp_used": jnp.asarray(temp, theta.dtype)}
    return _finish(opt, theta, opt_state, direction, closed_s, ev, extra)


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """An update rule and the hyperparameters it takes (name -> default; None = required)."""

    name: str
    fn: Callable
    hparams: dict
    summary: str
    info: tuple = ()  # extra per-step columns the rule logs


RULES = {
    "pg": RuleSpec("pg", pg, {"eta": None},
                   "softmax policy gradient, dz = eta h d pi A"),
    "npg": RuleSpec("npg", npg, {"eta": None},
                    "natural policy gradient, dz = eta A"),
    "pg_entropy": RuleSpec("pg_entropy", pg, {"eta": None, "tau": None},
                           "entropy-regularised PG (Mei et al.), dz = eta h d pi A_tau"),
    "npg_entropy": RuleSpec("npg_entropy", npg, {"eta": None, "tau": None},
                            "entropy-regularised NPG (Cen et al.), dz = eta A_tau"),
    "temp_reinforce": RuleSpec("temp_reinforce", temp_reinforce, {"eta": None, "temp": 1.0},
                               "REINFORCE on samples at temperature T, in expectation",
                               info=("temp_used",)),
}
