"""The runner: required columns, reproducibility, one compile per sweep, summaries, guards."""

import os
import platform
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import entropy_sim as es
from conftest import small_config
from entropy_sim.engine import runner, store

REQUIRED = ["seed", "step", "entropy", "dH_realized", "dH_pred_cov", "dH_pred_closed", "return",
            "renyi2", "kl", "kl_bound", "grad_sq_norm", "dH_within", "dH_shift"]


def test_metrics_table_has_every_required_column_and_one_row_per_grid_point_seed_and_step():
    cfg = small_config(seeds=3, steps=5, algo={"name": "pg_entropy", "eta": [0.1, 0.2], "tau": [0.0, 0.1]})
    df = es.run(cfg, progress=False).metrics
    assert set(REQUIRED + ["eta", "tau", "return_reg"]) <= set(df.columns)
    assert len(df) == 4 * 3 * 5
    assert not df.duplicated(["eta", "tau", "seed", "step"]).any()
    assert df.dtypes["seed"] == np.int32 and df.dtypes["step"] == np.int32


def test_pass_at_k_columns_appear_for_binary_rewards_only():
    binary = es.run(small_config(env={"kind": "bandit", "means": [1.0, 0.0, 0.0]}, pass_at=[1, 4]),
                    progress=False).metrics
    assert {"pass_at_1", "pass_at_4"} <= set(binary.columns)
    # pass@1 of a one-prompt binary bandit is the expected reward: the return.
    np.testing.assert_allclose(binary.pass_at_1, binary["return"], rtol=1e-6)
    graded = es.run(small_config(), progress=False).metrics
    assert not any(c.startswith("pass_at") for c in graded.columns)


@pytest.mark.parametrize("algo, means", [
    ({"name": "pg_entropy", "eta": 0.1, "tau": 0.1}, [1.0, 0.0, 0.0]),
    ({"name": "temp_reinforce", "eta": 0.1}, [1.0, 0.5, 0.0]),
])
def test_run_columns_are_the_columns_a_run_logs(algo, means):
    from entropy_sim.diagnostics.columns import run_columns
    from entropy_sim.rules.registry import RULES
    res = es.run(small_config(steps=2, seeds=2, pass_at=[1, 3], env={"kind": "bandit", "means": means},
                              algo=algo), progress=False)
    binary = set(means) <= {0.0, 1.0}
    declared = {c.name for c in run_columns(RULES[algo["name"]], res.config, binary)}
    logged = set(res.metrics.columns) - {"seed", "step", *res.swept[0]}
    assert declared == logged | set(res.summary()["metric"].unique())
    assert {"pass_at_1", "pass_at_3"} <= declared if binary else not any("pass_at" in c for c in declared)


def test_results_do_not_depend_on_chunk_size_or_on_the_other_grid_points():
    base = small_config(seeds=4, steps=12, env={"kind": "bandit", "arms": 5},
                        policy={"init": "gaussian", "scale": 1.0},
                        algo={"name": "npg", "eta": [0.1, 0.3]})
    whole = es.run(base, progress=False).arrays
    chunked = es.run({**base, "chunk_steps": 5}, progress=False).arrays
    single = es.run({**base, "algo": {"name": "npg", "eta": 0.3}}, progress=False).arrays
    for name in whole:
        np.testing.assert_array_equal(whole[name], chunked[name], err_msg=name)
        # A grid point's numbers do not depend on the rest of the grid (sharding.py).
        np.testing.assert_array_equal(whole[name][1], single[name][0], err_msg=name)


def test_a_new_hyperparameter_value_reuses_the_compiled_chunk():
    cfg = small_config(seeds=2, steps=6, algo={"name": "npg", "eta": [0.11, 0.12]})
    es.run(cfg, progress=False)
    config = es.Config(cfg)
    plan = runner.make_plan(es.build(config))
    fn = runner.compiled_chunk("npg", "sgd", (), False, 6, 1, (), plan.layout,
                               ())  # as the runner calls it: no optional diagnostics
    before = fn._cache_size()
    es.run({**cfg, "algo": {"name": "npg", "eta": [0.7, 0.9]}}, progress=False)
    es.run({**cfg, "seed": 5, "env": {"kind": "bandit", "means": [0.3, 0.2, 0.9]}}, progress=False)
    assert fn._cache_size() == before == 1


def test_log_every_keeps_every_nth_step_of_the_same_trajectory():
    cfg = small_config(seeds=2, steps=12, algo={"name": "pg", "eta": 0.5})
    every = es.run(cfg, progress=False)
    strided = es.run({**cfg, "log_every": 4}, progress=False)
    assert list(strided.steps) == [0, 4, 8]
    for name in every.arrays:
        np.testing.assert_array_equal(strided.arrays[name], every.arrays[name][:, :, ::4], err_msg=name)
    np.testing.assert_array_equal(strided.final_theta, every.final_theta)


def test_summary_mean_interval_and_quantiles_match_a_direct_computation():
    res = es.run(small_config(seeds=50, steps=3, env={"kind": "bandit", "arms": 4}), progress=False)
    summ = res.summary()
    row = summ[(summ.metric == "entropy") & (summ.step == 2)].iloc[0]
    x = res.metrics.query("step == 2").entropy.to_numpy(np.float64)
    half = 1.959963984540054 * x.std(ddof=1) / np.sqrt(len(x))
    assert row.n == 50
    np.testing.assert_allclose([row["mean"], row.ci_low, row.ci_high], [x.mean(), x.mean() - half, x.mean() + half], rtol=1e-6)
    np.testing.assert_allclose([row.q025, row["median"], row.q975], np.quantile(x, [0.025, 0.5, 0.975]), rtol=1e-6)


def test_non_finite_values_stop_the_run_naming_grid_point_seed_and_step():
    cfg = small_config(seeds=2, steps=40, env={"kind": "bandit", "means": [1.0, 0.0]},
                       algo={"name": "npg", "eta": [0.1, 1e38]})
    with pytest.raises(es.NonFiniteError, match=r"step \d+, seed 0, grid point 1 \(eta=1e\+38\)"):
        es.run(cfg, progress=False)


def test_adam_runs_and_reports_no_closed_form():
    df = es.run(small_config(algo={"name": "npg", "eta": 0.1, "optimizer": "adam"}), progress=False).metrics
    assert df.dH_pred_closed.isna().all()
    assert np.isfinite(df.dH_pred_cov).all() and (df.entropy.diff().dropna() != 0).any()


def test_save_is_atomic_and_refuses_to_overwrite_without_permission(tmp_path, monkeypatch):
    res = es.run(small_config(), progress=False)
    out = res.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "final_policy.parquet",
                                                     "metrics.parquet", "run.json", "summary.parquet"]
    pd.testing.assert_frame_equal(es.load(out)[0], res.metrics)
    pd.testing.assert_frame_equal(es.load(out).final_policy, res.final_policy)
    with pytest.raises(FileExistsError):
        res.save(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store.pq, "write_table", boom)
    with pytest.raises(RuntimeError):
        res.save(tmp_path / "broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_plan_chunks_covers_every_step_in_multiples_of_log_every():
    for steps, every, chunk in [(100, 1, 0), (1000, 10, 0), (90, 3, 7), (7, 1, 100)]:
        plan = runner.plan_chunks(steps, every, chunk, bytes_per_step=10 ** 6)
        assert sum(n for _, n in plan) == steps and all(n % every == 0 for _, n in plan)
        assert [t0 for t0, _ in plan] == list(np.cumsum([0] + [n for _, n in plan])[:-1])


def test_automatic_chunks_keep_the_metrics_of_a_chunk_within_the_memory_budget():
    """Memory first: a chunk's per-seed metrics fit ``CHUNK_BYTES`` whatever the step count (a
    million seeds x 16 grid points is 1.5 GB per step: chunks of one step); within the budget, as
    few chunks as possible."""
    budget = runner.CHUNK_BYTES
    for steps, per_step in [(10_000, 19_200_000), (1_000, 1_536 * 2 ** 20), (10_000, 100), (30, 10 ** 6)]:
        plan = runner.plan_chunks(steps, 1, 0, bytes_per_step=per_step)
        assert sum(n for _, n in plan) == steps
        longest = max(n for _, n in plan)
        assert longest * per_step <= max(budget, per_step)
        if len(plan) > 1:  # at most twice the fewest chunks the budget allows
            assert -(-steps // (len(plan) // 2)) * per_step > budget
    # Chunks of one length (one compile) when a count near the fewest divides the steps.
    assert {n for _, n in runner.plan_chunks(500, 1, 0, bytes_per_step=budget // 170)} == {125}
    assert {n for _, n in runner.plan_chunks(1000, 10, 0, bytes_per_step=budget // 3000)} == {1000}


def test_covariance_prediction_tracks_realized_change_with_correlation_above_0999_at_small_eta():
    cfg = small_config(seeds=300, steps=100, env={"kind": "bandit", "arms": 10},
                       algo={"name": "npg", "eta": 0.05})
    df = es.run(cfg, progress=False).metrics
    assert np.corrcoef(df.dH_pred_cov, df.dH_realized)[0, 1] > 0.999
    # and the closed form of NPG is the same prediction
    np.testing.assert_allclose(df.dH_pred_closed, df.dH_pred_cov, rtol=1e-3, atol=1e-7)



TRIM_SCRIPT = """
import gc
from entropy_sim.engine.runner import release_host_memory

def resident_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))

blocks = [bytes(bytearray(16384)) for _ in range(20000)]  # 312 MB of 16 KB blocks (malloc'd)
kept = blocks[::16]  # one block in 16 stays alive, so glibc cannot shrink its heap by itself
del blocks
gc.collect()
before = resident_mb()
release_host_memory()
print(before, resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_release_host_memory_returns_freed_heap_pages_to_the_system(root):
    """293 MB of the 312 MB allocated were freed between live blocks: only a trim returns them."""
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True,
                         check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}).stdout
    before, after = map(float, out.split())
    assert before - after > 200, (before, after)
