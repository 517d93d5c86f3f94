"""Sampled update rules: REINFORCE, and GRPO with the entropy-control methods built on it.

Same signature as the exact rules (``rules.py``); the static options (``batch``, ``group``,
``epochs``, ``baseline``) fix the shapes. Samples come from ``env.sample`` (inverse-CDF draws,
``sampling.py``) and enter an update only through per-token weights, so a step costs
``O(tokens + S A)``; REINFORCE-type rules on a plain bandit read the same draws as counts and
reward sums per arm (``env.tally``, through ``sampling.response_table``). docs/theory.md §4 and §5
give the formulas and the expected steps; the choices the papers leave open are stated in each
docstring.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropy_sim import softmax
from entropy_sim.diagnostics import temperature_law
from entropy_sim.envs.base import Evaluation
from entropy_sim.optim import apply_direction
from entropy_sim.rules import finish, pg_closed
from entropy_sim.sampling import Batch, group_advantage, response_table, score_from_table

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


# ----------------------------------------------------------------------------- GRPO family

AEPO_VARIANTS = ("aepo", "aepo_t1", "aepo_adv")


class _RegBatch(NamedTuple):
    state: Array     # [M, G, L]
    action: Array    # [M, G, L]
    logp_old: Array  # [M, G, L]
    weight: Array    # [M, G, L] R (kept positives) or the group advantage


def grpo(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, batch: int, group: int,
         epochs: int, variant: str = "grpo"):
    """GRPO (Shao et al. 2024) and its entropy-control variants, ``epochs`` optimiser steps on one
    batch of ``batch`` prompts x ``group`` responses drawn from ``pi_old = pi``:

        J(theta) = mean over tokens of min(r A, clip(r, 1 - eps, 1 + eps) A),  r = pi / pi_old,

    with ``A`` the group-normalised outcome advantage (``sampling.group_advantage``); the token mean
    is GRPO's ``1/G sum_i 1/|o_i| sum_t`` since every response of an environment has the same
    length. With ``epochs = 1`` the ratio is 1 at the only gradient and clipping never acts.

    ``variant`` adds (docs/theory.md §4):

    - ``entropy_reg``: ``+ lambda * (token mean of H(pi(.|s_t)))``, differentiated through ``pi``.
    - ``entropy_adv`` (Cheng et al. 2025): ``A + min(beta H_old(s_t), |A| / kappa)`` per token.
    - ``clip_cov`` (Cui et al. 2025): among tokens that PPO's clip left alone and whose
      ``c = (log pi - mean log pi)(A - mean A)`` lies in ``(w_low, w_high)``,
      ``max(1, floor(frac N))`` chosen at random lose their gradient (as in the authors' code).
    - ``kl_cov`` (Cui et al. 2025): no ratio clipping; the ``max(1, floor(frac N))`` tokens of
      largest ``c`` get ``r A - beta |log pi - log pi_old|``. On-policy (``epochs = 1``) the
      penalty and its gradient are exactly zero: KL-Cov acts only with ``epochs > 1``.
    - ``aepo`` (AEPO, eq. 1): ``+ alpha / N * sum over the first k positive responses of a second
      batch drawn from pi_old^T of sum_t min(r R, clip(r) R)``, ``N`` GRPO's token count, ``T = temp_high``
      and ``k = pos_up`` while ``H(pi_old) < entropy_target`` (the exact entropy), else ``temp_low``
      and ``pos_down``. ``aepo_t1``: the same at ``T = 1`` (ablation eq. 2); ``aepo_adv``: the second
      batch's group advantage in place of ``R``, negative samples kept (ablation eq. 3).

    The package computes no closed form of the expected step (docs/theory.md §5.4 derives one for
    plain GRPO with binary rewards and one epoch): ``dH_pred_closed`` is NaN.
    """
    k_batch, k_reg, k_select = jax.random.split(key, 3)
    sample = env.sample(k_batch, theta, batch, group)
    adv = _per_token(group_advantage(sample.reward), sample)
    if variant == "entropy_adv":
        adv = adv + jnp.minimum(hp["beta"] * ev.ent[sample.state], jnp.abs(adv) / hp["kappa"])
    logp_old = ev.log_pi[sample.state, sample.action]
    n_tokens = sample.state.size
    info = {
        "entropy_batch": jnp.mean(ev.ent[sample.state]),
        "batch_reward": jnp.mean(sample.reward),
        "zero_adv_groups": jnp.mean(jnp.all(sample.reward == sample.reward[:, :1], axis=-1),
                                    dtype=theta.dtype),
    }
    reg = None
    if variant in AEPO_VARIANTS:
        reg, reg_info = _aepo_regulariser(theta, ev, env, hp, k_reg, batch, group, variant)
        info.update(reg_info)

    def objective(th, k):
        log_pi = jax.nn.log_softmax(th, axis=-1)
        logp = log_pi[sample.state, sample.action]
        ratio = jnp.exp(logp - logp_old)
        tokens, clipped = _ppo_clip(ratio, adv, hp.get("eps", jnp.inf))
        selected = jnp.zeros((), th.dtype)
        if variant in ("clip_cov", "kl_cov"):
            c = _centred_product(jax.lax.stop_gradient(logp), adv)
            count = jnp.maximum(1, jnp.floor(hp["frac"] * n_tokens)).astype(jnp.int32)
            if variant == "clip_cov":
                eligible = (c > hp["w_low"]) & (c < hp["w_high"]) & ~clipped
                priority = jnp.where(eligible, jax.random.uniform(k, c.shape, th.dtype), 2.0)
                chosen = eligible & (_rank(priority) < count)
                tokens = jnp.where(chosen, 0.0, tokens)
            else:
                chosen = _rank(-c) < count
                tokens = ratio * adv - jnp.where(chosen, hp["beta"] * jnp.abs(_drift(logp, logp_old)), 0.0)
                clipped = jnp.zeros_like(clipped)
            selected = jnp.sum(chosen).astype(th.dtype)
        value = jnp.mean(tokens)
        if reg is not None:
            r_logp = log_pi[reg.state, reg.action]
            r_tokens, _ = _ppo_clip(jnp.exp(r_logp - reg.logp_old), reg.weight, hp["eps"])
            value = value + hp["alpha"] * jnp.sum(r_tokens) / n_tokens
        if variant == "entropy_reg":
            ent = -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)
            value = value + hp["lambda"] * jnp.mean(ent[sample.state])
        return value, {"clip_frac": jnp.mean(clipped, dtype=th.dtype), "cov_tokens": selected}

    stats = []
    for epoch in range(epochs):
        direction, aux = jax.grad(objective, has_aux=True)(theta, jax.random.fold_in(k_select, epoch))
        theta, opt_state = apply_direction(opt, theta, opt_state, direction)
        stats.append(aux)
    info.update(jax.tree.map(lambda *x: jnp.mean(jnp.stack(x)), *stats))
    if variant not in ("clip_cov", "kl_cov"):
        del info["cov_tokens"]
    info["dH_pred_closed"] = jnp.full((), jnp.nan, theta.dtype)
    return theta, opt_state, info


def _aepo_regulariser(theta, ev, env, hp, key, batch, group, variant):
    """The second batch of AEPO and its per-token weights: ``(reg, info)`` with ``reg`` holding
    ``state, action, logp_old, weight`` (``[M, G, L]``)."""
    raising = ev.entropy < hp["entropy_target"]
    if variant == "aepo_t1":
        temp = jnp.ones((), theta.dtype)
    else:
        temp = jnp.where(raising, hp["temp_high"], hp["temp_low"])
    sample = env.sample(key, theta / temp, batch, group)
    if variant == "aepo_adv":
        weight = group_advantage(sample.reward)
        kept = jnp.ones_like(weight, bool)
    else:
        positive = sample.reward > 0
        cap = jnp.where(raising, hp["pos_up"], hp["pos_down"])
        order = jnp.cumsum(positive.ravel()).reshape(positive.shape)  # 1-based among positives
        kept = positive & (order <= cap)
        weight = jnp.where(kept, sample.reward, 0.0)
    reg = _RegBatch(sample.state, sample.action, ev.log_pi[sample.state, sample.action],
                    _per_token(weight, sample))
    info = temperature_law(ev, theta, temp, hp["eta"], env.horizon)
    info["reg_samples"] = jnp.sum(kept).astype(theta.dtype)
    return reg, info


def _per_token(values: Array, sample: Batch) -> Array:
    """A per-response value ``[M, G]`` on every token ``[M, G, L]``."""
    return jnp.broadcast_to(values[..., None], sample.state.shape)


def _ppo_clip(ratio: Array, adv: Array, eps: Array) -> tuple[Array, Array]:
    """``min(r A, clip(r, 1 - eps, 1 + eps) A)`` per token, and where the clipped branch is the
    smaller one (the token's gradient is zero there)."""
    clipped_value = jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * adv
    plain = ratio * adv
    return jnp.minimum(plain, clipped_value), clipped_value < plain


def _drift(logp: Array, logp_old: Array) -> Array:
    """``log pi - log pi_old``, set to exactly 0 through a ``where`` (no gradient flows) where it is
    within a few ulps of 0 (two evaluations of the same policy may round differently). JAX's
    derivative of ``|x|`` at 0 is 1, so without this KL-Cov's penalty would push every selected
    token by ``beta`` on-policy, where its true gradient is 0."""
    drift = logp - logp_old
    noise = 16 * jnp.finfo(logp.dtype).eps * (1.0 + jnp.abs(logp_old))
    return jnp.where(jnp.abs(drift) <= noise, 0.0, drift)


def _centred_product(logp: Array, adv: Array) -> Array:
    """Cui et al.'s per-token ``(log pi_i - mean log pi)(A_i - mean A)`` over the batch."""
    return (logp - jnp.mean(logp)) * (adv - jnp.mean(adv))


def _rank(x: Array) -> Array:
    """0-based rank of every entry in ascending order (ties broken by position)."""
    flat = x.ravel()
    return jnp.argsort(jnp.argsort(flat)).reshape(x.shape)
