"""Bonuses and regularisers added to the objective: the entropy bonus, a KL to a reference policy
(four estimators, in the loss or the reward, fixed or adaptive), the adaptive entropy
coefficient, and AEPO's temperature regulariser.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropy_sim.diagnostics import TEMPERATURE_COLUMNS, temperature_law
from entropy_sim.envs.base import Evaluation
from entropy_sim.errors import ConfigError
from entropy_sim.objectives.pieces import EPS, Context, Piece, as_list, per_token
from entropy_sim.objectives.surrogates import ppo_clip_tokens
from entropy_sim.parts import Column, Hparam, Option
from entropy_sim.sampling import group_advantage

Array = jax.Array


def token_mean_entropy(log_pi: Array, ctx: Context) -> Array:
    """Token mean of ``H(pi(.|s_t))`` over the (mini-)batch, differentiable through ``log_pi:
    [S, A]``. ``[]``."""
    ent = -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)
    return jnp.mean(ent[ctx.sample.state])


def _entropy_bonus(log_pi, ctx: Context, hp, state) -> Array:
    return hp["lambda"] * token_mean_entropy(log_pi, ctx)


entropy_bonus = Piece(
    "entropy_bonus", "Entropy-Reg: + lambda * token mean of H(pi(.|s_t)), differentiated "
                     "through pi",
    hparams=(Hparam("lambda", 0.015, "entropy-bonus weight (Entropy-Reg)"),), bonus=_entropy_bonus)


KL_ESTIMATORS = ("k1", "k2", "k3", "k3+")


def kl_estimate(logp: Array, logp_ref: Array, estimator: str) -> Array:
    """Per-token estimate of ``KL(pi || pi_ref)`` from a token drawn from ``pi``, with
    ``x = log pi - log pi_ref`` (Schulman 2020; verl ``kl_penalty``):

    - ``k1 = x``: unbiased in value; as a loss its expected gradient on-policy is 0;
    - ``k2 = x^2 / 2``: biased in value; as a loss its expected gradient is ``grad KL(pi || pi_ref)``;
    - ``k3 = exp(-x) - 1 + x`` (GRPO, verl ``low_var_kl``): unbiased in value and never negative; as
      a loss its expected gradient is ``grad KL(pi_ref || pi)``, the other direction;
    - ``k3+``: k3's value with k2's gradient (verl's straight-through ``k3+``).

    ``x`` is clamped to ``[-20, 20]`` in k3 and k3 to ``[-10, 10]``, as verl does. ``[...] -> [...]``;
    docs/theory.md §9.3 and §9.6."""
    x = logp - logp_ref
    if estimator == "k1":
        return x
    k2 = 0.5 * x ** 2
    if estimator == "k2":
        return k2
    minus_x = jnp.clip(-x, -20.0, 20.0)
    k3 = jnp.clip(jnp.exp(minus_x) - minus_x - 1.0, -10.0, 10.0)
    if estimator == "k3":
        return k3
    if estimator == "k3+":
        return k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(k3)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose from {', '.join(KL_ESTIMATORS)}")


def exact_kl(ev: Evaluation, log_ref: Array) -> Array:
    """``sum_s d(s) KL(pi(.|s) || pi_ref(.|s))`` (``log_ref: [S, A]``, log-probabilities). ``[]``."""
    return jnp.sum(ev.occ * jnp.sum(ev.pi * (ev.log_pi - log_ref), axis=-1))


class Reference(NamedTuple):
    """What ``reference_kl`` carries from step to step."""

    logits: Array  # [S, A] the reference policy's logits
    coef: Array    # [] the KL coefficient (changes under kl_ctrl = "adaptive")
    step: Array    # [] int32, steps taken


def _reference_logp(ctx: Context) -> Array:
    log_ref = jax.nn.log_softmax(ctx.carried["reference_kl"].logits, axis=-1)
    return log_ref[ctx.sample.state, ctx.sample.action]


def _kl_in_reward(reward, ctx: Context, hp) -> Array:
    if ctx.options["kl_in"] != "reward":
        return reward
    k = kl_estimate(ctx.logp_old, _reference_logp(ctx), ctx.options["kl_estimator"])
    return reward - ctx.carried["reference_kl"].coef * jnp.sum(k, axis=-1)


def _kl_in_loss(log_pi, ctx: Context, hp, state) -> Array:
    if ctx.options["kl_in"] != "loss":
        return jnp.zeros((), log_pi.dtype)
    logp = log_pi[ctx.sample.state, ctx.sample.action]
    k = kl_estimate(logp, _reference_logp(ctx), ctx.options["kl_estimator"])
    return -ctx.carried["reference_kl"].coef * jnp.mean(k)


def _kl_update(ref: Reference, theta_next, ctx: Context, hp, info):
    """verl's AdaptiveKLController (``kl_ctrl.type = "adaptive"``) on the batch's mean estimate,
    then the reference reset or mixed in every ``ref_reset_every`` steps."""
    batch_kl = jnp.mean(kl_estimate(ctx.logp_old, _reference_logp(ctx), ctx.options["kl_estimator"]))
    coef = ref.coef
    if ctx.options["kl_ctrl"] == "adaptive":
        error = jnp.clip(batch_kl / hp["target_kl"] - 1.0, -0.2, 0.2)
        coef = coef * (1.0 + error * (ctx.batch * ctx.group) / hp["kl_horizon"])
    step = ref.step + 1
    every = hp["ref_reset_every"].astype(jnp.int32)
    reset = (every > 0) & (step % jnp.maximum(every, 1) == 0)
    mixed = hp["ref_mix"] * theta_next + (1.0 - hp["ref_mix"]) * ref.logits  # theta at ref_mix 1
    logits = jnp.where(reset, mixed, ref.logits)
    columns = {"kl_ref": exact_kl(ctx.ev, jax.nn.log_softmax(ref.logits, axis=-1)),
               "kl_batch": batch_kl, "kl_coef_t": ref.coef}
    return Reference(logits, coef, step), columns


reference_kl = Piece(
    "reference_kl", "KL to a reference policy (the initial one, optionally reset or mixed in every "
                  "ref_reset_every steps): - kl_coef x token mean of the estimator in the loss "
                  "(verl use_kl_loss, TRL beta), or kl_coef x its sum over the response off the "
                  "reward (verl use_kl_in_reward); coefficient fixed or adaptive (verl kl_ctrl)",
    hparams=(Hparam("kl_coef", 0.001, "KL coefficient (its start under kl_ctrl = adaptive; verl "
                                      "kl_loss_coef / kl_ctrl.kl_coef, TRL beta)", low=0.0),
             Hparam("target_kl", 0.1, "target of the adaptive KL coefficient (verl "
                                      "kl_ctrl.target_kl)", low=0.0, low_open=True),
             Hparam("kl_horizon", 10000.0, "horizon of the adaptive KL coefficient, in responses "
                                           "(verl kl_ctrl.horizon)", low=0.0, low_open=True),
             Hparam("ref_reset_every", 0, "reset the reference every this many steps; 0 = never "
                                          "(ProRL; TRL ref_model_sync_steps)", low=0.0,
                    integer=True),
             Hparam("ref_mix", 1.0, "at a reset, ref <- ref_mix theta + (1 - ref_mix) ref (1: "
                                    "ProRL's hard reset; TRL ref_model_mixup_alpha 0.6)",
                    low=0.0, high=1.0, low_open=True)),
    options=(Option("kl_estimator", "k3", "k1 | k2 | k3 (verl low_var_kl) | k3+ (k3's value, "
                                          "k2's gradient)", choices=KL_ESTIMATORS),
             Option("kl_in", "loss", "where the KL enters: loss | reward",
                    choices=("loss", "reward")),
             Option("kl_ctrl", "fixed", "KL coefficient: fixed | adaptive (verl kl_ctrl.type)",
                    choices=("fixed", "adaptive"))),
    columns=(Column("kl_ref", "exact sum_s d(s) KL(pi(.|s) || pi_ref(.|s)) before the step"),
             Column("kl_batch", "the batch's token mean of the KL estimator (under pi_old): what "
                                "the frameworks log as kl"),
             Column("kl_coef_t", "KL coefficient used in this step (kl_coef, or where "
                                 "kl_ctrl = adaptive has moved it)")),
    reward=_kl_in_reward, bonus=_kl_in_loss, update=_kl_update,
    init=lambda theta, hp: Reference(theta, jnp.asarray(hp["kl_coef"], theta.dtype),
                                     jnp.zeros((), jnp.int32)))


class EntropyControl(NamedTuple):
    """What ``adaptive_entropy`` carries from step to step."""

    coef: Array  # [] the coefficient for the next step (before the gate)


def _below_target(ctx: Context, hp) -> Array:
    """Whether the step's whole batch has token-mean entropy (under pi_old) at most the target."""
    return jnp.mean(ctx.ev.ent[ctx.sample.state]) <= hp["entropy_target"]


def _adaptive_prepare(ctx: Context, hp, key):
    """The coefficient this step applies (0 above the target), decided once on the whole batch:
    every mini-batch's bonus uses it."""
    applied = jnp.where(_below_target(ctx, hp), ctx.carried["adaptive_entropy"].coef, 0.0)
    return applied, {"entropy_coef_t": applied}


def _adaptive_bonus(log_pi, ctx: Context, hp, applied) -> Array:
    return applied * token_mean_entropy(log_pi, ctx)


def _adaptive_update(control: EntropyControl, theta_next, ctx: Context, hp, info):
    delta = jnp.where(_below_target(ctx, hp), hp["entropy_coef_delta"], -hp["entropy_coef_delta"])
    coef = jnp.clip(control.coef + delta, hp["entropy_coef_min"], hp["entropy_coef_max"])
    return EntropyControl(coef), {}


def _check_coef_bounds(values: dict, num_actions: int) -> None:
    low, high = as_list(values["entropy_coef_min"]), as_list(values["entropy_coef_max"])
    if max(low) > min(high):
        raise ConfigError("algo.entropy_coef_max", f"must be at least entropy_coef_min = "
                                                   f"{max(low)}, got {min(high)}")


adaptive_entropy = Piece(
    "adaptive_entropy", "adaptive entropy bonus (Skywork-OR1; TRL use_adaptive_entropy): + c x "
                        "token mean of H(pi(.|s_t)) while the batch entropy under pi_old is <= "
                        "entropy_target (else 0); then c += entropy_coef_delta below the target, "
                        "-= above, kept in [entropy_coef_min, entropy_coef_max]",
    hparams=(Hparam("entropy_coef", 0.0, "starting entropy coefficient (TRL entropy_coef)",
                    low=0.0),
             Hparam("entropy_coef_delta", 0.005, "step of the adaptive entropy coefficient (TRL)",
                    low=0.0),
             Hparam("entropy_coef_min", 0.0, "lower bound of the adaptive entropy coefficient",
                    low=0.0),
             Hparam("entropy_coef_max", 1.0, "upper bound of the adaptive entropy coefficient",
                    low=0.0),
             Hparam("entropy_target", 0.2, "entropy set point (nats, token mean; TRL's 0.2)",
                    low=0.0)),
    columns=(Column("entropy_coef_t", "entropy coefficient applied in this step (0 while the "
                                      "batch entropy is above entropy_target)"),),
    checks=(_check_coef_bounds,), prepare=_adaptive_prepare, bonus=_adaptive_bonus,
    update=_adaptive_update,
    init=lambda theta, hp: EntropyControl(jnp.asarray(hp["entropy_coef"], theta.dtype)))


class RegBatch(NamedTuple):
    """AEPO's second batch."""

    state: Array     # [M, G, L]
    action: Array    # [M, G, L]
    logp_old: Array  # [M, G, L]
    weight: Array    # [M, G, L] R (kept positives) or the group advantage


def aepo_regulariser(*, hot_and_cold: bool = True, positives: bool = True) -> Piece:
    """AEPO's regulariser (eq. 1): ``+ alpha / N * sum over the first k positive responses of a
    second batch drawn from pi_old^T of sum_t min(r R, clip(r) R)``, ``N`` the batch's token
    count, ``T = temp_high`` and ``k = pos_up`` while ``H(pi_old) < entropy_target`` (the exact
    entropy), else ``temp_low`` and ``pos_down``. ``hot_and_cold = False``: sampled at ``T = 1``
    (ablation eq. 2); ``positives = False``: weighted by the second batch's group advantage,
    negative samples kept (ablation eq. 3). Logs Theorem 4.3's columns at the temperature used."""
    hparams = [EPS, Hparam("alpha", 1.0, "weight of AEPO's REINFORCE regulariser", low=0.0),
               Hparam("entropy_target", None, "AEPO's entropy target (nats)", low=0.0)]
    if hot_and_cold:
        hparams += [Hparam("temp_low", 0.8, "AEPO's temperature above the target", low=0.0,
                           low_open=True),
                    Hparam("temp_high", 1.2, "AEPO's temperature below the target", low=0.0,
                           low_open=True)]
    if positives:
        hparams += [Hparam("pos_up", 60, "positive samples per step when raising entropy", low=0.0,
                           integer=True),
                    Hparam("pos_down", 30, "positive samples per step when lowering entropy",
                           low=0.0, integer=True)]

    def prepare(ctx: Context, hp, key):
        ev, theta = ctx.ev, ctx.theta
        raising = ev.entropy < hp["entropy_target"]
        temp = (jnp.where(raising, hp["temp_high"], hp["temp_low"]) if hot_and_cold
                else jnp.ones((), theta.dtype))
        sample = ctx.env.sample(key, theta / temp, ctx.batch, ctx.group)
        if positives:
            positive = sample.reward > 0
            cap = jnp.where(raising, hp["pos_up"], hp["pos_down"])
            order = jnp.cumsum(positive.ravel()).reshape(positive.shape)  # 1-based among positives
            kept = positive & (order <= cap)
            weight = jnp.where(kept, sample.reward, 0.0)
        else:
            weight = group_advantage(sample.reward)
            kept = jnp.ones_like(weight, bool)
        reg = RegBatch(sample.state, sample.action, ev.log_pi[sample.state, sample.action],
                       per_token(weight, sample))
        info = temperature_law(ev, theta, temp, hp["eta"], ctx.env.horizon)
        info["reg_samples"] = jnp.sum(kept).astype(theta.dtype)
        return reg, info

    def bonus(log_pi, ctx: Context, hp, reg: RegBatch) -> Array:
        r_logp = log_pi[reg.state, reg.action]
        r_tokens, _ = ppo_clip_tokens(jnp.exp(r_logp - reg.logp_old), reg.weight, hp["eps"])
        return hp["alpha"] * jnp.sum(r_tokens) / ctx.n_tokens

    name = "aepo_regulariser" + ("" if hot_and_cold else "_t1") + ("" if positives else "_adv")
    doc = ("AEPO: + alpha/N x clipped R-weighted surrogate on the first pos_up (pos_down) positive "
           "responses of a second batch at T_high (T_low) while H(pi_old) < (>=) entropy_target")
    if not hot_and_cold:
        doc += "; sampled at T = 1 (ablation)"
    if not positives:
        doc += "; weighted by its own group advantage, negatives kept (ablation)"
    return Piece(name, doc, tuple(hparams),
                 TEMPERATURE_COLUMNS + (Column("reg_samples", "positive samples in AEPO's "
                                                              "regulariser"),),
                 checks=(_check_entropy_target, _check_whole_batch), prepare=prepare, bonus=bonus)


def _check_whole_batch(values: dict, num_actions: int) -> None:
    if values.get("mini_batches", 1) > 1:
        raise ConfigError("algo.mini_batches", "AEPO's regulariser draws a second batch per step "
                                               "that is not split into mini-batches; use 1")


def _check_entropy_target(values: dict, num_actions: int) -> None:
    import math
    top = math.log(num_actions)
    if max(as_list(values["entropy_target"])) > top:
        raise ConfigError("algo.entropy_target", f"{max(as_list(values['entropy_target']))} "
                                                 f"exceeds the largest entropy log({num_actions}) "
                                                 f"= {top:.4f}")
