"""Sampled responses: inverse-CDF draws and the batch every sampled update rule consumes.

A draw from a K-way categorical costs one uniform here (its position in the cumulative
distribution), where the Gumbel-max trick of ``jax.random.categorical`` costs K uniforms and 2K
logarithms. Random bits weigh heavily in a sampled step on a CPU, so this is the cheaper way for
every tabular policy (``benchmarks/sampling.py`` measures the difference); the uniforms come from
``prng.uniform``, JAX's Threefry generator with its rounds written out. In float32 an action whose
probability is below about 2^-24 per draw is drawn with an absolute error of that order.

REINFORCE-type rules need a batch only through one table, ``sum over tokens of weight at (s, a)``
(``response_table``). Environments whose responses are single tokens from one row (plain
bandits) give that table from sufficient statistics of the very same draws (``Tally``): counts
and reward sums per action, found by counting draws above thresholds, with no per-draw action,
reward or scatter.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropy_sim import prng

Array = jax.Array


class Batch(NamedTuple):
    """``M`` groups (one prompt each) of ``G`` responses of ``L`` tokens.

    A token is one visit ``(state, action)`` of a row of the logit table. Bandits have ``L = 1``;
    the token tree ``L = length``; an MDP rollout ``L = rollout_length`` steps from a start state.
    """

    prompt: Array    # [M] int: the prompt (context, start state) of each group
    state: Array     # [M, G, L] int: the row of theta at each token
    action: Array    # [M, G, L] int: the action (next token) taken
    reward: Array    # [M, G] outcome reward R of each response (discounted return in an MDP)
    togo: Array      # [M, G, L] REINFORCE weight of each token: gamma^t G_t in an MDP, else R
    discount: Array  # [L] gamma^t in an MDP, else ones

    @property
    def num_responses(self) -> int:
        return self.state.shape[0] * self.state.shape[1]


class Tally(NamedTuple):
    """Sufficient statistics of single-token responses: per ``(s, a)`` how many responses took
    ``a`` in ``s``, and the sum of their rewards. Both ``[S, A]`` float."""

    count: Array
    reward: Array


BASELINES = ("none", "mean", "loo", "value")


def inverse_cdf(u: Array, cdf: Array) -> Array:
    """The category of uniform ``u`` under the cumulative sums ``cdf``: ``[...], [..., K] -> [...]``
    int32 (broadcasting). ``cdf`` need not end at exactly 1."""
    count = jnp.sum(u[..., None] * cdf[..., -1:] >= cdf, axis=-1)
    return jnp.minimum(count, cdf.shape[-1] - 1).astype(jnp.int32)


def categorical(key: Array, probs: Array, shape: tuple[int, ...] = ()) -> Array:
    """``shape`` draws from ``probs: [K]`` by inverse CDF. int32."""
    u = prng.uniform(key, shape, probs.dtype)
    return inverse_cdf(u, jnp.cumsum(probs))


def draw_prompts(key: Array, rho: Array, count: int) -> Array:
    """``count`` prompts from the weights ``rho: [P]`` (all 0 when ``P = 1``). ``[count]`` int32."""
    if rho.shape[-1] == 1:
        return jnp.zeros((count,), jnp.int32)
    return categorical(key, rho, (count,))


def count_at_least(x: Array, thresholds: Array) -> Array:
    """``#{i: x_i >= t_j}`` for every threshold ``t_j``: ``[N], [J] -> [J]`` float.

    Sums in blocks of 32: XLA:CPU rewrites a reduction over more than 32 elements into a
    reduce-window, which inside a vmapped step ran over 100x slower than these blocks.
    """
    hits = (thresholds[:, None] <= x[None, :]).astype(jnp.int32)  # [J, N]
    total = sum(jnp.sum(hits[:, i:i + 32], axis=-1) for i in range(0, x.shape[0], 32))
    return total.astype(x.dtype)


def visit_table(batch: Batch, weight: Array, num_states: int, num_actions: int) -> Array:
    """``N[s, a] = sum of weight over the tokens at (s, a)``. ``weight: [M, G, L] -> [S, A]``."""
    if num_states == 1:  # every token is in state 0: scatter on the action alone
        table = jnp.zeros((num_actions,), weight.dtype)
        return table.at[batch.action.ravel()].add(weight.ravel())[None]
    table = jnp.zeros((num_states, num_actions), weight.dtype)
    return table.at[batch.state.ravel(), batch.action.ravel()].add(weight.ravel())


def baseline(sample: Batch, v: Array, kind: str) -> Array:
    """The baseline of every token, in the units of ``togo`` (``kind`` one of ``BASELINES``;
    ``v: [S]`` the exact values, for ``value``). ``[M, G, L]``."""
    togo = sample.togo
    if kind == "none":
        return jnp.zeros_like(togo)
    if kind == "value":
        return sample.discount * v[sample.state]
    n = sample.num_responses
    total = jnp.sum(togo, axis=(0, 1), keepdims=True)
    return total / n if kind == "mean" else (total - togo) / (n - 1)


def response_table(env, key: Array, logits: Array, probs: Array, responses: int, kind: str,
                   v: Array) -> tuple[Array, Array]:
    """REINFORCE's table for ``responses`` responses from ``env.sample(key, logits, responses, 1)``:
    ``sum over tokens of (togo - baseline) at (s, a)`` (``[S, A]``), and the mean reward (``[]``).
    ``probs = softmax(logits)``, already at hand in every rule, spares ``env.tally`` its softmax.

    From ``env.tally`` where the environment tallies (``env.tallies``): the same draws, so the same
    table up to the rounding of its sums. With counts ``N`` and reward sums ``W`` per action and
    ``total = sum W``, a token's ``R - b`` summed per action is ``W - N total / B`` (``mean``),
    ``W - (N total - W) / (B - 1)`` (``loo``) or ``W - N V`` (``value``).
    """
    if env.tallies:
        tally = env.tally(key, probs, responses)
        total = jnp.sum(tally.reward)
        table = {"none": lambda: tally.reward,
                 "mean": lambda: tally.reward - tally.count * (total / responses),
                 "loo": lambda: tally.reward - (tally.count * total - tally.reward) / (responses - 1),
                 "value": lambda: tally.reward - tally.count * v[:, None]}[kind]()
        return table, total / responses
    sample = env.sample(key, logits, responses, 1)
    weight = sample.togo - baseline(sample, v, kind)
    return visit_table(sample, weight, *logits.shape), jnp.mean(sample.reward)


def score_from_table(table: Array, pi: Array) -> Array:
    """``sum over tokens of weight * grad_theta log pi(a|s)`` from the table ``N`` of the weights
    per ``(s, a)`` (``visit_table``): row ``s`` of the score of a token at ``(s, a)`` is
    ``e_a - pi(.|s)``, so the sum is ``N - rowsum(N) pi``. ``[S, A], [S, A] -> [S, A]``."""
    return table - jnp.sum(table, axis=-1, keepdims=True) * pi


def group_advantage(reward: Array) -> Array:
    """GRPO's ``(R_i - mean R) / std R`` within each group (sample std, as verl and TRL); exactly 0
    for a group whose rewards are all equal, never NaN. ``[M, G] -> [M, G]``."""
    mean = jnp.mean(reward, axis=-1, keepdims=True)
    std = jnp.std(reward, axis=-1, keepdims=True, ddof=1)
    equal = jnp.all(reward == reward[..., :1], axis=-1, keepdims=True)
    return jnp.where(equal, 0.0, (reward - mean) / jnp.where(equal, 1.0, std))
