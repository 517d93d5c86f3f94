"""Experiment 9: trust regions, the performance-difference lemma, and the entropy change beyond
first order (docs/theory.md §7, §8).

Claim: the exact KL trust region spends its budget ``delta`` at every step (its KL is ``delta``
until the policy is nearly deterministic), where NPG at a fixed step size spends less and less as
the advantages shrink; the KL penalty with its multiplier moved by dual gradient descent keeps the
KL within a small factor of ``delta``; the natural gradient's quadratic KL is exactly ``delta``.
The performance-difference lemma ``J(pi') - J(pi) = h sum_s d'(s) sum_a pi'(a|s) A(s, a)`` holds
to float64 rounding; the surrogate's gap, the occupancy shift and the first-order entropy change
stay within their bounds at every step; in an MDP the occupancy-shift part of the entropy change
is first order (its share of the change does not shrink with the step), and on a chain MDP it
outweighs the change within states while the surrogate misses most of the improvement. The
second-order entropy prediction's error is third order in ``eta`` (slope 3), the first-order
one's second.

Set-up: Garnet MDPs (20 states, 4 actions, gamma = 0.9, one per seed) from Gaussian logits, in
float64: ``trust_region`` at ``delta`` = 0.001 and 0.01, ``npg`` at ``eta = 1``, ``kl_penalty``
(``delta = 0.001``, dual step 100), ``natural_gradient`` (``delta = 0.001``), 200 seeds x 60
steps; the trust region on an 8-state chain (gamma = 0.95) from the uniform policy at ``delta``
= 0.01 and 0.1; one NPG step on 10-armed bandits at seven step sizes from 0.001 to 0.1 (e1's
set-up).

Expected outcome (full size): the trust region's KL equals ``delta`` to 1e-9 on every step where
the policy still has entropy; NPG's KL falls by orders of magnitude over the run; the KL penalty's
median KL stays within [0.2, 2] ``delta`` after five steps; the natural gradient's ``kl_quad`` is
``delta`` to 1e-9; ``dJ = dJ_pdl`` to 1e-12; no bound is crossed; the shift's share of the
entropy change at the first step is the same at both budgets; slopes 2 and 3.

Measured (full size, 34 s on 2 cores): the trust region's KL is ``delta`` to 2.6e-13; NPG's
median KL falls 2,375-fold from the first step to the last; the KL penalty's median KL stays
between 0.25 and 1.36 ``delta`` (the dual lags a multiplier that falls as the advantages shrink);
the natural gradient's ``kl_quad`` is ``delta`` to 2.8e-14; ``|dJ - dJ_pdl| <= 2.9e-14``; the
surrogate gap reaches 23% of its bound and the occupancy shift 69% of its, never more;
``|dH_realized| <= dH_cov_bound`` on 98.0% of steps (``|dH_pred_cov|`` on all); the shift's share
of the first step's entropy change is 0.25 at ``delta = 0.001`` and the same within 16% at 0.01
(first order); slopes 2.000 and 2.996. On the 8-state chain (gamma = 0.95) the surrogate misses
73% of the improvement at ``delta = 0.1`` (median over the steps), and the occupancy shift moves
the entropy 1.24 times as much as the change within states at ``delta = 0.01``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.common import Context
from entropy_sim.plotting import OKABE_ITO, plt

CHECKS = {
    "tr_kl_over_delta_max_error": (0.0, 1e-8),     # |kl / delta - 1| where entropy > 0.05
    "npg_kl_first_over_last": (100.0, None),       # median KL at step 0 / at the last step
    "kl_penalty_kl_over_delta_min": (0.2, 1.0),    # median KL / delta, steps 5-40: lowest
    "kl_penalty_kl_over_delta_max": (1.0, 2.0),    # and highest
    "ng_kl_quad_over_delta_max_error": (0.0, 1e-9),  # |kl_quad / delta - 1| where entropy > 0.05
    "pdl_max_abs_error": (0.0, 1e-12),             # max |dJ - dJ_pdl| over every row
    "surrogate_gap_bound_violations": (0.0, 0.0),  # rows with |gap| > bound + 1e-12
    "occ_tv_bound_violations": (0.0, 0.0),         # rows with occ_tv > bound + 1e-12
    "surrogate_gap_over_bound_max": (0.0, 1.0),    # where the bound exceeds 1e-8
    "occ_tv_over_bound_max": (0.0, 1.0),
    "cov_over_bound_max": (0.0, 1.0 + 1e-9),       # |dH_pred_cov| / dH_cov_bound
    "realized_within_bound_frac": (0.95, 1.0),     # |dH_realized| <= dH_cov_bound
    "shift_share_ratio_across_budgets": (0.5, 2.0),  # median |shift|/|within|, step 0: 0.001 / 0.01
    "shift_share_small_budget": (0.05, None),      # that median at delta = 0.001
    "chain_gap_over_dj_median": (0.3, None),      # chain, delta = 0.1: |surrogate_gap| / |dJ|
    "chain_shift_over_within_median": (0.5, None),  # chain, delta = 0.01: |dH_shift| / |dH_within|
    "first_order_error_slope": (1.9, 2.1),
    "second_order_error_slope": (2.85, 3.15),
}


def slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def run(ctx: Context) -> dict[str, float]:
    tr = ctx.run("trust_region").metrics
    npg = ctx.run("npg").metrics
    kp = ctx.run("kl_penalty").metrics
    ng = ctx.run("natural_gradient").metrics
    second = ctx.run("second_order").metrics
    claims = {}

    alive = tr.entropy > 0.05
    claims["tr_kl_over_delta_max_error"] = float(np.max(np.abs(tr.kl[alive] / tr.delta[alive] - 1)))
    by_step = npg.groupby("step").kl.median()
    claims["npg_kl_first_over_last"] = float(by_step.iloc[0] / by_step.iloc[-1])
    ratio = kp.groupby("step").kl.median() / ctx.runs["kl_penalty"]["algo"]["delta"]
    window = ratio.loc[5:40]
    claims["kl_penalty_kl_over_delta_min"] = float(window.min())
    claims["kl_penalty_kl_over_delta_max"] = float(window.max())
    alive = ng.entropy > 0.05
    claims["ng_kl_quad_over_delta_max_error"] = float(
        np.max(np.abs(ng.kl_quad[alive] / ctx.runs["natural_gradient"]["algo"]["delta"] - 1)))

    rows = pd.concat([tr, npg, kp, ng], ignore_index=True)
    claims["pdl_max_abs_error"] = float(np.max(np.abs(rows.dJ - rows.dJ_pdl)))
    # A bound of ~0 (a policy that no longer moves) meets quantities that are rounding noise of
    # two linear solves (~1e-16): violations count beyond 1e-12, ratios where the bound exceeds 1e-8.
    claims["surrogate_gap_bound_violations"] = float(
        np.sum(np.abs(rows.surrogate_gap) > rows.surrogate_gap_bound + 1e-12))
    claims["occ_tv_bound_violations"] = float(np.sum(rows.occ_tv > rows.occ_tv_bound + 1e-12))
    moved = rows.surrogate_gap_bound > 1e-8
    claims["surrogate_gap_over_bound_max"] = float(
        np.max(np.abs(rows.surrogate_gap[moved]) / rows.surrogate_gap_bound[moved]))
    moved = rows.occ_tv_bound > 1e-8
    claims["occ_tv_over_bound_max"] = float(np.max(rows.occ_tv[moved] / rows.occ_tv_bound[moved]))
    moved = rows.dH_cov_bound > 0
    claims["cov_over_bound_max"] = float(
        np.max(np.abs(rows.dH_pred_cov[moved]) / rows.dH_cov_bound[moved]))
    claims["realized_within_bound_frac"] = float(
        np.mean(np.abs(rows.dH_realized[moved]) <= rows.dH_cov_bound[moved]))

    first = tr[tr.step == 0]
    share = {d: float(np.median(np.abs(g.dH_shift) / np.abs(g.dH_within)))
             for d, g in first.groupby("delta")}
    small, large = sorted(share)
    claims["shift_share_ratio_across_budgets"] = share[small] / share[large]
    claims["shift_share_small_budget"] = share[small]

    chain = ctx.run("chain").metrics
    chain = chain[(chain.dJ.abs() > 1e-9) & (chain.dH_within.abs() > 1e-9)]  # steps that moved
    claims["chain_gap_over_dj_median"] = float(np.median(
        np.abs(chain.surrogate_gap / chain.dJ)[chain.delta == 0.1]))
    claims["chain_shift_over_within_median"] = float(np.median(
        np.abs(chain.dH_shift / chain.dH_within)[chain.delta == 0.01]))

    etas = np.sort(second.eta.unique())
    err1 = second.assign(e=np.abs(second.dH_realized - second.dH_pred_cov)).groupby("eta").e.median()
    err2 = second.assign(e=np.abs(second.dH_realized - second.dH_pred_2nd)).groupby("eta").e.median()
    claims["first_order_error_slope"] = slope(etas, err1.loc[etas].values)
    claims["second_order_error_slope"] = slope(etas, err2.loc[etas].values)

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), layout="constrained")

    def per_step(ax, column: str, stat: str, draw: str) -> None:
        """``column``'s ``stat`` over seeds at every step, for each run of the comparison."""
        curves = [(g, f"trust region δ = {d:g}", {}) for d, g in tr.groupby("delta")]
        curves += [(npg, "NPG η = 1", {}),
                   (kp, "KL penalty (dual), δ = 0.001", {"linestyle": "--"})]
        for i, (frame, label, style) in enumerate(curves):
            getattr(ax, draw)(frame.groupby("step")[column].agg(stat), color=OKABE_ITO[i],
                              label=label, **style)
        ax.legend(frameon=False, fontsize=8)

    per_step(axes[0], "entropy", "mean", "plot")
    axes[0].set(xlabel="step", ylabel="entropy H(π) [nats]", title="Entropy: a KL budget per step")
    per_step(axes[1], "kl", "median", "semilogy")
    axes[1].set(xlabel="step", ylabel="median KL(πₖ₊₁ ‖ πₖ) [nats]",
                title="The KL each step spends")

    ax = axes[2]
    # Steps of kl_quad below 1 nat (a saturated trust region's huge eta on vanishing advantages
    # gives a huge quadratic KL and no change: far inside the bound, off the plot).
    first_order = (rows.dH_cov_bound > 1e-8) & (rows.kl_quad < 1.0)
    pick = rows[first_order].sample(min(int(first_order.sum()), 20000), random_state=0)
    ax.scatter(pick.dH_cov_bound, np.abs(pick.dH_realized), s=3, alpha=0.3, color=OKABE_ITO[4],
               rasterized=True, label="steps of every rule")
    lims = [pick.dH_cov_bound[pick.dH_cov_bound > 0].min(), pick.dH_cov_bound.max()]
    ax.plot(lims, lims, color="0.2", linestyle="--", linewidth=1, label="|ΔH| = √(2 kl_quad · varentropy)")
    ax.set(xscale="log", yscale="log", xlabel="dH_cov_bound [nats]", ylabel="|ΔH realized| [nats]",
           title=f"Varentropy caps the step ({100 * claims['realized_within_bound_frac']:.1f}% below)")
    ax.legend(frameon=False, fontsize=8)

    ax = axes[3]
    ax.loglog(etas, err1.loc[etas], "o-", color=OKABE_ITO[0], label="first order (covariance law)")
    ax.loglog(etas, err2.loc[etas], "s-", color=OKABE_ITO[1], label="second order")
    ax.set(xlabel="step size η", ylabel="median |ΔH − prediction| [nats]",
           title=f"Slopes {claims['first_order_error_slope']:.2f} and "
                 f"{claims['second_order_error_slope']:.2f}")
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle(f"Trust regions on Garnet MDPs ({ctx.runs['trust_region'].get('seeds')} seeds) "
                 "and the entropy change beyond first order")
    ctx.savefig(fig, ctx.name)
    return claims
