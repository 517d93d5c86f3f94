"""The registry of update rules: each rule's function and its declarations (``parts.RuleSpec``).

Hyperparameters are traced arrays (a list in the config is a sweep axis, compiled once); options
are static Python values that fix shapes or code paths (a new value compiles a new program).
Exact rules are written out in ``exact.py``, REINFORCE-type rules in ``sampled.py``; the GRPO
family is chained from pieces (``entropy_sim.objectives``), one line per rule. ``register`` adds a
rule of your own (``experiments/custom_rule.py``).
"""

from __future__ import annotations

from entropy_sim.diagnostics import TEMPERATURE_COLUMNS
from entropy_sim.objectives import (BATCH_COLUMNS, ETA, adaptive_entropy, aepo_regulariser,
                                    cispo_weight, clip_cov_tokens, dual_clip, dynamic_sampling,
                                    entropy_bonus, entropy_shaping, forking_tokens, group_centred,
                                    group_normalised, gspo_clip, kl_cov_tokens, plain_ratio,
                                    policy_rule, ppo_clip, reference_kl, sapo_gate, sign_weighted,
                                    signed_reward, with_defaults)
from entropy_sim.parts import Column, Hparam, Option, RuleSpec
from entropy_sim.rules import exact, sampled
from entropy_sim.sampling import BASELINES

TAU = Hparam("tau", None, "entropy-regularisation temperature", low=0.0)
TEMP = Hparam("temp", 1.0, "sampling temperature T", low=0.0, low_open=True)
BATCH_REWARD = tuple(c for c in BATCH_COLUMNS if c.name == "batch_reward")
BASELINE = Option("baseline", "none", "none | mean | loo | value", choices=BASELINES)


def _baseline_needs_two(values: dict, num_actions: int) -> None:
    from entropy_sim.errors import ConfigError
    if values["baseline"] in ("mean", "loo") and values["batch"] < 2:
        raise ConfigError("algo.batch", f"baseline = {values['baseline']!r} needs batch >= 2, "
                                        f"got {values['batch']}")


def _sampled(name, fn, summary, batch):
    return RuleSpec(name, fn, summary, (ETA,), (Option("batch", batch, "responses per step, B"),
                                               BASELINE),
                    BATCH_REWARD, (_baseline_needs_two,), sampled=True)


GRPO = (group_normalised, ppo_clip)

DELTA = Hparam("delta", 0.01, "KL budget of a step, sum_s d(s) KL(pi_{k+1}(.|s) || pi_k(.|s))",
               low=0.0, low_open=True)
ETA_EFF = Column("eta_eff", "the step size the rule chose: dz = eta_eff A (trust_region, "
                            "kl_penalty), eta_eff (A - mean_a A) (natural_gradient)")
MULTIPLIER = Column("multiplier", "the KL constraint's Lagrange multiplier lambda = 1 / eta_eff "
                                  "(trust_region: solved for; kl_penalty: carried and updated)")


def _sgd_only(values: dict, num_actions: int) -> None:
    from entropy_sim.errors import ConfigError
    if values["optimizer"] != "sgd":
        raise ConfigError("algo.optimizer", "this rule sets its own step size and applies "
                                            f"it as it is: use sgd, got {values['optimizer']!r}")


RULES: dict[str, RuleSpec] = {}


def register(spec: RuleSpec, *, replace: bool = False) -> RuleSpec:
    """Add ``spec`` to the registry under ``spec.name`` (then ``[algo] name = ...`` runs it)."""
    if spec.name in RULES and not replace:
        raise ValueError(f"a rule named {spec.name!r} is registered already "
                         f"(replace=True to replace it)")
    RULES[spec.name] = spec
    return spec


for _spec in [
    RuleSpec("pg", exact.pg, "softmax policy gradient, dz = eta h d pi A", (ETA,)),
    RuleSpec("npg", exact.npg, "natural policy gradient, dz = eta A", (ETA,)),
    RuleSpec("pg_entropy", exact.pg, "entropy-regularised PG (Mei et al.), dz = eta h d pi A_tau",
             (ETA, TAU)),
    RuleSpec("npg_entropy", exact.npg, "entropy-regularised NPG (Cen et al.), dz = eta A_tau",
             (ETA, TAU)),
    RuleSpec("temp_reinforce", exact.temp_reinforce,
             "REINFORCE on samples at temperature T, score at T = 1 (AEPO Assumption 4.2)",
             (ETA, TEMP),
             (Option("batch", 0, "responses per step; 0 = the exact expected update", minimum=0),),
             TEMPERATURE_COLUMNS),
    RuleSpec("trust_region", exact.trust_region, "exact KL trust region: dz = eta A with eta "
             "such that sum_s d KL(pi' || pi) = delta (bisection)", (DELTA,), (),
             (ETA_EFF, MULTIPLIER), (_sgd_only,)),
    RuleSpec("natural_gradient", exact.natural_gradient, "natural gradient with a KL budget: "
             "sqrt(2 delta / g F^+ g) F^+ g, the exact Fisher matrix", (DELTA,), (), (ETA_EFF,),
             (_sgd_only,)),
    RuleSpec("kl_penalty", exact.kl_penalty, "max L - lambda KL (dz = A / lambda), lambda by dual "
             "gradient descent or PPO's adaptive rule",
             (DELTA, Hparam("kl_lambda", 1.0, "the multiplier lambda before step 0", low=0.0,
                            low_open=True),
              Hparam("dual_lr", 10.0, "dual gradient step: lambda += dual_lr (KL - delta)",
                     low=0.0)),
             (Option("dual", "gradient", "how lambda moves: gradient (dual descent) | ppo "
                                         "(x2 above 1.5 delta, /2 below delta / 1.5)",
                     choices=("gradient", "ppo")),),
             (MULTIPLIER, ETA_EFF), (_sgd_only,), init=exact.kl_penalty_init),
    _sampled("reinforce", sampled.reinforce,
             "REINFORCE on B sampled responses, with an optional baseline", 64),
    _sampled("sampled_npg", sampled.sampled_npg,
             "stochastic NPG: importance-weighted estimates of Q - b on B sampled responses", 1),
    policy_rule("grpo", "GRPO: group-normalised advantage, PPO clip", *GRPO),
    policy_rule("dr_grpo", "Dr. GRPO: GRPO without the std division", group_centred, ppo_clip),
    policy_rule("entropy_reg", "GRPO + lambda * token-mean entropy", *GRPO, entropy_bonus),
    policy_rule("entropy_adv", "GRPO with A + min(beta H, |A| / kappa) (Cheng et al.)",
                *GRPO, entropy_shaping),
    policy_rule("clip_cov", "GRPO; random high-covariance tokens lose their gradient (Cui et al.)",
                *GRPO, clip_cov_tokens),
    policy_rule("kl_cov", "policy gradient; top-covariance tokens get a KL penalty (Cui et al.)",
                group_normalised, plain_ratio, kl_cov_tokens),
    policy_rule("aepo", "GRPO + alpha REINFORCE on positive samples at T_high or T_low (AEPO)",
                *GRPO, aepo_regulariser()),
    policy_rule("aepo_t1", "AEPO ablation: regulariser sampled at T = 1",
                *GRPO, aepo_regulariser(hot_and_cold=False)),
    policy_rule("aepo_adv", "AEPO ablation: regulariser with the group advantage, negatives kept",
                *GRPO, aepo_regulariser(positives=False)),
    policy_rule("dapo", "DAPO: dynamic sampling, clip-higher (eps_high = 0.28), token mean",
                group_normalised, dynamic_sampling, with_defaults(ppo_clip, eps_high=0.28)),
    policy_rule("grpo_dual_clip", "GRPO with verl's dual clip c = 3 for A < 0",
                *GRPO, dual_clip),
    policy_rule("gspo", "GSPO: sequence-level ratio and clip (Zheng et al.), eps 3e-4 / 4e-4",
                group_normalised, with_defaults(gspo_clip, eps=3e-4, eps_high=4e-4)),
    policy_rule("cispo", "CISPO: capped, stop-gradient importance weight x A log pi (MiniMax-M1)",
                group_normalised, cispo_weight),
    policy_rule("sapo", "SAPO: soft sigmoid gate in place of the clip (Gao et al.)",
                group_normalised, sapo_gate),
    policy_rule("forking_tokens", "GRPO on the top-20% entropy tokens only (80/20, Wang et al.)",
                *GRPO, forking_tokens),
    policy_rule("grpo_kl", "GRPO with a KL penalty to the initial policy: k3 in the loss (GRPO, "
                           "verl use_kl_loss); any estimator, in the reward, adaptive", *GRPO,
                reference_kl),
    policy_rule("adaptive_entropy", "GRPO + an entropy bonus whose coefficient adapts toward a "
                                    "target entropy (Skywork-OR1, TRL use_adaptive_entropy)",
                *GRPO, adaptive_entropy),
    policy_rule("w_reinforce", "W-REINFORCE: +-1 reward, positives x 0.1, no baseline (Zhu et al.)",
                signed_reward, plain_ratio, with_defaults(sign_weighted, pos_weight=0.1)),
]:
    register(_spec)
