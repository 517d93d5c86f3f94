"""Shared test helpers."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE_VAR = "ENTROPY_SIM_COMPILATION_CACHE"
OWNER_VAR = "ENTROPY_SIM_TEST_CACHE_OWNER"  # set by the process that made the scratch cache
# ENTROPY_SIM_TEST_MEMORY=1: print each test process's peak resident memory at the end of the run.
MEMORY_VAR = "ENTROPY_SIM_TEST_MEMORY"
MEMORY_KEY = "entropy_sim_peak_rss_mb"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``ru_maxrss``: kilobytes on Linux, bytes on
    macOS). Not its subprocesses: ``RUSAGE_CHILDREN`` would count the parent's own memory at each
    fork (a forked child starts with the parent's pages), which is no measure of the child."""
    import resource  # Unix only: imported when asked for

    unit = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


# The quick subset, `python -m pytest -m quick`: a smoke test of the maths, the engine and the
# command line for development, in under 2 minutes on 2 cores (the full suite, which CI runs,
# takes 10 to 13). Every test of QUICK_FILES, and the tests named in QUICK_TESTS (every parameter).
QUICK_FILES = {
    "test_prng.py",        # the sampler's random bits are JAX's Threefry, bit for bit
    "test_objectives.py",  # the GRPO family's pieces: advantages, clipping, bonuses, composition
}
QUICK_TESTS = {
    "test_theory.py": [  # docs/theory.md §2 to §3: entropy, covariance, KL, T3 and T4
        "test_shannon_entropy_is_at_least_renyi2_entropy_with_equality_at_uniform",
        "test_entropy_is_finite_and_zero_at_one_hot_logits",
        "test_covariance_with_log_pi_equals_covariance_with_logits",
        "test_autodiff_entropy_gradient_equals_minus_pi_times_log_pi_plus_entropy",
        "test_kl_of_a_logit_step_over_half_the_policy_variance_tends_to_one_with_error_linear_in_eta",
        "test_kl_of_a_small_logit_step_is_below_the_t2_bound_and_the_quadratic_term_always_is",
        "test_entropy_change_and_kl_from_the_logit_change_equal_differences_of_exact_entropies",
        "test_entropy_change_and_kl_stay_finite_and_exact_for_huge_logit_changes",
        "test_bandit_entropy_change_minus_covariance_prediction_quarters_when_eta_halves",
        "test_garnet_distribution_shift_term_is_first_order_in_eta_not_second",
        "test_rule_closed_form_entropy_change_equals_covariance_law_on_its_own_logit_change",
        "test_contextual_bandit_closed_forms_equal_the_t4_table_computed_in_the_test",
        "test_runner_step_reports_closed_form_equal_to_covariance_prediction_and_the_rule_step",
        "test_temperature_reinforce_at_temperature_one_is_exactly_the_pg_update",
    ],
    "test_runner.py": [  # the engine: columns, compilation reuse, non-finite guard, saving, chunks
        "test_metrics_table_has_every_required_column_and_one_row_per_grid_point_seed_and_step",
        "test_a_new_hyperparameter_value_reuses_the_compiled_chunk",
        "test_non_finite_values_stop_the_run_naming_grid_point_seed_and_step",
        "test_save_is_atomic_and_refuses_to_overwrite_without_permission",
        "test_plan_chunks_covers_every_step_in_multiples_of_log_every",
        "test_automatic_chunks_keep_the_metrics_of_a_chunk_within_the_memory_budget",
    ],
    "test_cli.py": [  # the command line: help, dry run, errors and exit statuses, run, resume, plot
        "test_help_describes_the_tool_and_every_command_in_full",
        "test_version_prints_the_package_and_jax_versions",
        "test_dry_run_prints_the_resolved_config_and_the_plan_and_compiles_and_writes_nothing",
        "test_dry_run_stops_where_the_run_would",
        "test_config_errors_name_the_real_mistake",
        "test_config_error_exit_status_and_no_traceback_in_a_fresh_process",
        "test_non_finite_at_step_0_exits_3_and_leaves_nothing",
        "test_interrupted_after_some_chunks_keeps_its_progress_and_resumes",
        "test_plot_draws_the_chosen_metrics_and_names_unknown_ones",
    ],
    "test_config.py": [  # bad input names its field; defaults, overrides and sweeps resolve
        "test_bad_input_raises_config_error_naming_the_field",
        "test_resolved_config_fills_every_default_and_round_trips_through_json",
        "test_override_strings_are_parsed_as_toml_values",
        "test_grid_is_the_cartesian_product_of_sweep_lists_last_varying_fastest",
    ],
}


# The longest test files (measured), run first: pytest-xdist hands whole files to its workers in
# collection order, and a long file started last would leave the other worker idle while it ends.
LONGEST_FIRST = ("test_experiments_rest.py", "test_experiments.py", "test_scale.py",
                 "test_readme.py", "test_notebooks.py", "test_algorithms_cli.py",
                 "test_framework_rules.py", "test_trust_region.py", "test_sampled.py",
                 "test_runner.py", "test_sweeps.py", "test_results_folder.py")


def pytest_collection_modifyitems(config, items):
    """Put the longest files first (``LONGEST_FIRST``; the order within a file is kept) and mark
    the quick subset (QUICK_FILES, QUICK_TESTS) with ``quick``."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
    for item in items:
        file, name = item.path.name, getattr(item, "originalname", item.name)
        if file in QUICK_FILES or name in QUICK_TESTS.get(file, ()):
            item.add_marker(pytest.mark.quick)


def pytest_configure(config):
    """The command line caches compiled programs in the user's cache folder; tests use one
    scratch folder instead, shared by every process of the run (pytest-xdist's workers inherit
    the controller's) and removed at the end. The tests' own processes cache in it too: a test
    file's programs are freed when it ends (``_free_programs_after_each_file``), and a later
    file, or the other worker, that runs the same program loads it (the same executable, so the
    same bits) instead of compiling it again."""
    from entropy_sim.engine import compile_cache

    if OWNER_VAR not in os.environ:  # the controller, or a run without workers
        config._entropy_sim_cache = tempfile.mkdtemp(prefix="entropy-sim-test-jax-cache-")
        os.environ[CACHE_VAR] = config._entropy_sim_cache
        os.environ[OWNER_VAR] = str(os.getpid())
    compile_cache.enable_compilation_cache(os.environ[CACHE_VAR])


def pytest_unconfigure(config):
    folder = getattr(config, "_entropy_sim_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(OWNER_VAR, None)


def pytest_sessionfinish(session):
    """Record the peak memory (with ENTROPY_SIM_TEST_MEMORY=1) and free every compiled program
    before a pytest-xdist worker reports that it is done.

    The controller stops a worker that is still busy 5 s later with SIGINT; freeing thousands of
    XLA executables in pytest's final garbage collections can take that long, and the interrupt
    then lands in JAX's garbage-collection callback, a spurious warning at the end of the run."""
    if os.environ.get(MEMORY_VAR) == "1":
        if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: tell the controller
            session.config.workeroutput[MEMORY_KEY] = peak_rss_mb()
        else:  # the only process, or pytest-xdist's controller
            peaks = getattr(session.config, "_entropy_sim_peaks", {})
            peaks["controller" if peaks else "main process"] = peak_rss_mb()
            session.config._entropy_sim_peaks = peaks
    if hasattr(session.config, "workerinput"):
        free_compiled_programs()


def free_compiled_programs() -> None:
    """Drop every compiled program this process holds (entropy_sim's caches and JAX's) and hand
    the freed host memory back to the system (``runner.clear_compiled``)."""
    from entropy_sim.engine import runner

    runner.clear_compiled()


@pytest.fixture(scope="module", autouse=True)
def _free_programs_after_each_file():
    """Test files rarely share compiled programs, so each file's are freed when it is done: a
    worker's memory is then that of its largest file, not the sum of all it ran."""
    yield
    free_compiled_programs()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: collect the peak memory a worker reported."""
    peaks = getattr(node, "workeroutput", {}).get(MEMORY_KEY)
    if peaks is not None:
        collected = getattr(node.config, "_entropy_sim_peaks", {})
        collected[node.gateway.id] = peaks
        node.config._entropy_sim_peaks = collected


def pytest_terminal_summary(terminalreporter, config):
    peaks = getattr(config, "_entropy_sim_peaks", None)
    if not peaks:
        return
    terminalreporter.write_sep("-", f"peak resident memory ({MEMORY_VAR}=1)")
    for who, mb in sorted(peaks.items()):
        terminalreporter.write_line(f"{who}: {mb:,.0f} MB")


@pytest.fixture
def root() -> Path:
    return ROOT


def small_config(**top) -> dict:
    """A tiny valid config; keyword arguments replace top-level keys or whole tables."""
    cfg = {"seed": 0, "seeds": 3, "steps": 4,
           "env": {"kind": "bandit", "means": [1.0, 0.9, 0.1]},
           "policy": {"init": "uniform"},
           "algo": {"name": "pg", "eta": 0.4}}
    cfg.update(top)
    return cfg


def texts_that_collide(fig) -> list[tuple[str, str]]:
    """Pairs of texts of a drawn figure whose boxes overlap: tick labels of one axis, or any two
    texts (tick labels, axis labels, titles, the power of ten of an axis) of different panels or
    roles, the figure's title included. Empty for a figure that reads."""
    renderer = fig.canvas.get_renderer()
    boxes = []  # (owner, text, box)

    def add(owner, text):
        if text.get_visible() and text.get_text():
            boxes.append((owner, text.get_text(), text.get_window_extent(renderer).expanded(
                0.98, 0.9)))  # a pixel of slack: texts that touch are not on top of each other

    for i, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            scale = axis.get_transform().transform  # linear, log, ...: compare where drawn
            lo, hi = sorted(scale(np.asarray(axis.get_view_interval(), float)))
            slack = 1e-9 * (hi - lo)
            for j, tick in enumerate(axis.get_major_ticks()):
                if lo - slack <= scale(np.asarray([tick.get_loc()], float))[0] <= hi + slack:
                    add(f"{i}:{name}tick{j}", tick.label1)  # a tick drawn
            add(f"{i}:{name}label", axis.label)
            add(f"{i}:{name}power", axis.offsetText)
        add(f"{i}:title", ax.title)
    if fig._suptitle is not None:
        add("suptitle", fig._suptitle)
    panels = [(f"{i}:", ax.bbox) for i, ax in enumerate(fig.axes) if ax.get_visible()]
    return ([(a, b) for k, (_, a, box) in enumerate(boxes) for _, b, other in boxes[k + 1:]
             if box.overlaps(other)]
            + [(text, f"panel {i[:-1]}") for owner, text, box in boxes for i, panel in panels
               if not owner.startswith(i) and box.overlaps(panel)])
