"""Exact (expected-gradient) update rules for tabular softmax policies. docs/theory.md §3, §4.

Each rule (exact here, REINFORCE-type in ``sampled.py``, the GRPO family chained from pieces in
``entropy_sim.objectives``) is one pure, unbatched function

    rule(theta, opt_state, ev, env, hp, key, opt, **options) -> (theta_next, opt_state_next, info)

with ``theta: [S, A]`` logits, ``ev`` the exact ``Evaluation`` of ``softmax(theta)``, ``hp`` a dict of
scalar hyperparameter arrays (``eta``, ``tau``, ``temp``...), and ``opt`` the optax transformation
that turns the rule's ascent direction into the logit change ``dz``; ``options`` are static
settings such as batch sizes (a new value compiles anew; a new ``hp`` value does not). With ``sgd`` at learning rate
``eta`` the step is ``dz = eta * direction``, the textbook rule, and ``info["dH_pred_closed"]`` is
the rule's T4 closed form aggregated as ``sum_s d(s) dH(s)``. Under any other optimiser the
closed form does not describe the step; the runner reports it as NaN.
The runner vmaps rules over seeds and over the hyperparameter grid. ``registry.py`` registers
each rule with its declarations (``parts.RuleSpec``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropy_sim import softmax
from entropy_sim.diagnostics import temperature_law
from entropy_sim.envs.base import Evaluation
from entropy_sim.optim import OPTIMIZERS, apply_direction, make_optimizer  # noqa: F401 (re-exported)
from entropy_sim.sampling import response_table, score_from_table

Array = jax.Array


def finish(opt, theta, opt_state, direction, closed_s, ev, extra=None):
    """Apply the step; aggregate the per-state closed form as ``sum_s d(s) dH(s)``."""
    theta_next, opt_state = apply_direction(opt, theta, opt_state, direction)
    info = {"dH_pred_closed": jnp.sum(ev.occ * closed_s)}
    info.update(extra or {})
    return theta_next, opt_state, info


def pg(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """Softmax policy gradient ascent on ``J`` (``J_tau`` with ``tau > 0``, Mei et al. 2020):

        dz[s, a] = eta * horizon * d(s) * pi(a|s) * A_tau(s, a),

    ``horizon = 1/(1 - gamma)`` for an MDP, ``L`` for the token tree, 1 for bandits. This is the
    exact gradient ``dJ_tau/dtheta``. Closed form (T4): ``-eta h d(s) Cov(log pi, pi * A_tau)``.
    """
    weight = env.horizon * ev.occ  # [S]
    direction = weight[:, None] * ev.pi * ev.adv
    return finish(opt, theta, opt_state, direction, pg_closed(ev, env, hp["eta"]), ev)


def pg_closed(ev: Evaluation, env, eta: Array) -> Array:
    """T4 for PG, per state: ``-eta h d(s) Cov(log pi, pi * A_tau)``. ``[S]``."""
    return -eta * env.horizon * ev.occ * softmax.cov(ev.pi, ev.log_pi, ev.pi * ev.adv)


def npg(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """Natural policy gradient in the project's convention (docs/theory.md §3.7),
    ``dz[s, a] = eta * A_tau(s, a)`` (Cen et al. 2021 with ``tau > 0``; Agarwal et al.'s ``eta'`` is
    ``eta (1 - gamma)``).

    Closed form (T4): ``-eta Cov(log pi, A)``; with ``tau > 0``
    ``-eta [Cov(log pi, Q_tau) - tau Var(log pi)]``.
    """
    direction = ev.adv
    tau = hp.get("tau", 0.0)
    closed_s = -hp["eta"] * (softmax.cov(ev.pi, ev.log_pi, ev.q) - tau * softmax.var(ev.pi, ev.log_pi))
    return finish(opt, theta, opt_state, direction, closed_s, ev)


def temp_reinforce(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, batch: int = 0):
    """Temperature-guided REINFORCE (Assumption 4.2 of the AEPO paper, docs/theory.md §4.1):
    responses drawn from ``pi_T = softmax(theta / T)``, score function at ``T = 1``, no importance
    correction.

    With ``batch = 0`` the step is its expectation,

        dz[s, a] = eta * horizon * d_T(s) * sum_b pi_T(b|s) Q_T(s, b) (1[a = b] - pi(a|s)),

    with ``d_T, Q_T`` the occupancy and values of ``pi_T`` (in a bandit ``d_T = rho``,
    ``Q_T = r``; for binary rewards the sum runs over the correct answers ``A*(s)``); at ``T = 1``
    it is exactly ``pg``. With ``batch = B`` it is the average of ``R grad log pi`` over ``B``
    responses sampled at temperature ``T``, whose expectation is the step above. Closed form (T4):
    ``-eta h d_T(s) sum_b pi_T(b|s) Q_T(s, b) Cov_pi(theta, 1[. = b] - pi)``. Also logs
    Theorem 4.3's quantities (``diagnostics.temperature_law``).
    """
    temp = hp["temp"]
    ev_t = env.evaluate(theta / temp, 0.0)
    weight = env.horizon * ev_t.occ  # [S]
    w_b = ev_t.pi * ev_t.q  # [S, B]  pi_T(b|s) Q_T(s, b)
    if batch:
        table, _ = response_table(env, key, theta / temp, ev_t.pi, batch, "none", ev.v)
        direction = score_from_table(table, ev.pi) / batch
    else:
        direction = weight[:, None] * (w_b - ev.pi * jnp.sum(w_b, axis=-1, keepdims=True))
    closed_s = -hp["eta"] * weight * jnp.sum(w_b * softmax.indicator_cov(ev.pi, theta), axis=-1)
    extra = temperature_law(ev, theta, temp, hp["eta"], env.horizon)
    return finish(opt, theta, opt_state, direction, closed_s, ev, extra)


# ----------------------------------------------------------------------------- trust regions
# docs/theory.md §7.4-7.6. These rules set their own step size: they take no eta and apply their
# logit change as it is (``optimizer = "sgd"`` only, checked in registry.py).

BISECTIONS = 60  # halvings of a bracket of e^40 in log eta: far below float64's resolution


def tilted_kl(ev: Evaluation, eta: Array) -> Array:
    """``sum_s d(s) KL(pi_eta(.|s) || pi(.|s))`` for ``pi_eta ∝ pi exp(eta A)``. ``[]``."""
    log_next = jax.nn.log_softmax(ev.log_pi + eta * ev.adv, axis=-1)
    return jnp.sum(ev.occ * jnp.sum(jnp.exp(log_next) * (log_next - ev.log_pi), axis=-1))


def quadratic_step(ev: Evaluation, delta: Array) -> Array:
    """``sqrt(2 delta / sum_s d(s) E_pi[A^2])``: the step size whose quadratic KL is ``delta``
    (``E_pi[A] = 0``, so ``E_pi[A^2] = Var_pi(A)``); ``inf`` where every advantage is 0. ``[]``."""
    second = jnp.sum(ev.occ * jnp.sum(ev.pi * ev.adv ** 2, axis=-1))
    return jnp.sqrt(2.0 * delta / second)


def trust_region_step(ev: Evaluation, delta: Array) -> Array:
    """The ``eta`` with ``tilted_kl(ev, eta) = delta`` (docs/theory.md §7.4: the KL grows with
    ``eta``, ``d KL / d eta = eta Var_{pi_eta}(A)``), by bisection on ``log eta`` in ``e^-20`` to
    ``e^20`` times ``quadratic_step``. Where even the upper end's KL is below ``delta`` (the
    greedy limit: ``KL -> sum_s d(s) (-log pi(argmax A | s))``) it is that end. ``[]``."""
    quadratic = quadratic_step(ev, delta)
    centre = jnp.log(jnp.where(jnp.isfinite(quadratic), quadratic, 1.0))

    def halve(i, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        over = tilted_kl(ev, jnp.exp(mid)) > delta
        return jnp.where(over, lo, mid), jnp.where(over, mid, hi)

    lo, hi = jax.lax.fori_loop(0, BISECTIONS, halve, (centre - 20.0, centre + 20.0))
    return jnp.exp(0.5 * (lo + hi))


def _own_step(theta, opt_state, ev: Evaluation, eta: Array, dz: Array, extra: dict):
    closed_s = -eta * softmax.cov(ev.pi, ev.log_pi, ev.adv)  # NPG's T4 at this eta
    info = {"dH_pred_closed": jnp.sum(ev.occ * closed_s), **extra}
    return theta + dz, opt_state, info


def trust_region(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """The exact KL trust region (docs/theory.md §7.4): maximise the surrogate
    ``h sum_s d(s) sum_a pi'(a|s) A(s, a)`` subject to ``sum_s d(s) KL(pi'(.|s) || pi(.|s)) <=
    delta``. The maximiser is ``pi' ∝ pi exp(A / lambda)``, NPG with ``eta = 1/lambda`` set so the
    exact KL equals ``delta`` (``trust_region_step``): ``dz = eta A``. Logs ``eta_eff`` and the
    multiplier ``lambda = 1 / eta_eff``."""
    eta = trust_region_step(ev, hp["delta"])
    return _own_step(theta, opt_state, ev, eta, eta * ev.adv,
                     {"eta_eff": eta, "multiplier": 1.0 / eta})


def natural_gradient(theta, opt_state, ev: Evaluation, env, hp, key, opt):
    """The natural gradient with a KL budget (docs/theory.md §7.5), the Taylor solution
    ``dtheta = sqrt(2 delta / (g^T F^+ g)) F^+ g`` with the exact gradient ``g[s, a] = h d(s)
    pi(a|s) A(s, a)`` and the exact Fisher matrix of the occupancy-weighted softmax, block
    diagonal with ``F_s = d(s) (diag(pi_s) - pi_s pi_s^T)``. Its pseudo-inverse gives
    ``F^+ g = h (A - mean_a A)`` on states with ``d(s) > 0`` and 0 elsewhere (the null space of
    ``F_s`` is the constants), and ``g^T F^+ g = h^2 sum_s d(s) E_pi[A^2]``, so
    ``dz = eta (A - mean_a A)`` with ``eta = sqrt(2 delta / sum_s d(s) E_pi[A^2])``: NPG at the
    step whose quadratic KL is ``delta``, no line search. Logs ``eta_eff``."""
    eta = quadratic_step(ev, hp["delta"])
    eta = jnp.where(jnp.isfinite(eta), eta, 0.0)  # every advantage 0: no step
    centred = ev.adv - jnp.mean(ev.adv, axis=-1, keepdims=True)
    dz = jnp.where(ev.occ[:, None] > 0, eta * centred, 0.0)
    return _own_step(theta, opt_state, ev, eta, dz, {"eta_eff": eta})


LAMBDA_FLOOR = 1e-8  # a multiplier of 0 would be an infinite step


def kl_penalty_init(theta, hp, opt):
    """The multiplier before step 0: ``kl_lambda``."""
    return jnp.asarray(hp["kl_lambda"], theta.dtype)


def kl_penalty(theta, opt_state, ev: Evaluation, env, hp, key, opt, *, dual: str = "gradient"):
    """The Lagrangian route to the trust region (docs/theory.md §7.6): with the multiplier
    ``lambda`` held fixed, maximise ``L(pi') - lambda sum_s d(s) KL(pi'(.|s) || pi(.|s))``, whose
    maximiser is ``pi' ∝ pi exp(A / lambda)`` (``dz = A / lambda``); then update ``lambda`` from
    the step's exact KL: ``dual = "gradient"``, dual gradient descent ``lambda <- max(0, lambda +
    dual_lr (KL - delta))``; ``dual = "ppo"``, PPO's adaptive coefficient (Schulman et al. 2017):
    ``lambda x 2`` if ``KL > 1.5 delta``, ``/ 2`` if ``KL < delta / 1.5``. ``lambda`` is kept at
    least ``LAMBDA_FLOOR``. ``opt_state`` is the multiplier; logs the one used (``multiplier``)
    and ``eta_eff = 1 / lambda``."""
    lam = jnp.maximum(opt_state, LAMBDA_FLOOR)
    eta = 1.0 / lam
    kl = tilted_kl(ev, eta)
    delta = hp["delta"]
    if dual == "gradient":
        lam_next = lam + hp["dual_lr"] * (kl - delta)
    elif dual == "ppo":
        lam_next = jnp.where(kl > 1.5 * delta, 2.0 * lam, jnp.where(kl < delta / 1.5, lam / 2, lam))
    else:
        raise ValueError(f"unknown dual update {dual!r}; choose gradient or ppo")
    theta_next, _, info = _own_step(theta, opt_state, ev, eta, eta * ev.adv,
                                    {"eta_eff": eta, "multiplier": lam})
    return theta_next, jnp.maximum(lam_next, LAMBDA_FLOOR), info
