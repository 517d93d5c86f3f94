"""Initial policies: logits ``theta: [S, A]`` for one seed. Pure functions; the builder vmaps the
random ones over seed keys. ``INITS`` declares the ``[policy]`` table: each ``init`` with its fields
and how it builds the ``[N, S, A]`` initial logits of a run."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from entropy_sim import errors
from entropy_sim.envs.base import F32
from entropy_sim.envs.registry import over_keys
from entropy_sim.errors import ConfigError
from entropy_sim.parts import Field, Variant

Array = jax.Array


def uniform(num_states: int, num_actions: int) -> Array:
    """All-zero logits: the uniform policy. ``[S, A]``."""
    return jnp.zeros((num_states, num_actions))


def from_probs(probs: Array, num_states: int) -> Array:
    """Logits ``log p`` of probabilities given per action ``[A]`` (same in every state) or per
    state ``[S, A]``. ``-> [S, A]``."""
    return jnp.broadcast_to(jnp.log(probs), (num_states, probs.shape[-1]))


def from_logits(logits: Array, num_states: int) -> Array:
    """Logits given per action ``[A]`` or per state ``[S, A]``. ``-> [S, A]``."""
    return jnp.broadcast_to(logits, (num_states, logits.shape[-1]))


def gaussian(key: Array, num_states: int, num_actions: int, scale: float) -> Array:
    """Random logits ``scale * N(0, 1)``. ``[S, A]``."""
    return scale * jax.random.normal(key, (num_states, num_actions), F32)


def prior(key: Array, num_states: int, num_actions: int, peak: float,
          correct: Array | None = None, correct_mass: float | None = None) -> Array:
    """A confident "pretrained" prior, not necessarily right: in each state one action drawn
    uniformly at random gets probability ``peak``, the others share ``1 - peak``.

    With ``correct: [S, A]`` (the correct answers) and ``correct_mass``, the probabilities are then
    rescaled so the correct answers of each state hold ``correct_mass`` in total (relative
    probabilities inside and outside the correct set kept). States whose actions are all correct,
    or none, are left as they are. ``-> [S, A]``.
    """
    favoured = jax.random.randint(key, (num_states,), 0, num_actions, jnp.int32)
    rest = (1.0 - peak) / (num_actions - 1)
    pi = jnp.where(jax.nn.one_hot(favoured, num_actions) > 0, peak, rest)
    if correct is not None and correct_mass is not None:
        mass = jnp.sum(jnp.where(correct, pi, 0.0), axis=-1, keepdims=True)
        mixed = (mass > 0) & (mass < 1)
        scale = jnp.where(correct, correct_mass / jnp.where(mixed, mass, 1.0),
                          (1.0 - correct_mass) / jnp.where(mixed, 1.0 - mass, 1.0))
        pi = jnp.where(mixed, pi * scale, pi)
    return jnp.log(pi)


# ----------------------------------------------------------------------------- [policy] declarations

class Start(NamedTuple):
    """What an initialisation builds from: the environment (a leading seed axis when
    ``per_seed``), the seeds' keys for their initial policies ``[N, 2]`` and the table's shape."""

    env: Any
    per_seed: bool
    keys: Array
    num_states: int
    num_actions: int

    def same(self, theta: Array) -> Array:
        """One ``[S, A]`` table for every seed: ``[N, S, A]``."""
        return jnp.broadcast_to(theta, (self.keys.shape[0], self.num_states, self.num_actions))


def _table(name: str):
    """A check: ``values[name]`` holds one row ``[A]`` or a table ``[S][A]``."""
    def check(v, env) -> None:
        table = errors.as_array(name, v[name])
        if table.shape not in ((env.num_actions,), (env.num_states, env.num_actions)):
            raise ConfigError(name, f"expected {env.num_actions} values (one per action) or a "
                                    f"[{env.num_states}][{env.num_actions}] table, got shape "
                                    f"{list(table.shape)}")
        if name == "probs":
            errors.probabilities(name, table, strictly_positive=True)
    return check


def _needs_correct_answers(v, env) -> None:
    if v["correct_mass"] is not None and not env.correct_answers:
        raise ConfigError("correct_mass", f"needs correct answers; {env.kind.name} envs have none "
                                          f"(use a bandit or token_tree)")


def _prior(v, start: Start) -> Array:
    s, a, peak, mass = start.num_states, start.num_actions, v["peak"], v["correct_mass"]
    if mass is None:
        return jax.vmap(lambda k: prior(k, s, a, peak))(start.keys)
    draw = lambda k, e: prior(k, s, a, peak, e.correct_mask(), mass)  # noqa: E731
    return jax.vmap(draw, in_axes=(0, 0 if start.per_seed else None))(start.keys, start.env)


INITS = {
    "uniform": Variant("the uniform policy (all-zero logits)",
                       build=lambda v, start: start.same(uniform(start.num_states, start.num_actions))),
    "probs": Variant("given probabilities", (
        Field("probs", "array", doc="one row [A] for every state, or a table [S][A]"),
        _table("probs")),
        build=lambda v, start: start.same(from_probs(jnp.asarray(np.asarray(v["probs"])),
                                                     start.num_states))),
    "logits": Variant("given logits", (
        Field("logits", "array", doc="one row [A] for every state, or a table [S][A]"),
        _table("logits")),
        build=lambda v, start: start.same(from_logits(jnp.asarray(np.asarray(v["logits"])),
                                                      start.num_states))),
    "gaussian": Variant("random logits scale * N(0, 1), per seed", (
        Field("scale", "float", 1.0, "standard deviation of the logits", low=0.0),),
        build=lambda v, start: over_keys(gaussian, (
            ("num_actions", start.num_actions), ("num_states", start.num_states),
            ("scale", v["scale"])))(start.keys)),
    "prior": Variant("a confident prior: one random action per state gets probability peak", (
        Field("peak", "float", 0.9, "probability of the favoured action",
              low=lambda v, env: 1.0 / env.num_actions, high=1.0, high_open=True),
        Field("correct_mass", "float", None, "rescale so the correct answers hold this much",
              low=0.0, high=1.0, low_open=True, high_open=True), _needs_correct_answers),
        build=_prior),
}
