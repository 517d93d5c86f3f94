"""Reward shapers and advantage estimators: group normalisation (GRPO), centring (Dr. GRPO),
batch normalisation, signed and sign-weighted rewards, entropy shaping, and DAPO's dynamic
sampling (drawing hook).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropy_sim.objectives.pieces import Context, Piece, per_token
from entropy_sim.parts import Column, Hparam, Option
from entropy_sim.sampling import Batch, group_advantage

Array = jax.Array


def _group_normalised(adv, ctx: Context, hp) -> Array:
    return per_token(group_advantage(ctx.sample.reward), ctx.sample)


group_normalised = Piece(
    "group_normalised", "GRPO's outcome advantage (R - mean) / std per group (sample std; 0 for "
                        "an all-equal group), on every token of the response",
    advantage=_group_normalised)


def _group_centred(adv, ctx: Context, hp) -> Array:
    reward = ctx.sample.reward
    return per_token(reward - jnp.mean(reward, axis=-1, keepdims=True), ctx.sample)


group_centred = Piece(
    "group_centred", "Dr. GRPO (Liu et al. 2025): R - mean per group, no division by the std "
                     "(TRL scale_rewards = \"none\", verl norm_adv_by_std_in_grpo = False)",
    advantage=_group_centred)


def _entropy_shaped(adv, ctx: Context, hp) -> Array:
    return adv + jnp.minimum(hp["beta"] * ctx.ev.ent[ctx.sample.state], jnp.abs(adv) / hp["kappa"])


def _batch_normalised(adv, ctx: Context, hp) -> Array:
    reward = ctx.sample.reward
    equal = jnp.all(reward == reward[..., :1], axis=-1, keepdims=True)
    flat = jnp.all(reward == reward.ravel()[0])
    centred = reward - jnp.mean(reward, axis=-1, keepdims=True)
    std = jnp.std(reward, ddof=1) if reward.size > 1 else jnp.ones((), reward.dtype)
    return per_token(jnp.where(equal | flat, 0.0, centred / jnp.where(flat, 1.0, std)), ctx.sample)


batch_normalised = Piece(
    "batch_normalised", "(R - group mean) / std of all the batch's rewards (sample std; 0 for an "
                        "all-equal group or batch): TRL scale_rewards = \"batch\" (without its "
                        "+1e-4): Lite PPO's group mean and batch std (Liu et al. 2025)",
    advantage=_batch_normalised)


def _signed_reward(adv, ctx: Context, hp) -> Array:
    return per_token(2.0 * ctx.sample.reward - 1.0, ctx.sample)


signed_reward = Piece(
    "signed_reward", "A = 2R - 1, no baseline: +1 for a correct response, -1 for a wrong one "
                     "(Zhu et al. 2025's +-1 reward, for rewards in {0, 1})",
    advantage=_signed_reward)


def _sign_weighted(adv, ctx: Context, hp) -> Array:
    return jnp.where(adv > 0, hp["pos_weight"], hp["neg_weight"]) * adv


sign_weighted = Piece(
    "sign_weighted", "positive advantages times pos_weight, negative ones times neg_weight: "
                     "W-REINFORCE (Zhu et al. 2025) pos_weight = 0.1; PSR neg_weight = 0; "
                     "NSR pos_weight = 0",
    hparams=(Hparam("pos_weight", 1.0, "weight of positive-advantage samples (W-REINFORCE)",
                    low=0.0),
             Hparam("neg_weight", 1.0, "weight of negative-advantage samples (W-REINFORCE)",
                    low=0.0)),
    advantage=_sign_weighted)


entropy_shaping = Piece(
    "entropy_shaping", "Entropy-Adv (Cheng et al. 2025): A + min(beta H_old(s_t), |A| / kappa)",
    hparams=(Hparam("beta", 0.4, "entropy-shaping weight (Entropy-Adv)", low=0.0),
             Hparam("kappa", 2.0, "shaping cap |A| / kappa (Entropy-Adv)", low=1.0, low_open=True)),
    advantage=_entropy_shaped)


def informative_first(reward: Array, batch: int) -> tuple[Array, Array, Array]:
    """DAPO's dynamic sampling on ``reward: [K M, G]``, the rewards of ``K`` generation batches of
    ``M = batch`` groups drawn in order: the indices ``[M]`` of the first ``M`` groups whose rewards
    are not all equal (verl's filter keeps ``std > 0``), in draw order; where fewer than ``M`` are
    informative, the first all-equal groups fill the rest. Also how many generation batches verl's
    loop would have drawn (``K`` where it falls short: verl raises there) and how many all-equal
    groups its filter dropped in them. ``([M] int32, [] int32, [] int32)``."""
    drawn = reward.shape[0]
    informative = ~jnp.all(reward == reward[:, :1], axis=-1)
    index = jnp.argsort(~informative, stable=True)[:batch].astype(jnp.int32)
    found = jnp.cumsum(informative)
    full = found[-1] >= batch
    used = jnp.where(full, jnp.argmax(found >= batch) // batch + 1, drawn // batch)
    dropped = jnp.sum(~informative & (jnp.arange(drawn) < used * batch))
    return index, used.astype(jnp.int32), dropped.astype(jnp.int32)


def _dynamic_draw(env, key, theta, batch: int, group: int, options) -> tuple[Batch, dict]:
    drawn = env.sample(key, theta, options["gen_batches"] * batch, group)
    index, used, dropped = informative_first(drawn.reward, batch)
    sample = drawn._replace(prompt=drawn.prompt[index], state=drawn.state[index],
                            action=drawn.action[index], reward=drawn.reward[index],
                            togo=drawn.togo[index])
    return sample, {"gen_batches_used": used.astype(theta.dtype),
                    "filtered_groups": dropped.astype(theta.dtype)}


dynamic_sampling = Piece(
    "dynamic_sampling", "DAPO's dynamic sampling (Yu et al. 2025): groups whose task rewards are "
                        "all equal are dropped and more are drawn, up to gen_batches batches, "
                        "until the batch is full of informative groups (verl "
                        "algorithm.filter_groups, metric acc); short of that, all-equal groups "
                        "fill the rest (zero_adv_groups > 0) where verl would raise",
    options=(Option("gen_batches", 3, "generation batches of batch prompts drawn at most per step "
                                      "(verl filter_groups.max_num_gen_batches with "
                                      "gen_batch_size = train_batch_size; DAPO's recipe draws 3 "
                                      "x train_batch_size at a time)"),),
    columns=(Column("gen_batches_used", "generation batches verl's dynamic sampling would have "
                                        "drawn this step to fill the batch (verl "
                                        "num_gen_batches; gen_batches when it fell short)"),
             Column("filtered_groups", "groups with all-equal rewards that dynamic sampling "
                                       "dropped this step")),
    draw=_dynamic_draw)
