"""The policy-optimisation family (GRPO and the methods built on it) as a chain of small pieces.

One step of a rule built here (docs/theory.md §4 and §5):

    batch      prompts x group responses drawn from pi_old = pi            (env.sample)
    advantage  an estimator, then shapers               [M, G, L]          (Piece.advantage)
    prepare    anything drawn once per step (AEPO's second batch)          (Piece.prepare)
    epochs x:  r = pi / pi_old per token
               surrogate: per-token objective and clip mask                (Piece.surrogate)
               token selection and masks                                   (Piece.select)
               token mean, plus bonuses and regularisers                   (Piece.bonus)
               gradient, optax step

A ``Piece`` declares its hyperparameters, columns and checks (``parts.py``) and fills one hook;
``policy_rule`` chains pieces into an update rule with the signature of every rule
(``rules.py``). GRPO is ``policy_rule("grpo", ..., group_normalised, ppo_clip)``; its variants add
one piece each, and any combination works without new code:

    policy_rule("clip_cov_bonus", "Clip-Cov with an entropy bonus",
                group_normalised, ppo_clip, clip_cov_tokens, entropy_bonus)

Pieces see a ``Context`` (the batch, ``pi_old`` and its exact evaluation) and, inside the
objective, the ``Tokens`` of the current logits. Every array of a batch is ``[M, G, L]``: ``M``
prompts, ``G`` responses each, ``L`` tokens per response (1 for bandits).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from entropy_sim.diagnostics import TEMPERATURE_COLUMNS, temperature_law
from entropy_sim.envs.base import Evaluation
from entropy_sim.errors import ConfigError
from entropy_sim.optim import apply_direction
from entropy_sim.parts import Column, Hparam, Option, RuleSpec, merge
from entropy_sim.sampling import Batch, group_advantage

Array = jax.Array


class Context(NamedTuple):
    """What every piece may read about the step's batch (fixed during the epochs)."""

    theta: Array      # [S, A] logits of pi_old
    ev: Evaluation    # exact evaluation of pi_old
    env: Any          # the environment
    sample: Batch     # state, action [M, G, L]; reward [M, G]
    logp_old: Array   # [M, G, L] log pi_old(a_t | s_t)
    batch: int        # M, prompts per step (static)
    group: int        # G, responses per prompt (static)

    @property
    def n_tokens(self) -> int:
        return self.sample.state.size


class Tokens(NamedTuple):
    """The per-token objective under the current logits, as pieces transform it."""

    value: Array     # [M, G, L] per-token objective
    clipped: Array   # [M, G, L] bool: the clip cut this token's gradient
    logp: Array      # [M, G, L] log pi(a_t | s_t)
    ratio: Array     # [M, G, L] pi / pi_old
    adv: Array       # [M, G, L] advantage


@dataclasses.dataclass(frozen=True)
class Piece:
    """One piece of a policy-optimisation objective: declarations and one (or more) hooks.

    Hooks (each optional; pieces of one kind run in the order given to ``policy_rule``):

    - ``advantage(adv, ctx, hp) -> adv``: an estimator (``adv`` is None for the first) or a
      shaper of the per-token advantage ``[M, G, L]``;
    - ``prepare(ctx, hp, key) -> (state, info)``: once per step, before the epochs; ``state`` is
      handed to this piece's ``bonus``, ``info`` holds columns;
    - ``surrogate(ratio, adv, hp) -> (value, clipped)``: the per-token objective (exactly one
      piece of a rule has it);
    - ``select(tokens, ctx, hp, key) -> (tokens, aux)``: masks, selections and penalties per
      token; ``aux`` holds columns, averaged over the epochs;
    - ``bonus(log_pi, ctx, hp, state) -> scalar``: added to the token mean (regularisers).
    ``checks``: functions ``(values, num_actions) -> None`` over the resolved ``[algo]`` table
    that raise ``ConfigError`` for combinations of fields the bounds cannot express.
    """

    name: str
    doc: str
    hparams: tuple[Hparam, ...] = ()
    columns: tuple[Column, ...] = ()
    checks: tuple[Callable, ...] = ()
    advantage: Callable | None = None
    prepare: Callable | None = None
    surrogate: Callable | None = None
    select: Callable | None = None
    bonus: Callable | None = None


ETA = Hparam("eta", None, "learning rate", low=0.0, low_open=True)
EPS = Hparam("eps", 0.2, "PPO clip range", low=0.0)
BATCH_COLUMNS = (
    Column("entropy_batch", "token mean of H(pi(.|s_t)) over the batch: the LLM papers' entropy "
                            "estimate, next to the exact entropy"),
    Column("batch_reward", "mean reward of the step's sampled responses"),
    Column("zero_adv_groups", "fraction of groups whose rewards are all equal (zero advantage)"),
    Column("clip_frac", "fraction of tokens whose gradient the clip removed, averaged over epochs"),
)
GROUP_OPTIONS = (
    Option("batch", 8, "prompts per step (groups)"),
    Option("group", 8, "responses per prompt, G"),
    Option("epochs", 1, "optimiser steps on each batch (PPO inner epochs)"),
)


# ----------------------------------------------------------------------------- advantages

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


entropy_shaping = Piece(
    "entropy_shaping", "Entropy-Adv (Cheng et al. 2025): A + min(beta H_old(s_t), |A| / kappa)",
    hparams=(Hparam("beta", 0.4, "entropy-shaping weight (Entropy-Adv)", low=0.0),
             Hparam("kappa", 2.0, "shaping cap |A| / kappa (Entropy-Adv)", low=1.0, low_open=True)),
    advantage=_entropy_shaped)


# ----------------------------------------------------------------------------- surrogates

def ppo_clip_tokens(ratio: Array, adv: Array, eps: Array) -> tuple[Array, Array]:
    """``min(r A, clip(r, 1 - eps, 1 + eps) A)`` per token, and where the clipped branch is the
    smaller one (the token's gradient is zero there)."""
    clipped_value = jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * adv
    plain = ratio * adv
    return jnp.minimum(plain, clipped_value), clipped_value < plain


ppo_clip = Piece(
    "ppo_clip", "PPO's clipped surrogate min(r A, clip(r, 1 - eps, 1 + eps) A)",
    hparams=(EPS,), surrogate=lambda ratio, adv, hp: ppo_clip_tokens(ratio, adv, hp["eps"]))

plain_ratio = Piece(
    "plain_ratio", "the unclipped surrogate r A", surrogate=lambda ratio, adv, hp: (
        ratio * adv, jnp.zeros(ratio.shape, bool)))


# ----------------------------------------------------------------------------- token selection

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
    low, high = _as_list(values["w_low"]), _as_list(values["w_high"])
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


# ----------------------------------------------------------------------------- bonuses

def _entropy_bonus(log_pi, ctx: Context, hp, state) -> Array:
    ent = -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)
    return hp["lambda"] * jnp.mean(ent[ctx.sample.state])


entropy_bonus = Piece(
    "entropy_bonus", "Entropy-Reg: + lambda * token mean of H(pi(.|s_t)), differentiated "
                     "through pi",
    hparams=(Hparam("lambda", 0.015, "entropy-bonus weight (Entropy-Reg)"),), bonus=_entropy_bonus)


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
                 checks=(_check_entropy_target,), prepare=prepare, bonus=bonus)


def _check_entropy_target(values: dict, num_actions: int) -> None:
    import math
    top = math.log(num_actions)
    if max(_as_list(values["entropy_target"])) > top:
        raise ConfigError("algo.entropy_target", f"{max(_as_list(values['entropy_target']))} "
                                                 f"exceeds the largest entropy log({num_actions}) "
                                                 f"= {top:.4f}")


# ----------------------------------------------------------------------------- the rule

def per_token(values: Array, sample: Batch) -> Array:
    """A per-response value ``[M, G]`` on every token ``[M, G, L]``."""
    return jnp.broadcast_to(values[..., None], sample.state.shape)


def policy_step(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, batch: int, group: int,
                epochs: int, pieces: tuple[Piece, ...]):
    """One step of the rule chained from ``pieces`` (module docstring): ``epochs`` optimiser
    steps on one batch of ``batch`` prompts x ``group`` responses drawn from ``pi_old = pi``.
    The objective is the token mean ``1/(M G L) sum`` (GRPO's ``1/G sum_i 1/|o_i| sum_t``, since
    every response of an environment has the same length) plus the bonuses. With ``epochs = 1``
    the ratio is 1 at the only gradient and clipping never acts. No closed form of the expected
    step is computed: ``dH_pred_closed`` is NaN."""
    k_batch, k_prepare, k_select = jax.random.split(key, 3)
    sample = env.sample(k_batch, theta, batch, group)
    ctx = Context(theta, ev, env, sample, ev.log_pi[sample.state, sample.action], batch, group)
    adv = None
    for piece in pieces:
        if piece.advantage is not None:
            adv = piece.advantage(adv, ctx, hp)
    info = {
        "entropy_batch": jnp.mean(ev.ent[sample.state]),
        "batch_reward": jnp.mean(sample.reward),
        "zero_adv_groups": jnp.mean(jnp.all(sample.reward == sample.reward[:, :1], axis=-1),
                                    dtype=theta.dtype),
    }
    states = {}
    for piece in pieces:
        if piece.prepare is not None:
            states[piece.name], extra = piece.prepare(ctx, hp, k_prepare)
            info.update(extra)
    surrogate = next(p.surrogate for p in pieces if p.surrogate is not None)

    def objective(th, k):
        log_pi = jax.nn.log_softmax(th, axis=-1)
        logp = log_pi[sample.state, sample.action]
        ratio = jnp.exp(logp - ctx.logp_old)
        value, clipped = surrogate(ratio, adv, hp)
        tok = Tokens(value, clipped, logp, ratio, adv)
        aux = {}
        for piece in pieces:
            if piece.select is not None:
                tok, extra = piece.select(tok, ctx, hp, k)
                aux.update(extra)
        total = jnp.mean(tok.value)
        for piece in pieces:
            if piece.bonus is not None:
                total = total + piece.bonus(log_pi, ctx, hp, states.get(piece.name))
        return total, {"clip_frac": jnp.mean(tok.clipped, dtype=th.dtype), **aux}

    stats = []
    for epoch in range(epochs):
        direction, aux = jax.grad(objective, has_aux=True)(theta, jax.random.fold_in(k_select, epoch))
        theta, opt_state = apply_direction(opt, theta, opt_state, direction)
        stats.append(aux)
    info.update(jax.tree.map(lambda *x: jnp.mean(jnp.stack(x)), *stats))
    info["dH_pred_closed"] = jnp.full((), jnp.nan, theta.dtype)
    return theta, opt_state, info


def policy_rule(name: str, summary: str, *pieces: Piece, options=GROUP_OPTIONS):
    """The update rule (a ``rules.RuleSpec``) chained from ``pieces``; raises ``ValueError`` for a
    chain that cannot work (no advantage estimator, not exactly one surrogate, two different
    declarations under one name)."""
    if not pieces or pieces[0].advantage is None:
        raise ValueError(f"{name}: the first piece must estimate the advantage "
                         f"(e.g. group_normalised)")
    surrogates = [p.name for p in pieces if p.surrogate is not None]
    if len(surrogates) != 1:
        raise ValueError(f"{name}: exactly one piece must give the surrogate, got {surrogates}")
    fn = functools.partial(policy_step, pieces=tuple(pieces))
    return RuleSpec(
        name=name, fn=fn, summary=summary,
        hparams=merge("hyperparameters", name, (ETA,), *(p.hparams for p in pieces)),
        options=tuple(options),
        columns=merge("columns", name, BATCH_COLUMNS, *(p.columns for p in pieces)),
        checks=tuple(c for p in pieces for c in p.checks), sampled=True, pieces=tuple(pieces))


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
