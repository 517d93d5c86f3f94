"""Scale and robustness: the in-scan summary, determinism across chunking, grid batching and
devices, resuming a killed run, the non-finite guard, float64 mode."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pandas as pd
import pytest

import entropy_sim as es
from entropy_sim.engine import sharding
from conftest import ROOT, small_config

SAMPLED = {"seeds": 37, "steps": 12, "chunk_steps": 4,
           "env": {"kind": "bandit", "arms": 6, "noise": "bernoulli", "generator": "uniform"},
           "policy": {"init": "gaussian", "scale": 1.0},
           "algo": {"name": "reinforce", "eta": [0.1, 0.5, 1.0], "batch": 8, "baseline": "loo"}}
GARNET = {"seeds": 21, "steps": 9, "env": {"kind": "mdp", "generator": "garnet", "states": 4,
                                          "actions": 3, "branching": 2, "gamma": 0.8,
                                          "shared": False, "rollout_length": 12},
          "algo": {"name": "reinforce", "eta": [0.2, 0.7], "batch": 4}}


def assert_same(a: es.Results, b: es.Results):
    """Bitwise-equal outputs (NaN equal to NaN): per-seed rows, held in memory or streamed to
    disk (``rows_folder``), or statistics over seeds (summary mode)."""
    if a.arrays is not None and b.arrays is not None:
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    elif a.config["output"] == "full":
        pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
        pd.testing.assert_frame_equal(a.summary(), b.summary(), check_exact=True)
    else:
        for k in a.stats:
            for stat in a.stats[k]:
                np.testing.assert_array_equal(a.stats[k][stat], b.stats[k][stat], err_msg=f"{k}/{stat}")
    np.testing.assert_array_equal(a.final_theta, b.final_theta)


# ----------------------------------------------------------------------------- summary mode

def test_summary_mode_matches_the_statistics_of_the_per_seed_run():
    qm = ["entropy", "return", "dH_realized", "dH_pred_cov", "kl", "cov_error", "cov_abs_error"]
    cfg = {**SAMPLED, "quantiles": [0.1, 0.5, 0.9], "quantile_metrics": qm}
    full = es.run(cfg, progress=False)
    summ = es.run({**cfg, "output": "summary"}, progress=False)
    a, b = full.summary(), summ.summary()
    assert list(a.columns) == list(b.columns) == ["eta", "step", "metric", "mean", "std", "ci_low",
                                                  "ci_high", "q100", "median", "q900", "n"]
    assert a[["eta", "step", "metric"]].equals(b[["eta", "step", "metric"]])
    assert {"cov_error", "cov_abs_error", "cov_sign_agree"} <= set(b.metric)
    assert (b.n == 37).all()
    for col in ["mean", "std", "q100", "median", "q900"]:
        rows = a.metric.isin(qm) if col.startswith(("q", "median")) else a.metric.notna()
        scale = a[rows].groupby("metric")[col].transform(lambda x: np.abs(x).max()) + 1e-12
        err = np.abs(a[rows][col] - b[rows][col]) / scale
        assert err.max() < 1e-4, (col, a.metric[err.idxmax()], err.max())
    assert b.loc[~b.metric.isin(qm), ["q100", "median", "q900"]].isna().all().all()
    # The statistics checked against numpy directly, for one metric.
    x = full.arrays["entropy"].astype(np.float64)  # [G, N, T]
    got = summ.stats["entropy"]
    np.testing.assert_allclose(got["mean"], x.mean(1), rtol=1e-5)
    np.testing.assert_allclose(got["std"], x.std(1, ddof=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["q900"], np.quantile(x, 0.9, axis=1), rtol=1e-5)
    err = full.arrays["dH_realized"] - full.arrays["dH_pred_cov"]
    np.testing.assert_allclose(summ.stats["cov_abs_error"]["mean"], np.abs(err).mean(1), rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_sort_keys_order_like_the_floats_and_invert_bitwise(dtype):
    """The summary's quantiles sort integer keys: their order must be the floats' order (with
    -0 next to +0), and decoding must give back the same bits."""
    from entropy_sim.diagnostics.summary import from_sort_keys, sort_keys

    rng = np.random.default_rng(7)
    tiny = np.finfo(dtype).smallest_subnormal
    special = np.array([0.0, -0.0, np.inf, -np.inf, tiny, -tiny, np.finfo(dtype).max,
                        -np.finfo(dtype).max, 1.0, -1.0], dtype)
    x = np.concatenate([special, (rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500))
                        .astype(dtype)])
    with jax.enable_x64(dtype == np.float64):
        keys = np.asarray(sort_keys(jax.numpy.asarray(x)))
        back = np.asarray(from_sort_keys(jax.numpy.asarray(keys), x.dtype))
    assert keys.dtype.itemsize == x.dtype.itemsize
    ints = x.view(np.int64 if dtype == np.float64 else np.int32)
    np.testing.assert_array_equal(back.view(ints.dtype), ints)
    by_keys = x[np.argsort(keys, kind="stable")]
    np.testing.assert_array_equal(by_keys, np.sort(x))  # -0.0 == 0.0 for the comparison
    # -0 sorts just below +0, never after a positive number or before a negative one.
    pos = {v: i for i, v in enumerate(np.argsort(keys, kind="stable"))}
    assert pos[1] < pos[0] and pos[5] < pos[1] and pos[0] < pos[4]


def test_unknown_quantile_metric_is_a_config_error_before_compiling():
    with pytest.raises(es.ConfigError, match="quantile_metrics.*'entropi'"):
        es.run({**SAMPLED, "output": "summary", "quantile_metrics": ["entropi"]}, progress=False)


def test_summary_mode_memory_does_not_grow_with_the_seeds():
    """400 seeds in 40 blocks leave statistics of the shape (grid points, logged steps) only."""
    cfg = {**SAMPLED, "output": "summary"}
    large = es.run({**cfg, "seeds": 400, "seed_block": 10}, progress=False)
    assert large.arrays is None
    for k in large.stats:
        for stat in large.stats[k]:
            assert large.stats[k][stat].shape == (3, 12)
    with pytest.raises(ValueError, match='output = "summary"'):
        large.metrics


def test_summary_run_saves_a_summary_only_folder(tmp_path):
    res = es.run({**SAMPLED, "output": "summary"}, progress=False)
    res.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "final_policy_summary.parquet", "run.json", "summary.parquet"]
    df = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert len(df) == 3 * 12 * df.metric.nunique()


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("cfg, output", [(SAMPLED, "full"), (SAMPLED, "summary"), (GARNET, "full")],
                         ids=["bandit-full", "bandit-summary", "garnet_per_seed-full"])
def test_results_do_not_depend_on_chunks_grid_batches_or_seed_count(cfg, output):
    cfg = {**cfg, "output": output}
    ref = es.run(cfg, progress=False)
    change = {"chunk_steps": 3 if cfg["steps"] % 3 == 0 else 2, "grid_batch": 1}
    assert_same(ref, es.run({**cfg, **change}, progress=False))
    if output == "full":  # seed n is seed n, whatever the number of seeds, at one seed_block
        fewer = es.run({**cfg, "seed_block": 8}, progress=False)
        more = es.run({**cfg, "seed_block": 8, "seeds": cfg["seeds"] + 5}, progress=False)
        for k in ref.arrays:
            np.testing.assert_array_equal(fewer.arrays[k], more.arrays[k][:, :cfg["seeds"]], err_msg=k)


DEVICES_SCRIPT = """
import json, sys
import numpy as np
import entropy_sim as es, jax
assert len(jax.devices()) == 4, jax.devices()
cfg = json.loads(sys.argv[1])
out = {}
from entropy_sim.engine import runner
plan = runner.make_plan(es.build(es.Config({**cfg, "devices": 4})))
assert plan.layout.mesh.devices.shape == (2, 2), plan.layout.mesh  # grid and seeds both split
for output in ["full", "summary"]:
    runs = [es.run({**cfg, "output": output, "devices": d}, progress=False) for d in [1, 4]]
    ref = runs[0]
    same = []
    for r in runs[1:]:
        if output == "full":
            same.append(all(np.array_equal(r.arrays[k], ref.arrays[k], equal_nan=True) for k in ref.arrays))
        else:
            same.append(all(np.array_equal(r.stats[k][s], ref.stats[k][s], equal_nan=True)
                            for k in ref.stats for s in ref.stats[k]))
        same[-1] = same[-1] and np.array_equal(r.final_theta, ref.final_theta)
    out[output] = same
print(json.dumps(out))
"""


def test_one_and_four_devices_give_bitwise_identical_results():
    """A sampled rule on per-seed random MDPs (environments split over devices too); the 4
    devices hold 2 grid points x 2 parts of the seeds."""
    cfg = GARNET
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, json.dumps(cfg)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"full": [True], "summary": [True]}, result


def test_devices_split_grid_points_and_seed_blocks_for_the_least_work_per_device():
    shape = sharding.mesh_shape
    assert shape(2, False, 1, 1) == (1, 1)     # one block of one grid point: one device
    assert shape(2, False, 8, 1) == (2, 1)     # a sweep over few seeds: grid points split
    assert shape(2, False, 1, 40) == (1, 2)    # many seeds: seed blocks split
    assert shape(2, False, 3, 3) == (1, 2)     # equal work (2 x 3 = 3 x 2): seeds first
    assert shape(8, False, 1, 3) == (1, 3)     # no device without a block
    assert shape(8, False, 2, 5) == (1, 5)     # 2 x 1 each on 5 devices (1 x 2 needs 6)
    assert shape(4, True, 2, 1) == (2, 2)      # an explicit count uses every device
    assert shape(4, True, 1, 1) == (1, 4)


def test_one_cpu_device_per_core_unless_the_user_chose():
    chosen = ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
              or "JAX_NUM_CPU_DEVICES" in os.environ)
    if not chosen and jax.default_backend() == "cpu":
        assert len(jax.devices()) == len(os.sched_getaffinity(0))
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", "import entropy_sim, jax; print(len(jax.devices('cpu')))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "3", proc.stderr


def test_a_cpu_device_count_that_can_no_longer_apply_is_warned_about():
    code = ("import warnings, jax; jax.devices(); warnings.simplefilter('always'); "
            "import entropy_sim")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    cores = len(os.sched_getaffinity(0))
    assert ("JAX started before entropy_sim" in proc.stderr) == (cores > 1), proc.stderr


def test_cpu_settings_apply_only_where_jax_runs_on_the_cpu(monkeypatch):
    from entropy_sim import _xla

    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not _xla.on_cpu()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert _xla.on_cpu()
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.delenv("JAX_PLATFORM_NAME", raising=False)
    import importlib.metadata as md
    monkeypatch.setattr(md, "version", lambda name: "0.11.2")  # every plugin looks installed
    assert not _xla.on_cpu()


def test_more_devices_than_available_is_a_config_error():
    with pytest.raises(es.ConfigError, match="devices"):
        es.run(small_config(devices=64), progress=False)


# ----------------------------------------------------------------------------- resume

RESUME_CONFIG = """
seeds = 300
steps = 600
chunk_steps = 20
[env]
kind = "bandit"
arms = 10
noise = "bernoulli"
[algo]
name = "reinforce"
eta = [0.1, 0.3]
batch = 16
baseline = "mean"
"""


def test_a_killed_run_resumes_from_its_last_chunk_with_identical_results(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(RESUME_CONFIG)
    cli = [sys.executable, "-m", "entropy_sim.cli", "run", str(config), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    progress = tmp_path / ".killed.progress"
    proc = subprocess.Popen(cli + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        manifest = progress / "manifest.json"
        if manifest.exists():
            done = len(json.loads(manifest.read_text())["done"])
            if done >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 30  # of 30 chunks
    assert not (tmp_path / "killed").exists()  # nothing that looks like a result
    # Resumed on one CPU device (the killed run split the seeds over every core): the saved
    # state holds no device layout.
    resumed = subprocess.run(cli + ["--out", str(tmp_path / "killed")],
                             env={**env, "JAX_NUM_CPU_DEVICES": "1"},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert not progress.exists()
    whole = subprocess.run(cli + ["--out", str(tmp_path / "whole")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    for read in (lambda d: es.load(d).metrics, lambda d: es.load(d).summary()):
        a, b = read(tmp_path / "killed"), read(tmp_path / "whole")
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_checkpoint_of_another_config_is_not_reused(tmp_path):
    cfg = {**SAMPLED, "chunk_steps": 4}
    folder = tmp_path / "progress"
    first = es.run(cfg, progress=False, checkpoint=folder)
    again = es.run(cfg, progress=False, checkpoint=folder)  # everything done: read back
    assert_same(first, again)
    other = es.run({**cfg, "seed": 1}, progress=False, checkpoint=folder)
    fresh = es.run({**cfg, "seed": 1}, progress=False)
    assert_same(other, fresh)


# ----------------------------------------------------------------------------- non-finite

OVERFLOW = small_config(seeds=3, steps=40, algo={"name": "npg", "eta": [1.0, 1e37]},
                        env={"kind": "bandit", "means": [1.0, 0.0, 0.5]})


def test_non_finite_values_stop_the_run_naming_grid_point_seed_and_step():
    with pytest.raises(es.NonFiniteError, match=r"step \d+, seed 0, grid point 1 \(eta=1e\+37\)"):
        es.run(OVERFLOW, progress=False)
    with pytest.raises(es.NonFiniteError, match=r"seed 0, grid point 1 \(eta=1e\+37\)"):
        es.run({**OVERFLOW, "output": "summary"}, progress=False)


def test_mark_mode_flags_the_rows_and_goes_on():
    with pytest.warns(UserWarning, match="marked"):
        res = es.run({**OVERFLOW, "on_nonfinite": "mark"}, progress=False)
    df = res.metrics
    assert df.nonfinite.dtype == bool
    bad = df[df.nonfinite]
    assert (bad.eta == 1e37).all() and len(bad) > 0
    assert np.isfinite(df[~df.nonfinite].drop(columns=["dH_pred_closed"]).to_numpy(float)).all()
    metrics = [c for c in df.columns if c not in ("eta", "seed", "step", "nonfinite", "dH_pred_closed")]
    assert (~np.isfinite(bad[metrics].to_numpy(float))).any(axis=1).all()  # each with a reason
    summary = res.summary()
    assert summary.loc[summary.eta == 1.0, "n"].eq(3).all()
    assert summary.loc[(summary.eta == 1e37) & (summary.step == 39), "n"].eq(0).all()
    with pytest.warns(UserWarning, match="excluded from the statistics"):
        summ = es.run({**OVERFLOW, "on_nonfinite": "mark", "output": "summary"}, progress=False)
    assert (summ.stats["nonfinite"]["count"][0] == 0).all()
    assert summ.stats["nonfinite"]["count"][1, -1] == 3
    np.testing.assert_array_equal(summ.stats["entropy"]["n"][1] + summ.stats["nonfinite"]["count"][1], 3)


# ----------------------------------------------------------------------------- float64

def test_float64_follows_the_eta_squared_law_where_float32_cannot():
    """T3's error |dH_realized - dH_pred_cov| is second order (docs/theory.md §3.1): err / eta^2 is
    constant as eta -> 0.
    In float64 it stays constant down to eta = 1e-6; float32's rounding (relative 1e-7 of
    the change itself) swamps it there."""
    etas = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    cfg = {"seeds": 8, "steps": 1, "env": {"kind": "bandit", "arms": 10},
           "policy": {"init": "gaussian", "scale": 1.0}, "algo": {"name": "npg", "eta": etas}}
    ratio = {}
    for dtype in ["float64", "float32"]:
        res = es.run({**cfg, "dtype": dtype}, progress=False)
        err = np.abs(res.arrays["dH_realized"] - res.arrays["dH_pred_cov"])[:, :, 0]  # [G, N]
        ratio[dtype] = err / np.asarray(etas)[:, None] ** 2
    # Against eta = 1e-4: the third-order term moves err / eta^2 by O(eta), 1% at eta = 1e-2.
    r64 = ratio["float64"] / ratio["float64"][2]
    assert np.abs(r64[1:] - 1).max() < 0.01, r64  # second order all the way down to 1e-6
    assert np.abs(r64[0] - 1).max() < 0.1
    r32 = ratio["float32"] / ratio["float64"][2]
    assert np.abs(r32[1] - 1).max() < 0.05       # float32 follows at eta = 1e-3 ...
    lost = np.median(np.abs(r32[-1] - 1))        # ... and has lost the law at eta = 1e-6:
    assert lost > 0.3 and lost > 100 * np.abs(r64[1:] - 1).max()  # 0.46 against float64's 6e-4


def test_two_processes_with_jax_distributed_write_the_single_process_result(tmp_path):
    """The README's multi-process command, run as two local processes of 2 CPU devices each."""
    config = tmp_path / "c.toml"
    small = RESUME_CONFIG.replace("steps = 600", "steps = 40").replace("seeds = 300", "seeds = 30")
    assert small.count("= 40") == 1 and small.count("= 30") == 1  # both sizes were replaced
    config.write_text(small)
    base = [sys.executable, "-m", "entropy_sim.cli", "run", str(config), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port = 20000 + os.getpid() % 20000
    procs = [subprocess.Popen(base + ["--out", str(tmp_path / "dist"), "--distributed",
                                      "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                      "--process-id", str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    single = subprocess.run(base + ["--out", str(tmp_path / "single")], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert single.returncode == 0, single.stderr
    for read in (lambda d: es.load(d).metrics, lambda d: es.load(d).summary()):
        pd.testing.assert_frame_equal(read(tmp_path / "dist"), read(tmp_path / "single"),
                                      check_exact=True)


def test_plot_renders_a_summary_only_folder(tmp_path):
    from entropy_sim import cli
    es.run({**SAMPLED, "output": "summary"}, progress=False).save(tmp_path / "out")
    assert cli.main(["plot", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "figures" / "overview.png").stat().st_size > 10_000
