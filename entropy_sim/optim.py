"""The optax step every update rule goes through: an ascent direction in, new logits out."""

from __future__ import annotations

import jax
import optax

Array = jax.Array

OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, hp: dict) -> optax.GradientTransformation:
    """The optax transformation ``name`` with learning rate ``hp["eta"]`` (a traced array, so a
    new value never recompiles; 1 for the rules that set their own step and take no ``eta``).
    Rules hand it ``-direction``: optax minimises."""
    eta = hp["eta"] if "eta" in hp else 1.0
    if name == "sgd":
        return optax.sgd(eta)
    if name == "adam":
        return optax.adam(eta)
    raise ValueError(f"unknown optimizer {name!r}")


def apply_direction(opt: optax.GradientTransformation, theta: Array, opt_state, direction: Array):
    """One optimiser step along the ascent ``direction``. ``[S, A] -> [S, A]``."""
    updates, opt_state = opt.update(-direction, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state
