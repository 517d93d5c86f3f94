"""The vocabulary of the policy-optimisation family: a step's ``Context``, the ``Tokens`` of the
current logits, a ``Piece`` (one hook of a step, with its declarations), and the declarations every
rule of the family shares (``eta``, ``eps``, the batch columns, the group options).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from entropy_sim.envs.base import Evaluation
from entropy_sim.errors import ConfigError
from entropy_sim.parts import Column, Hparam, Option
from entropy_sim.sampling import Batch

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


def per_token(values: Array, sample: Batch) -> Array:
    """A per-response value ``[M, G]`` on every token ``[M, G, L]``."""
    return jnp.broadcast_to(values[..., None], sample.state.shape)


def as_list(value) -> list:
    """A config value as a list (a declared check sees one value or a sweep's list)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]
