"""The policy-optimisation family (GRPO and the methods built on it) as a chain of small pieces.

One step of a rule built here (docs/theory.md §4 and §5):

    batch      prompts x group responses drawn from pi_old = pi  (env.sample, or Piece.draw)
    reward     shapers of the responses' rewards        [M, G]             (Piece.reward)
    advantage  an estimator, then shapers               [M, G, L]          (Piece.advantage)
    prepare    anything decided once per step (AEPO's second batch, an entropy gate) (Piece.prepare)
    epochs x, mini_batches x (each on its prompts):
               r = pi / pi_old per token
               surrogate: per-token objective and clip mask                (Piece.surrogate)
               token selection and masks                                   (Piece.select)
               token mean, plus bonuses and regularisers                   (Piece.bonus)
               gradient, optax step
    update     what a piece carries to the next step (a KL reference, a coefficient) (Piece.update)

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
    options: dict = {}  # the rule's static options ({name: value}: kl_estimator, ...); read only
    carried: dict = {}  # {piece name: what it carries from step to step} (Piece.init); read only

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

    - ``draw(env, key, theta, batch, group, options) -> (sample, info)``: the step's batch in place
      of ``env.sample(key, theta, batch, group)`` (DAPO's dynamic sampling; at most one piece);
    - ``reward(reward, ctx, hp) -> reward``: a shaper of the responses' rewards ``[M, G]`` before
      the advantage (a KL penalty in the reward);
    - ``advantage(adv, ctx, hp) -> adv``: an estimator (``adv`` is None for the first) or a
      shaper of the per-token advantage ``[M, G, L]``;
    - ``prepare(ctx, hp, key) -> (state, info)``: once per step, before the epochs; ``state`` is
      handed to this piece's ``bonus``, ``info`` holds columns;
    - ``surrogate(ratio, adv, hp) -> (value, clipped)``: the per-token objective (exactly one
      piece of a rule has it);
    - ``select(tokens, ctx, hp, key) -> (tokens, aux)``: masks, selections and penalties per
      token; ``aux`` holds columns, averaged over the epochs;
    - ``bonus(log_pi, ctx, hp, state) -> scalar``: added to the token mean (regularisers);
    - ``init(theta, hp) -> carried``: what the piece carries from step to step (``ctx.carried[name]``),
      before step 0 from the initial logits;
    - ``update(carried, theta_next, ctx, hp, info) -> (carried, info)``: once per step, after the
      epochs; ``info`` holds the step's columns so far, the returned one this piece's columns.
    ``options``: the piece's static options (``parts.Option``), passed in ``ctx.options``.
    ``checks``: functions ``(values, num_actions) -> None`` over the resolved ``[algo]`` table
    that raise ``ConfigError`` for combinations of fields the bounds cannot express.
    """

    name: str
    doc: str
    hparams: tuple[Hparam, ...] = ()
    columns: tuple[Column, ...] = ()
    checks: tuple[Callable, ...] = ()
    options: tuple[Option, ...] = ()
    reward: Callable | None = None
    advantage: Callable | None = None
    prepare: Callable | None = None
    surrogate: Callable | None = None
    select: Callable | None = None
    bonus: Callable | None = None
    init: Callable | None = None
    update: Callable | None = None
    draw: Callable | None = None


HOOKS = ("draw", "reward", "advantage", "prepare", "surrogate", "select", "bonus", "init", "update")
ETA = Hparam("eta", None, "learning rate", low=0.0, low_open=True)
EPS = Hparam("eps", 0.2, "PPO clip range", low=0.0)
EPS_HIGH = Hparam("eps_high", -1.0, "upper clip range, ratio capped at 1 + eps_high; -1 = eps "
                                    "(symmetric)", low=-1.0)
BATCH_COLUMNS = (
    Column("entropy_batch", "token mean of H(pi(.|s_t)) over the batch: the LLM papers' entropy "
                            "estimate, next to the exact entropy"),
    Column("batch_reward", "mean reward of the step's sampled responses"),
    Column("zero_adv_groups", "fraction of groups whose rewards are all equal (zero advantage)"),
    Column("clip_frac", "fraction of tokens whose gradient the clip removed (CISPO: capped), "
                        "averaged over epochs; clip_frac_low + clip_frac_high"),
    Column("clip_frac_low", "the part of clip_frac with A < 0: PPO's lower bound r < 1 - eps "
                            "(or the dual clip, or CISPO's cap)"),
    Column("clip_frac_high", "the part of clip_frac with A > 0: PPO's upper bound "
                             "r > 1 + eps_high (or CISPO's cap)"),
)


def _check_mini_batches(values: dict, num_actions: int) -> None:
    if "mini_batches" in values and values["batch"] % values["mini_batches"]:
        raise ConfigError("algo.mini_batches", f"must divide batch = {values['batch']} (prompts "
                                               f"per step), got {values['mini_batches']}")


GROUP_OPTIONS = (
    Option("batch", 8, "prompts per step (groups)"),
    Option("group", 8, "responses per prompt, G"),
    Option("epochs", 1, "passes over each batch (PPO inner epochs)"),
    Option("mini_batches", 1, "optimiser steps per pass, each on batch / mini_batches prompts "
                              "(verl ppo_mini_batch_size = batch / mini_batches)"),
)
GROUP_CHECKS = (_check_mini_batches,)


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


# ----------------------------------------------------------------------------- surrogates

def ppo_clip_tokens(ratio: Array, adv: Array, eps: Array,
                    eps_high: Array | None = None) -> tuple[Array, Array]:
    """``min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` per token (``eps_high`` None: ``eps``), and
    where the clipped branch is the smaller one (the token's gradient is zero there): ``r < 1 - eps``
    with ``A < 0``, or ``r > 1 + eps_high`` with ``A > 0``."""
    eps_high = eps if eps_high is None else eps_high
    clipped_value = jnp.clip(ratio, 1.0 - eps, 1.0 + eps_high) * adv
    plain = ratio * adv
    return jnp.minimum(plain, clipped_value), clipped_value < plain


def upper_eps(hp) -> Array:
    """``eps_high``, or ``eps`` where it is given as -1 (the default: a symmetric clip) or not at
    all (``hp`` built by hand). The same value as ``hp["eps"]`` there, so the default clip is
    bitwise the symmetric one."""
    if "eps_high" not in hp:
        return hp["eps"]
    return jnp.where(hp["eps_high"] < 0, hp["eps"], hp["eps_high"])


def _check_eps_high(values: dict, num_actions: int) -> None:
    for i, v in enumerate(_as_list(values["eps_high"])):
        if -1.0 < v < 0.0:
            field = "algo.eps_high" + (f"[{i}]" if isinstance(values["eps_high"], list) else "")
            raise ConfigError(field, f"must be >= 0, or -1 for eps_high = eps; got {v}")


ppo_clip = Piece(
    "ppo_clip", "PPO's clipped surrogate min(r A, clip(r, 1 - eps, 1 + eps_high) A); eps_high = -1 "
                "is eps (DAPO's clip-higher: eps_high = 0.28; TRL epsilon / epsilon_high, verl "
                "clip_ratio_low / clip_ratio_high)",
    hparams=(EPS, EPS_HIGH), checks=(_check_eps_high,),
    surrogate=lambda ratio, adv, hp: ppo_clip_tokens(ratio, adv, hp["eps"], upper_eps(hp)))

plain_ratio = Piece(
    "plain_ratio", "the unclipped surrogate r A", surrogate=lambda ratio, adv, hp: (
        ratio * adv, jnp.zeros(ratio.shape, bool)))


def gspo_tokens(ratio: Array, adv: Array, eps: Array, eps_high: Array) -> tuple[Array, Array]:
    """GSPO (Zheng et al. 2025): the response's ratio ``s_i = exp((1/L) sum_t log r_t)`` on each of
    its tokens, clipped as PPO's: ``min(s_i A, clip(s_i, 1 - eps, 1 + eps_high) A)``. ``[M, G, L]``.

    The gradient flows through the mean: ``d s_i / d log pi_t = s_i / L``, and the response's
    ``L`` tokens each carry the value, so in the token mean every token of an unclipped response
    gets ``s_i A`` (``r_t A`` in PPO), and every token of a clipped one 0. This is TRL's
    ``importance_sampling_level = "sequence"`` and, for responses of equal length under the token
    mean, verl's ``gspo`` loss, whose token form ``sg(s_i) pi_t / sg(pi_t)`` has the same value and
    the same gradient (verl also caps ``log s_i`` at 10, a guard not needed here)."""
    log_s = jnp.mean(jnp.log(ratio), axis=-1, keepdims=True)
    return ppo_clip_tokens(jnp.broadcast_to(jnp.exp(log_s), ratio.shape), adv, eps, eps_high)


gspo_clip = Piece(
    "gspo_clip", "GSPO (Zheng et al. 2025): one ratio per response s = exp(mean_t log r), clipped "
                 "at sequence level min(s A, clip(s, 1 - eps, 1 + eps_high) A) on every token "
                 "(TRL importance_sampling_level = \"sequence\", verl gspo)",
    hparams=(EPS, EPS_HIGH), checks=(_check_eps_high,),
    surrogate=lambda ratio, adv, hp: gspo_tokens(ratio, adv, hp["eps"], upper_eps(hp)))


def cispo_tokens(ratio: Array, adv: Array, eps_max: Array) -> tuple[Array, Array]:
    """CISPO (MiniMax-M1, 2025): ``sg(min(r, eps_max)) A log r`` per token, whose gradient in
    ``log pi`` is ``min(r, eps_max) A``: the importance weight is capped, never the gradient cut.
    The value differs from the paper's ``sg(min(r, eps_max)) A log pi`` by the constant
    ``sg(.) A log pi_old`` (same gradient; 0 on-policy). Flags tokens whose weight was capped
    (``r > eps_max``, ``A != 0``)."""
    weight = jax.lax.stop_gradient(jnp.minimum(ratio, eps_max))
    return weight * adv * jnp.log(ratio), (ratio > eps_max) & (adv != 0)


cispo_weight = Piece(
    "cispo_weight", "CISPO (MiniMax-M1 2025): sg(min(r, eps_max)) A log pi; the weight capped above "
                    "only (TRL loss_type = \"cispo\" with epsilon_high = eps_max; verl's cispo also "
                    "clamps below at 1 - clip_ratio_low)",
    hparams=(Hparam("eps_max", 5.0, "cap of CISPO's importance weight (ScaleRL, TRL: 5)",
                    low=1.0),),
    surrogate=lambda ratio, adv, hp: cispo_tokens(ratio, adv, hp["eps_max"]))


def sapo_tokens(ratio: Array, adv: Array, tau_pos: Array, tau_neg: Array) -> tuple[Array, Array]:
    """SAPO (Gao et al. 2025): ``f(r) A`` with the soft gate ``f(r) = sigma(tau (r - 1)) 4 / tau``,
    ``tau = tau_pos`` where ``A > 0``, else ``tau_neg``. ``d f / d log pi = 4 sigma (1 - sigma) r``:
    exactly ``A`` at ``r = 1`` (the policy gradient on-policy), decaying smoothly as ``r`` leaves 1
    instead of dropping to 0 at a clip boundary. Nothing is clipped."""
    tau = jnp.where(adv > 0, tau_pos, tau_neg)
    return jax.nn.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau * adv, jnp.zeros(ratio.shape, bool)


sapo_gate = Piece(
    "sapo_gate", "SAPO (Gao et al. 2025): sigma(tau (r - 1)) 4 / tau x A, tau = tau_pos for A > 0, "
                 "tau_neg otherwise: a soft gate in place of the clip (as TRL loss_type = "
                 "\"sapo\" and verl sapo)",
    hparams=(Hparam("tau_pos", 1.0, "SAPO gate temperature for A > 0", low=0.0, low_open=True),
             Hparam("tau_neg", 1.05, "SAPO gate temperature for A <= 0", low=0.0, low_open=True)),
    surrogate=lambda ratio, adv, hp: sapo_tokens(ratio, adv, hp["tau_pos"], hp["tau_neg"]))


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


# ----------------------------------------------------------------------------- bonuses

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


# ----------------------------------------------------------------------------- KL to a reference

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


# ----------------------------------------------------------------------------- entropy control

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
    low, high = _as_list(values["entropy_coef_min"]), _as_list(values["entropy_coef_max"])
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
    if max(_as_list(values["entropy_target"])) > top:
        raise ConfigError("algo.entropy_target", f"{max(_as_list(values['entropy_target']))} "
                                                 f"exceeds the largest entropy log({num_actions}) "
                                                 f"= {top:.4f}")


# ----------------------------------------------------------------------------- the rule

def per_token(values: Array, sample: Batch) -> Array:
    """A per-response value ``[M, G]`` on every token ``[M, G, L]``."""
    return jnp.broadcast_to(values[..., None], sample.state.shape)


def mini_batch(ctx: Context, adv: Array, j: int, parts: int) -> tuple[Context, Array]:
    """The ``j``-th of ``parts`` equal mini-batches of the step's batch (its prompts ``j M/parts``
    to ``(j + 1) M/parts - 1``, whole groups, in order: verl's split without shuffling), as a
    ``Context`` of its own, and its advantages ``[M/parts, G, L]``. The advantages were computed
    on the whole batch."""
    if parts == 1:
        return ctx, adv
    m = ctx.batch // parts
    cut = lambda x: x[j * m:(j + 1) * m]  # noqa: E731
    s = ctx.sample
    sample = s._replace(prompt=cut(s.prompt), state=cut(s.state), action=cut(s.action),
                        reward=cut(s.reward), togo=cut(s.togo))
    return ctx._replace(sample=sample, logp_old=cut(ctx.logp_old), batch=m), cut(adv)


def policy_step(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, batch: int, group: int,
                epochs: int, pieces: tuple[Piece, ...], mini_batches: int = 1, **options):
    """One step of the rule chained from ``pieces`` (module docstring): ``epochs`` passes over one
    batch of ``batch`` prompts x ``group`` responses drawn from ``pi_old = pi``, each pass one
    optimiser step per mini-batch (``mini_batch``: ``epochs x mini_batches`` steps in all).
    The objective is the token mean ``1/(M G L) sum`` (GRPO's ``1/G sum_i 1/|o_i| sum_t``, since
    every response of an environment has the same length) over the mini-batch, plus the bonuses.
    Only the first optimiser step is on-policy: with ``epochs = mini_batches = 1`` the ratio is 1
    at the only gradient and clipping never acts. No closed form of the expected
    step is computed: ``dH_pred_closed`` is NaN. A rule whose pieces carry state (``Piece.init``)
    has ``opt_state = (optimiser state, {piece name: carried})``."""
    carrying = any(p.init is not None for p in pieces)
    opt_state, carried = opt_state if carrying else (opt_state, {})
    k_batch, k_prepare, k_select = jax.random.split(key, 3)
    draw = next((p.draw for p in pieces if p.draw is not None), None)
    drawn = {}
    if draw is None:
        sample = env.sample(k_batch, theta, batch, group)
    else:
        sample, drawn = draw(env, k_batch, theta, batch, group, options)
    ctx = Context(theta, ev, env, sample, ev.log_pi[sample.state, sample.action], batch, group,
                  options, carried)
    task_reward = sample.reward
    for piece in pieces:
        if piece.reward is not None:
            ctx = ctx._replace(sample=ctx.sample._replace(
                reward=piece.reward(ctx.sample.reward, ctx, hp)))
    adv = None
    for piece in pieces:
        if piece.advantage is not None:
            adv = piece.advantage(adv, ctx, hp)
    reward = ctx.sample.reward
    info = {
        "entropy_batch": jnp.mean(ev.ent[sample.state]),
        "batch_reward": jnp.mean(task_reward),
        "zero_adv_groups": jnp.mean(jnp.all(reward == reward[:, :1], axis=-1), dtype=theta.dtype),
        **drawn,
    }
    states = {}
    for piece in pieces:
        if piece.prepare is not None:
            states[piece.name], extra = piece.prepare(ctx, hp, k_prepare)
            info.update(extra)
    surrogate = next(p.surrogate for p in pieces if p.surrogate is not None)

    def objective(th, k, part: Context, part_adv: Array):
        log_pi = jax.nn.log_softmax(th, axis=-1)
        logp = log_pi[part.sample.state, part.sample.action]
        ratio = jnp.exp(logp - part.logp_old)
        value, clipped = surrogate(ratio, part_adv, hp)
        tok = Tokens(value, clipped, logp, ratio, part_adv)
        aux = {}
        for piece in pieces:
            if piece.select is not None:
                tok, extra = piece.select(tok, part, hp, k)
                aux.update(extra)
        total = jnp.mean(tok.value)
        for piece in pieces:
            if piece.bonus is not None:
                total = total + piece.bonus(log_pi, part, hp, states.get(piece.name))
        return total, {"clip_frac": jnp.mean(tok.clipped, dtype=th.dtype),
                       "clip_frac_low": jnp.mean(tok.clipped & (tok.adv < 0), dtype=th.dtype),
                       "clip_frac_high": jnp.mean(tok.clipped & (tok.adv > 0), dtype=th.dtype),
                       **aux}

    def one_pass(carry, epoch):
        """One pass over the batch: an optimiser step per mini-batch. Columns ``[mini_batches]``."""
        theta, opt_state = carry
        stats = []
        for j in range(mini_batches):
            part, part_adv = mini_batch(ctx, adv, j, mini_batches)
            k = jax.random.fold_in(k_select, epoch * mini_batches + j)
            direction, aux = jax.grad(objective, has_aux=True)(theta, k, part, part_adv)
            theta, opt_state = apply_direction(opt, theta, opt_state, direction)
            stats.append(aux)
        return (theta, opt_state), jax.tree.map(lambda *x: jnp.stack(x), *stats)

    if epochs == 1:
        (theta, opt_state), stats = one_pass((theta, opt_state), 0)
    else:  # a loop, not `epochs` copies of the pass: the program compiles in the time of one
        (theta, opt_state), stats = jax.lax.scan(one_pass, (theta, opt_state), jnp.arange(epochs))
    info.update(jax.tree.map(jnp.mean, stats))
    info["dH_pred_closed"] = jnp.full((), jnp.nan, theta.dtype)
    if not carrying:
        return theta, opt_state, info
    carried = dict(carried)
    for piece in pieces:
        if piece.update is not None:
            carried[piece.name], extra = piece.update(carried[piece.name], theta, ctx, hp, info)
            info.update(extra)
    return theta, (opt_state, carried), info


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
    draws = [p.name for p in pieces if p.draw is not None]
    if len(draws) > 1:
        raise ValueError(f"{name}: at most one piece may draw the batch, got {draws}")
    fn = functools.partial(policy_step, pieces=tuple(pieces))
    carrying = tuple(p for p in pieces if p.init is not None)

    def init(theta, hp, opt):
        return opt.init(theta), {p.name: p.init(theta, hp) for p in carrying}

    return RuleSpec(
        name=name, fn=fn, summary=summary,
        hparams=merge("hyperparameters", name, (ETA,), *(p.hparams for p in pieces)),
        options=merge("options", name, options, *(p.options for p in pieces)),
        columns=merge("columns", name, BATCH_COLUMNS, *(p.columns for p in pieces)),
        checks=GROUP_CHECKS + tuple(c for p in pieces for c in p.checks), sampled=True,
        pieces=tuple(pieces),
        init=init if carrying else None)


def with_defaults(piece: Piece, **defaults) -> Piece:
    """``piece`` with other defaults for some of its hyperparameters (a preset's recipe values:
    ``with_defaults(ppo_clip, eps_high=0.28)``); name, bounds and meaning unchanged."""
    unknown = set(defaults) - {h.name for h in piece.hparams}
    if unknown:
        raise ValueError(f"{piece.name} has no hyperparameter(s) {sorted(unknown)}")
    return dataclasses.replace(piece, hparams=tuple(
        dataclasses.replace(h, default=defaults.get(h.name, h.default)) for h in piece.hparams))


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
