"""The second half of ``python -m experiments all --quick`` (the first: test_experiments.py, whose
docstring says why the command runs in two files)."""

import pytest

from experiments.common import EXPERIMENTS
from test_experiments import check_command, check_experiment, run_quick

SECOND_HALF = EXPERIMENTS[5:]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(SECOND_HALF, tmp_path_factory)


def test_readme_command_second_half(quick_run):
    check_command(quick_run, SECOND_HALF)


@pytest.mark.parametrize("name", SECOND_HALF)
def test_experiment_claims_hold_at_quick_size(name, quick_run):
    check_experiment(quick_run, name)
