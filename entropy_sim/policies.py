"""Initial policies: logits ``theta: [S, A]`` for one seed. Pure functions; the builder vmaps the
random ones over seed keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
    return scale * jax.random.normal(key, (num_states, num_actions))


def prior(key: Array, num_states: int, num_actions: int, peak: float,
          correct: Array | None = None, correct_mass: float | None = None) -> Array:
    """A confident "pretrained" prior, not necessarily right: in each state one action drawn
    uniformly at random gets probability ``peak``, the others share ``1 - peak``.

    With ``correct: [S, A]`` (the correct answers) and ``correct_mass``, the probabilities are then
    rescaled so the correct answers of each state hold ``correct_mass`` in total (relative
    probabilities inside and outside the correct set kept). States whose actions are all correct,
    or none, are left as they are. ``-> [S, A]``.
    """
    favoured = jax.random.randint(key, (num_states,), 0, num_actions)
    rest = (1.0 - peak) / (num_actions - 1)
    pi = jnp.where(jax.nn.one_hot(favoured, num_actions) > 0, peak, rest)
    if correct is not None and correct_mass is not None:
        mass = jnp.sum(jnp.where(correct, pi, 0.0), axis=-1, keepdims=True)
        mixed = (mass > 0) & (mass < 1)
        scale = jnp.where(correct, correct_mass / jnp.where(mixed, mass, 1.0),
                          (1.0 - correct_mass) / jnp.where(mixed, 1.0 - mass, 1.0))
        pi = jnp.where(mixed, pi * scale, pi)
    return jnp.log(pi)
