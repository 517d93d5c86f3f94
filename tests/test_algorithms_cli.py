"""Every sampled algorithm runs from the CLI with a sweep list and lands in Parquet with its
hyperparameter columns; the GRPO family's extra columns are where the docs say."""

import numpy as np
import pandas as pd
import pytest

from entropy_sim import cli, load_config
from entropy_sim.dryrun import plan
from entropy_sim.rules import registry as algorithms

# One swept hyperparameter per rule besides eta: the one that defines the method.
SWEEPS = {
    "reinforce": ("baseline", None),
    "sampled_npg": ("baseline", None),
    "temp_reinforce": ("temp", [0.8, 1.2]),
    "grpo": ("eps", [0.1, 0.2]),
    "dr_grpo": ("eps", [0.1, 0.28]),
    "entropy_reg": ("lambda", [0.0, 0.015]),
    "entropy_adv": ("beta", [0.2, 0.4]),
    "clip_cov": ("frac", [0.1, 0.5]),
    "kl_cov": ("beta", [0.5, 1.0]),
    "aepo": ("entropy_target", [0.3, 0.6]),
    "aepo_t1": ("entropy_target", [0.3, 0.6]),
    "aepo_adv": ("entropy_target", [0.3, 0.6]),
}
CONFIG = """seeds = 3
steps = 4
[env]
kind = "contextual_bandit"
contexts = 3
actions = 4
generator = "verifiable"
[algo]
name = "{name}"
eta = [0.5, 1.0]
"""


def test_every_sampled_rule_is_covered():
    """Here, or (the training frameworks' methods) in test_framework_rules.py."""
    from test_framework_rules import CASES

    FRAMEWORK_RULES = {name for name, _ in CASES}
    assert not set(SWEEPS) & set(FRAMEWORK_RULES)
    assert set(SWEEPS) | set(FRAMEWORK_RULES) == (
        {n for n, spec in algorithms.RULES.items() if spec.sampled} | {"temp_reinforce"})


@pytest.mark.parametrize("name", list(SWEEPS))
def test_cli_runs_a_sweep_and_writes_hyperparameter_columns(tmp_path, name):
    key, values = SWEEPS[name]
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(name=name))
    args = ["run", str(config), "--out", str(tmp_path / "out"), "--quiet", "--set", "algo.batch=4"]
    if values is not None:
        args += ["--set", f"algo.{key}={values}"]
    assert cli.main(args) == 0
    df = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    spec = algorithms.RULES[name]
    swept = ["eta"] + ([key] if values is not None else [])
    assert set(swept + list(spec.column_names)) <= set(df.columns)
    assert len(df) == 2 * (len(values) if values else 1) * 3 * 4
    for column in swept:
        assert sorted(df[column].unique()) == sorted(algorithms_values(column, values))
    for column in ["entropy", "dH_realized", "dH_pred_cov", *spec.column_names]:
        assert np.isfinite(df[column]).all(), column
    # The dry run, which builds nothing, lists exactly the metric columns the run wrote.
    overrides = [a for a in args[5:] if a != "--set"]
    metrics = set(df.columns) - {"seed", "step", *swept}
    assert set(plan(load_config(config, overrides)).columns) == metrics
    # The closed form exists for REINFORCE-type rules only.
    has_closed = name in ("reinforce", "sampled_npg", "temp_reinforce")
    assert np.isfinite(df["dH_pred_closed"]).all() == has_closed
    assert df["dH_pred_closed"].isna().all() != has_closed


def algorithms_values(column, values):
    return [0.5, 1.0] if column == "eta" else values
