"""Per-step diagnostics: the entropy change the covariance law predicts next to the realized one.

Row ``k`` describes the update ``pi_k -> pi_{k+1}`` (docs/theory.md §2, §3; §11 maps every column
to its formula). All state quantities are aggregated with the occupancy ``d_k`` of ``pi_k`` unless
said otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropy_sim import softmax
from entropy_sim.envs.base import Evaluation
from entropy_sim.parts import Column

Array = jax.Array

# The columns of every run: ``step_metrics`` and the rule's closed form (docs/theory.md §11).
STEP_COLUMNS = (
    Column("entropy", "H(pi_k) = sum_s d_k(s) H(pi_k(.|s)), natural log"),
    Column("dH_realized", "H(pi_{k+1}) - H(pi_k) = dH_within + dH_shift"),
    Column("dH_pred_cov", "-sum_s d_k(s) Cov_{pi_k}(log pi_k, dz): the covariance law T3 "
                          "(docs/theory.md §3.1)"),
    Column("dH_within", "sum_s d_k(s) [H_{k+1}(s) - H_k(s)]: the change at fixed occupancy"),
    Column("dH_shift", "sum_s (d_{k+1} - d_k)(s) H_{k+1}(s): the occupancy shift's part"),
    Column("return", "J(pi_k), the unregularised return"),
    Column("renyi2", "Renyi-2 entropy sum_s d_k(s) H_2(pi_k(.|s))"),
    Column("grad_sq_norm", "E ||grad_z log pi||^2 = 1 - sum_a pi^2, occupancy-weighted "
                           "(T1, docs/theory.md §2.2)"),
    Column("kl", "sum_s d_k(s) KL(pi_{k+1}(.|s) || pi_k(.|s))"),
    Column("kl_quad", "sum_s d_k(s) Var_{pi_k}(dz) / 2: the KL to second order "
                      "(T2, docs/theory.md §2.4)"),
    Column("kl_bound", "T2's bound (|A|/2) ||dz||_inf^2 (1 - exp(-H)), occupancy-weighted "
                       "(docs/theory.md §2.4)"),
    Column("dz_max", "max |dz| over states and actions"),
    Column("dH_pred_closed", "the rule's closed form of the expected entropy change "
                             "(T4, docs/theory.md §3.4); NaN where none applies (e.g. under adam)",
           nan_allowed=True),
)
RETURN_REG = Column("return_reg", "J_tau(pi_k), the entropy-regularised return (rules with tau)")
TEMPERATURE_COLUMNS = (
    Column("temp_used", "the sampling temperature T of the step"),
    Column("dH_temp", "Theorem 4.3's predicted entropy change DeltaH(T) at the temperature used "
                      "(docs/theory.md §4.2)"),
    Column("dH_dT", "d DeltaH / dT at T = 1 (docs/theory.md §4.2)"),
    Column("thm43_premise", "occupancy of the states where DeltaH(1) < 0"),
    Column("thm43_conclusion", "occupancy of the states where DeltaH(1) < 0 and dDeltaH/dT(1) > 0 "
                               "(equal to thm43_premise whenever the theorem holds)"),
)
# Optional groups of columns (``diagnostics = [...]`` in a config): docs/theory.md §7 and §8.
IMPROVEMENT_COLUMNS = (
    Column("dJ", "J(pi_{k+1}) - J(pi_k), the step's improvement of the unregularised return"),
    Column("dJ_pdl", "h sum_s d_{k+1}(s) sum_a pi_{k+1}(a|s) A_k(s, a): the performance-difference "
                     "lemma, equal to dJ (docs/theory.md §7.1)"),
    Column("surrogate", "h sum_s d_k(s) sum_a pi_{k+1}(a|s) A_k(s, a): the surrogate, dJ_pdl with "
                        "the old occupancy (§7.2)"),
    Column("surrogate_gap", "dJ_pdl - surrogate = h sum_s (d_{k+1} - d_k)(s) Abar(s)"),
    Column("surrogate_gap_bound", "2 h (h - 1) max_s |Abar(s)| tv_mean: the bound on "
                                  "|surrogate_gap| (§7.4; 0 for bandits)"),
    Column("tv_mean", "sum_s d_k(s) TV(pi_{k+1}(.|s), pi_k(.|s))"),
    Column("tv_max", "max over states with d_k(s) > 0 of TV(pi_{k+1}(.|s), pi_k(.|s))"),
    Column("tv_pinsker", "sqrt(kl / 2): Pinsker's and Jensen's bound on tv_mean"),
    Column("occ_tv", "TV(d_{k+1}, d_k) = (1/2) sum_s |d_{k+1}(s) - d_k(s)|"),
    Column("occ_tv_bound", "(h - 1) tv_mean: the bound on occ_tv (§7.3; gamma / (1 - gamma) "
                           "tv_mean in an MDP, (L - 1) tv_mean in the token tree)"),
)
SECOND_ORDER_COLUMNS = (
    Column("dH_pred_2nd", "dH_pred_cov - (1/2) sum_s d_k(s) (E[u^2] + E[l u^2]): the entropy "
                          "change at fixed occupancy to second order in dz (§8.1)"),
    Column("varentropy", "sum_s d_k(s) Var_{pi_k}(log pi_k): the varentropy"),
    Column("dH_cov_bound", "sqrt(2 kl_quad varentropy): Cauchy-Schwarz's bound on |dH_pred_cov| "
                           "(§8.2)"),
)
DIAGNOSTICS = {"improvement": IMPROVEMENT_COLUMNS, "second_order": SECOND_ORDER_COLUMNS}
NONFINITE = Column("nonfinite", 'on_nonfinite = "mark" only: a metric of this row is NaN or '
                                'infinite')

# Columns that may be NaN by design (a closed form that does not exist for the optimiser used).
NAN_ALLOWED = tuple(c.name for c in STEP_COLUMNS if c.nan_allowed)


def pass_at_column(k: int) -> Column:
    return Column(f"pass_at_{k}", f"exact pass@{k} = sum_p rho(p) [1 - (1 - P(correct|p))^{k}] "
                                  f"(binary rewards)")


def step_metrics(ev: Evaluation, ev_next: Evaluation, dz: Array) -> dict[str, Array]:
    """Scalar diagnostics of one update. ``ev, ev_next``: evaluations of ``pi_k, pi_{k+1}``;
    ``dz: [S, A]`` the logit change.

    - ``dH_pred_cov = -sum_s d_k(s) Cov_{pi_k}(log pi_k, dz)`` (T3);
    - ``dH_realized = H(pi_{k+1}) - H(pi_k) = dH_within + dH_shift`` with
      ``within = sum_s d_k(s) [H_{k+1}(s) - H_k(s)]``, ``shift = sum_s (d_{k+1} - d_k)(s) H_{k+1}(s)``;
    - ``kl = sum_s d_k(s) KL(pi_{k+1}(s) || pi_k(s))``, its second-order value
      ``kl_quad = sum_s d_k(s) Var_{pi_k}(dz) / 2`` and T2's bound ``kl_bound``;
    - ``grad_sq_norm = sum_s d_k(s) (1 - sum_a pi_k^2)`` (T1) and ``renyi2 = sum_s d_k(s) H_2``.
    """
    occ = ev.occ
    # Per-state H_{k+1}(s) - H_k(s) from the logit change: the same number as the difference of
    # the two entropies, without its float32 cancellation (softmax.entropy_change).
    d_ent, kl = softmax.changes(ev.pi, ev.log_pi, dz, ev_next.log_pi)
    within = jnp.sum(occ * d_ent)
    shift = jnp.sum((ev_next.occ - occ) * ev_next.ent)
    return {
        "entropy": jnp.sum(occ * ev.ent),
        "dH_realized": within + shift,
        "dH_pred_cov": -jnp.sum(occ * softmax.cov(ev.pi, ev.log_pi, dz)),
        "dH_within": within,
        "dH_shift": shift,
        "return": ev.ret,
        "renyi2": jnp.sum(occ * softmax.renyi2(ev.pi)),
        "grad_sq_norm": jnp.sum(occ * softmax.grad_sq_norm(ev.pi)),
        "kl": jnp.sum(occ * kl),
        "kl_quad": 0.5 * jnp.sum(occ * softmax.var(ev.pi, dz)),
        "kl_bound": jnp.sum(occ * softmax.kl_bound(ev.pi, ev.ent, dz)),
        "dz_max": jnp.max(jnp.abs(dz)),
    }


def improvement(ev: Evaluation, ev_next: Evaluation, horizon: Array, kl: Array) -> dict[str, Array]:
    """The ``improvement`` columns (``IMPROVEMENT_COLUMNS``) of the step ``pi_k -> pi_{k+1}``.
    ``ev, ev_next``: unregularised evaluations (``tau = 0``) of ``pi_k, pi_{k+1}``; ``horizon``
    ``h``; ``kl = sum_s d_k(s) KL(pi_{k+1}(.|s) || pi_k(.|s))``. With ``Abar(s) = sum_a
    pi_{k+1}(a|s) A_k(s, a)`` and ``TV_s`` the per-state total variation (docs/theory.md §7)."""
    d, d_next = ev.occ, ev_next.occ
    abar = jnp.sum(ev_next.pi * ev.adv, axis=-1)  # [S]
    tv = softmax.total_variation(ev_next.pi, ev.pi)  # [S]
    tv_mean = jnp.sum(d * tv)
    visited = (d > 0) | (d_next > 0)
    return {
        "dJ": ev_next.ret - ev.ret,
        "dJ_pdl": horizon * jnp.sum(d_next * abar),
        "surrogate": horizon * jnp.sum(d * abar),
        "surrogate_gap": horizon * jnp.sum((d_next - d) * abar),
        "surrogate_gap_bound": 2.0 * horizon * (horizon - 1.0) * tv_mean
                               * jnp.max(jnp.where(visited, jnp.abs(abar), 0.0)),
        "tv_mean": tv_mean,
        "tv_max": jnp.max(jnp.where(d > 0, tv, 0.0)),
        "tv_pinsker": jnp.sqrt(jnp.maximum(kl, 0.0) / 2.0),
        "occ_tv": 0.5 * jnp.sum(jnp.abs(d_next - d)),
        "occ_tv_bound": (horizon - 1.0) * tv_mean,
    }


def second_order(ev: Evaluation, dz: Array, dH_pred_cov: Array, kl_quad: Array) -> dict[str, Array]:
    """The ``second_order`` columns (``SECOND_ORDER_COLUMNS``) of the logit change ``dz: [S, A]``
    from ``pi_k`` (docs/theory.md §8), given the step's ``dH_pred_cov`` and ``kl_quad``."""
    varentropy = jnp.sum(ev.occ * softmax.var(ev.pi, ev.log_pi))
    term = softmax.second_order_term(ev.pi, ev.log_pi, dz)  # [S]
    return {
        "dH_pred_2nd": dH_pred_cov + jnp.sum(ev.occ * term),
        "varentropy": varentropy,
        "dH_cov_bound": jnp.sqrt(2.0 * jnp.maximum(kl_quad, 0.0) * varentropy),
    }


def pass_at_k(success: Array, rho: Array, ks: tuple[int, ...]) -> dict[str, Array]:
    """Exact ``pass@k = sum_p rho(p) [1 - (1 - P(correct | p))^k]`` for each ``k`` in ``ks``.
    ``success, rho: [P]``."""
    fail = jnp.clip(1.0 - success, 0.0, 1.0)
    return {f"pass_at_{k}": jnp.sum(rho * (1.0 - fail ** k)) for k in ks}


def temperature_law(ev: Evaluation, theta: Array, temp: Array, eta: Array,
                    horizon: Array = 1.0) -> dict[str, Array]:
    """Theorem 4.3 of the AEPO paper (Wang et al. 2025; docs/theory.md §4.2) at this step. Per
    state, with ``Q`` and ``d`` the action values and occupancy of ``pi`` (the reward ``R`` and
    ``rho`` in a contextual bandit):

        DeltaH_s(T) = -eta h d(s) sum_b pi_T(b|s) Q(s, b) Cov_pi(theta, 1[. = b] - pi),

    the first-order entropy change of REINFORCE on samples at temperature ``T`` (T4's last row with
    ``Q`` and ``d`` held at ``T = 1``, as in the theorem; exact for bandits, and at ``T = 1``
    equal to ``temp_reinforce``'s closed form everywhere).
    The theorem: ``DeltaH_s(1) < 0`` implies ``d DeltaH_s / dT (1) > 0``. Columns: ``dH_temp``
    = ``sum_s d(s) DeltaH_s(temp)``; ``dH_dT`` = ``sum_s d(s) DeltaH_s'(1)`` (exact, by
    forward-mode differentiation in ``T``); ``thm43_premise`` = the occupancy of the states where
    the premise holds; ``thm43_conclusion`` = the occupancy of those where the conclusion holds too
    (equal to ``thm43_premise`` whenever the theorem holds; in a bandit both are 0 or 1).
    """
    cov_b = softmax.indicator_cov(ev.pi, theta)  # [S, B]

    def per_state(t):
        weight = eta * horizon * ev.occ
        return -weight * jnp.sum(jax.nn.softmax(theta / t, axis=-1) * ev.q * cov_b, axis=-1)

    one = jnp.ones((), theta.dtype)
    at_one, slope = jax.jvp(per_state, (one,), (one,))
    premise = at_one < 0
    return {
        "temp_used": jnp.asarray(temp, theta.dtype),
        "dH_temp": jnp.sum(ev.occ * per_state(temp)),
        "dH_dT": jnp.sum(ev.occ * slope),
        "thm43_premise": jnp.sum(ev.occ * premise),
        "thm43_conclusion": jnp.sum(ev.occ * (premise & (slope > 0))),
    }
