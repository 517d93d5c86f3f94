"""Token selection and masks: Clip-Cov and KL-Cov (tokens of extreme covariance), the dual clip,
forking tokens (the highest-entropy tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropy_sim.errors import ConfigError
from entropy_sim.objectives.pieces import Context, Piece, Tokens, as_list
from entropy_sim.parts import Column, Hparam

Array = jax.Array


FRAC = Hparam("frac", 0.02, "fraction of the batch's tokens selected (Clip-/KL-Cov)", low=0.0,
              high=1.0, low_open=True)
COV_TOKENS = Column("cov_tokens", "tokens detached (Clip-Cov) or penalised (KL-Cov)")


def centred_product(logp: Array, adv: Array) -> Array:
    """Cui et al.'s per-token ``(log pi_i - mean log pi)(A_i - mean A)`` over the batch."""
    return (logp - jnp.mean(logp)) * (adv - jnp.mean(adv))


def rank(x: Array) -> Array:
    """0-based rank of every entry in ascending order (ties broken by position)."""
    flat = x.ravel()
    return jnp.argsort(jnp.argsort(flat)).reshape(x.shape)


def _selected_count(frac: Array, n_tokens: int) -> Array:
    return jnp.maximum(1, jnp.floor(frac * n_tokens)).astype(jnp.int32)


def _clip_cov(tok: Tokens, ctx: Context, hp, key):
    c = centred_product(jax.lax.stop_gradient(tok.logp), tok.adv)
    eligible = (c > hp["w_low"]) & (c < hp["w_high"]) & ~tok.clipped
    priority = jnp.where(eligible, jax.random.uniform(key, c.shape, tok.value.dtype), 2.0)
    chosen = eligible & (rank(priority) < _selected_count(hp["frac"], ctx.n_tokens))
    value = jnp.where(chosen, 0.0, tok.value)
    return tok._replace(value=value), {"cov_tokens": jnp.sum(chosen).astype(value.dtype)}


def _check_window(values: dict, num_actions: int) -> None:
    low, high = as_list(values["w_low"]), as_list(values["w_high"])
    if max(low) >= min(high):
        raise ConfigError("algo.w_high", f"must exceed w_low = {max(low)}, got {min(high)}")


clip_cov_tokens = Piece(
    "clip_cov_tokens", "Clip-Cov (Cui et al. 2025): among tokens the clip left alone with "
                       "w_low < c < w_high, max(1, floor(frac N)) chosen at random lose their "
                       "gradient",
    hparams=(FRAC, Hparam("w_low", 1.0, "lower covariance bound (Clip-Cov)"),
             Hparam("w_high", 5.0, "upper covariance bound (Clip-Cov)")),
    columns=(COV_TOKENS,), checks=(_check_window,), select=_clip_cov)


def drift(logp: Array, logp_old: Array) -> Array:
    """``log pi - log pi_old``, set to exactly 0 through a ``where`` (no gradient flows) where it is
    within a few ulps of 0 (two evaluations of the same policy may round differently). JAX's
    derivative of ``|x|`` at 0 is 1, so without this KL-Cov's penalty would push every selected
    token by ``beta`` on-policy, where its true gradient is 0."""
    d = logp - logp_old
    noise = 16 * jnp.finfo(logp.dtype).eps * (1.0 + jnp.abs(logp_old))
    return jnp.where(jnp.abs(d) <= noise, 0.0, d)


def _kl_cov(tok: Tokens, ctx: Context, hp, key):
    c = centred_product(jax.lax.stop_gradient(tok.logp), tok.adv)
    chosen = rank(-c) < _selected_count(hp["frac"], ctx.n_tokens)
    penalty = jnp.where(chosen, hp["beta"] * jnp.abs(drift(tok.logp, ctx.logp_old)), 0.0)
    return (tok._replace(value=tok.value - penalty, clipped=jnp.zeros_like(tok.clipped)),
            {"cov_tokens": jnp.sum(chosen).astype(tok.value.dtype)})


kl_cov_tokens = Piece(
    "kl_cov_tokens", "KL-Cov (Cui et al. 2025): the max(1, floor(frac N)) tokens of largest c get "
                     "- beta |log pi - log pi_old| (zero on-policy: acts only with epochs > 1)",
    hparams=(FRAC, Hparam("beta", 1.0, "KL weight on the selected tokens (KL-Cov)", low=0.0)),
    columns=(COV_TOKENS,), select=_kl_cov)


def _dual_clip(tok: Tokens, ctx: Context, hp, key):
    floor = hp["clip_c"] * tok.adv  # no gradient: the advantage is fixed during the epochs
    cut = (tok.adv < 0) & (floor > tok.value)
    return (tok._replace(value=jnp.where(cut, floor, tok.value), clipped=tok.clipped | cut),
            {"dual_clip_frac": jnp.mean(cut, dtype=tok.value.dtype)})


dual_clip = Piece(
    "dual_clip", "dual clip (Ye et al. 2020): for A < 0 the token's value is max(value, c A), so a "
                 "token with r > c (under PPO's clip) has value c A and no gradient (verl "
                 "clip_ratio_c = 3, on by default there; TRL has none)",
    hparams=(Hparam("clip_c", 3.0, "dual-clip bound c on the ratio of A < 0 tokens (verl "
                                   "clip_ratio_c)", low=1.0, low_open=True),),
    columns=(Column("dual_clip_frac", "fraction of tokens (A < 0, r > c) whose gradient the dual "
                                      "clip removed, averaged over epochs; part of clip_frac_low"),),
    select=_dual_clip)


def quantile_threshold(x: Array, q: Array) -> Array:
    """``torch.quantile(x, q)`` (linear interpolation between order statistics), kept inside the two
    order statistics it interpolates, so that among equal values it is exactly that value."""
    flat = jnp.sort(x.ravel())
    pos = q * (flat.size - 1)
    lo, hi = flat[jnp.floor(pos).astype(jnp.int32)], flat[jnp.ceil(pos).astype(jnp.int32)]
    return jnp.clip(lo + (pos - jnp.floor(pos)) * (hi - lo), lo, hi)


def _forking(tok: Tokens, ctx: Context, hp, key):
    ent = ctx.ev.ent[ctx.sample.state]
    kept = ent >= quantile_threshold(ent, 1.0 - hp["top_entropy_quantile"])
    return (tok._replace(value=jnp.where(kept, tok.value, 0.0)),
            {"forking_frac": jnp.mean(kept, dtype=tok.value.dtype)})


forking_tokens = Piece(
    "forking_tokens", "80/20 (Wang et al. 2025): only tokens with H(pi_old(.|s_t)) >= the "
                      "(1 - top_entropy_quantile) quantile of the batch keep their value and "
                      "gradient; the token mean still divides by all tokens (as TRL "
                      "top_entropy_quantile; ties at the threshold are kept)",
    hparams=(Hparam("top_entropy_quantile", 0.2, "fraction of highest-entropy tokens that keep "
                                                 "their gradient (80/20's rho)", low=0.0,
                    high=1.0),),
    columns=(Column("forking_frac", "fraction of the batch's tokens forking_tokens kept (at least "
                                    "top_entropy_quantile: ties at the threshold are kept)"),),
    select=_forking)
