"""The registry of update rules: each rule's function, hyperparameters, static options and columns.

Hyperparameters are traced arrays (a list in the config is a sweep axis, compiled once); options
are static Python values that fix shapes or code paths (a new value compiles a new program).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from entropy_sim import rules, sampled
from entropy_sim.sampling import BASELINES

# name -> (low, high, low_open, high_open, whole number, meaning). None: unbounded.
HPARAMS = {
    "eta": (0.0, None, True, False, False, "learning rate"),
    "tau": (0.0, None, False, False, False, "entropy-regularisation temperature"),
    "temp": (0.0, None, True, False, False, "sampling temperature T"),
    "eps": (0.0, None, False, False, False, "PPO clip range"),
    "lambda": (None, None, False, False, False, "entropy-bonus weight (Entropy-Reg)"),
    "beta": (0.0, None, False, False, False,
             "entropy-shaping weight (Entropy-Adv) or KL weight (KL-Cov)"),
    "kappa": (1.0, None, True, False, False, "shaping cap |A| / kappa (Entropy-Adv)"),
    "frac": (0.0, 1.0, True, False, False, "fraction of the batch's tokens selected (Clip-/KL-Cov)"),
    "w_low": (None, None, False, False, False, "lower covariance bound (Clip-Cov)"),
    "w_high": (None, None, False, False, False, "upper covariance bound (Clip-Cov)"),
    "alpha": (0.0, None, False, False, False, "weight of AEPO's REINFORCE regulariser"),
    "entropy_target": (0.0, None, False, False, False, "AEPO's entropy target (nats)"),
    "temp_low": (0.0, None, True, False, False, "AEPO's temperature above the target"),
    "temp_high": (0.0, None, True, False, False, "AEPO's temperature below the target"),
    "pos_up": (0.0, None, False, False, True, "positive samples per step when raising entropy"),
    "pos_down": (0.0, None, False, False, True, "positive samples per step when lowering entropy"),
}


@dataclasses.dataclass(frozen=True)
class Option:
    """A static setting: an integer ``>= minimum`` or one of ``choices``."""

    default: int | str
    doc: str
    minimum: int = 1
    choices: tuple = ()


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """An update rule: hyperparameters (name -> default; None = required), static options, and
    the extra per-step columns it logs."""

    name: str
    fn: Callable
    hparams: dict
    summary: str
    options: dict = dataclasses.field(default_factory=dict)
    info: tuple = ()
    sampled: bool = False


TEMPERATURE_COLUMNS = ("temp_used", "dH_temp", "dH_dT", "thm43_premise", "thm43_conclusion")
GRPO_COLUMNS = ("entropy_batch", "batch_reward", "zero_adv_groups", "clip_frac")

_GROUPS = {
    "batch": Option(8, "prompts per step (groups)"),
    "group": Option(8, "responses per prompt, G"),
    "epochs": Option(1, "optimiser steps on each batch (PPO inner epochs)"),
}
_AEPO = {"eta": None, "eps": 0.2, "alpha": 1.0, "entropy_target": None}


def _grpo(name, variant, hparams, summary, info=()):
    fn = functools.partial(sampled.grpo, variant=variant)
    return RuleSpec(name, fn, {"eta": None, **hparams}, summary, dict(_GROUPS),
                    GRPO_COLUMNS + info, sampled=True)


RULES = {spec.name: spec for spec in [
    RuleSpec("pg", rules.pg, {"eta": None}, "softmax policy gradient, dz = eta h d pi A"),
    RuleSpec("npg", rules.npg, {"eta": None}, "natural policy gradient, dz = eta A"),
    RuleSpec("pg_entropy", rules.pg, {"eta": None, "tau": None},
             "entropy-regularised PG (Mei et al.), dz = eta h d pi A_tau"),
    RuleSpec("npg_entropy", rules.npg, {"eta": None, "tau": None},
             "entropy-regularised NPG (Cen et al.), dz = eta A_tau"),
    RuleSpec("temp_reinforce", rules.temp_reinforce, {"eta": None, "temp": 1.0},
             "REINFORCE on samples at temperature T, score at T = 1 (AEPO Assumption 4.2)",
             {"batch": Option(0, "responses per step; 0 = the exact expected update", minimum=0)},
             TEMPERATURE_COLUMNS),
    RuleSpec("reinforce", sampled.reinforce, {"eta": None},
             "REINFORCE on B sampled responses, with an optional baseline",
             {"batch": Option(64, "responses per step, B"),
              "baseline": Option("none", "none | mean | loo | value", choices=BASELINES)},
             ("batch_reward",), sampled=True),
    RuleSpec("sampled_npg", sampled.sampled_npg, {"eta": None},
             "stochastic NPG: importance-weighted estimates of Q - b on B sampled responses",
             {"batch": Option(1, "responses per step, B"),
              "baseline": Option("none", "none | mean | loo | value", choices=BASELINES)},
             ("batch_reward",), sampled=True),
    _grpo("grpo", "grpo", {"eps": 0.2}, "GRPO: group-normalised advantage, PPO clip"),
    _grpo("entropy_reg", "entropy_reg", {"eps": 0.2, "lambda": 0.015},
          "GRPO + lambda * token-mean entropy"),
    _grpo("entropy_adv", "entropy_adv", {"eps": 0.2, "beta": 0.4, "kappa": 2.0},
          "GRPO with A + min(beta H, |A| / kappa) (Cheng et al.)"),
    _grpo("clip_cov", "clip_cov", {"eps": 0.2, "frac": 0.02, "w_low": 1.0, "w_high": 5.0},
          "GRPO; random high-covariance tokens lose their gradient (Cui et al.)", ("cov_tokens",)),
    _grpo("kl_cov", "kl_cov", {"frac": 0.02, "beta": 1.0},
          "policy gradient; top-covariance tokens get a KL penalty (Cui et al.)", ("cov_tokens",)),
    _grpo("aepo", "aepo", {**_AEPO, "temp_low": 0.8, "temp_high": 1.2, "pos_up": 60, "pos_down": 30},
          "GRPO + alpha REINFORCE on positive samples at T_high or T_low (AEPO)",
          TEMPERATURE_COLUMNS + ("reg_samples",)),
    _grpo("aepo_t1", "aepo_t1", {**_AEPO, "pos_up": 60, "pos_down": 30},
          "AEPO ablation: regulariser sampled at T = 1", TEMPERATURE_COLUMNS + ("reg_samples",)),
    _grpo("aepo_adv", "aepo_adv", {**_AEPO, "temp_low": 0.8, "temp_high": 1.2},
          "AEPO ablation: regulariser with the group advantage, negatives kept",
          TEMPERATURE_COLUMNS + ("reg_samples",)),
]}
