"""The result folder: run.json (provenance), final_policy tables, permissions, reading it back, and
the command line's persistent compilation cache."""

import datetime
import json
import os
import subprocess
import sys
import time

import jax
import jaxlib
import numpy as np
import pandas as pd
import pytest

import entropy_sim as es
from conftest import ROOT, small_config
from entropy_sim import cli, provenance
from entropy_sim.engine import compile_cache

TOML = ('seeds = 3\nsteps = 4\n[env]\nkind = "bandit"\nmeans = [1.0, 0.9, 0.1]\n'
        '[algo]\nname = "pg"\neta = 0.4\n')


def write_config(folder, text=TOML):
    path = folder / "c.toml"
    path.write_text(text)
    return path


def git(*args):
    """Standard output of git in the repository root, or None without git or a checkout."""
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc


# ----------------------------------------------------------------------------- provenance

def test_run_records_versions_devices_start_and_wall_time():
    before = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    res = es.run(small_config(seeds=4, devices=1), progress=False)
    elapsed = time.perf_counter() - clock
    after = datetime.datetime.now(datetime.timezone.utc)
    rec = res.provenance
    assert (rec["entropy_sim"], rec["jax"], rec["jaxlib"]) == (es.__version__, jax.__version__,
                                                               jaxlib.__version__)
    assert rec["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    start = datetime.datetime.fromisoformat(rec["start"])
    assert start.tzinfo is not None  # ISO 8601 with its UTC offset
    assert before.replace(microsecond=0) <= start <= after
    assert 0 < rec["wall_s"] <= elapsed
    first = jax.devices()[0]
    assert rec["devices"] == {"platform": first.platform, "kind": first.device_kind, "count": 1}
    assert rec["command"] is None and rec["cwd"] is None and rec["resumed_units"] == 0
    # The Python API leaves JAX's cache alone and records the one in use: None in a fresh process,
    # the test session's scratch folder here (conftest.py).
    assert rec["compilation_cache"] == compile_cache.active_dir()
    json.dumps(rec)  # all JSON


@pytest.mark.skipif(len(jax.devices()) < 2, reason="needs 2 devices")
def test_run_records_every_device_it_used():
    res = es.run(small_config(seeds=4, seed_block=2, devices=2), progress=False)
    assert res.provenance["devices"]["count"] == 2


def test_git_commit_and_dirty_flag_match_git_itself():
    head = git("log", "-1", "--format=%H")
    if head is None or head.returncode != 0:
        pytest.skip("not run from a git checkout")
    state = provenance.git_state(ROOT / "entropy_sim")
    assert state["commit"] == head.stdout.strip()
    # git diff --quiet HEAD: exit status 1 when tracked files differ from the commit.
    assert state["dirty"] == (git("diff", "--quiet", "HEAD").returncode == 1)


def test_git_state_is_none_and_silent_outside_a_checkout_or_without_git(tmp_path, capfd,
                                                                         monkeypatch):
    plain = tmp_path / "site-packages" / "entropy_sim"
    plain.mkdir(parents=True)
    assert provenance.git_state(plain) is None
    # Installed inside someone else's repository: that repository's commit is not the package's.
    other = tmp_path / "project"
    nested = other / "venv" / "lib" / "entropy_sim"
    nested.mkdir(parents=True)
    if subprocess.run(["git", "init", "-q", str(other)], capture_output=True).returncode == 0:
        (other / "f").write_text("x")
        assert provenance.git_state(nested) is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert provenance.git_state(ROOT / "entropy_sim") is None
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_cli_writes_run_json_with_the_command_line_and_load_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    argv = ["run", "c.toml", "--out", "out", "--quiet", "--set", "seeds=2"]
    assert cli.main(argv) == 0
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["command"] == ["entropy-sim", *argv]
    assert saved["cwd"] == str(tmp_path)
    assert saved["jax"] == jax.__version__ and saved["wall_s"] > 0
    folder = es.load(tmp_path / "out")
    assert folder.provenance == saved
    assert folder.config["seeds"] == 2


# ----------------------------------------------------------------------------- final policy

def test_final_policy_table_is_the_softmax_of_the_last_logits_of_every_seed():
    cfg = small_config(seeds=3, steps=5, env={"kind": "contextual_bandit",
                                              "r": [[1.0, 0.0, 0.5], [0.0, 1.0, 0.2]]},
                       algo={"name": "npg", "eta": [0.1, 0.3]})
    res = es.run(cfg, progress=False)
    table = res.final_policy
    theta = res.final_theta  # [G, N, S, A] = [2, 3, 2, 3]
    assert len(table) == 2 * 3 * 2 * 3
    assert list(table.columns) == ["eta", "seed", "state", "action", "logit", "prob"]
    assert table.logit.dtype == np.float32 and table.prob.dtype == np.float32
    for _, row in table.sample(8, random_state=0).iterrows():
        g = [0.1, 0.3].index(row.eta)
        z = theta[g, int(row.seed), int(row.state)].astype(np.float64)
        assert row.logit == theta[g, int(row.seed), int(row.state), int(row.action)]
        assert row.prob == pytest.approx(np.exp(z[int(row.action)]) / np.exp(z).sum(), rel=1e-6)
    # Probabilities of each state sum to 1.
    sums = table.groupby(["eta", "seed", "state"]).prob.sum()
    np.testing.assert_allclose(sums, 1.0, rtol=1e-6)


def test_metrics_row_k_is_pi_k_and_the_final_policy_is_pi_T():
    """The last metrics row holds H(pi_{T-1}) and the change to pi_T; the final policy's entropy
    is H(pi_T) = H(pi_{T-1}) + dH_realized."""
    res = es.run(small_config(seeds=2, steps=6, dtype="float64"), progress=False)
    last = res.metrics.query("step == 5").sort_values("seed")
    prob = res.final_policy.pivot(index="seed", columns="action", values="prob").to_numpy()
    assert res.final_policy.prob.dtype == np.float64
    entropy_t = -(prob * np.log(prob)).sum(axis=1)
    np.testing.assert_allclose(entropy_t, last.entropy + last.dH_realized, rtol=1e-12)
    assert not np.allclose(entropy_t, last.entropy)


def test_full_folder_has_final_policy_and_summary_folder_its_statistics(tmp_path):
    cfg = small_config(seeds=40, steps=3, env={"kind": "bandit", "arms": 4},
                       policy={"init": "gaussian", "scale": 1.0},
                       algo={"name": "npg", "eta": [0.2, 0.5]})
    full = es.run(cfg, progress=False)
    full.save(tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "config.json", "final_policy.parquet", "metrics.parquet", "run.json", "summary.parquet"]
    pd.testing.assert_frame_equal(es.load(tmp_path / "full").final_policy, full.final_policy)

    summ = es.run({**cfg, "output": "summary", "quantile_metrics": []}, progress=False)
    summ.save(tmp_path / "summ")
    assert sorted(p.name for p in (tmp_path / "summ").iterdir()) == [
        "config.json", "final_policy_summary.parquet", "run.json", "summary.parquet"]
    table = es.load(tmp_path / "summ").final_policy_summary()
    assert list(table.columns) == ["eta", "state", "action", "mean", "std", "q025", "median",
                                   "q975", "n"]
    assert len(table) == 2 * 1 * 4
    # Against a direct computation over the seeds of grid point 1 (eta = 0.5), action 2.
    z = summ.final_theta[1, :, 0].astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True))[:, 2]
    row = table.query("eta == 0.5 and action == 2").iloc[0]
    assert row.n == 40
    np.testing.assert_allclose([row["mean"], row["std"], row.q025, row["median"], row.q975],
                               [p.mean(), p.std(ddof=1), *np.quantile(p, [0.025, 0.5, 0.975])],
                               rtol=1e-5)
    # The same seeds in full mode: the same final policy and the same statistics.
    np.testing.assert_array_equal(summ.final_theta, full.final_theta)
    pd.testing.assert_frame_equal(es.load(tmp_path / "full").final_policy_summary(), table)
    with pytest.raises(ValueError, match="final_policy_summary"):
        es.load(tmp_path / "summ").final_policy
    with pytest.raises(ValueError, match="summary"):
        es.load(tmp_path / "summ").metrics


def test_a_folder_written_before_run_json_and_final_policy_still_loads(tmp_path):
    res = es.run(small_config(), progress=False)
    out = res.save(tmp_path / "old")
    for name in ("run.json", "final_policy.parquet"):
        (out / name).unlink()
    metrics, config = es.load(out)  # unpacks as load always did
    pd.testing.assert_frame_equal(metrics, res.metrics)
    assert config == res.config.to_dict()
    folder = es.load(out)
    assert folder.provenance is None
    pd.testing.assert_frame_equal(folder.summary(), res.summary())
    with pytest.raises(ValueError, match="final_policy"):
        folder.final_policy


# ----------------------------------------------------------------------------- permissions

@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644),
                                                           (0o027, 0o750, 0o640)])
def test_result_folder_and_files_get_the_permissions_of_the_umask(tmp_path, umask, folder_mode,
                                                                  file_mode):
    res = es.run(small_config(), progress=False)
    old = os.umask(umask)
    try:
        out = res.save(tmp_path / "run")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == folder_mode
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    folders = {"metrics.parquet"}  # the per-seed rows: a folder of Parquet parts
    assert len(modes) == 6 and {modes[f] for f in folders} == {folder_mode}, modes
    assert {m for name, m in modes.items() if name not in folders} == {file_mode}, modes


# ----------------------------------------------------------------------------- compilation cache

def test_cache_folder_follows_xdg_and_the_environment_variable(tmp_path):
    home = str(compile_cache.default_dir({}))
    assert home == os.path.join(os.path.expanduser("~"), ".cache", "entropy_sim", "jax")
    xdg = {"XDG_CACHE_HOME": str(tmp_path)}
    assert compile_cache.cli_dir(xdg) == tmp_path / "entropy_sim" / "jax"
    assert compile_cache.cli_dir({**xdg, "ENTROPY_SIM_COMPILATION_CACHE": "1"}) == \
        tmp_path / "entropy_sim" / "jax"
    for off in ("0", "off", "False"):
        assert compile_cache.cli_dir({**xdg, "ENTROPY_SIM_COMPILATION_CACHE": off}) is None
    assert compile_cache.cli_dir({"ENTROPY_SIM_COMPILATION_CACHE": str(tmp_path / "c")}) == \
        tmp_path / "c"


def test_cli_in_process_restores_jax_cache_settings_and_importing_changes_none(tmp_path,
                                                                              monkeypatch):
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}  # the test session's own cache
    imported = subprocess.run(  # import entropy_sim, in a fresh process, sets no cache
        [sys.executable, "-c", "import entropy_sim, jax; print(jax.config.jax_compilation_cache_dir)"],
        capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "None"
    monkeypatch.setenv("ENTROPY_SIM_COMPILATION_CACHE", str(tmp_path / "cache"))
    config = write_config(tmp_path)
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert {n: getattr(jax.config, n) for n in names} == before
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["compilation_cache"] == str((tmp_path / "cache").resolve())
    monkeypatch.setenv("ENTROPY_SIM_COMPILATION_CACHE", "0")
    assert cli.main(["run", str(config), "--out", str(tmp_path / "off"), "--quiet"]) == 0
    # Off: the command line turns none on; what it records is what JAX had (this session's).
    assert json.loads((tmp_path / "off" / "run.json").read_text())["compilation_cache"] == \
        before["jax_compilation_cache_dir"]


def cli_run(config, out, cache, **extra_env):
    env = {**os.environ, "ENTROPY_SIM_COMPILATION_CACHE": str(cache), **extra_env}
    return subprocess.run([sys.executable, "-m", "entropy_sim.cli", "run", str(config), "--out",
                           str(out), "--quiet"], capture_output=True, text=True, env=env)


def test_a_second_cli_run_loads_every_program_from_the_cache(tmp_path):
    config = write_config(tmp_path)
    cache = tmp_path / "cache"
    first = cli_run(config, tmp_path / "a", cache)
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.endswith("-cache") for name in entries)  # the run's programs, written
    # With these two options JAX logs every persistent-cache hit and miss.
    second = cli_run(config, tmp_path / "b", cache, JAX_LOG_COMPILES="1",
                     JAX_EXPLAIN_CACHE_MISSES="1")
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new compiled
    for program in ("jit_init", "jit_chunk", "jit_stats"):  # the run's own programs
        assert f"Persistent compilation cache hit for '{program}'" in second.stderr
    assert "PERSISTENT COMPILATION CACHE MISS" not in second.stderr
    pd.testing.assert_frame_equal(es.load(tmp_path / "a").metrics, es.load(tmp_path / "b").metrics)
