"""Softmax policy maths: entropies, covariances and divergences of categorical policies.

Every function acts on the last axis, so it takes one distribution ``[A]`` or a batch
``[..., A]`` alike. Inputs are logits ``theta`` or probabilities ``pi``; log-probabilities are
always computed with ``log_softmax`` so one-hot policies stay finite.
Conventions follow docs/theory.md §1: natural logarithm, entropy not divided by ``|A|``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def entropy(theta: Array) -> Array:
    """Shannon entropy ``H = -sum_a pi_a log pi_a`` of ``softmax(theta)``. ``[..., A] -> [...]``.

    Uses ``log_softmax``, so it is finite at (numerically) one-hot policies and huge logits.
    """
    log_pi = jax.nn.log_softmax(theta, axis=-1)
    return -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)


def renyi2(pi: Array) -> Array:
    """Rényi entropy of order 2, ``H_2 = -log sum_a pi_a^2``. ``[..., A] -> [...]``."""
    return -jnp.log(jnp.sum(pi * pi, axis=-1))


def grad_sq_norm(pi: Array) -> Array:
    """T1 (docs/theory.md §2.2): ``E_{a~pi} ||grad_z log pi(a)||^2 = 1 - sum_a pi_a^2``.
    ``[..., A] -> [...]``."""
    return 1.0 - jnp.sum(pi * pi, axis=-1)


def mean(pi: Array, x: Array) -> Array:
    """``E_{a~pi}[x_a]``. ``[..., A], [..., A] -> [...]``."""
    return jnp.sum(pi * x, axis=-1)


def cov(pi: Array, x: Array, y: Array) -> Array:
    """``Cov_{a~pi}(x_a, y_a)``, centred before multiplying for accuracy. ``[..., A] -> [...]``."""
    xc = x - mean(pi, x)[..., None]
    yc = y - mean(pi, y)[..., None]
    return jnp.sum(pi * xc * yc, axis=-1)


def indicator_cov(pi: Array, x: Array) -> Array:
    """``Cov_pi(x, 1[. = b] - pi)`` for every action ``b``: ``pi_b (x_b - E_pi x) - Cov_pi(x, pi)``
    (T4's temperature-REINFORCE row, docs/theory.md §3.4). ``[..., A] -> [..., A]``."""
    centred = x - mean(pi, x)[..., None]
    return pi * centred - cov(pi, x, pi)[..., None]


def var(pi: Array, x: Array) -> Array:
    """``Var_{a~pi}(x_a)``. ``[..., A] -> [...]``."""
    return cov(pi, x, x)


def second_order_term(pi: Array, log_pi: Array, dz: Array) -> Array:
    """The second-order term of ``H(softmax(theta + dz)) - H(softmax(theta))`` in ``dz``,
    ``-(1/2) (E_pi[u^2] + E_pi[l u^2])`` with ``u = dz - E_pi[dz]``, ``l = log pi - E_pi[log pi]``
    (docs/theory.md §8.1); the first-order term is ``-cov(pi, log_pi, dz)``. ``[..., A] -> [...]``."""
    u = dz - mean(pi, dz)[..., None]
    l = log_pi - mean(pi, log_pi)[..., None]
    return -0.5 * jnp.sum(pi * (1.0 + l) * u * u, axis=-1)


def total_variation(p: Array, q: Array) -> Array:
    """``(1/2) sum_a |p_a - q_a|``. ``[..., A], [..., A] -> [...]``."""
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def kl(log_p: Array, log_q: Array) -> Array:
    """``KL(p || q) = sum_a p_a (log p_a - log q_a)`` from log-probabilities. ``[..., A] -> [...]``."""
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def kl_bound(pi: Array, ent: Array, dz: Array) -> Array:
    """T2's bound (docs/theory.md §2.4) ``(|A|/2) ||dz||_inf^2 (1 - exp(-H(pi)))`` on
    ``KL(pi_next || pi)``.

    ``pi, dz: [..., A]``, ``ent: [...]`` -> ``[...]``.
    """
    num_actions = pi.shape[-1]
    return 0.5 * num_actions * jnp.max(jnp.abs(dz), axis=-1) ** 2 * (1.0 - jnp.exp(-ent))


def entropy_grad(pi: Array, log_pi: Array) -> Array:
    """``dH/dz_a = -pi_a (log pi_a + H)`` (docs/theory.md §2.3). ``[..., A] -> [..., A]``."""
    ent = -mean(pi, log_pi)
    return -pi * (log_pi + ent[..., None])


def _tilt(pi: Array, dz: Array) -> tuple[Array, Array, Array]:
    """For ``pi' ∝ pi exp(dz)``: ``u = dz - E_pi dz``, ``w = pi'/pi - 1`` and ``m = E_pi[expm1(u)]``
    (``w, u = O(dz)``, ``m = O(dz^2)``). ``u`` and ``w`` carry no cancellation; ``m`` sums O(dz) terms
    to an O(dz^2) result, so it (and ``kl_change``) is accurate to about ``eps / |dz|`` relative,
    against ``eps / dz^2`` for a difference of two KL-sized sums. ``[..., A]``."""
    u = dz - mean(pi, dz)[..., None]
    e = jnp.expm1(u)
    m = mean(pi, e)
    return u, (e - m[..., None]) / (1.0 + m[..., None]), m


# Above this centred logit change the tilt's exp(u) nears float32's range (exp(88)); there the
# change is large and the plain difference of two entropies (or the KL sum) is accurate anyway.
_TILT_MAX = 30.0


def entropy_change(pi: Array, log_pi: Array, dz: Array) -> Array:
    """Exact ``H(pi') - H(pi)`` for ``pi' ∝ pi exp(dz)``, stable for small ``dz``:
    ``-E_pi[(log pi + u) w] + log1p(m)`` (see ``_tilt``). Subtracting two entropies instead loses
    ``eps * H / |dH|`` relative accuracy, which in float32 swamps the second-order term; it is used
    only for changes ``|u| > 30``, where the tilt would overflow. ``[..., A] -> [...]``."""
    return changes(pi, log_pi, dz)[0]


def kl_change(pi: Array, dz: Array) -> Array:
    """Exact ``KL(pi' || pi)`` for ``pi' ∝ pi exp(dz)``, stable for small ``dz``:
    ``E_pi[u w] - log1p(m)`` (see ``_tilt``); the plain sum for changes ``|u| > 30``.
    ``[..., A] -> [...]``."""
    return changes(pi, jnp.log(jnp.maximum(pi, jnp.finfo(pi.dtype).tiny)), dz)[1]


def changes(pi: Array, log_pi: Array, dz: Array, log_next: Array | None = None) -> tuple[Array, Array]:
    """``(H(pi') - H(pi), KL(pi' || pi))`` for ``pi' ∝ pi exp(dz)`` as in ``entropy_change`` and
    ``kl_change``, sharing their work. ``log_next``: ``log pi'`` if the caller has it (it is
    only read where the change is large). ``[..., A] -> [...], [...]``."""
    large = _large(pi, dz)
    u, w, m = _tilt(pi, jnp.where(large[..., None], 0.0, dz))
    log1p_m = jnp.log1p(m)
    if log_next is None:
        log_next = jax.nn.log_softmax(log_pi + dz, axis=-1)
    pi_next = jnp.exp(log_next)
    d_ent = jnp.where(large, mean(pi, log_pi) - mean(pi_next, log_next),
                      log1p_m - mean(pi, (log_pi + u) * w))
    kl = jnp.where(large, mean(pi_next, log_next - log_pi), mean(pi, u * w) - log1p_m)
    return d_ent, kl


def _large(pi: Array, dz: Array) -> Array:
    """Rows whose centred change exceeds ``_TILT_MAX`` somewhere. ``[..., A] -> [...]``."""
    return jnp.max(jnp.abs(dz - mean(pi, dz)[..., None]), axis=-1) > _TILT_MAX
