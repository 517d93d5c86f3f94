"""Every command and code block of the README runs (in a scratch folder), so the README stays true.

Each Python block's printed numbers are checked against expectations derived independently of the
engine: closed forms, NumPy computations of the same maths, or bounds that follow from the theory.
"""

import contextlib
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import entropy_sim as es
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A folder that looks like the repository root, so relative paths in the README work; rules
    and environment kinds a block registers are unregistered afterwards."""
    from entropy_sim import envs
    from entropy_sim.rules import registry as algorithms

    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    registered = dict(algorithms.RULES), dict(envs.registry.KINDS)
    yield tmp_path
    for registry, before in zip((algorithms.RULES, envs.registry.KINDS), registered):
        registry.clear()
        registry.update(before)


def run_shell(line: str, cwd, *, in_process: bool = False) -> str:
    """Run a README command line (``a && b``); returns the stdout of its last command.
    ``in_process``: ``entropy-sim`` commands call ``cli.main`` here (in ``cwd``, which the
    ``scratch`` fixture made the current folder), sharing this process's compiled programs;
    tests/test_cli.py runs the installed entry point in fresh processes."""
    out = ""
    for command in line.split("&&"):
        argv = shlex.split(command)
        if argv[:2] == ["pip", "install"]:
            continue  # installing is what CI itself does first (.ci/run)
        if in_process and argv[0] == "entropy-sim":
            from entropy_sim import cli

            assert Path(cwd).resolve() == Path.cwd().resolve()
            printed, errors = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
                status = cli.main(argv[1:])
            assert status == 0, f"{command}\n{printed.getvalue()}\n{errors.getvalue()}"
            out = printed.getvalue()
            continue
        if argv[0] == "entropy-sim":
            argv = [sys.executable, "-m", "entropy_sim.cli"] + argv[1:]
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        out = proc.stdout
    return out


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    commands = [b.strip() for b in blocks("bash")]
    assert commands[0].startswith("pip install -e . && entropy-sim run experiments/demo.toml")
    assert commands[1] == 'pip install -e ".[test]" && python -m pytest -q'
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_quick_test_command_selects_the_subset_conftest_names():
    """The quick subset's command (not run here: it is part of this suite) selects the marker that
    pyproject.toml registers, and every test tests/conftest.py puts in the subset exists."""
    import ast

    import conftest

    assert [b.strip() for b in blocks("text") if "-m quick" in b] == ["python -m pytest -q -m quick"]
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"][
        "markers"]
    assert any(m.startswith("quick:") for m in markers)
    for file in conftest.QUICK_FILES:
        assert (ROOT / "tests" / file).exists(), file
    for file, names in conftest.QUICK_TESTS.items():
        tree = ast.parse((ROOT / "tests" / file).read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert set(names) <= defined, f"{file}: no {sorted(set(names) - defined)}"


def test_readme_notebook_command_installs_the_extra_pyproject_defines_for_it():
    """The notebooks' command (not run here: Jupyter is no test dependency; tests/test_notebooks.py
    runs the notebooks without it) installs an extra of pyproject.toml that holds what the command
    needs, and runs every notebook into a folder outside notebooks/, which keeps no outputs."""
    [block] = [b.strip() for b in blocks("text") if "jupyter nbconvert" in b]
    install, command = (part.strip() for part in block.split("&&"))
    extras = re.fullmatch(r'pip install -e "\.\[([\w,-]+)\]"', install).group(1).split(",")
    defined = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "notebooks" in extras and set(extras) <= set(defined)
    packages = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for e in extras for r in defined[e]}
    assert {"nbconvert", "ipykernel"} <= packages  # the converter, and the kernel it executes in
    argv = shlex.split(command)
    assert argv[:2] == ["jupyter", "nbconvert"] and "--execute" in argv
    assert "notebooks/*.ipynb" in argv and sorted((ROOT / "notebooks").glob("*.ipynb"))
    out = (ROOT / argv[argv.index("--output-dir") + 1]).resolve()
    assert not out.is_relative_to(ROOT / "notebooks")


def test_readme_demo_command_writes_results_table_and_figure(scratch):
    run_shell(blocks("bash")[0].strip(), scratch, in_process=True)
    assert (scratch / "results/demo/metrics.parquet").exists()
    assert (scratch / "results/demo/figures/overview.png").stat().st_size > 10_000


def test_readme_experiments_command_is_the_one_the_experiment_tests_run():
    # tests/test_experiments.py and test_experiments_rest.py run it in two halves (in-process,
    # into scratch folders; their test checks that the halves are `all`) and check each claim.
    assert "python -m experiments all --quick" in [b.strip() for b in blocks("bash")]
    assert 'cli([*names, "--quick"' in (ROOT / "tests" / "test_experiments.py").read_text()


def test_readme_cli_commands_run(scratch):
    lines = blocks("bash")[2].strip().splitlines()
    outputs = [run_shell(line, scratch, in_process=True) for line in lines]
    assert (scratch / "results/sweep/figures/overview.png").exists()
    # The dry run (first line) wrote nothing and described the demo config with its overrides:
    # three step sizes, 100 seeds, 200 steps of which every one is logged.
    assert "--dry-run" in lines[0] and "--out" not in lines[0]
    dry = outputs[0]
    assert "# grid: 3 points (eta = [0.1, 0.2, 0.4])" in dry
    assert "# seeds: 100 " in dry and "# steps: 200, logged steps: 200 " in dry
    assert es.Config(tomllib.loads(dry)) == es.load_config(ROOT / "experiments/demo.toml", [
        "seeds=100", "algo.eta=[0.1, 0.2, 0.4]"])
    # The plot with --metrics: one figure of the chosen metrics, in the chosen format.
    assert "--metrics entropy,kl,dz_max --format svg" in lines[3]
    assert (scratch / "results/sweep/figures/entropy-kl-dz_max.svg").stat().st_size > 10_000


# ----------------------------------------------------------------------------- Python blocks
# Each check gets a block's printed output; it is chosen by a line of code only that block has.

CHECKS = {}


def check(marker: str):
    def register(fn):
        CHECKS[marker] = fn
        return fn
    return register


def floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan)", text, flags=re.I)]


def softmax_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of softmax over the last axis, in float64."""
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(np.exp(log_p) * log_p).sum(axis=-1)


def npg_from_uniform(r: np.ndarray, eta: float, steps):
    """NPG from the uniform policy on bandits with means ``r: [..., A]``: ``dz = eta (r - J)``, and
    the shift by ``J`` leaves the softmax alone, so ``pi_k = softmax(k eta r)`` in closed form.
    For each step ``k`` of ``steps``: the realized change ``H(pi_{k+1}) - H(pi_k)`` and the
    predicted ``-eta Cov_{pi_k}(log pi_k, r)``, each ``[..., len(steps)]`` (float64)."""
    k = np.asarray(steps, np.float64)[:, None]
    logits = k * eta * r[..., None, :]  # [..., K, A]
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p, rr = np.exp(log_p), r[..., None, :]
    cov = (p * log_p * rr).sum(-1) - (p * log_p).sum(-1) * (p * rr).sum(-1)
    realized = softmax_entropy(logits + eta * rr) - softmax_entropy(logits)
    return realized, -eta * cov


@check('df.groupby("eta")[["dH_pred_cov", "dH_realized"]].corr()')
def check_api_demo(out: str):
    """NPG from uniform on 200 random 10-armed bandits (means U[0, 1]), eta 0.1 and 0.4."""
    head, _, tail = out.partition("dH_pred_cov  dH_realized")
    rows = [floats(line) for line in head.splitlines() if re.match(r"^\d+\s+0\.1\s", line)]
    assert len(rows) == 5
    # The final policy read back: eta, seed, state, action, logit, prob; probabilities are the
    # softmax of the logits over each state's actions (five of its ten actions printed).
    final = [floats(line) for line in tail.splitlines() if re.match(r"^\d+\s+0\.1\s+0\s+0\s", line)]
    assert len(final) == 5 and [int(r[4]) for r in final] == [0, 1, 2, 3, 4]
    logits, probs = np.array([r[5] for r in final]), np.array([r[6] for r in final])
    ref = np.argmax(probs)  # pandas prints 6 decimals: compare within that rounding
    implied = probs[ref] * np.exp(logits - logits[ref])
    assert np.all(np.abs(implied - probs) <= 6e-7 + 1e-5 * probs), (implied, probs)
    _, eta, seed, step, entropy, realized, predicted = np.array(rows).T
    assert (eta == 0.1).all() and (seed == 0).all() and list(step) == [0, 1, 2, 3, 4]
    assert entropy[0] == pytest.approx(math.log(10), abs=1e-6)   # the uniform policy
    assert abs(predicted[0]) < 1e-6             # log pi is constant: no covariance at uniform
    # H(pi_{k+1}) - H(pi_k) is the realized change (to the printed digits), always a decrease.
    np.testing.assert_allclose(np.diff(entropy), realized[:-1], atol=2e-6)
    assert (realized < 0).all() and (predicted[1:] < 0).all()
    # Second order: dH_realized(0) = -eta^2 Var(r) / 2 + O(eta^3) and dH_pred_cov(1) =
    # -eta^2 Var_{pi_1}(r), with pi_1 a step from uniform: their ratio is 2 to O(eta).
    assert predicted[1] / realized[0] == pytest.approx(2.0, rel=0.03)
    # The correlation over seeds and steps, against independent NumPy replicates of the same
    # set-up (the closed form above on freshly drawn bandits).
    corr = {}
    for line in out.splitlines():
        m = re.match(r"^(0\.\d+)\s+dH_pred_cov\s+(\S+)\s+(\S+)$", line.strip())
        if m:
            corr[float(m[1])] = float(m[3])
    assert set(corr) == {0.1, 0.4}
    rng = np.random.default_rng(0)
    for eta, value in corr.items():
        reps = []
        for _ in range(30):
            real, pred = npg_from_uniform(rng.random((200, 10)), eta, range(200))
            reps.append(np.corrcoef(pred.ravel(), real.ravel())[0, 1])
        assert abs(value - np.mean(reps)) < 5 * np.std(reps) + 1e-6, (eta, value, np.mean(reps))


@check('print("first step with J > 0.99:"')
def check_plateau(out: str):
    """Exact softmax PG on the 3-armed bandit, as an independent NumPy loop in float32 (the
    config's dtype): J(pi_k) before each update ``theta += eta pi (r - J)``."""
    printed = dict(re.findall(r"first step with J > (0\.\d+): (\d+)", out))
    r = np.array([1.0, 0.9, 0.1], np.float32)
    theta = np.log(np.array([0.01, 0.05, 0.94], np.float32))
    eta, returns = np.float32(0.4), []
    for _ in range(8000):
        pi = np.exp(theta - theta.max())
        pi /= pi.sum()
        returns.append(pi @ r)
        theta = theta + eta * pi * (r - pi @ r)
    returns = np.array(returns)
    for threshold in ("0.89", "0.99"):
        first = int(np.argmax(returns > float(threshold)))
        assert returns[first] > float(threshold) and (returns[:first] <= float(threshold)).all()
        assert int(printed[threshold]) == first, (threshold, printed, first)
    # The plateau: the second-best arm's 0.9 is reached quickly, the best arm thousands of steps
    # later, and the run is long enough to see it.
    assert int(printed["0.89"]) < 500 < 5000 < int(printed["0.99"]) < 8000


@check("jax.lax.scan(step, (theta0, opt.init(theta0)), length=20)")
def check_pieces(out: str):
    """NPG from uniform on means (1, 0.5, 0): pi_k = softmax(k eta r) (``npg_from_uniform``)."""
    m = re.search(r"entropy (\S+) before, (\S+) after 20 NPG steps", out)
    before, after = float(m[1]), float(m[2])
    assert before == pytest.approx(math.log(3), abs=1e-4)
    assert after == pytest.approx(softmax_entropy(20 * 0.5 * np.array([1.0, 0.5, 0.0])), abs=1e-4)
    m = re.search(r"(\d+) rows read back \((\w+), optimizer (\w+)\); largest entropy difference "
                  r"from the scan: (\S+)", out)
    assert (int(m[1]), m[2], m[3]) == (20, "npg", "sgd")  # 1 seed x 20 steps; the resolved config
    assert float(m[4]) <= 1e-5                          # the engine computes the same entropies


@check('"output": "summary"')
def check_summary_mode(out: str):
    """NPG from uniform on 5000 random 10-armed bandits, statistics of step 499. The closed form
    pi_499 = softmax(499 eta r) on independently drawn bandits (NumPy, float64) gives the
    distribution the printed statistics estimate; each must lie within sampling error of it."""
    table, metric = {}, None
    for line in out.splitlines()[2:]:
        tokens = line.split()
        if tokens[0].isidentifier():
            metric = tokens.pop(0)
        table[metric, float(tokens[0])] = dict(zip(["mean", "q050", "median", "q950", "n"],
                                                   map(float, tokens[1:])))
    assert len(table) == 6 and all(row["n"] == 5000 for row in table.values())  # nothing dropped
    rng = np.random.default_rng(1)
    r = rng.random((100_000, 10))
    for eta in (0.05, 0.1):
        real, pred = npg_from_uniform(r, eta, [499])
        reference = {"entropy": softmax_entropy(499 * eta * r), "cov_abs_error": np.abs(real - pred)[:, 0]}
        for metric, x in reference.items():
            row = table[metric, eta]
            se = x.std() * math.sqrt(1 / 5000 + 1 / len(x))
            assert abs(row["mean"] - x.mean()) < 4.5 * se + 5e-4 * abs(x.mean()), (metric, eta, row)
            # A quantile q_p of 5000 draws: the reference CDF at q_p is p within sampling error
            # (q_p as printed, to 4 digits).
            for name, prob in (("q050", 0.05), ("median", 0.5), ("q950", 0.95)):
                low, high = (np.mean(x <= row[name] * f) for f in (1 - 5e-4, 1 + 5e-4))
                tol = 4.5 * math.sqrt(prob * (1 - prob) / 5000) + 1e-3
                assert low - tol < prob < high + tol, (metric, eta, name, low, high)
        # The law's sign is right on (almost) every seed, as in the reference; the summary has no
        # quantiles of cov_sign_agree (not one of the quantile_metrics).
        assert np.mean(np.sign(real) == np.sign(pred)) > 0.999
        sign = table["cov_sign_agree", eta]
        assert sign["mean"] > 0.999 and all(math.isnan(sign[k]) for k in ("q050", "median", "q950"))


@check('"entropy_target": [0.5, 1.0]')
def check_grpo_aepo(out: str):
    """Four prompts, four correct answers of eight each (rewards 0 or 1, so 0 <= J <= 1).
    GRPO collapses: far below ln 4, the entropy of spreading over the correct answers. AEPO
    holds each target and reaches GRPO's return; at a held entropy the per-step change is small."""
    m = re.search(r"GRPO entropy (\S+) return (\S+)", out)
    grpo_entropy, grpo_return = float(m[1]), float(m[2])
    assert 0 <= grpo_entropy < 0.25 * math.log(4) and 0.9 < grpo_return <= 1
    rows = {row[0]: row[1:] for row in map(floats, out.splitlines()[1:]) if len(row) == 5}
    assert set(rows) == {0.5, 1.0}
    for target, (entropy, ret, predicted, realized) in rows.items():
        assert abs(entropy - target) < 0.1 and grpo_entropy < entropy <= math.log(8)
        assert grpo_return - 0.01 <= ret <= 1
        assert abs(predicted) < 0.005 and abs(realized) < 0.005


@check('"grpo_weighted", "eta": 2.0, "pos_weight": 1.0')
def check_custom_rule(out: str):
    """A piece that multiplies positive advantages by 1 changes nothing, and draws nothing of its
    own, so the rule's run is GRPO's to the last bit."""
    assert out.strip() == "pos_weight = 1 is GRPO: largest entropy difference 0.0"


@check('"env": {"kind": "two_state", "p": 0.3}')
def check_user_environment(out: str):
    """NPG on the two-state MDP: state 1 pays 1 forever (V = 1/(1 - gamma) = 10) whatever the
    action, state 0 pays 0 and reaches state 1 only by action 1, with probability p = 0.3. The
    best return from mu = state 0 solves V0 = gamma (p 10 + (1 - p) V0): 2.7 / 0.37 = 7.297.
    The return rises towards it and the occupancy-weighted entropy of a 2-action policy stays
    within [0, ln 2]."""
    rows = [floats(line) for line in out.splitlines() if re.match(r"^\s*\d+\s+\S+\s+\S+\s*$", line)]
    assert [int(r[0]) for r in rows] == [0, 49], out
    (_, h0, j0), (_, h1, j1) = rows
    best = 0.9 * 0.3 * 10 / (1 - 0.9 * 0.7)
    assert 0 < j0 < j1 <= best + 1e-4, (j0, j1, best)
    assert 0 <= h1 < h0 <= math.log(2) + 1e-6


@check('"algo": {"name": "trust_region", "delta": 0.01}')
def check_trust_region(out: str):
    """The performance-difference lemma holds to float64 rounding, and the exact trust region
    spends its budget delta at every step (median KL / delta is 1)."""
    m = re.search(r"PDL identity, largest error: (\S+)", out)
    assert float(m[1]) < 1e-12, out
    m = re.search(r"KL per step / delta: (\S+)", out)
    assert float(m[1]) == 1.0, out


def test_every_python_block_has_one_check():
    for index, block in enumerate(blocks("python")):
        assert sum(marker in block for marker in CHECKS) == 1, f"README python block {index}"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_blocks_run(scratch, index, capsys):
    block = blocks("python")[index]
    exec(compile(block, f"README.md python block {index}", "exec"), {})
    out = capsys.readouterr().out
    assert out
    checks = [fn for marker, fn in CHECKS.items() if marker in block]
    assert len(checks) == 1
    checks[0](out)


def test_readme_claim_tally_matches_the_experiments():
    """The tally quoted in the README is every claim the experiments check."""
    from experiments.common import EXPERIMENTS, module

    held, experiments = re.search(r"`claims: (\d+) hold, 0 fail \((\d+) experiments\)`", README).groups()
    assert int(held) == sum(len(module(name).CHECKS) for name in EXPERIMENTS)
    assert int(experiments) == len(EXPERIMENTS)


def test_readme_config_block_is_a_valid_config():
    cfg = es.Config(tomllib.loads(blocks("toml")[0]))
    assert cfg.sweep == {"eta": [0.05, 0.1]}


def layout_entries() -> dict[str, str]:
    """The README's Layout block under ``entropy_sim/``: each entry's head (``api.py, cli.py``,
    ``rules/``) -> its whole text, continuation lines included."""
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    package = block.split("entropy_sim/\n", 1)[1]
    entries, head = {}, None
    for line in package.splitlines():
        if not line.startswith("  "):  # the next top-level folder
            break
        if not line.startswith("   "):
            head = line[2:].split("  ")[0].strip()
            entries[head] = line
        else:
            entries[head] += " " + line.strip()
    return entries


def test_readme_layout_names_every_module_of_the_package_and_no_other():
    entries = layout_entries()
    package = ROOT / "entropy_sim"
    named = set()
    for head, text in entries.items():
        if head.endswith("/"):  # a folder: its modules are named in its text
            folder = package / head
            assert folder.is_dir(), head
            named |= {f"{head}{m}" for m in re.findall(r"\b(\w+\.py)\b", text)}
        else:
            named |= {name.strip() for name in head.split(",")}
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if "__pycache__" not in p.parts
               and not (p.name == "__init__.py" and p.parent != package)}
    assert named == modules, (sorted(named - modules), sorted(modules - named))


def test_readme_image_exists_and_is_small():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / path).exists() and os.path.getsize(ROOT / path) < 400_000


def test_readme_benchmark_commands_exist_and_the_sampling_one_runs(tmp_path):
    """The Performance section's commands: every flag is one the script accepts (the full runs take
    minutes and are not unit tests), and the sampling benchmark runs end to end at a tiny size on
    its exact, two REINFORCE and GRPO workloads (the other seven would add half a minute of
    compiling to the suite)."""
    lines = [line for b in blocks("text") if "benchmarks/" in b for line in b.strip().splitlines()
             if line.startswith("python benchmarks/")]
    assert {shlex.split(line)[1] for line in lines} == {
        "benchmarks/scale.py", "benchmarks/sampling.py", "benchmarks/accelerator.py",
        "benchmarks/end_to_end.py"}
    import runpy

    for line in lines:  # each script's --help, in this process (as python SCRIPT --help would)
        argv = shlex.split(line.split("#")[0])
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
            sys_argv, sys.argv = sys.argv, [argv[1], "--help"]
            try:
                runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
            finally:
                sys.argv = sys_argv
        assert done.value.code == 0
        for flag in (a for a in argv[2:] if a.startswith("--")):
            assert flag in printed.getvalue(), f"{line}: {flag} is not an option of {argv[1]}"
    out = tmp_path / "sampling.json"
    rows = ["exact PG", "REINFORCE B=64, engine", "REINFORCE B=64, per-draw", "GRPO"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampling.py"), "--seeds", "64",
                           "--steps", "4", "--rounds", "1", "--json", str(out),
                           *(a for row in rows for a in ("--workload", row))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert len(record["rows"]) == 4 and all(r["seed_steps_per_s"] > 0 for r in record["rows"])
    assert "GRPO 8 x 8" in {r["workload"] for r in record["rows"]}
    assert {"per_draw_over_engine"} == {k for k in record if k.endswith("_over_engine")}
    assert "over the engine's sampled step: per-draw" in proc.stdout


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
    from entropy_sim.rules.registry import RULES

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


SUMMARY_OUTPUT = """\
                         mean      q050    median      q950     n
metric         eta                                               
entropy        0.05    {mean}   0.01854    0.5983     1.202  5000
               0.10    0.3149 4.361e-05    0.1942    0.9329  5000
cov_abs_error  0.05 1.612e-06 1.405e-07 1.417e-06 3.797e-06  5000
               0.10 1.036e-06 9.484e-09  8.26e-07 2.802e-06  5000
cov_sign_agree 0.05         1       NaN       NaN       NaN  5000
               0.10         1       NaN       NaN       NaN  5000
"""


@pytest.mark.parametrize("check, out", [
    # The old plateau example: J never passed 0.99, and idxmax of an all-False series printed 0.
    (check_plateau, "first step with J > 0.89: 168\nfirst step with J > 0.99: 0\n"),
    (check_plateau, "first step with J > 0.89: 168\nfirst step with J > 0.99: 7700\n"),
    (check_pieces, "entropy 1.0986 before, 0.0500 after 20 NPG steps\n20 rows read back (npg, "
                   "optimizer sgd); largest entropy difference from the scan: 0.0e+00\n"),
    (check_summary_mode, SUMMARY_OUTPUT.format(mean="0.6241")),
    (check_grpo_aepo, "GRPO entropy 0.2 return 0.997\n                 entropy    return  dH_pred_cov  "
                      "dH_realized\nentropy_target\n0.5  0.498937  0.996245  0.000050  -0.000131\n"
                      "1.0  0.851228  0.995003  0.001209  0.000254\n"),
], ids=["old plateau", "plateau off by one", "pieces", "summary mean", "aepo off target"])
def test_readme_checks_reject_wrong_numbers(check, out):
    with pytest.raises(AssertionError):
        check(out)


def test_readme_summary_check_accepts_the_measured_numbers():
    check_summary_mode(SUMMARY_OUTPUT.format(mean="0.5741"))
