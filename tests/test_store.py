"""Full mode on disk (entropy_sim/engine/store.py): per-seed rows streamed to Parquet parts chunk by
chunk, read back in the order of an in-memory run, selected part by part; resume after a kill
while a part is written; the statistics over seeds computed on the devices in either mode; and
runs that cannot fit refused before they start (entropy_sim/engine/memory.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import entropy_sim as es
from conftest import ROOT, small_config
from entropy_sim.diagnostics import summary
from entropy_sim.engine import checkpoint, memory, store
from entropy_sim.errors import ConfigError

# Two grid points in two grid batches, four chunks each: eight parts.
STREAMED = small_config(seeds=5, steps=12, chunk_steps=3, grid_batch=1, seed_block=4,
                        env={"kind": "bandit", "arms": 4},
                        algo={"name": "npg", "eta": [0.3, 0.1]})


def frame(cube: dict, swept: list[dict], steps) -> pd.DataFrame:
    """The metrics table of ``{name: [G, N, T]}`` written out in the test, row (g, n, t)."""
    g, n, t = next(iter(cube.values())).shape
    rows = [{**swept[i], "seed": j, "step": steps[k], **{m: v[i, j, k] for m, v in cube.items()}}
            for i in range(g) for j in range(n) for k in range(t)]
    out = pd.DataFrame(rows)
    out["seed"], out["step"] = out["seed"].astype(np.int32), out["step"].astype(np.int32)
    return out


def test_parts_of_chunks_and_batches_read_back_in_grid_seed_step_order_and_select(tmp_path):
    rng = np.random.default_rng(0)
    swept = [{"eta": 0.5}, {"eta": 0.25}, {"eta": 0.125}]
    steps = np.arange(0, 10, 2)  # log_every 2: step values 0, 2, ..., 8
    cube = {"entropy": rng.random((3, 4, 5), dtype=np.float32),
            "return": rng.random((3, 4, 5), dtype=np.float32)}
    # Grid batches [0, 1] and [2]; chunks of logged steps [0, 3) and [3, 5); written out of order.
    for batch, (g0, g1) in enumerate([(0, 2), (2, 3)]):
        for chunk, (t0, t1) in reversed(list(enumerate([(0, 3), (3, 5)]))):
            part = {k: v[g0:g1, :, t0:t1] for k, v in cube.items()}
            store.write_part(tmp_path, (batch, chunk), part, swept[g0:g1], steps[t0:t1])
    assert len(store.parts(tmp_path)) == 4
    whole = frame(cube, swept, steps)
    pd.testing.assert_frame_equal(store.read(tmp_path), whole, check_exact=True)
    picked = store.read(tmp_path, ["return"], seeds=[1, 3], steps=slice(2, 7), where={"eta": 0.25})
    expect = whole[whole.seed.isin([1, 3]) & (whole.step >= 2) & (whole.step < 7)
                   & (whole.eta == 0.25)][["eta", "seed", "step", "return"]]
    pd.testing.assert_frame_equal(picked, expect.reset_index(drop=True), check_exact=True)
    assert store.read(tmp_path, seeds=range(10, 12)).empty
    with pytest.raises(ValueError, match="unknown column"):
        store.read(tmp_path, ["entropyy"])
    # Any Parquet reader reads the same rows, part by part.
    plain = pd.read_parquet(tmp_path)
    assert len(plain) == len(whole)
    pd.testing.assert_frame_equal(plain.sort_values(["eta", "seed", "step"], ascending=[False, True, True])
                                  .reset_index(drop=True), whole, check_exact=True)


def test_float_columns_are_written_without_dictionaries_and_integers_with(tmp_path):
    store.write_part(tmp_path, (0, 0), {"entropy": np.ones((1, 2, 3), np.float32)}, [{}],
                     np.arange(3))
    meta = pq.ParquetFile(store.parts(tmp_path)[0]).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(3)}
    assert "RLE_DICTIONARY" in encodings["seed"] and "RLE_DICTIONARY" in encodings["step"]
    assert "RLE_DICTIONARY" not in encodings["entropy"]


def test_a_streamed_run_has_the_rows_and_statistics_of_an_in_memory_run(tmp_path):
    memory_run = es.run(STREAMED, progress=False)
    streamed = es.run(STREAMED, progress=False, checkpoint=tmp_path / "progress")
    assert memory_run.arrays is not None and streamed.arrays is None
    assert len(store.parts(streamed.rows_folder)) == 8
    pd.testing.assert_frame_equal(streamed.metrics, memory_run.metrics, check_exact=True)
    pd.testing.assert_frame_equal(streamed.summary(), memory_run.summary(), check_exact=True)
    np.testing.assert_array_equal(streamed.final_theta, memory_run.final_theta)
    sel = dict(columns=["entropy", "kl"], seeds=range(1, 3), steps=[0, 11], where={"eta": 0.1})
    pd.testing.assert_frame_equal(streamed.read_metrics(**sel), memory_run.read_metrics(**sel),
                                  check_exact=True)
    assert len(streamed.read_metrics(**sel)) == 4
    # Saved, both give the same folder (parts linked, or written from memory).
    a, b = streamed.save(tmp_path / "a"), memory_run.save(tmp_path / "b")
    pd.testing.assert_frame_equal(es.load(a).metrics, es.load(b).metrics, check_exact=True)
    pd.testing.assert_frame_equal(es.load(a).read_metrics(**sel), streamed.read_metrics(**sel))


def test_a_run_killed_while_a_part_is_written_resumes_bitwise(tmp_path, monkeypatch):
    whole = es.run(STREAMED, progress=False)
    folder = tmp_path / "progress"
    writes, saves = [], []
    real_write, real_save = store.write_table, checkpoint.Checkpoint.save

    def torn_write(table, path):  # the fifth part: half a file under its temporary name, then killed
        writes.append(path)
        if len(writes) == 5:
            (path.parent / f".{path.name}.tmp").write_bytes(b"PAR1 torn")
            raise KeyboardInterrupt
        real_write(table, path)

    monkeypatch.setattr(store, "write_table", torn_write)
    with pytest.raises(KeyboardInterrupt):
        es.run(STREAMED, progress=False, checkpoint=folder)
    monkeypatch.setattr(store, "write_table", real_write)
    assert len(json.loads((folder / "manifest.json").read_text())["done"]) == 4

    def killed_after_the_part(self, *args):  # the part is in place, the unit not yet marked done
        saves.append(args[:2])
        if len(saves) == 2:
            raise KeyboardInterrupt
        real_save(self, *args)

    monkeypatch.setattr(checkpoint.Checkpoint, "save", killed_after_the_part)
    with pytest.raises(KeyboardInterrupt):
        es.run(STREAMED, progress=False, checkpoint=folder)
    monkeypatch.setattr(checkpoint.Checkpoint, "save", real_save)
    assert len(store.parts(folder / "metrics.parquet")) == 6  # one more than the 5 units done
    resumed = es.run(STREAMED, progress=False, checkpoint=folder)
    assert resumed.provenance["resumed_units"] == 5
    pd.testing.assert_frame_equal(resumed.metrics, whole.metrics, check_exact=True)
    pd.testing.assert_frame_equal(resumed.summary(), whole.summary(), check_exact=True)
    np.testing.assert_array_equal(resumed.final_theta, whole.final_theta)


def test_full_and_summary_mode_share_the_statistics_computed_on_the_devices():
    full = es.run(STREAMED, progress=False)
    brief = es.run({**STREAMED, "output": "summary"}, progress=False)
    pd.testing.assert_frame_equal(full.summary(), brief.summary(), check_exact=True)
    # And they are the statistics of the per-seed rows (float32 sums against float64 numpy).
    table = full.summary()
    rows = full.metrics
    for (eta, step), group in rows.groupby(["eta", "step"]):
        got = table[(table.eta == eta) & (table.step == step) & (table.metric == "entropy")].iloc[0]
        values = group.entropy.to_numpy(np.float64)
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert got["std"] == pytest.approx(values.std(ddof=1), rel=1e-4, abs=1e-7)
        assert got["median"] == pytest.approx(np.median(values), rel=1e-6)
        assert got["n"] == 5


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 10_240])
def test_ordered_sum_is_the_sum_and_does_not_depend_on_the_other_axes(n):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n, 7)).astype(np.float32)
    got = np.asarray(jax.jit(lambda v: summary.ordered_sum(v, axis=1))(jnp.asarray(x)))
    exact = x.astype(np.float64).sum(axis=1)
    # Blocks of 16 then pairwise: error at most (16 + log2(n / 16) + 1) ulps of sum |x|.
    bound = (16 + np.log2(max(n / 16, 1)) + 2) * np.finfo(np.float32).eps * np.abs(x).sum(axis=1)
    assert (np.abs(got - exact) <= bound).all()
    # The same column alone, or with other columns around it, gives the same bits.
    alone = np.asarray(jax.jit(lambda v: summary.ordered_sum(v, axis=1))(jnp.asarray(x[1:2, :, 3:4])))
    np.testing.assert_array_equal(alone[0, 0], got[1, 3])
    moved = np.asarray(jax.jit(lambda v: summary.ordered_sum(v, axis=0))(jnp.asarray(x[1])))
    np.testing.assert_array_equal(moved, got[1])
    # Zeros appended (padding seeds, as many as a device layout adds) change no bit.
    for extra in (1, 16, 3 * n + 5):
        padded = np.concatenate([x, np.zeros((3, extra, 7), np.float32)], axis=1)
        more = np.asarray(jax.jit(lambda v: summary.ordered_sum(v, axis=1))(jnp.asarray(padded)))
        np.testing.assert_array_equal(more, got)


def test_statistics_over_seeds_have_the_same_bits_whichever_path_computes_them():
    """``over_seeds`` masks the non-finite rows only when asked (``mask_bad``, mark mode; a run
    that stops at the first one reads only their counts). On finite rows both paths give the
    same bits; with a NaN row both count it, and the masked path leaves it out."""
    import jax

    rng = np.random.default_rng(0)
    rows = {name: rng.standard_normal((2, 37, 5)).astype(np.float32)
            for name in ("entropy", "dH_realized", "dH_pred_cov")}
    real = np.arange(37) < 33  # 4 padding seeds

    def stats(metrics, mask_bad):
        fn = jax.jit(lambda m, r: summary.over_seeds(m, r, (0.5,), (), ("entropy",), mask_bad))
        return jax.tree.map(np.asarray, fn(metrics, real))

    masked = stats(rows, True)
    jax.tree.map(np.testing.assert_array_equal, stats(rows, False), masked)
    assert (masked["entropy"]["n"] == 33).all() and (masked["nonfinite"]["count"] == 0).all()
    assert (masked["nonfinite"]["first_seed"] == -1).all()
    np.testing.assert_allclose(masked["entropy"]["mean"], rows["entropy"][:, :33].mean(1),
                               rtol=1e-5, atol=1e-6)
    bad = {**rows, "entropy": rows["entropy"].copy()}
    bad["entropy"][1, 7, 2] = np.nan
    bad["entropy"][1, 35, 2] = np.nan  # a padding seed: not counted
    masked, unmasked = stats(bad, True), stats(bad, False)
    for out in (masked, unmasked):
        assert out["nonfinite"]["count"].sum() == 1 and out["nonfinite"]["count"][1, 2] == 1
        assert out["nonfinite"]["first_seed"][1, 2] == 7
    assert masked["dH_realized"]["n"][1, 2] == 32 and masked["dH_realized"]["n"][0, 2] == 33
    assert np.isfinite(masked["entropy"]["mean"]).all()
    kept = np.delete(rows["entropy"][1, :33, 2], 7)  # the 32 finite real seeds
    assert masked["entropy"]["mean"][1, 2] == pytest.approx(kept.mean(dtype=np.float64), rel=1e-5)
    assert unmasked["dH_realized"]["n"][1, 2] == 33 and np.isnan(unmasked["entropy"]["mean"][1, 2])
    # The statistics of rows held on the host (the 33 real seeds) pick the path from the rows,
    # the masked one here; the padding seeds changed no bit.
    host = summary.stats_of({k: v[:, :33] for k, v in bad.items()}, (0.5,), ("entropy",),
                            "float32")
    jax.tree.map(np.testing.assert_array_equal, host, masked)


def test_a_run_that_cannot_fit_is_refused_with_the_estimate_before_anything_is_built(monkeypatch):
    with pytest.raises(memory.MemoryLimitError) as err:
        es.run(small_config(seeds=10 ** 12), progress=False)
    assert err.value.field == "seeds" and "final logits alone" in str(err.value)
    # An estimate beyond what is available names its parts and the remedies.
    monkeypatch.setattr(memory, "available", lambda: (300 * 2 ** 20, None))
    config = es.Config(small_config(seeds=200_000, steps=50, env={"kind": "bandit", "arms": 10}))
    with pytest.raises(ConfigError, match=r"seeds: 200000 seeds .* need about .*state .*"
                                          r"but 300.0 MiB of memory available.*output = \"summary\""):
        es.run(config, progress=False)
    monkeypatch.setenv("ENTROPY_SIM_MEMORY_CHECK", "0")
    assert memory.check(config, streamed=True) is None


def test_the_estimate_counts_state_chunks_and_rows_as_they_grow():
    base = es.Config(small_config(seeds=1000, steps=2000, chunk_steps=100,
                                  env={"kind": "bandit", "arms": 10}))
    est = memory.estimate(base, streamed=False)
    more = memory.estimate(es.Config({**base.to_dict(), "seeds": 4000}), streamed=False)
    assert more.state > 3.5 * est.state and more.rows > 3.5 * est.rows
    streamed = memory.estimate(es.Config({**base.to_dict(), "seeds": 4000}), streamed=True)
    assert streamed.rows < more.rows / 5  # about three chunks, not the run
    # The state holds, per seed, at least the logits and the evaluation's pi, log pi, q and A
    # ([1, 10] each, float32), read and written by a chunk.
    assert est.state >= 2 * 1000 * 5 * 10 * 4


def test_the_command_line_refuses_a_run_too_large_without_a_traceback(tmp_path):
    cfg = tmp_path / "big.toml"
    cfg.write_text('seeds = 1000000000000\nsteps = 5\n[env]\nkind = "bandit"\narms = 10\n'
                   '[policy]\ninit = "uniform"\n[algo]\nname = "npg"\neta = 0.1\n')
    done = subprocess.run([sys.executable, "-m", "entropy_sim.cli", "run", str(cfg), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("entropy-sim: error: seeds: 1000000000000 seeds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.toml"]
