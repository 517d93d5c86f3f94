"""The training frameworks' methods (docs/theory.md §9.6) run from a config on a token tree and a
contextual bandit, with two epochs so that their clips and gates act, and every column that may
not be NaN is finite."""

import numpy as np
import pytest

import entropy_sim as es
from entropy_sim import algorithms, columns

RULES = ["dapo", "grpo_dual_clip", "gspo", "cispo", "sapo", "forking_tokens", "w_reinforce"]
ENVS = {
    "token_tree": {"kind": "token_tree", "vocab": 2, "length": 2},
    "contextual_bandit": {"kind": "contextual_bandit", "contexts": 3, "actions": 4,
                          "generator": "verifiable"},
}


# Every rule on the token tree; on the contextual bandit (a tree of one token: the pieces run the
# same code on it) the two whose advantage differs, to keep the suite's compile time in bounds.
CASES = [(name, "token_tree") for name in RULES] + [("dapo", "contextual_bandit"),
                                                    ("w_reinforce", "contextual_bandit")]
# The rules that carry state from step to step, with their knobs turned on (one run each).
KNOBS = {"grpo_kl": {"kl_in": "reward", "kl_estimator": "k3+", "kl_ctrl": "adaptive",
                     "ref_reset_every": 2, "ref_mix": 0.6, "kl_coef": 0.05},
         "adaptive_entropy": {"entropy_coef": 0.01, "entropy_target": 0.6}}
CASES += [("grpo_kl", "token_tree"), ("adaptive_entropy", "contextual_bandit")]


@pytest.mark.parametrize("name, env", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_framework_rule_runs_from_a_config_with_finite_columns(name, env):
    config = es.Config({"seed": 0, "seeds": 2, "steps": 3, "env": ENVS[env],
                        "policy": {"init": "gaussian"},
                        "algo": {"name": name, "eta": 2.0, "batch": 2, "group": 4, "epochs": 2,
                                 **KNOBS.get(name, {})}})
    metrics = es.run(config, progress=False).metrics
    spec = algorithms.RULES[name]
    logged = columns.run_columns(spec, config, binary=True)
    assert set(spec.column_names) <= set(metrics.columns)
    for column in logged:
        if column.name in metrics and not column.nan_allowed:
            assert np.isfinite(metrics[column.name]).all(), column.name
    np.testing.assert_allclose(metrics.clip_frac, metrics.clip_frac_low + metrics.clip_frac_high,
                               atol=1e-6)
    assert len(metrics) == 2 * 3
