"""Contextual bandits (prompts ``s ~ rho``, one action, reward ``r[s, a]``); a bandit is ``S = 1``.

docs/theory.md §1.6: the MDP with ``gamma = 0``, occupancy ``d = rho``, ``Q = r``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from entropy_sim import errors, prng
from entropy_sim.parts import Cases, Field, OneOf, Variant, fields_of
from entropy_sim.sampling import Batch, Tally, count_at_least, draw_prompts, inverse_cdf
from entropy_sim.envs.base import (F32, Evaluation, all_binary, float_dtype as _float, policy,
                                   soft_values)
from entropy_sim.envs.registry import Draw, EnvKind, register

Array = jax.Array

NOISE_MODELS = ("deterministic", "bernoulli", "gaussian")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ContextualBandit:
    """``S`` prompts with weights ``rho``, ``A`` actions, mean rewards ``r``.

    ``noise`` says how a sampled reward is drawn around its mean (used by sampled algorithms):
    exactly the mean, a Bernoulli with that mean (means in [0, 1]), or Gaussian with ``noise_std``.
    """

    r: Array          # [S, A] mean reward r[s, a]
    rho: Array        # [S] prompt weights, sum to 1
    noise_std: Array  # [] standard deviation of Gaussian reward noise
    noise: str = dataclasses.field(default="deterministic", metadata=dict(static=True))

    correct_answers = True  # the best actions of each prompt (``correct_mask``)

    @property
    def num_states(self) -> int:
        return self.r.shape[-2]

    @property
    def num_actions(self) -> int:
        return self.r.shape[-1]

    @property
    def num_prompts(self) -> int:
        return self.num_states

    @property
    def horizon(self) -> Array:
        """Expected episode length; the PG gradient carries ``horizon * d(s)``."""
        return jnp.ones((), self.r.dtype)

    def evaluate(self, theta: Array, tau: Array = 0.0) -> Evaluation:
        """Exact evaluation of ``softmax(theta)``, ``theta: [S, A]``."""
        pi, log_pi, ent = policy(theta)
        success = jnp.sum(pi * self.r, axis=-1)
        v, adv = soft_values(pi, log_pi, self.r, tau)
        return Evaluation(pi=pi, log_pi=log_pi, ent=ent, occ=self.rho, q=self.r, v=v, adv=adv,
                          ret=jnp.sum(self.rho * success), ret_reg=jnp.sum(self.rho * v), success=success)

    def sample(self, key: Array, logits: Array, prompts: int, group: int) -> Batch:
        """``prompts`` contexts from ``rho``, each with ``group`` actions from ``softmax(logits)``
        and rewards from the noise model. ``logits: [S, A]``.

        One uniform per draw: it picks the action by inverse CDF and, for Bernoulli rewards, its
        position inside the action's interval ``[c_{a-1}, c_a)`` (uniform there, independent of
        the action) decides the reward: ``R = 1`` iff it falls in the first ``r[s, a]`` fraction.
        """
        # Subkeys 0, 1, 2 for prompts, actions and Gaussian noise, each hashed only where used.
        prompt = draw_prompts(jax.random.fold_in(key, 0), self.rho, prompts)  # [M]
        cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # [S, A]
        r = self.r
        if self.num_states > 1:  # one row per group; a bandit's single row broadcasts
            cdf, r = cdf[prompt], r[prompt]  # [M, A]
        u = prng.uniform(prng.fold_in(key, 1), (prompts, group), cdf.dtype)
        if self.noise == "bernoulli" and self.num_states == 1:
            action, reward = _bernoulli_by_counting(u, cdf, r)
        else:
            action = inverse_cdf(u, cdf[:, None, :])  # [M, G]
            rows = jnp.arange(cdf.shape[0])[:, None]
            if self.noise == "bernoulli":
                stop = _reward_thresholds(cdf, r)[rows, action]
                reward = (u * cdf[:, -1:] < stop).astype(cdf.dtype)
            else:
                reward = r[rows, action]
                if self.noise == "gaussian":
                    noise = jax.random.normal(jax.random.fold_in(key, 2), reward.shape, reward.dtype)
                    reward = reward + self.noise_std * noise
        state = jnp.broadcast_to(prompt[:, None, None], (prompts, group, 1))
        return Batch(prompt=prompt, state=state, action=action[..., None], reward=reward,
                     togo=reward[..., None], discount=jnp.ones((1,), reward.dtype))

    @property
    def tallies(self) -> bool:
        """Whether ``tally`` gives a batch's sufficient statistics: one prompt, rewards that are
        their means or Bernoulli draws."""
        return self.num_states == 1 and self.noise != "gaussian"

    def tally(self, key: Array, probs: Array, responses: int) -> Tally:
        """The counts and reward sums per action of ``sample(key, logits, responses, 1)`` with
        ``probs = softmax(logits)``: the same uniforms (tested draw for draw), without per-draw
        actions or rewards. Needs ``tallies``. ``probs: [1, A]``.

        With ``x = u c_{A-1}`` and ``C_a = #{x >= c_a}`` (``C_{-1} = B``, ``C_{A-1} = 0``), action
        ``a`` is drawn ``N_a = C_{a-1} - C_a`` times. A Bernoulli reward pays iff ``x < t_a``
        (``_reward_thresholds``, inside the action's interval), so with ``D_a = #{x >= t_a}``,
        which counts the unpaid draws of ``a`` and every draw above it, the successes are
        ``C_{a-1} - D_a``.
        """
        cdf = jnp.cumsum(probs[0])  # [A]
        u = prng.uniform(prng.fold_in(key, 1), (responses,), cdf.dtype)
        x = u * cdf[-1]
        if self.noise == "bernoulli":
            above = count_at_least(x, jnp.concatenate([cdf[:-1], _reward_thresholds(cdf, self.r[0])]))
            at_least, unpaid = above[:-cdf.shape[0]], above[-cdf.shape[0]:]
        else:
            at_least = count_at_least(x, cdf[:-1])
        from_a = jnp.concatenate([jnp.full((1,), responses, x.dtype), at_least])  # C_{a-1}
        count = from_a - jnp.concatenate([at_least, jnp.zeros((1,), x.dtype)])
        reward = from_a - unpaid if self.noise == "bernoulli" else count * self.r[0]
        return Tally(count=count[None], reward=reward[None])

    def correct_mask(self) -> Array:
        """``[S, A]`` True for the best actions of each prompt (the correct answers)."""
        return self.r >= jnp.max(self.r, axis=-1, keepdims=True)

    def binary_rewards(self) -> bool:
        """Every mean reward is 0 or 1 (pass@k is then defined)."""
        return all_binary(self.r)

    def prompt_weights(self) -> Array:
        return self.rho

    def optimal_return(self) -> Array:
        """``J* = sum_s rho(s) max_a r[s, a]``. ``[]``."""
        return jnp.sum(self.rho * jnp.max(self.r, axis=-1))


def _reward_thresholds(cdf: Array, r: Array) -> Array:
    """``t_a``: a draw ``x = u c_{A-1}`` in action ``a``'s interval ``[c_{a-1}, c_a)`` pays
    (``R = 1``) iff ``x < t_a = c_{a-1} + r_a (c_a - c_{a-1})``, compared exactly as ``inverse_cdf``
    compares. Means of 0 and 1 give the interval's ends without arithmetic, so rounding never flips
    a binary reward; every ``t_a`` is clipped into ``[c_{a-1}, c_a]`` (the last interval ends at
    ``inf``). ``cdf, r: [..., A] -> [..., A]``."""
    start = jnp.concatenate([jnp.zeros_like(cdf[..., :1]), cdf[..., :-1]], axis=-1)
    end = jnp.concatenate([cdf[..., :-1], jnp.full_like(cdf[..., :1], jnp.inf)], axis=-1)
    inside = jnp.clip(start + (cdf - start) * r, start, end)
    return jnp.where(r >= 1, end, jnp.where(r <= 0, start, inside))


def _bernoulli_by_counting(u: Array, cdf: Array, r: Array) -> tuple[Array, Array]:
    """The Bernoulli branch of ``sample`` for one row ``cdf, r: [1, A]``, without a gather:
    ``u: [M, G] -> (action, reward)``, both ``[M, G]``: draw for draw the actions and rewards of
    the contextual branch (inverse CDF, then a gather of each draw's threshold; tested).

    With ``x = u c_{A-1}``, the action is ``#{a < A - 1: x >= c_a}``. Each threshold ``t_a``
    (``_reward_thresholds``, inside its action's interval) is ``> x`` for every action above the
    one drawn and ``<= x`` for every action below it, so ``#{a: x < t_a} = (A - 1 - action) + R``.
    Two compare-and-count passes over the A thresholds replace the per-draw gather of ``t_a``,
    which XLA:CPU runs slowly (``benchmarks/sampling.py``).
    """
    cdf, r = cdf[0], r[0]
    x = (u * cdf[-1])[..., None]
    below = jnp.sum(x >= cdf[:-1], axis=-1)
    above = jnp.sum(x < _reward_thresholds(cdf, r), axis=-1)
    reward = (above + below - (cdf.shape[0] - 1)).astype(cdf.dtype)
    return below.astype(jnp.int32), reward


def contextual_bandit(r, rho=None, *, noise: str = "deterministic",
                      noise_std: float = 1.0) -> ContextualBandit:
    """A validated contextual bandit from a reward table ``r: [S][A]`` and weights ``rho: [S]``."""
    r = errors.as_array("r", r, ndim=2)
    if r.shape[1] < 2:
        raise errors.ConfigError("r", f"needs at least 2 actions, got {r.shape[1]}")
    if rho is None:
        rho = np.full(r.shape[0], 1.0 / r.shape[0])
    rho = errors.probabilities("rho", errors.as_array("rho", rho, ndim=1))
    if rho.shape[0] != r.shape[0]:
        raise errors.ConfigError("rho", f"has {rho.shape[0]} entries for {r.shape[0]} contexts")
    _check_noise(noise, noise_std, r)
    return ContextualBandit(r=jnp.asarray(r, _float()), rho=jnp.asarray(rho, _float()),
                            noise_std=jnp.asarray(noise_std, _float()), noise=noise)


def bandit(means, *, noise: str = "deterministic", noise_std: float = 1.0) -> ContextualBandit:
    """A validated K-armed bandit with mean rewards ``means: [K]``."""
    means = errors.as_array("means", means, ndim=1)
    if means.shape[0] < 2:
        raise errors.ConfigError("means", f"needs at least 2 arms, got {means.shape[0]}")
    return contextual_bandit(means[None, :], noise=noise, noise_std=noise_std)


def random_bandit(key: Array, arms: int, *, generator: str = "uniform", low: float = 0.0,
                  high: float = 1.0, p: float = 0.5, loc: float = 0.0, scale: float = 1.0,
                  contexts: int = 1, rho=None, num_correct: int = 1,
                  noise: str = "deterministic", noise_std: float = 1.0) -> ContextualBandit:
    """A (contextual) bandit with rewards drawn from ``generator``. Pure: vmap it over keys.

    Generators of ``r[s, a]``: ``uniform`` on ``[low, high]``; ``bernoulli`` means in {0, 1} with
    ``P(1) = p``; ``gaussian`` ``N(loc, scale^2)``; ``verifiable``: exactly ``num_correct``
    actions of each prompt, chosen at random, have reward 1 (correct answers), the rest 0.
    """
    shape = (contexts, arms)
    if generator == "uniform":
        r = jax.random.uniform(key, shape, F32, minval=low, maxval=high)
    elif generator == "bernoulli":
        r = jax.random.bernoulli(key, jnp.float32(p), shape).astype(jnp.float32)
    elif generator == "gaussian":
        r = loc + scale * jax.random.normal(key, shape, F32)
    elif generator == "verifiable":
        # The num_correct smallest of `arms` iid uniforms are a uniform random subset.
        u = jax.random.uniform(key, shape, F32)
        rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
        r = (rank < num_correct).astype(jnp.float32)
    else:
        raise errors.ConfigError("generator", f"unknown bandit generator {generator!r}; "
                                              f"choose from uniform, bernoulli, gaussian, verifiable")
    rho = jnp.full((contexts,), 1.0 / contexts) if rho is None else jnp.asarray(rho)
    return ContextualBandit(r=r.astype(_float()), rho=rho.astype(_float()),
                            noise_std=jnp.asarray(noise_std, _float()), noise=noise)


def _check_noise(noise: str, noise_std: float, r: np.ndarray) -> None:
    if noise not in NOISE_MODELS:
        raise errors.ConfigError("noise", f"unknown noise model {noise!r}; choose from "
                                          f"{', '.join(NOISE_MODELS)}")
    errors.number("noise_std", noise_std, low=0.0)
    if noise == "bernoulli" and ((r < 0) | (r > 1)).any():
        raise errors.ConfigError("noise", "bernoulli rewards need mean rewards in [0, 1]")


# ----------------------------------------------------------------------------- [env] declarations

NOISE_FIELDS = (
    Field("noise", "str", "deterministic", "how a sampled reward is drawn around its mean "
          "(sampled rules): exactly, bernoulli (means in [0, 1]) or gaussian", choices=NOISE_MODELS),
    Field("noise_std", "float", 1.0, "standard deviation of gaussian reward noise", low=0.0),
)
SHARED = Field("shared", "bool", False, "draw one environment for all seeds (else one per seed)")


def _fewer_correct_than_actions(v, ctx) -> None:
    if v["num_correct"] >= v["actions"]:
        raise errors.ConfigError("num_correct", f"must be below the number of actions "
                                                f"{v['actions']}, got {v['num_correct']}")


def _bernoulli_means_in_unit_interval(v, ctx) -> None:
    if v["noise"] == "bernoulli" and (v["generator"] == "gaussian" or (
            v["generator"] == "uniform" and (v["low"] < 0 or v["high"] > 1))):
        raise errors.ConfigError("noise", "bernoulli rewards need mean rewards in [0, 1]")


def rho_matches(count: str) -> Callable:
    """A check: the optional prompt weights ``rho`` are a distribution over ``values[count]``
    prompts."""
    def check(v, ctx) -> None:
        if v["rho"] is not None:
            rho = errors.as_array("rho", v["rho"], ndim=1)
            if rho.shape[0] != v[count]:
                raise errors.ConfigError("rho", f"has {rho.shape[0]} entries for {v[count]} prompts")
            errors.probabilities("rho", rho)
    return check


RHO = Field("rho", "array", None, "prompt weights (default uniform)", ndim=1)
GENERATORS = {
    "uniform": Variant("means uniform on [low, high]", (
        Field("low", "float", 0.0, "lowest mean reward"),
        Field("high", "float", 1.0, "highest mean reward", low=lambda v, ctx: float(v["low"]))),
        binary=lambda v: v["low"] == v["high"] and v["low"] in (0, 1)),  # every mean is low
    "bernoulli": Variant("means in {0, 1}", (
        Field("p", "float", 0.5, "probability of a mean reward of 1", low=0.0, high=1.0),),
        binary=True),
    "gaussian": Variant("means N(loc, scale^2)", (
        Field("loc", "float", 0.0, "mean of the mean rewards"),
        Field("scale", "float", 1.0, "standard deviation of the mean rewards", low=0.0)),
        binary=lambda v: v["scale"] == 0 and v["loc"] in (0, 1)),
    "verifiable": Variant("num_correct correct answers (reward 1) per prompt, the rest 0", (
        Field("num_correct", "int", 1, "correct answers per prompt", low=1),
        _fewer_correct_than_actions), binary=True),
}


def _drawn(*generators) -> tuple:
    """The fields of rewards drawn by ``generator``, then ``shared``."""
    return (Field("generator", "str", "uniform", "how the mean rewards are drawn",
                  choices=generators),
            Cases("generator", {g: GENERATORS[g] for g in generators}), SHARED,
            _bernoulli_means_in_unit_interval)


def _draw(v, arms: int, contexts: int = 1, rho=None) -> Draw:
    params = {f.name: v[f.name] for f in fields_of(GENERATORS[v["generator"]].fields)}
    return Draw(random_bandit, dict(arms=arms, generator=v["generator"], contexts=contexts,
                                    rho=rho, noise=v["noise"], noise_std=v["noise_std"], **params),
                shared=v["shared"])


register(EnvKind("bandit", doc="a K-armed bandit", fields=(*NOISE_FIELDS, OneOf({
    "means": Variant("explicit", (Field("means", "array", doc="mean reward of each arm", ndim=1),),
                     build=lambda v: bandit(v["means"], noise=v["noise"], noise_std=v["noise_std"])),
    "arms": Variant("means drawn per seed", (
        Field("arms", "int", doc="number of arms", low=2), *_drawn("uniform", "bernoulli", "gaussian")),
        build=lambda v: _draw(v, v["arms"]), shape=lambda v: (1, v["arms"])),
}))))

register(EnvKind("contextual_bandit", doc="prompts s ~ rho, one action, reward r[s, a]", fields=(
    *NOISE_FIELDS, OneOf({
        "r": Variant("explicit", (RHO, Field("r", "array", doc="mean rewards [S][A]", ndim=2)),
                     build=lambda v: contextual_bandit(v["r"], v["rho"], noise=v["noise"],
                                                       noise_std=v["noise_std"]))},
        fallback=Variant("rewards drawn per seed", (
            Field("contexts", "int", doc="number of prompts", low=1),
            Field("actions", "int", doc="number of actions", low=2), RHO, rho_matches("contexts"),
            *_drawn("uniform", "bernoulli", "gaussian", "verifiable")),
            build=lambda v: _draw(v, v["actions"], v["contexts"], v["rho"]),
            shape=lambda v: (v["contexts"], v["actions"]))))))
