"""The command line explains itself and points at the right thing: complete help texts,
``--version``, ``run --dry-run``, ``plot --metrics``, config errors that name the real mistake, and
a failed run that leaves nothing behind (while a run stopped after some chunks keeps its progress).

Expected numbers are worked out here by hand from the config and the documented layout rules
(seeds padded to whole blocks, at least two grid rows per compiled call, one compiled program per
chunk length), then checked against what a real run holds."""

import io
import logging
import os
import re
import subprocess
import sys
import tomllib

import jax
import pandas as pd
import pytest

import entropy_sim as es
from conftest import ROOT, texts_that_collide
from entropy_sim import cli, plotting
from entropy_sim.dryrun import plan as dry_plan
from entropy_sim.engine import checkpoint, runner

STEP_METRICS = {"entropy", "dH_realized", "dH_pred_cov", "dH_within", "dH_shift", "return", "renyi2",
                "grad_sq_norm", "kl", "kl_quad", "kl_bound", "dz_max"}  # README, "What is logged"


def entropy_sim(*args, env=None):
    """``entropy-sim ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "entropy_sim.cli", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def main(capsys, *args) -> tuple[int, str, str]:
    """``entropy-sim ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as stop:  # argparse: --help, --version, usage errors
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def write(tmp_path, text: str, name: str = "c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- help and version

def test_help_describes_the_tool_and_every_command_in_full(capsys):
    status, out, _ = main(capsys, "--help")
    assert status == 0
    description = out.split("\n\n")[1]  # after the usage line
    assert description.startswith("Simulate entropy collapse") and description.endswith(".")
    assert "covariance law" in description and "predicts next to the change that really happened." in out
    for command in ("run CONFIG.toml --out DIR", "run CONFIG.toml --dry-run", "plot DIR"):
        assert f"entropy-sim {command}" in out
    assert "--version" in out and "status 2" in out and "status 3" in out
    status, out, _ = main(capsys, "run", "--help")
    assert status == 0
    assert "--dry-run" in out and "required unless --dry-run" in out
    assert "resumes from its last completed chunk" in out  # the epilog, complete
    status, out, _ = main(capsys, "plot", "--help")
    assert status == 0
    assert "png, pdf or svg" in " ".join(out.split()) and "--metrics" in out


def test_experiments_help_is_complete(capsys):
    from experiments.__main__ import cli as experiments_cli

    with pytest.raises(SystemExit) as stop:
        experiments_cli(["--help"])
    assert stop.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.startswith("Run the experiments") and description.endswith("bounds.")
    assert "tally" in description


def test_version_prints_the_package_and_jax_versions(capsys):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    status, out, _ = main(capsys, "--version")
    assert status == 0
    assert out.startswith(f"entropy-sim {version} (jax {jax.__version__}, jaxlib ")
    assert es.__version__ == version


def test_run_without_out_or_dry_run_is_a_usage_error(tmp_path):
    proc = entropy_sim("run", ROOT / "experiments" / "demo.toml")
    assert proc.returncode == 2 and "--out" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- run --dry-run

DRY = """seeds = 300
seed_block = 128
devices = 1
steps = 100
log_every = 2
chunk_steps = 40
grid_batch = 4
[env]
kind = "bandit"
means = [1.0, 0.0, 0.0]
[algo]
name = "npg_entropy"
eta = [0.1, 0.2]
tau = [0.0, 0.1]
"""
DRY_SET = ["algo.eta=[0.1, 0.2, 0.3]"]
# Worked out by hand: 3 x 2 = 6 grid points in batches of 4 (4 + 2, each call padded to 4 rows);
# 300 seeds in blocks of 128 on one device: 3 blocks, 384 seeds computed; 50 logged steps in
# chunks of 40, 40 and 20 steps (20, 20 and 10 logged): 2 chunk lengths, so 3 compiled programs
# and 2 x 3 = 6 chunk calls. Columns: the 12 diagnostics, the closed form, return_reg (the rule
# has tau) and pass@1, pass@8 (the means are 0 or 1): 16, float32.
COLUMNS = STEP_METRICS | {"dH_pred_closed", "return_reg", "pass_at_1", "pass_at_8"}
DEVICE_BYTES = 4 * 384 * 20 * 16 * 4
HOST_BYTES = 6 * 300 * 50 * 16 * 4
PLAN = [
    "# grid: 6 points (eta = [0.1, 0.2, 0.3] x tau = [0.0, 0.1])",
    "# seeds: 300 (computed as 384: blocks of 128 seeds; devices: 1 for grid points x 1 for seeds)",
    "# steps: 100, logged steps: 50 (log_every = 2)",
    "# chunks: 3 (steps per chunk: 40, 20); grid batches: 2 of up to 4 grid points (4 rows per "
    "compiled call)",
    "# compiled programs: 3 (the initial state + 2 chunk lengths), chunk calls: 6 (2 grid batches "
    "x 3 chunks)",
    f"# device memory: {DEVICE_BYTES / 2 ** 20:.1f} MiB per chunk of per-seed metrics (4 grid rows "
    f"x 384 seeds x 20 logged steps x 16 columns x 4 B)",
    f"# host memory: {HOST_BYTES / 2 ** 20:.1f} MiB of metrics (90000 rows x 16 columns x 4 B), "
    f"the size of metrics.parquet; entropy-sim run streams them to disk chunk by chunk and holds "
    f"about two chunks",
    f"# final logits: {6 * 300 * 3 * 4 / 2 ** 10:.1f} KiB (6 x 300 x 1 states x 3 actions x 4 B)",
]


def test_dry_run_plan_counts_one_of_a_thing_in_the_singular():
    lines = dry_plan(es.Config(tomllib.loads(DRY.replace("tau = [0.0, 0.1]", "tau = 0.1")
                                              .replace("eta = [0.1, 0.2]", "eta = 0.1")
                                              .replace("chunk_steps = 40", "chunk_steps = 0")
                                              ))).lines()
    assert lines[0] == "grid: 1 point (nothing swept)"
    assert lines[3].endswith("grid batches: 1 of up to 1 grid point (2 rows per compiled call)")
    assert lines[4] == ("compiled programs: 2 (the initial state + 1 chunk length), chunk calls: 1 "
                        "(1 grid batch x 1 chunk)")


def test_dry_run_prints_the_resolved_config_and_the_plan_and_compiles_and_writes_nothing(tmp_path):
    path = write(tmp_path, DRY)
    out = tmp_path / "out"
    args = ["run", path, "--out", out, "--dry-run"] + [a for s in DRY_SET for a in ("--set", s)]
    proc = entropy_sim(*args, env={"JAX_LOG_COMPILES": "1"})
    assert proc.returncode == 0, proc.stderr
    # JAX logs every compile: none of the run's programs; only the conversions of the validated
    # config's reward arrays to float32 (what loading any config does).
    assert "Finished tracing" in proc.stderr  # the log is on
    assert set(re.findall(r"Compiling jit\((\w+)\)", proc.stderr)) <= {"convert_element_type"}
    assert sorted(tmp_path.iterdir()) == [path]  # no result folder, no progress folder
    # The config part is TOML that resolves to the same config (the plan lines are comments).
    assert es.Config(tomllib.loads(proc.stdout)) == es.load_config(path, DRY_SET)
    lines = proc.stdout.splitlines()
    for line in PLAN:
        assert line in lines, f"{line}\n---\n{proc.stdout}"
    columns = next(l for l in lines if l.startswith("# metric columns: 16 (float32): "))
    assert set(columns.split(": ")[2].split(", ")) == COLUMNS
    assert lines[-1] == f"# would write {out}/"


class CompileLog(logging.Handler):
    """Collects the names of the programs JAX compiles (``jax_log_compiles``)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        found = re.match(r"Compiling jit\((\w+)\)", record.getMessage())
        if found:
            self.names.append(found[1])


def test_the_dry_runs_plan_is_what_a_run_compiles_and_holds(monkeypatch):
    """The same config run for real: its columns, the bytes its result holds (full mode with
    non-finite flags, and summary mode), and its compiled programs, as the dry run states."""
    config = es.Config(tomllib.loads(DRY))
    config = config.replace(algo__eta=[0.1, 0.2, 0.3], on_nonfinite="mark")
    plan = dry_plan(config)
    assert set(plan.columns) == COLUMNS and plan.device_bytes == DEVICE_BYTES
    assert plan.host_bytes == HOST_BYTES + 90000  # + one flag byte per row
    made = {"chunk": [], "init": []}
    for name in made:
        original = getattr(runner, f"compiled_{name}")
        original.cache_clear()
        monkeypatch.setattr(runner, f"compiled_{name}",
                            lambda *a, _o=original, _n=name: made[_n].append(_o(*a)) or made[_n][-1])
    log = CompileLog()
    logging.getLogger("jax").addHandler(log)
    try:
        with jax.log_compiles(True):
            res = es.run(config, progress=False)
    finally:
        logging.getLogger("jax").removeHandler(log)
    assert set(res.arrays) == COLUMNS | {"nonfinite"}
    assert sum(a.nbytes for a in res.arrays.values()) == plan.host_bytes
    assert res.final_theta.nbytes == plan.final_logits_bytes
    # 2 grid batches x 3 chunks called; 2 chunk programs and 1 initial-state program made and
    # compiled once each (the second grid batch reuses them).
    assert len(made["chunk"]) == plan.work_units == 6
    assert len({id(f) for f in made["chunk"] + made["init"]}) == plan.compiled_programs == 3
    assert sorted(n for n in log.names if n in ("chunk", "init")) == ["chunk", "chunk", "init"]
    summary = config.replace(output="summary", on_nonfinite="error")
    plan = dry_plan(summary)
    stats = es.run(summary, progress=False).stats
    held = sum(x.nbytes for metric in stats.values() for x in metric.values())
    # (16 metrics + 3 error metrics) x (mean, std, n, 3 quantiles) x 6 x 50, + 2 int32 counts.
    assert held == plan.host_bytes == 19 * 6 * 6 * 50 * 4 + 6 * 50 * 8


@pytest.mark.parametrize("overrides, field, words", [
    (["output=summary", 'quantile_metrics=["entrpy"]'], "quantile_metrics", "entropy"),
    (["devices=99"], "devices", "available"),
    (["algo.eta=0"], "algo.eta", "> 0"),
])
def test_dry_run_stops_where_the_run_would(tmp_path, capsys, overrides, field, words):
    path = write(tmp_path, DRY)
    args = ["run", path, "--dry-run"] + [a for s in overrides for a in ("--set", s)]
    status, out, err = main(capsys, *args)
    assert status == 2 and err.startswith(f"entropy-sim: error: {field}: ") and words in err
    assert out == "" and sorted(tmp_path.iterdir()) == [path]


def test_dry_run_refuses_an_existing_out_folder(tmp_path, capsys):
    path = write(tmp_path, DRY)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    status, _, err = main(capsys, "run", path, "--out", tmp_path / "out", "--dry-run")
    assert status == 2 and "--overwrite" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------- config errors

ENV = '[env]\nkind = "bandit"\nmeans = [1.0, 0.5]\n'
CONFIG_ERRORS = {
    "misnamed table": ('steps = 3\n' + ENV + '[algorithm]\nname = "pg"\neta = 0.1\n',
                       "algorithm: unknown table; did you mean [algo]?"),
    "top-level key after a table": (ENV + '[algo]\nname = "pg"\neta = 0.1\nseeds = 3\nsteps = 5\n',
                                    "algo.seeds: 'seeds' is a top-level key, not a key of [algo]; "
                                    "in a TOML file top-level keys must come before the first "
                                    "[table] header"),
    "misspelled next to missing": (ENV + '[algo]\nname = "pg"\netta = 0.1\n',
                                   "algo.etta: unknown key; did you mean 'eta'?"),
    "key of another table": (ENV + 'eta = 0.1\n[algo]\nname = "pg"\n',
                             "env.eta: 'eta' is a key of [algo], not a key of [env]"),
    "table key at the top level": ('eta = 0.1\n' + ENV + '[algo]\nname = "pg"\n',
                                   "eta: 'eta' is a key of [algo], not a top-level key"),
    "unknown table": (ENV + '[rule]\nname = "pg"\neta = 0.1\n',
                      "rule: unknown table; the tables are [env], [policy], [algo]"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_name_the_real_mistake(tmp_path, capsys, case):
    text, message = CONFIG_ERRORS[case]
    path = write(tmp_path, text)
    for extra in ([], ["--dry-run"]):
        status, out, err = main(capsys, "run", path, "--out", tmp_path / "out", *extra)
        assert status == 2 and err == f"entropy-sim: error: {message}\n"
        assert sorted(tmp_path.iterdir()) == [path]


def test_config_error_exit_status_and_no_traceback_in_a_fresh_process(tmp_path):
    path = write(tmp_path, CONFIG_ERRORS["misnamed table"][0])
    proc = entropy_sim("run", path, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == f"entropy-sim: error: {CONFIG_ERRORS['misnamed table'][1]}\n"
    assert sorted(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------------- failed runs

SMALL = """seeds = 4
steps = 50
chunk_steps = 10
[env]
kind = "bandit"
means = [1.0, 0.5, 0.0]
[algo]
name = "npg"
eta = [0.5, 1.0]
"""


def test_a_config_error_found_late_leaves_no_progress_folder(tmp_path, capsys):
    # quantile_metrics are checked against the run's columns when the summary is compiled.
    path = write(tmp_path, SMALL)
    status, _, err = main(capsys, "run", path, "--out", tmp_path / "out", "--quiet",
                          "--set", "output=summary", "--set", 'quantile_metrics=["entrpy"]')
    assert status == 2 and err.startswith("entropy-sim: error: quantile_metrics: ")
    assert sorted(tmp_path.iterdir()) == [path]


def test_non_finite_at_step_0_exits_3_and_leaves_nothing(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    status, _, err = main(capsys, "run", path, "--out", tmp_path / "out", "--quiet",
                          "--set", "algo.eta=1e37")
    assert status == 3 and "non-finite values at step 0, seed 0" in err
    assert sorted(tmp_path.iterdir()) == [path]


def test_interrupted_before_the_first_chunk_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.Collector, "add_stats", interrupt)  # Ctrl-C during the first chunk
    path = write(tmp_path, SMALL)
    status, _, err = main(capsys, "run", path, "--out", tmp_path / "out", "--quiet")
    assert status == 130 and err == "entropy-sim: interrupted\n"
    assert sorted(tmp_path.iterdir()) == [path]


def test_interrupted_after_some_chunks_keeps_its_progress_and_resumes(tmp_path, capsys, monkeypatch):
    save = checkpoint.Checkpoint.save
    saved = []

    def interrupt_after_two(self, *args):
        save(self, *args)
        saved.append(args[:2])
        if len(saved) == 2:
            raise KeyboardInterrupt

    path = write(tmp_path, SMALL)
    out, progress = tmp_path / "out", tmp_path / ".out.progress"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.Checkpoint, "save", interrupt_after_two)
        status, _, err = main(capsys, "run", path, "--out", out, "--quiet")
    assert status == 130 and f"progress so far is in {progress}/" in err and "resumes" in err
    assert not out.exists() and (progress / "manifest.json").exists()
    # 5 chunks of one grid batch: the two done are kept, and the same command finishes the run.
    status, _, err = main(capsys, "run", path, "--out", out, "--quiet")
    assert status == 0 and "resuming" in err and not progress.exists()
    assert main(capsys, "run", path, "--out", tmp_path / "whole", "--quiet")[0] == 0
    for read in (lambda d: es.load(d).metrics, lambda d: es.load(d).summary()):
        pd.testing.assert_frame_equal(read(out), read(tmp_path / "whole"), check_exact=True)
    assert saved[:2] == [(0, 0), (0, 1)]


# ----------------------------------------------------------------------------- plot --metrics

def test_plot_draws_the_chosen_metrics_and_names_unknown_ones(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    out = tmp_path / "out"
    assert main(capsys, "run", path, "--out", out, "--quiet")[0] == 0
    available = list(dict.fromkeys(pd.read_parquet(out / "summary.parquet").metric))
    status, _, err = main(capsys, "plot", out, "--metrics", "entropy,entrpy")
    assert status == 2 and err.startswith("entropy-sim: error: --metrics: unknown metric 'entrpy' "
                                          "(did you mean 'entropy'?); this folder has: ")
    assert err.strip().split("this folder has: ")[1].split(", ") == available
    assert not (out / "figures").exists()  # nothing drawn
    status, stdout, _ = main(capsys, "plot", out, "--metrics", "entropy, kl,dz_max", "--format", "svg")
    figure = out / "figures" / "entropy-kl-dz_max.svg"
    assert status == 0 and stdout == f"wrote {figure}\n"
    svg = figure.read_text()
    assert svg.count("<g id=\"axes_") == 3  # one panel per metric
    status, _, err = main(capsys, "plot", out, "--metrics", ",")
    assert status == 2 and "comma-separated metric names" in err


def test_plotted_figures_have_no_text_over_text_and_each_axis_states_its_power_of_ten(tmp_path,
                                                                                          capsys):
    # Small step sizes: entropy changes of order 1e-4 (long tick labels under matplotlib's
    # defaults, which collide on the law's axes) and a KL of order 1e-6 (a power of ten that
    # matplotlib writes above the axis, over the panel's title). Without a layout engine and
    # with matplotlib's tick labels, both panels collide.
    path = write(tmp_path, SMALL.replace("eta = [0.5, 1.0]", "eta = [0.002, 0.004]"))
    out = tmp_path / "out"
    assert main(capsys, "run", path, "--out", out, "--quiet")[0] == 0
    for metrics in (None, ["entropy", "kl", "dz_max", "return"]):
        fig = plotting.figure(out, metrics=metrics)
        fig.savefig(io.BytesIO(), format="png", dpi=150, bbox_inches="tight")  # as plot saves it
        fig.draw_without_rendering()  # the texts' places at the figure's own resolution
        assert texts_that_collide(fig) == []
        labels = [axis.label.get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)]
        assert not [ax for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                    if axis.offsetText.get_visible() and axis.offsetText.get_text()]
        plotting.plt.close(fig)
        # The scale moved into the labels, with the unit where there is one.
        if metrics is None:
            assert "realized ΔH [10⁻⁴ nats]" in labels, labels
        else:
            assert any(re.fullmatch(r"kl \(×10⁻[⁰¹²³⁴⁵⁶⁷⁸⁹]+\)", label) for label in labels), labels
    # The values the ticks show are the data's: a tick label times the label's power of ten is
    # the tick's position.
    fig = plotting.figure(out, metrics=["kl"])
    fig.draw_without_rendering()
    axis = fig.axes[0].yaxis
    digits = re.search(r"10⁻([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", axis.label.get_text()).group(1)
    power = int(digits.translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")))
    shown = [(tick.get_loc(), tick.label1.get_text()) for tick in axis.get_major_ticks()
             if tick.label1.get_visible() and tick.label1.get_text()]
    assert len(shown) >= 3
    # Limits and a label the caller sets later are followed when the figure is drawn again.
    ax = fig.axes[0]
    ax.set_ylabel("KL")
    ax.set_ylim(0, 2e-3)
    fig.draw_without_rendering()
    assert axis.label.get_text() == "KL"  # 2e-3: plain numbers
    ticks = [(t.get_loc(), t.label1.get_text()) for t in axis.get_major_ticks()]
    assert ticks[0][1] == "0.00000" and all(float(text) == pytest.approx(loc, abs=1e-12)
                                            for loc, text in ticks)
    ax.set_ylim(-3e-7, 0)
    fig.draw_without_rendering()
    assert axis.label.get_text() == "KL (×10⁻⁷)"
    assert axis.get_major_ticks()[0].label1.get_text() == "−3.0"
    for position, text in shown:
        value = float(text.replace("−", "-")) * 10.0 ** -power
        assert value == pytest.approx(position, rel=1e-9, abs=1e-12 * 10.0 ** -power)
    plotting.plt.close(fig)


def test_band_falls_back_to_the_confidence_interval_without_quantiles():
    summary = pd.DataFrame({"metric": ["kl", "kl", "entropy", "entropy"], "step": [0, 1, 0, 1],
                            "mean": [1.0, 2.0, 1.0, 0.5], "ci_low": [0.5, 1.5, 0.9, 0.4],
                            "ci_high": [1.5, 2.5, 1.1, 0.6], "q025": [float("nan")] * 2 + [0.8, 0.3],
                            "q975": [float("nan")] * 2 + [1.2, 0.7]})
    with plotting.style():
        fig, ax = plotting.plt.subplots()
        assert plotting.band_plot(ax, summary, "kl", []) == "95% CI of the mean"
        assert plotting.band_plot(ax, summary, "entropy", []) == "95% of seeds"
        plotting.plt.close(fig)


# ----------------------------------------------------------------------------- list

def test_list_offers_every_catalog_section_and_names_every_kind_and_init(capsys):
    from entropy_sim import catalog, envs, policies

    assert cli.LIST_SECTIONS == catalog.SECTIONS
    assert cli.main(["list", "envs"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"envs ({len(envs.registry.KINDS)})")
    assert all(f"\n{kind}\n" in printed for kind in envs.registry.KINDS)
    # a field inside alternatives is listed with its default, e.g. the garnet's branching
    assert cli.main(["list", "envs", "--markdown"]) == 0
    assert ("garnet: [states (required), actions (required), branching (from the other fields)"
            in capsys.readouterr().out)
    assert cli.main(["list", "policies", "--markdown"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == list(policies.INITS)
    assert "| `gaussian` | random logits scale * N(0, 1), per seed | scale (1.0) |" in rows
