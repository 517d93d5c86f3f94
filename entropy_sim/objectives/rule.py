"""``policy_rule``: pieces chained into an update rule (the step of docs/theory.md §4 and §5),
with epochs and mini-batches; ``with_defaults`` sets a piece's defaults.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from entropy_sim.envs.base import Evaluation
from entropy_sim.objectives.pieces import (BATCH_COLUMNS, ETA, GROUP_CHECKS, GROUP_OPTIONS,
                                          Context, Piece, Tokens)
from entropy_sim.optim import apply_direction
from entropy_sim.parts import RuleSpec, merge

Array = jax.Array


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
