"""Experiment 1: the covariance law predicts the entropy change of every update rule
(T3, docs/theory.md §3).

Claim (T3; Cui et al. 2025): any update ``dz`` of a softmax policy changes its
entropy by ``dH = -Cov_{a~pi}(log pi(a), dz(a)) + O(dz^2)``, state by state; the error is second
order, so halving the step size quarters it. This holds for every rule, exact or sampled: the
engine logs ``dH_pred_cov`` from the step's own realized ``dz``, so a sampled step is checked on
its own draw, not on its expectation.

Set-up: contextual bandits with verifiable rewards (8 prompts, 16 answers, 2 correct; one random
instance shared by every seed, a Gaussian start per seed), the setting of the LLM papers reduced
to one token. The occupancy of a contextual bandit is ``rho`` whatever the policy, so the
distribution-shift term is exactly zero and ``dH_realized = dH_within``: T3 is tested on the
whole realized change. Rules: exact PG, NPG, entropy-regularised NPG (``tau = 0.1``), temperature
REINFORCE (``T = 0.8`` and ``1.2``); sampled REINFORCE (64 responses, leave-one-out baseline),
stochastic NPG (64 responses), GRPO and AEPO (8 prompts x 8 responses, target 1.5 nats). NPG is
``npg_entropy`` at ``tau = 0`` and GRPO is ``aepo`` at ``alpha = 0`` (the same rule functions; a
compile costs seconds). Each rule sweeps six step sizes a factor 2 apart: the largest trains the
policy within the run (the mean entropy falls from 2.36 to between 0.15 and 0.75 nats at full
size), the smallest is 32 times smaller. The error's order is measured at step 0, where every step
size updates the same policies with the same samples (common random numbers), so ``dz`` is exactly
proportional to ``eta`` (as e3 does for the KL remainder).

At full size only (``quick = { skip = true }`` in the TOML; each is one more compile, and the quick size must stay under
30 s): temperature REINFORCE and the other GRPO variants (Entropy-Reg, Entropy-Adv, Clip-Cov,
KL-Cov with 2 epochs) join the law's claims, and a last run, exact NPG on token trees (4 prompts,
vocabulary 4, length 3), shows where the law needs care. There the per-token occupancy moves with
the policy, and the realized change of the per-token entropy adds
``dH_shift = sum_s (d_{k+1} - d_k)(s) H_{k+1}(s)`` to the within-state change that T3 describes;
``dH_pred_cov`` is compared with ``dH_within`` and the shift's own order is measured (claims
``tree_*``, reported without bounds since the quick size does not run them).

Expected outcome: for every rule the realized change lies on ``y = x`` against the prediction;
at step 0 the median ``|realized - predicted|`` grows as ``eta^2`` (log-log slope 2); the
relative error at the smallest step size is about 1% or less; the signs agree on more than 99% of
the steps, and the correlation at the training step size is above 0.97. On the token tree the
within-state change follows T3 with a second-order error, while the shift is first order (slope 1)
and carries a sizeable part of the realized change at the training step size: the shift that one
of our starting derivations calls negligible is not negligible in general (docs/theory.md §3.2,
§10).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from experiments.common import Context
from entropy_sim.plotting import OKABE_ITO, plt

# Rows whose predicted and realized changes are both below this are float32 noise, not a sign:
# the entropy is ~2 nats, and the covariance of ~16 terms loses ~1e-7 relative; 1e-6 nats is
# well above that and far below every typical step (>= 1e-4 nats at the smallest eta).
NEGLIGIBLE = 1e-6

CHECKS = {
    # d log median|realized - predicted| / d log eta at step 0: T3's error is O(dz^2). A wrong
    # factor anywhere in the prediction (a missing eta, h d(s) or sign) leaves a first-order error:
    # slope 1.
    "err_slope_min": (1.9, 2.1),
    "err_slope_max": (1.9, 2.1),
    # median |realized - predicted| / |realized| at each rule's smallest eta, worst rule: the law
    # is accurate to a few per cent there (first-order term ~ eta, error ~ eta^2).
    "rel_err_small_eta_max": (0.0, 0.05),
    # least-squares slope (through 0) of realized on predicted at the smallest eta, over all
    # steps and seeds: y = x, not y = c x.
    "gain_small_eta_min": (0.97, 1.03),
    "gain_small_eta_max": (0.97, 1.03),
    # fraction of non-negligible rows (every eta and step) where sign(pred) = sign(realized),
    # worst family. Disagreements only occur where Cov(log pi, dz) is near 0 and the second-order
    # term wins; a flipped sign in the engine would give ~0.
    "sign_agree_min": (0.97, 1.0),
    # Pearson correlation of predicted and realized at each rule's largest (training) eta, worst
    # rule: the law explains the step-to-step variation even at the step size that trains.
    "corr_train_eta_min": (0.95, 1.0),
}

FAMILIES = {
    "pg": "exact PG-type", "temp_reinforce": "exact PG-type",
    "npg": "exact NPG-type", "npg_entropy": "exact NPG-type",
    "reinforce": "sampled REINFORCE-type", "sampled_npg": "sampled REINFORCE-type",
    **{rule: "sampled GRPO-type"
       for rule in ("grpo", "aepo", "entropy_reg", "entropy_adv", "clip_cov", "kl_cov")},
}
FAMILY_COLOUR = {family: OKABE_ITO[i] for i, family in enumerate(dict.fromkeys(FAMILIES.values()))}
LAW_RUNS = ("pg", "npg", "temp_reinforce", "reinforce", "sampled_npg", "aepo", "entropy_reg",
            "entropy_adv", "clip_cov", "kl_cov")
# Each rule costs a compile of several seconds; these runs are skipped at the quick size (CI).
MARKERS = "osD^vP"  # one per rule within a family
COLUMNS = ["eta", "seed", "step", "dH_realized", "dH_pred_cov"]


def variant(rule: str, params: dict) -> str:
    """The label of one rule setting. One rule function can stand for two rules: ``npg_entropy``
    at ``tau = 0`` is ``npg`` and ``aepo`` at ``alpha = 0`` is ``grpo`` (its regulariser weighted
    by 0), which saves a compile each."""
    if rule == "npg_entropy" and params.get("tau") == 0:
        return "npg"
    if rule == "aepo" and "alpha" in params:
        return "grpo" if params["alpha"] == 0 else f"aepo (alpha = {params['alpha']:g})"
    return f"{rule} ({', '.join(f'{k} = {v:g}' for k, v in params.items())})" if params else rule


def run(ctx: Context) -> dict[str, float]:
    frames = []
    for name in LAW_RUNS:
        if name not in ctx.runs:  # full size only
            continue
        res = ctx.run(name)
        df, rule = res.metrics, res.config["algo"]["name"]
        others = [k for k in res.config.sweep if k != "eta"]
        for key, g in df.groupby(others) if others else [((), df)]:
            key = key if isinstance(key, tuple) else (key,)
            label = variant(rule, dict(zip(others, key)))
            frames.append(g[COLUMNS].assign(variant=label, family=FAMILIES[label.split()[0]]))
    rows = pd.concat(frames, ignore_index=True)
    table = pd.DataFrame([variant_stats(g) | {"variant": v, "family": g.family.iloc[0]}
                          for v, g in rows.groupby("variant", sort=False)]).set_index("variant")
    table["marker"] = [MARKERS[i % len(MARKERS)] for i in table.groupby("family").cumcount()]

    claims = {
        "err_slope_min": table.err_slope.min(),
        "err_slope_max": table.err_slope.max(),
        "rel_err_small_eta_max": table.rel_err_small.max(),
        "gain_small_eta_min": table.gain_small.min(),
        "gain_small_eta_max": table.gain_small.max(),
        "corr_train_eta_min": table.corr_train.min(),
    }
    agree = rows[np.maximum(np.abs(rows.dH_realized), np.abs(rows.dH_pred_cov)) >= NEGLIGIBLE]
    agree = agree.assign(same=np.sign(agree.dH_realized) == np.sign(agree.dH_pred_cov))
    sign_rate = agree.groupby("family", sort=False).same.mean()
    claims["sign_agree_min"] = sign_rate.min()
    for family, rate in sign_rate.items():
        claims[f"sign_agree[{family}]"] = rate
    for label, r in table.iterrows():
        claims[f"err_slope[{label}]"] = r.err_slope
        claims[f"rel_err_small_eta[{label}]"] = r.rel_err_small
        claims[f"corr_train_eta[{label}]"] = r.corr_train

    main_figure(ctx, rows, table, sign_rate)
    if "tree_npg" in ctx.runs:  # full size only
        tree = ctx.run("tree_npg").metrics
        tree_claims, tree_curves = token_tree_orders(tree)
        claims.update(tree_claims)
        tree_figure(ctx, tree, tree_curves, tree_claims)
    return {k: float(v) for k, v in claims.items()}


def step0_slope(first: pd.DataFrame, column: str) -> tuple[float, pd.Series]:
    """Log-log slope of the median over seeds of ``|column|`` against ``eta`` at step 0, and the
    medians."""
    med = first.groupby("eta")[column].apply(lambda x: np.median(np.abs(x)))
    return float(np.polyfit(np.log(med.index), np.log(med.to_numpy()), 1)[0]), med


def variant_stats(g: pd.DataFrame) -> dict:
    """The law's accuracy for one rule (all step sizes): step-0 error order, relative error and
    gain at the smallest eta, correlation at the largest."""
    g = g.assign(err=g.dH_realized - g.dH_pred_cov)
    slope, err0 = step0_slope(g[g.step == 0], "err")
    etas = np.sort(g.eta.unique())
    small, train = g[g.eta == etas[0]], g[g.eta == etas[-1]]
    moved = small[np.abs(small.dH_realized) >= NEGLIGIBLE]
    x, y = small.dH_pred_cov.to_numpy(np.float64), small.dH_realized.to_numpy(np.float64)
    by_eta = g[np.abs(g.dH_realized) >= NEGLIGIBLE].groupby("eta")
    return {
        "err_slope": slope,
        "err0": err0,
        "rel_err": by_eta.apply(lambda h: np.median(np.abs(h.err / h.dH_realized))),
        "rel_err_small": float(np.median(np.abs(moved.err / moved.dH_realized))),
        "gain_small": float(np.sum(x * y) / np.sum(x * x)),
        "corr_train": float(np.corrcoef(train.dH_pred_cov, train.dH_realized)[0, 1]),
    }


def token_tree_orders(df: pd.DataFrame) -> tuple[dict, dict]:
    """Step-0 orders on the token tree: T3 against ``dH_within``, and the shift term."""
    first = df[df.step == 0].assign(err_within=lambda d: d.dH_within - d.dH_pred_cov)
    within_slope, within = step0_slope(first, "err_within")
    shift_slope, shift = step0_slope(first, "dH_shift")
    _, realized = step0_slope(first, "dH_realized")
    train = df[df.eta == df.eta.max()]
    moved = train[np.abs(train.dH_realized) >= NEGLIGIBLE]
    claims = {
        "tree_within_err_slope": within_slope,
        "tree_shift_slope": shift_slope,
        # how much of the realized change the shift carries at the training step size
        "tree_shift_share_train_eta": float(np.median(np.abs(moved.dH_shift)
                                                      / np.abs(moved.dH_realized))),
        "tree_corr_within_train_eta": float(np.corrcoef(train.dH_pred_cov, train.dH_within)[0, 1]),
        "tree_corr_realized_train_eta": float(np.corrcoef(train.dH_pred_cov,
                                                          train.dH_realized)[0, 1]),
    }
    return claims, {"within": within, "shift": shift, "realized": realized}


def main_figure(ctx: Context, rows: pd.DataFrame, table: pd.DataFrame, sign_rate: pd.Series):
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5), layout="constrained")

    ax = axes[0, 0]
    rng = np.random.default_rng(0)
    lim = [0.0, 0.0]
    for family, colour in FAMILY_COLOUR.items():
        variants = table.index[table.family == family]
        pts = rows[rows.variant.isin(variants)]
        pts = pts[pts.eta == pts.groupby("variant").eta.transform("max")]
        pts = pts.iloc[rng.choice(len(pts), min(len(pts), 2500), replace=False)]
        ax.scatter(pts.dH_pred_cov, pts.dH_realized, s=4, alpha=0.35, color=colour,
                   rasterized=True, label=family)
        lim = [min(lim[0], pts.dH_pred_cov.min(), pts.dH_realized.min()),
               max(lim[1], pts.dH_pred_cov.max(), pts.dH_realized.max())]
    ax.plot(lim, lim, color="0.2", linewidth=1, linestyle="--", label="y = x")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set(xlabel="predicted ΔH = −Cov(log π, Δz) [nats]", ylabel="realized ΔH [nats]",
           title=f"Each rule at its largest (training) η: corr ≥ {table.corr_train.min():.3f}")
    ax.legend(frameon=False, markerscale=3, loc="upper left")

    ax = axes[0, 1]
    for label, r in table.iterrows():
        ax.loglog(r.err0.index, r.err0.to_numpy(), marker=r.marker, markersize=4,
                  color=FAMILY_COLOUR[r.family], label=label)
    etas = np.array([rows.eta.min(), rows.eta.max()])
    mid = np.exp(np.mean(np.log([err.iloc[0] for err in table.err0])))
    ax.loglog(etas, mid * (etas / etas[0]) ** 2, color="0.4", linestyle="--", label="slope 2")
    ax.set(xlabel="step size η", ylabel="median |realized − predicted| at step 0 [nats]",
           title=f"Error is second order: slopes {table.err_slope.min():.2f} to "
                 f"{table.err_slope.max():.2f}")
    ax.legend(frameon=False, fontsize=7, ncol=2)

    ax = axes[1, 0]
    for label, r in table.iterrows():
        ax.loglog(r.rel_err.index, r.rel_err.to_numpy(), marker=r.marker, markersize=4,
                  color=FAMILY_COLOUR[r.family], label=label)
    ax.set(xlabel="step size η", ylabel="median |realized − predicted| / |realized|",
           title="Relative error over all steps (rules marked as above)")

    ax = axes[1, 1]
    families = list(sign_rate.index)
    bars = ax.bar(range(len(families)), sign_rate.to_numpy(),
                  color=[FAMILY_COLOUR[f] for f in families])
    for bar, rate in zip(bars, sign_rate.to_numpy()):
        ax.text(bar.get_x() + bar.get_width() / 2, rate, f"{100 * rate:.2f}%", ha="center",
                va="bottom", fontsize=9)
    ax.set_xticks(range(len(families)), [f.replace(" ", "\n", 1) for f in families])
    ax.set_ylim(min(0.9, sign_rate.min() - 0.02), 1.005)
    ax.set(ylabel="fraction of steps with sign(pred) = sign(realized)",
           title=f"Signs agree (all η and steps, |ΔH| ≥ {NEGLIGIBLE:g} nats)")
    fig.suptitle(f"Covariance law T3 on contextual bandits with verifiable rewards "
                 f"({rows.seed.nunique()} seeds per rule)")
    ctx.savefig(fig, ctx.name)


def tree_figure(ctx: Context, df: pd.DataFrame, curves: dict, claims: dict):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    ax = axes[0]
    etas = curves["within"].index
    ax.loglog(etas, curves["realized"], "o-", color=OKABE_ITO[0], label="median |realized ΔH|")
    ax.loglog(etas, curves["shift"], "s-", color=OKABE_ITO[1], label="median |ΔH_shift|")
    ax.loglog(etas, curves["within"], "D-", color=OKABE_ITO[2],
              label="median |ΔH_within − predicted|")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(etas, [f"{eta:g}" for eta in etas])
    ax.set(xlabel="step size η", ylabel="at step 0 [nats]",
           title=f"Shift is first order (slope {claims['tree_shift_slope']:.2f}), "
                 f"T3 error second ({claims['tree_within_err_slope']:.2f})")
    ax.legend(frameon=False)
    ax = axes[1]
    train = df[df.eta == df.eta.max()]
    pick = np.random.default_rng(0).choice(len(train), min(len(train), 5000), replace=False)
    pts = train.iloc[pick]
    ax.scatter(pts.dH_pred_cov, pts.dH_realized, s=4, alpha=0.35, color=OKABE_ITO[0],
               rasterized=True,
               label=f"realized (corr {claims['tree_corr_realized_train_eta']:.3f})")
    ax.scatter(pts.dH_pred_cov, pts.dH_within, s=4, alpha=0.35, color=OKABE_ITO[2],
               rasterized=True,
               label=f"within-state (corr {claims['tree_corr_within_train_eta']:.3f})")
    lim = [pts.dH_pred_cov.min(), pts.dH_pred_cov.max()]
    ax.plot(lim, lim, color="0.2", linewidth=1, linestyle="--", label="y = x")
    ax.set(xlabel="predicted ΔH = −Cov(log π, Δz) [nats]", ylabel="entropy change [nats]",
           title=f"Per-token entropy, η = {df.eta.max():g}: T3 describes the within-state part")
    ax.legend(frameon=False, markerscale=3)
    fig.suptitle(f"Exact NPG on token trees ({df.seed.nunique()} seeds): the occupancy moves, so "
                 f"the realized change adds a first-order shift")
    ctx.savefig(fig, f"{ctx.name}_token_tree")
