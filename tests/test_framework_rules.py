"""The training frameworks' methods (docs/theory.md §9.6) run on a token tree and a contextual
bandit, with two epochs so that their clips and gates act, swept over the knob that defines each
one (a traced hyperparameter: one compile for both values), and every column that may not be NaN
is finite. The token tree runs from the command line, the contextual bandit from the API."""

import numpy as np
import pandas as pd
import pytest

import entropy_sim as es
from entropy_sim import cli
from entropy_sim.diagnostics import columns
from entropy_sim.rules import registry as algorithms

# Each preset, and the knob swept with it.
SWEPT = {"dapo": ("eps_high", [0.2, 0.28]),
         "grpo_dual_clip": ("clip_c", [2.0, 3.0]),
         "gspo": ("eps", [3e-4, 0.2]),
         "cispo": ("eps_max", [1.5, 5.0]),
         "sapo": ("tau_neg", [1.05, 2.0]),
         "forking_tokens": ("top_entropy_quantile", [0.2, 0.5]),
         "w_reinforce": ("pos_weight", [0.1, 0.5]),
         "grpo_kl": ("kl_coef", [0.01, 0.05]),
         "adaptive_entropy": ("entropy_target", [0.3, 0.6])}
ENVS = {
    "token_tree": {"kind": "token_tree", "vocab": 2, "length": 2},
    "contextual_bandit": {"kind": "contextual_bandit", "contexts": 3, "actions": 4,
                          "generator": "verifiable"},
}
# Static knobs turned on (each value of a static option compiles its own program).
KNOBS = {"grpo_kl": {"kl_in": "reward", "kl_estimator": "k3+", "kl_ctrl": "adaptive",
                     "ref_reset_every": 2, "ref_mix": 0.6},
         "adaptive_entropy": {"entropy_coef": 0.01},
         "dapo": {"gen_batches": 2}}
CASES = [(name, env) for name in SWEPT for env in ENVS]


def config(name: str, env: str) -> dict:
    key, values = SWEPT[name]
    return {"seed": 0, "seeds": 2, "steps": 3, "env": ENVS[env], "policy": {"init": "gaussian"},
            "algo": {"name": name, "eta": 2.0, "batch": 2, "group": 4, "epochs": 2,
                     **KNOBS.get(name, {}), key: values}}


def toml(table: dict, prefix: str = "") -> str:
    """``table`` (one level of sub-tables) as TOML."""
    value = lambda v: repr(v).replace("'", '"')  # noqa: E731
    lines = [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name, env", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_framework_rule_runs_swept_with_finite_columns(name, env, tmp_path):
    cfg = config(name, env)
    if env == "token_tree":  # the command line
        path = tmp_path / "c.toml"
        path.write_text(toml(cfg))
        assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
        metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    else:  # the API
        metrics = es.run(cfg, progress=False).metrics
    spec = algorithms.RULES[name]
    key, values = SWEPT[name]
    assert sorted(metrics[key].unique()) == values  # swept, in one program
    logged = columns.run_columns(spec, es.Config(cfg), binary=True)
    assert set(spec.column_names) <= set(metrics.columns)
    for column in logged:
        if column.name in metrics and not column.nan_allowed:
            assert np.isfinite(metrics[column.name]).all(), column.name
    np.testing.assert_allclose(metrics.clip_frac, metrics.clip_frac_low + metrics.clip_frac_high,
                               atol=1e-6)
    assert len(metrics) == 2 * 2 * 3
