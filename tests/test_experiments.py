"""Every experiment at quick size: its numeric claims hold, and its result folder is complete.

A regression in the engine that breaks a claim of docs/theory.md fails here. The bounds
are each experiment's ``CHECKS``; ``test_checks_can_fail`` shows the evaluation rejects values
outside them.

The README's command, ``python -m experiments all --quick``, runs here in two halves, this file's
and ``test_experiments_rest.py``'s: pytest-xdist gives each file to one worker, so the halves
run side by side instead of one worker running all nine for six minutes.
"""

import contextlib
import io
import json

import pytest

from experiments.__main__ import cli, select
from conftest import texts_that_collide
from experiments.common import EXPERIMENTS, Context, evaluate, main, module

FIRST_HALF = EXPERIMENTS[:5]  # the rest: test_experiments_rest.py


def run_quick(names, tmp_path_factory):
    """``python -m experiments NAMES --quick`` into a scratch folder: (folder, status, output,
    ``{(experiment, figure): texts of the figure that collide}``)."""
    out = tmp_path_factory.mktemp("experiments")
    printed = io.StringIO()
    collisions = {}

    def savefig(context, fig, stem):
        fig.draw_without_rendering()
        collisions[context.name, stem] = texts_that_collide(fig)
        return saved(context, fig, stem)

    saved = Context.savefig
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setattr(Context, "savefig", savefig)
        status = cli([*names, "--quick", "--quiet", "--out", str(out)])
    return out, status, printed.getvalue(), collisions


def check_command(quick_run, names) -> None:
    """Every experiment of ``names`` ran, every claim held, and the tally says so."""
    out, status, printed, _ = quick_run
    assert status == 0  # every claim within its bounds
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    claims = sum(len(module(name).CHECKS) for name in names)
    assert printed.splitlines()[-1] == f"claims: {claims} hold, 0 fail ({len(names)} experiments)"


def check_experiment(quick_run, name) -> None:
    """Experiment ``name`` of a quick run: its result folder's claims, figures (no text over
    another), runs, no leftovers."""
    out = quick_run[0] / name
    figures = {stem: texts for (who, stem), texts in quick_run[3].items() if who == name}
    assert name in figures and not any(figures.values()), figures
    record = json.loads((out / "claims.json").read_text())
    table = record["claims"]
    failed = {k: v for k, v in table.items() if v["holds"] is False}
    assert not failed, failed
    assert record["quick"] and set(module(name).CHECKS) <= set(table)
    assert all(table[k]["holds"] for k in module(name).CHECKS)
    assert (out / "figures" / f"{name}.pdf").exists() and (out / "figures" / f"{name}.png").exists()
    runs = [p for p in out.iterdir() if (p / "summary.parquet").exists()]
    assert runs and all((p / "config.json").exists() for p in runs)
    assert not list(out.parent.glob(".*partial*"))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(FIRST_HALF, tmp_path_factory)


def test_the_two_halves_are_the_readme_command():
    from test_experiments_rest import SECOND_HALF

    assert FIRST_HALF + SECOND_HALF == EXPERIMENTS == tuple(select(["all"]))


def test_readme_command_first_half(quick_run):
    check_command(quick_run, FIRST_HALF)


@pytest.mark.parametrize("name", FIRST_HALF)
def test_experiment_claims_hold_at_quick_size(name, quick_run):
    check_experiment(quick_run, name)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_docstring_states_claim_and_expected_outcome(name):
    doc = module(name).__doc__
    assert "Claim" in doc and "Expected outcome" in doc


def test_checks_can_fail():
    table = evaluate({"a": 2.0, "b": float("nan"), "extra": 1.0}, {"a": (0.0, 1.0), "b": (None, 1.0),
                                                                   "c": (0.0, None)})
    assert [table[k]["holds"] for k in "abc"] == [False, False, False]
    assert table["extra"]["holds"] is None


def test_select_prefixes_and_errors():
    assert select(["all"]) == list(EXPERIMENTS)
    assert select(["e3"]) == ["e3_gradient_kl"]
    with pytest.raises(ValueError, match="unknown experiment 'e10'"):
        select(["e10"])
    with pytest.raises(SystemExit):
        cli(["nope"])


def test_cli_ends_with_the_tally_of_claims(tmp_path, monkeypatch, capsys):
    import experiments.__main__ as entry

    tables = {"e1_covariance_law": evaluate({"a": 0.5, "b": 2.0, "extra": 1.0},
                                            {"a": (0.0, 1.0), "b": (0.0, 1.0)}),
              "e3_gradient_kl": evaluate({"c": 0.5, "d": 0.7}, {"c": (0.0, 1.0), "d": (0.0, None)})}
    monkeypatch.setattr(entry, "main", lambda name, out, **kwargs: tables[name])
    assert cli(["e1", "e3", "--quiet", "--out", str(tmp_path)]) == 1  # b fails
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "claims: 3 hold, 1 fail (2 experiments)"  # "extra" has no bounds
    assert "e1_covariance_law.b" in err
    tables["e1_covariance_law"]["b"]["holds"] = True
    assert cli(["e1", "--quiet", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "claims: 2 hold, 0 fail (1 experiment)"


def test_failed_experiment_leaves_no_folder(tmp_path, monkeypatch):
    mod = module("e3_gradient_kl")

    def broken(ctx):
        ctx.run("npg", seeds=2, steps=2)
        raise RuntimeError("boom")

    monkeypatch.setattr(mod, "run", broken)
    with pytest.raises(RuntimeError, match="boom"):
        main("e3_gradient_kl", tmp_path, quick=True, progress=False)
    assert list(tmp_path.iterdir()) == []
