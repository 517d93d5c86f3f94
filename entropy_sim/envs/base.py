"""What every environment shares: the exact evaluation of a tabular softmax policy."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Evaluation(NamedTuple):
    """Exact quantities of the policy ``pi = softmax(theta)`` in one environment.

    With ``tau > 0`` the values are the entropy-regularised (soft) ones of docs/theory.md §3.6:
    ``V_tau(s) = sum_a pi(a|s) (Q_tau(s,a) - tau log pi(a|s))`` and
    ``A_tau = Q_tau - tau log pi - V_tau``; with ``tau = 0`` they are the usual ``Q, V, A``.
    """

    pi: Array       # [S, A] pi(a|s)
    log_pi: Array   # [S, A] log pi(a|s)
    ent: Array      # [S] H(pi(.|s)), natural log
    occ: Array      # [S] occupancy d(s) of docs/theory.md §1.5; sums to 1
    q: Array        # [S, A] Q_tau(s, a)
    v: Array        # [S] V_tau(s)
    adv: Array      # [S, A] A_tau(s, a)
    ret: Array      # [] return J(pi), unregularised
    ret_reg: Array  # [] regularised return J_tau(pi) = J + tau * horizon * sum_s d(s) H(s)
    success: Array  # [P] expected reward per prompt (P(correct) for binary rewards); P = 1 for MDPs

    @property
    def entropy(self) -> Array:
        """Aggregate entropy ``H(pi) = sum_s d(s) H(pi(.|s))``. ``[]``."""
        return jnp.sum(self.occ * self.ent)


def policy(theta: Array) -> tuple[Array, Array, Array]:
    """``(pi, log_pi, ent)`` of ``softmax(theta)``: ``[S, A] -> [S, A], [S, A], [S]``."""
    log_pi = jax.nn.log_softmax(theta, axis=-1)
    pi = jnp.exp(log_pi)
    ent = -jnp.sum(pi * log_pi, axis=-1)
    return pi, log_pi, ent


def soft_values(pi: Array, log_pi: Array, q: Array, tau: Array) -> tuple[Array, Array]:
    """``V_tau = E_pi[Q - tau log pi]`` and ``A_tau = Q - tau log pi - V_tau``. ``[S, A] -> [S], [S, A]``."""
    q_soft = q - tau * log_pi
    v = jnp.sum(pi * q_soft, axis=-1)
    return v, q_soft - v[:, None]


def float_dtype():
    """The default float dtype: float32, or float64 when ``jax_enable_x64`` is on."""
    return jnp.zeros(()).dtype
