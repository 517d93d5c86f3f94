"""Experiment 8: the knobs of the training frameworks (verl, TRL, OpenRLHF), measured exactly
(docs/theory.md §9).

Claims and set-ups, one panel each:

1. **Clip-higher** (DAPO's ``eps_high = 0.28`` against GRPO's symmetric 0.2) with eight epochs on
   each batch, so that the ratio moves and the clip acts: how ``eps_high`` moves the entropy. A
   contextual bandit (4 prompts, 8 answers, 2 correct), ``eta = 4``, 100 steps, ``eps_high`` from
   0.2 to 0.8 in one compiled grid. Every grid point sees the same seeds, so the change of the
   final entropy is measured seed by seed (paired). DAPO's argument: the upper clip caps how much
   a rare token with ``A > 0`` can gain, so raising ``eps_high`` should keep entropy up.
2. **Clip-low against clip-high under uninformative rewards** (every arm a fair coin): the lower
   clip alone (``eps = 0.2, eps_high = 100``), the upper alone (``eps = 1``: the bound ``1 - eps = 0``
   never binds; ``eps_high = 0.2``), both, and neither. The expected policy gradient is 0, so any
   drift of the entropy comes from sampling and from the clip. The 2025 analysis of the clip's
   bias ('clip-low increases entropy, clip-high decreases it') predicts the order.
3. **KL estimators** (k1, k2, k3, k3+; in the loss or the reward), computed exactly on 1,000 random
   pairs of a policy and a reference on a 6-armed bandit, float64: the expected gradient of each
   against the true gradient of ``KL(pi || pi_ref)``.
4. **The token tree** (e7's toy language model): GRPO, Dr. GRPO, forking tokens (gradient on the
   top 20% of tokens by entropy) and W-REINFORCE (positive samples x 0.1, +-1 rewards), compared
   along their entropy-performance curves: entropy and exact pass@8 when the mean exact pass@1
   first reaches 0.3. The rules learn at different speeds (Dr. GRPO's unnormalised advantage is
   smaller, forking tokens trains on a fifth of the tokens), so a comparison at a fixed step would
   measure speed.

Expected outcome (full size, 2,000 seeds for 1 and 2, 1,000 for 4; measured, 100 s on 2 cores):

1. Here raising ``eps_high`` *lowers* the final entropy, seed by seed: 0.105 nats at 0.2, 0.102 at
   DAPO's 0.28, 0.098 at 0.4, 0.089 at 0.8; the paired drop from 0.2 to 0.8 is 0.016 nats, 10.3
   standard errors (3.9 at quick size, 300 seeds). The tokens with ``A > 0`` are the correct
   answers, and once training starts they are the likely ones: the upper clip slows their
   collapse onto one answer, and loosening it speeds the collapse. DAPO's rare correct tokens are
   not what limits the entropy in this task.
2. Under random rewards the clip alone sets the sign of the drift: after 100 steps (from 1.73
   nats) the lower clip alone keeps 1.36 nats, both clips 0.93, no clip 0.61, the upper clip
   alone 0.05. Against no clip, clip-low raises the entropy (+0.75) and clip-high lowers it
   (-0.56); GRPO's symmetric clip sits in between.
3. In the loss, k2 and k3+ have the true gradient (largest relative error 3e-15 over 1,000
   pairs), k1 has none (expected gradient 0, relative error exactly 1) and k3 has the gradient of
   the reverse ``KL(pi_ref || pi)`` (relative error 1e-15 against it; median 0.41 against the
   forward one), except on the 27 pairs where an answer has ``pi_ref / pi > 13.5`` and verl's clamp
   of k3 at 10 removes its gradient. k1 in the reward, through the score function, is unbiased.
4. At pass@1 = 0.3 the entropies are 0.904 (GRPO), 0.895 (Dr. GRPO), 0.910 (forking tokens) and
   0.881 (W-REINFORCE) nats per token: Dr. GRPO follows GRPO's curve, slower. Forking tokens
   reaches a higher pass@8 at the same pass@1 and entropy (0.693 against GRPO's 0.582), W-REINFORCE
   a slightly lower one (0.553), spending slightly more entropy: its down-weighted positives do
   not keep entropy here, where every wrong answer's loss is spread over 62 others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import Context
from entropy_sim import objectives
from entropy_sim.plotting import OKABE_ITO, plt

LEVEL = 0.3  # the pass@1 at which the token-tree rules are compared
TREE = ("grpo", "dr_grpo", "forking_tokens", "w_reinforce")
LABELS = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO", "forking_tokens": "forking tokens (20%)",
          "w_reinforce": "W-REINFORCE"}
CLIPS = {(0.2, 100.0): "lower clip only", (1.0, 0.2): "upper clip only",
         (0.2, 0.2): "both (GRPO)", (1.0, 100.0): "neither"}
# k3 = exp(-x) - 1 + x reaches verl's clamp of 10 at -x = log(pi_ref / pi) of about 2.61
K3_CLAMP = 2.6
ESTIMATORS = [("k1", "loss"), ("k2", "loss"), ("k3", "loss"), ("k3+", "loss"), ("k1", "reward")]

CHECKS = {
    # 1. Paired change of the final entropy from eps_high = 0.2 to 0.8, in standard errors: a
    # decrease (z = 10.3 at full size, 3.9 at quick). 3 rules out noise in either direction.
    "clip_higher_entropy_drop_z": (3.0, None),
    # 2. Final entropy, lower clip alone minus no clip (+0.75 full, +0.70 quick at 50 steps) and no
    # clip minus upper clip alone (+0.56 full, +0.58 quick): both signs as predicted, by far.
    "clip_low_minus_none": (0.2, None),
    "none_minus_clip_high": (0.2, None),
    # 3. Largest relative error of the unbiased estimators' expected gradients over 1,000 random
    # pairs (float64: about 1e-15); k1 in the loss has expected gradient 0 (relative error 1);
    # k3 in the loss is off by a median of about 0.4, and is the reverse KL's gradient (1e-15)
    # wherever no answer has pi_ref / pi above 13.5 (log 2.6): there verl's clamp of k3 at 10 cuts the
    # gradient (the clamped pairs are counted, unchecked).
    "kl_unbiased_max_rel_error": (0.0, 1e-10),
    "kl_k1_loss_rel_error": (1.0 - 1e-12, 1.0 + 1e-12),
    "kl_k3_loss_median_rel_error": (0.1, None),
    "kl_k3_loss_reverse_unclamped_max_rel_error": (0.0, 1e-10),
    # 4. At pass@1 = 0.3: Dr. GRPO's entropy within 0.05 nats of GRPO's (0.009 at both sizes);
    # forking tokens' pass@8 above GRPO's by at least 0.05 (0.11 full, 0.10 quick).
    "tree_dr_grpo_entropy_gap_abs": (0.0, 0.05),
    "tree_forking_pass8_gain": (0.05, None),
}


def final_entropy(res) -> np.ndarray:
    """Per grid point and seed, the exact entropy of the last policy, weighted by the contexts'
    weights (uniform here). ``[G, N]``."""
    theta = res.final_theta.astype(np.float64)
    log_pi = theta - theta.max(-1, keepdims=True)
    log_pi -= np.log(np.exp(log_pi).sum(-1, keepdims=True))
    return np.mean(-np.sum(np.exp(log_pi) * log_pi, axis=-1), axis=-1)


def curve(summary, metric: str, **where) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, mean over seeds)`` of ``metric`` at the grid point ``where`` of a run's
    ``summary()``."""
    s = summary[summary.metric == metric]
    for key, value in where.items():
        s = s[np.isclose(s[key], value)]
    return s.step.to_numpy(), s["mean"].to_numpy()


def at_level(x: np.ndarray, level: float, *ys: np.ndarray) -> list[float]:
    """Each ``y`` interpolated where ``x`` first reaches ``level`` (NaN if it never does)."""
    above = np.flatnonzero(x >= level)
    if not len(above) or above[0] == 0:
        return [float("nan")] * len(ys)
    i = above[0]
    w = (level - x[i - 1]) / (x[i] - x[i - 1])
    return [float(y[i - 1] + w * (y[i] - y[i - 1])) for y in ys]


def kl_gradients(pairs: int = 1000, arms: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Exact expected gradients (float64) of each estimator and placement on ``pairs`` random
    (policy, reference) pairs, next to the true gradients of KL(pi || ref) and KL(ref || pi).
    ``{name: [pairs, arms]}`` and the KLs ``[pairs]``."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        theta = jnp.asarray(rng.normal(size=(pairs, arms)) * 0.8)
        ref = jnp.asarray(rng.normal(size=(pairs, arms)) * 0.8)

        def kl(p, q):
            lp, lq = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
            return jnp.sum(jnp.exp(lp) * (lp - lq))

        def expected(th, rf, estimator, placement):
            log_ref, pi = jax.nn.log_softmax(rf), jax.nn.softmax(th)

            def one(a):
                if placement == "loss":  # the estimate differentiated through log pi(a)
                    return jax.grad(lambda t: objectives.kl_estimate(
                        jax.nn.log_softmax(t)[a], log_ref[a], estimator))(th)
                k = objectives.kl_estimate(jax.nn.log_softmax(th)[a], log_ref[a], estimator)
                return k * jax.grad(lambda t: jax.nn.log_softmax(t)[a])(th)  # score function
            return jnp.sum(pi[:, None] * jax.vmap(one)(jnp.arange(arms)), axis=0)

        def everything(th, rf):
            return {f"{e}_{p}": expected(th, rf, e, p) for e, p in ESTIMATORS} | {
                "forward": jax.grad(kl)(th, rf), "reverse": jax.grad(lambda t: kl(rf, t))(th),
                "kl": kl(th, rf),
                "max_log_ratio": jnp.max(jax.nn.log_softmax(rf) - jax.nn.log_softmax(th))}

        out = {k: np.asarray(v) for k, v in jax.jit(jax.vmap(everything))(theta, ref).items()}
    return out


def relative_error(g: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(g - truth, axis=-1) / np.linalg.norm(truth, axis=-1)


def run(ctx: Context) -> dict[str, float]:
    claims: dict[str, float] = {}
    fig, axes = plt.subplots(2, 3, figsize=(17, 9), layout="constrained")
    axes[1, 2].axis("off")

    # 1. clip-higher
    res = ctx.run("clip_higher")
    summary = res.summary()
    highs = [p["eps_high"] for p in res.swept]
    h_final = final_entropy(res)  # [G, N]
    drop = h_final[highs.index(0.2)] - h_final[highs.index(0.8)]
    claims["clip_higher_entropy_drop"] = float(drop.mean())
    claims["clip_higher_entropy_drop_z"] = float(drop.mean() / (drop.std(ddof=1) / np.sqrt(len(drop))))
    ax = axes[0, 0]
    for i, high in enumerate(highs):
        steps, mean = curve(summary, "entropy", eps_high=high)
        ax.plot(steps, mean, color=OKABE_ITO[i], label=f"eps_high = {high:g}"
                + (" (= eps: GRPO)" if high == 0.2 else " (DAPO)" if high == 0.28 else ""))
        claims[f"clip_higher_final_entropy_{high:g}"] = float(h_final[i].mean())
    ax.set(xlabel="step", ylabel="entropy (nats)", yscale="log",
           title="1. Clip-higher (8 epochs): looser, lower entropy")
    ax.legend(frameon=False)

    # 2. clip-low against clip-high, random rewards
    res = ctx.run("random_rewards")
    summary = res.summary()
    h_final = final_entropy(res).mean(axis=1)
    final = {(p["eps"], p["eps_high"]): h for p, h in zip(res.swept, h_final)}
    claims["clip_low_minus_none"] = final[(0.2, 100.0)] - final[(1.0, 100.0)]
    claims["none_minus_clip_high"] = final[(1.0, 100.0)] - final[(1.0, 0.2)]
    ax = axes[0, 1]
    for i, ((eps, high), label) in enumerate(CLIPS.items()):
        steps, mean = curve(summary, "entropy", eps=eps, eps_high=high)
        ax.plot(steps, mean, color=OKABE_ITO[i], label=label)
        claims[f"random_final_entropy_{label.split()[0]}"] = final[(eps, high)]
    ax.set(xlabel="step", ylabel="entropy (nats)",
           title="2. Random rewards: clip-low raises, clip-high lowers")
    ax.legend(frameon=False)

    # 3. KL estimators, exact
    g = kl_gradients()
    errors = {name: relative_error(g[name], g["forward"]) for name in (f"{e}_{p}" for e, p in ESTIMATORS)}
    claims["kl_unbiased_max_rel_error"] = float(max(errors[n].max() for n in ("k2_loss", "k3+_loss",
                                                                              "k1_reward")))
    claims["kl_k1_loss_rel_error"] = float(np.median(errors["k1_loss"]))
    claims["kl_k3_loss_median_rel_error"] = float(np.median(errors["k3_loss"]))
    clamped = g["max_log_ratio"] > K3_CLAMP  # some answer has k3 at verl's clamp of 10
    reverse = relative_error(g["k3_loss"], g["reverse"])
    claims["kl_k3_loss_reverse_unclamped_max_rel_error"] = float(reverse[~clamped].max())
    claims["kl_k3_clamped_pairs"] = float(clamped.sum())
    ax = axes[0, 2]
    for i, (name, err) in enumerate(errors.items()):
        ax.scatter(g["kl"], np.maximum(err, 1e-17), s=6, color=OKABE_ITO[i], alpha=0.6,
                   label=name.replace("_", " in the "))
    ax.set(xscale="log", yscale="log", ylim=(1e-17, 10), xlabel="KL(π || π_ref)",
           ylabel="relative error of the expected gradient",
           title="3. KL estimators: error against ∇KL(π || π_ref)")
    ax.legend(frameon=False, fontsize=8, loc="center right")

    # 4. token tree, along the entropy-performance curve
    ax, ax8 = axes[1, 0], axes[1, 1]
    matched = {}
    for i, name in enumerate(TREE):
        summary = ctx.run(name).summary()
        steps, p1 = curve(summary, "pass_at_1")
        _, h = curve(summary, "entropy")
        _, p8 = curve(summary, "pass_at_8")
        matched[name] = at_level(p1, LEVEL, h, p8)
        claims[f"tree_{name}_entropy_at_pass1"] = matched[name][0]
        claims[f"tree_{name}_pass8_at_pass1"] = matched[name][1]
        ax.plot(p1, h, color=OKABE_ITO[i], label=LABELS[name])
        ax.plot([LEVEL], [matched[name][0]], "o", color=OKABE_ITO[i])
        ax8.plot(p1, p8, color=OKABE_ITO[i], label=LABELS[name])
        ax8.plot([LEVEL], [matched[name][1]], "o", color=OKABE_ITO[i])
    claims["tree_dr_grpo_entropy_gap_abs"] = abs(matched["dr_grpo"][0] - matched["grpo"][0])
    claims["tree_forking_pass8_gain"] = matched["forking_tokens"][1] - matched["grpo"][1]
    for a in (ax, ax8):
        a.axvline(LEVEL, color="0.7", lw=0.8)
        a.set(xlabel="exact pass@1 (mean over seeds)")
    ax.set(ylabel="entropy (nats per token)", title="4. Token tree: entropy at equal pass@1")
    ax8.set(ylabel="exact pass@8", title="5. Token tree: pass@8 at equal pass@1")
    ax.legend(frameon=False)
    fig.suptitle("The training frameworks' knobs on exact tabular problems")
    ctx.savefig(fig, ctx.name)
    return claims
