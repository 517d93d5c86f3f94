"""Experiment 3: the gradient norm and the one-step KL (T1, T2: docs/theory.md §2).

Claim (T1): ``E_{a~pi} ||grad_z log pi(a)||^2 = 1 - exp(-H_2(pi)) <= 1 - exp(-H(pi))``: low entropy
means small policy gradients. Claim (T2): ``KL(pi_next || pi) = Var_pi(dz) / 2 + O(dz^3)`` and
``KL <= (|A|/2) ||dz||_inf^2 (1 - exp(-H))`` to second order.

Set-up: NPG on 1,000 random 10-armed bandits from Gaussian logits (scale 2), eight step sizes from
0.01 to 1, 200 steps; every (seed, step) is one policy and one update.

Expected outcome: every logged policy lies on the curve ``1 - exp(-H_2)`` (to float32 rounding)
and below ``1 - exp(-H)``; the KL lies below its bound; ``KL - Var/2`` shrinks as ``eta^3``
(log-log slope 3 at the first step, where every step size updates the same policies).
"""

from __future__ import annotations

import numpy as np

from experiments.common import Context
from entropy_sim import plotting
from entropy_sim.plotting import OKABE_ITO, plt

CHECKS = {
    "t1_max_abs_error": (0.0, 1e-5),          # |E||grad||^2 - (1 - exp(-H2))|, float32
    "t1_bound_violations": (0.0, 0.0),        # rows with E||grad||^2 > 1 - exp(-H) + 1e-6
    "t2_bound_holds_frac": (0.999, 1.0),      # rows with kl <= kl_bound (1 + 1e-4)
    "t2_remainder_slope": (2.8, 3.2),         # d log|kl - kl_quad| / d log eta at step 0
    "t2_quad_ratio_small_eta": (0.99, 1.01),  # median kl / kl_quad at the smallest eta
}


def run(ctx: Context) -> dict[str, float]:
    res = ctx.run("npg")
    df = res.metrics
    claims = {}

    t1 = 1.0 - np.exp(-df.renyi2.to_numpy(np.float64))
    claims["t1_max_abs_error"] = float(np.max(np.abs(df.grad_sq_norm - t1)))
    shannon = 1.0 - np.exp(-df.entropy.to_numpy(np.float64))
    claims["t1_bound_violations"] = float(np.sum(df.grad_sq_norm > shannon + 1e-6))

    moved = df.kl_bound > 0
    claims["t2_bound_holds_frac"] = float(np.mean(df.kl[moved] <= df.kl_bound[moved] * (1 + 1e-4)))
    first = df[df.step == 0]
    etas = np.sort(first.eta.unique())
    remainder = np.array([np.median(np.abs(g.kl - g.kl_quad)) for _, g in first.groupby("eta")])
    slope = np.polyfit(np.log(etas), np.log(remainder), 1)[0]
    claims["t2_remainder_slope"] = float(slope)
    small = first[first.eta == etas[0]]
    claims["t2_quad_ratio_small_eta"] = float(np.median(small.kl / small.kl_quad))

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    rows = df.sample(min(len(df), 20000), random_state=0)
    ax = axes[0]
    ax.scatter(rows.renyi2, rows.grad_sq_norm, s=3, alpha=0.3, color=OKABE_ITO[0], rasterized=True,
               label="logged policies")
    h = np.linspace(0, np.log(10), 200)
    ax.plot(h, 1 - np.exp(-h), color="0.2", linewidth=1, label="1 − exp(−H₂)  (T1)")
    ax.set_xlabel("Rényi-2 entropy H₂(π) [nats]")
    ax.set_ylabel("E‖∇_z log π(a)‖²")
    ax.set_title("T1: gradient norm is set by H₂")
    ax.legend(frameon=False)

    ax = axes[1]
    pos = rows[(rows.kl > 0) & (rows.kl_bound > 0)]
    ax.scatter(pos.kl_bound, pos.kl, s=3, alpha=0.3, color=OKABE_ITO[1], rasterized=True)
    lims = [pos.kl.min(), pos.kl_bound.max()]
    ax.plot(lims, lims, color="0.2", linewidth=1, linestyle="--", label="KL = bound")
    ax.set(xscale="log", yscale="log", xlabel="T2 bound (|A|/2)‖Δz‖∞²(1 − exp(−H)) [nats]",
           ylabel="KL(πₖ₊₁ ‖ πₖ) [nats]",
           title=f"T2: KL below its bound ({100 * claims['t2_bound_holds_frac']:.2f}% of steps)")
    ax.legend(frameon=False)

    ax = axes[2]
    ax.loglog(etas, remainder, "o-", color=OKABE_ITO[2], label="median |KL − Var(Δz)/2|")
    ax.loglog(etas, remainder[0] * (etas / etas[0]) ** 3, color="0.4", linestyle="--",
              label="slope 3")
    ax.set(xlabel="step size η", ylabel="|KL − Var(Δz)/2| at step 0 [nats]",
           title=f"T2 remainder: slope {slope:.2f}")
    ax.legend(frameon=False)
    fig.suptitle(f"Gradient norm and one-step KL: NPG on 10-armed bandits ({res.config['seeds']} seeds)")
    ctx.savefig(fig, ctx.name)
    return claims
