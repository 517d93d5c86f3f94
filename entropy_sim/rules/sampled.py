"""Sampled update rules of the REINFORCE type: REINFORCE and stochastic NPG. (The GRPO family is
chained from pieces in ``entropy_sim.objectives``.)

Same signature as the exact rules (``exact.py``); the static options (``batch``, ``baseline``)
fix the shapes. Samples come from ``env.sample`` (inverse-CDF draws,
``sampling.py``) and enter an update only through per-token weights, so a step costs
``O(tokens + S A)``; REINFORCE-type rules on a plain bandit read the same draws as counts and
reward sums per arm (``env.tally``, through ``sampling.response_table``). docs/theory.md §4 and §5
give the formulas and the expected steps; the choices the papers leave open are stated in each
docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropy_sim import softmax
from entropy_sim.envs.base import Evaluation
from entropy_sim.rules.exact import finish, pg_closed
from entropy_sim.sampling import response_table, score_from_table

Array = jax.Array


def reinforce(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, batch: int, baseline: str):
    """REINFORCE on ``batch`` sampled responses (contexts from ``rho``, actions from ``pi``; MDP
    rollouts; token-tree sequences):

        direction = (1/B) sum_i sum_t (gamma^t G_t - b_t) grad log pi(a_t | s_t),

    with baseline ``b_t``: ``none`` (0); ``mean``, the batch mean of ``gamma^t G_t`` (the sample's own
    return included, so the expected step is ``(1 - 1/B)`` times the gradient); ``loo``, the mean of
    the other ``B - 1`` samples (unbiased); ``value``, the exact ``gamma^t V(s_t)`` (unbiased).
    The expectation is ``pg``'s direction, so ``dH_pred_closed`` is ``pg``'s closed form (times
    ``1 - 1/B`` for ``mean``); ``dH_pred_cov`` uses this step's own ``dz``.
    """
    table, mean_reward = response_table(env, key, theta, ev.pi, batch, baseline, ev.v)
    direction = score_from_table(table, ev.pi) / batch
    factor = 1.0 - 1.0 / batch if baseline == "mean" else 1.0
    extra = {"batch_reward": mean_reward}
    return finish(opt, theta, opt_state, direction, factor * pg_closed(ev, env, hp["eta"]), ev, extra)


def sampled_npg(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, batch: int, baseline: str):
    """Stochastic natural policy gradient with on-policy importance-weighted estimates (Mei et al.
    2021, Chung et al. 2021): with ``N[s, a] = (1/B) sum_i sum_t (gamma^t G_t - b_t) 1[(s_t, a_t) =
    (s, a)]`` over ``batch`` sampled responses,

        dz[s, a] = eta * N[s, a] / (h d(s) pi(a|s)),

    an unbiased estimate of ``eta (Q(s, a) - b(s))``: NPG's step up to a per-state constant, which
    leaves the policy unchanged. Only visited pairs move, and a rarely drawn action moves a lot;
    without a baseline every reward is positive, so the drawn action always gains. ``baseline`` as
    in ``reinforce``. ``dH_pred_closed`` is NPG's ``-eta Cov(log pi, A)`` (times ``1 - 1/B`` for
    ``mean``). Pairs with ``d(s) pi(a|s) = 0`` are never visited and do not move.
    """
    table, mean_reward = response_table(env, key, theta, ev.pi, batch, baseline, ev.v)
    table = table / batch
    scale = env.horizon * ev.occ[:, None] * ev.pi
    direction = jnp.where(scale > 0, table / jnp.where(scale > 0, scale, 1.0), 0.0)
    factor = 1.0 - 1.0 / batch if baseline == "mean" else 1.0
    closed_s = -factor * hp["eta"] * softmax.cov(ev.pi, ev.log_pi, ev.adv)
    extra = {"batch_reward": mean_reward}
    return finish(opt, theta, opt_state, direction, closed_s, ev, extra)
