"""Every command and code block of the README runs (in a scratch folder), so the README stays true."""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

import numpy as np
import pytest

import entropy_sim as es
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A folder that looks like the repository root, so relative paths in the README work; rules a
    block registers are unregistered afterwards."""
    from entropy_sim import algorithms

    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    registered = dict(algorithms.RULES)
    yield tmp_path
    algorithms.RULES.clear()
    algorithms.RULES.update(registered)


def run_shell(line: str, cwd) -> None:
    for command in line.split("&&"):
        argv = shlex.split(command)
        if argv[:2] == ["pip", "install"]:
            continue  # installing is what CI itself does first (.ci/run)
        if argv[0] == "entropy-sim":
            argv = [sys.executable, "-m", "entropy_sim.cli"] + argv[1:]
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    commands = [b.strip() for b in blocks("bash")]
    assert commands[0].startswith("pip install -e . && entropy-sim run experiments/demo.toml")
    assert commands[1] == 'pip install -e ".[test]" && python -m pytest -q'
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_demo_command_writes_results_table_and_figure(scratch):
    run_shell(blocks("bash")[0].strip(), scratch)
    assert (scratch / "results/demo/metrics.parquet").exists()
    assert (scratch / "results/demo/figures/overview.png").stat().st_size > 10_000


def test_readme_experiments_command_is_the_one_the_experiment_tests_run():
    # tests/test_experiments.py runs it (in-process, into a scratch folder) and checks each claim.
    assert blocks("bash")[3].strip() == "python -m experiments all --quick"
    assert 'cli(["all", "--quick"' in (ROOT / "tests" / "test_experiments.py").read_text()


def test_readme_cli_commands_run(scratch):
    for line in blocks("bash")[2].strip().splitlines():
        run_shell(line, scratch)
    assert (scratch / "results/sweep/figures/overview.png").exists()


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_blocks_run(scratch, index, capsys):
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), {})
    assert capsys.readouterr().out


def test_readme_config_block_is_a_valid_config():
    cfg = es.Config(tomllib.loads(blocks("toml")[0]))
    assert cfg.sweep == {"eta": [0.05, 0.1]}


def test_readme_image_exists_and_is_small():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / path).exists() and os.path.getsize(ROOT / path) < 400_000


def test_readme_benchmark_commands_exist_and_the_sampling_one_runs(tmp_path):
    """The Performance section's commands: every flag is one the script accepts (the full runs take
    minutes and are not unit tests), and the sampling benchmark runs end to end at a tiny size."""
    lines = [line for b in blocks("text") if "benchmarks/" in b for line in b.strip().splitlines()
             if line.startswith("python benchmarks/")]
    assert {shlex.split(line)[1] for line in lines} == {
        "benchmarks/scale.py", "benchmarks/sampling.py", "benchmarks/accelerator.py"}
    for line in lines:
        argv = shlex.split(line.split("#")[0])
        script = ROOT / argv[1]
        proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        for flag in (a for a in argv[2:] if a.startswith("--")):
            assert flag in proc.stdout, f"{line}: {flag} is not an option of {argv[1]}"
    out = tmp_path / "sampling.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampling.py"), "--seeds", "64",
                           "--steps", "4", "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert len(record["rows"]) == 8 and all(r["seed_steps_per_s"] > 0 for r in record["rows"])
    assert {"gumbel_over_engine", "counts_over_engine", "per_draw_over_engine",
            "jax_uniform_over_engine"} <= set(record)


def test_readme_reference_tables_are_the_declarations():
    """The README's generated tables (columns, rules, pieces) are exactly what ``entropy-sim list
    --markdown`` reads off the declarations: a new rule, hyperparameter or column without a README
    update fails here."""
    from entropy_sim import catalog

    found = re.findall(r"<!-- generated: entropy-sim list (\w+) --markdown -->\n(.*?)\n"
                       r"<!-- end generated -->", README, flags=re.S)
    assert sorted(section for section, _ in found) == sorted(catalog.SECTIONS)
    for section, table in found:
        assert table == catalog.markdown(section), (
            f"README's {section} table is out of date: paste `entropy-sim list {section} "
            f"--markdown`")


def test_readme_formula_tables_name_every_registered_rule_and_no_other():
    from entropy_sim.algorithms import RULES

    exact = README.split("## Update rules")[1].split("## Sampled rules")[0]
    sampled = README.split("## Sampled rules")[1].split("Here `c = ")[0].split("<!-- generated")[0]
    named = set(re.findall(r"^\| `(\w+)` \|", exact + sampled, flags=re.M))
    assert named == set(RULES), named ^ set(RULES)


@pytest.mark.slow
def test_readme_precision_commands_print_the_numbers_the_readme_states(scratch):
    """The Scale section's float32 against float64 runs (10^6 exact PG steps each, about 20 s in
    all) print what the README says; float64 approaches the limit (K - 1)/(K eta) = 5/3."""
    block = next(b for b in blocks("bash") if "precision.toml" in b)
    *runs, show = [line.strip() for line in block.strip().splitlines()]
    for line in runs:
        run_shell(line, scratch)
    argv = shlex.split(show)
    assert argv[0] == "python"
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=scratch, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    printed = {name: float(value) for name, value in (line.split() for line in proc.stdout.splitlines())}
    f32, f64 = (float(x) for x in re.search(r"reads (\d+\.\d+) in float32 and (\d+\.\d+) in float64",
                                            README.replace("\n  ", " ")).groups())
    assert printed["float64"] == f64 and abs(f64 - 5 / 3) < 1e-3
    # float32's trajectory depends on XLA:CPU's rounding; it is off by several percent either way.
    assert printed["float32"] == pytest.approx(f32, abs=0.01)
    assert abs(printed["float32"] - f64) > 0.02 * f64
    # float32's own last policy, evaluated exactly: its trajectory is rounded as well.
    stated = float(re.search(r"evaluated in float64 gives (\d+\.\d+)", README.replace("\n  ", " ")).group(1))
    prob = es.load(scratch / "results/precision/float32").final_policy.prob.to_numpy(np.float64)
    assert 1e6 * prob @ np.array([0.0, 0.1, 0.9]) == pytest.approx(stated, abs=0.005)
