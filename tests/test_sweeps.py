"""Sweeps over static fields (entropy_sim/sweeps.py): lists for fields that fix the compiled
program expand into one run per combination, whose tables are stacked with a column per field."""

import re
import tomllib

import numpy as np
import pandas as pd
import pytest

import entropy_sim as es
from conftest import ROOT, small_config


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


TREE = {"kind": "token_tree", "vocab": 2, "length": 2}


def grpo_and_aepo(**algo) -> dict:
    return small_config(env=TREE, seeds=4, steps=3,
                        algo={"name": ["grpo", "aepo"], "eta": [0.1, 0.3], "group": [2, 4],
                              "entropy_target": 0.5, **algo})


def test_static_lists_expand_into_runs_and_traced_lists_stay_one_grid():
    config = es.Config(grpo_and_aepo())
    assert config.static_sweep == {"name": ["grpo", "aepo"], "group": [2, 4]}
    assert config.sweep == {"eta": [0.1, 0.3]}
    runs = config.runs()
    assert [values for values, _ in runs] == [{"name": "grpo", "group": 2}, {"name": "grpo", "group": 4},
                                              {"name": "aepo", "group": 2}, {"name": "aepo", "group": 4}]
    for values, run in runs:
        algo = run["algo"]
        assert (algo["name"], algo["group"], list(algo["eta"])) == (values["name"], values["group"],
                                                                    [0.1, 0.3])
        # entropy_target goes to the runs of the rule that takes it only
        assert ("entropy_target" in algo) == (values["name"] == "aepo")
        assert run.static_sweep == {} and run.runs() == [({}, run)]
    assert es.Config(config.to_dict()) == config  # config.json resolves to the same sweep
    with pytest.raises(ValueError, match="use config.runs"):
        config.grid()


CONFIG = """
seeds = 4
steps = 3
[env]
kind = "token_tree"
vocab = 2
length = 2
[algo]
name = "grpo"
eta = [0.1, 0.3]
entropy_target = 0.5
"""


def test_set_takes_lists_for_static_fields_and_the_dry_run_plans_each_run(tmp_path, capsys):
    from entropy_sim import cli

    (tmp_path / "c.toml").write_text(CONFIG)
    status = cli.main(["run", str(tmp_path / "c.toml"), "--set", 'algo.name=["grpo", "aepo"]',
                       "--set", "algo.group=[4, 8]", "--dry-run"])
    printed = capsys.readouterr().out
    assert status == 0
    assert '# runs: 4, one per combination of the static fields swept (name = ["grpo", "aepo"] x ' \
           'group = [4, 8]); up to 8 compiled programs in all' in printed
    assert re.findall(r"# run \d of 4: (.*)", printed) == [
        'name = "grpo", group = 4', 'name = "grpo", group = 8', 'name = "aepo", group = 4',
        'name = "aepo", group = 8']
    assert printed.count("#   grid: 2 points (eta = [0.1, 0.3])") == 4
    resolved = es.Config(tomllib.loads(printed))  # the printed config runs as it is
    assert resolved.static_sweep == {"name": ["grpo", "aepo"], "group": [4, 8]}
    assert [part["algo"].get("entropy_target") for _, part in resolved.runs()] == [None, None, 0.5, 0.5]


@pytest.fixture(scope="module")
def swept_folder(tmp_path_factory):
    """The README's sweep command (two rules x two group sizes), run once in a scratch folder."""
    import contextlib
    import io
    import os
    import shlex

    from entropy_sim import cli

    block = next(b for b in blocks("bash") if "experiments/methods.toml" in b)
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "experiments").symlink_to(ROOT / "experiments")
    printed, here = io.StringIO(), os.getcwd()
    os.chdir(tmp)
    try:
        with contextlib.redirect_stdout(printed):
            for command in block.strip().split("&&"):
                argv = shlex.split(command)
                assert argv[0] == "entropy-sim" and cli.main(argv[1:]) == 0, printed.getvalue()
    finally:
        os.chdir(here)
    assert "x 4 grid points in 4 compiled runs)" in printed.getvalue()
    return tmp / "results" / "methods"


def test_the_readme_sweep_over_rule_names_and_group_sizes_writes_one_folder_and_plots_it(swept_folder):
    folder = es.load(swept_folder)
    metrics = folder.metrics
    seeds, steps = folder.config["seeds"], folder.config["steps"]
    assert list(metrics.columns[:4]) == ["name", "group", "seed", "step"]
    assert len(metrics) == 4 * seeds * steps  # runs x seeds x steps
    assert folder.config["algo"]["name"] == ["grpo", "aepo"] and folder.config["algo"]["group"] == [4, 8]
    # AEPO's own columns are NaN in GRPO's rows, and only there
    assert metrics.temp_used.isna().groupby(metrics.name).all().to_dict() == {"aepo": False,
                                                                             "grpo": True}
    assert list(folder.summary().columns[:3]) == ["name", "group", "step"]
    stats = folder.final_policy_summary()  # computed per run from final_policy.parquet
    assert list(stats.columns[:2]) == ["name", "group"] and len(stats) == 4 * 13 * 3
    assert (swept_folder / "figures" / "overview.png").stat().st_size > 10_000
    from entropy_sim import plotting

    path = plotting.plot_results(swept_folder, metrics=["entropy", "temp_used"])[0]
    assert path.stat().st_size > 10_000
    labels = [plotting.grid_label(row, ["name", "group"])
              for row in folder.summary().drop_duplicates(["name", "group"]).to_dict("records")]
    assert labels == ["name=grpo, group=4", "name=grpo, group=8", "name=aepo, group=4",
                      "name=aepo, group=8"]


def test_a_swept_run_is_bitwise_its_own_configs_run_and_a_sweep_resumes(swept_folder, tmp_path):
    folder = es.load(swept_folder)
    config = es.Config(folder.config)
    first = es.run(config, progress=False, checkpoint=tmp_path / "progress")
    pd.testing.assert_frame_equal(first.metrics, folder.metrics, check_exact=True)
    assert sorted(p.name for p in (tmp_path / "progress").iterdir()) == [f"run-{i}" for i in range(4)]
    again = es.run(config, progress=False, checkpoint=tmp_path / "progress")
    assert again.provenance["resumed_units"] == first.provenance["resumed_units"] + 4
    pd.testing.assert_frame_equal(again.metrics, folder.metrics, check_exact=True)
    values, part = config.runs()[3]
    alone = es.run(part, progress=False).metrics
    rows = folder.metrics.query("name == 'aepo' and group == 8").drop(columns=["name", "group"])
    pd.testing.assert_frame_equal(rows[alone.columns].reset_index(drop=True), alone,
                                  check_exact=True, check_dtype=False)


def test_environment_policy_and_master_seed_fields_sweep_too():
    """The initial return of a uniform policy on a verifiable contextual bandit is
    ``num_correct / actions`` exactly; the master seed changes the draws, the other fields not."""
    env = {"kind": "contextual_bandit", "contexts": 3, "actions": 4, "generator": "verifiable",
           "num_correct": [1, 2]}
    config = es.Config(small_config(env=env, seed=[0, 5], seeds=3, steps=2,
                                    policy={"init": "gaussian", "scale": [0.0, 1.0]},
                                    algo={"name": "pg", "eta": 0.5}))
    assert config.static_sweep == {"master_seed": [0, 5], "num_correct": [1, 2], "scale": [0.0, 1.0]}
    metrics = es.run(config, progress=False).metrics
    assert list(metrics.columns[:3]) == ["master_seed", "num_correct", "scale"]
    start = metrics[(metrics.step == 0) & (metrics.scale == 0.0)]
    np.testing.assert_allclose(start["return"], start.num_correct / 4, rtol=1e-6)
    np.testing.assert_allclose(start.entropy, np.log(4), rtol=1e-6)
    random = metrics[(metrics.step == 0) & (metrics.scale == 1.0)]
    by_seed = random.groupby(["master_seed", "num_correct"]).entropy.apply(tuple)
    assert by_seed[(0, 1)] == by_seed[(0, 2)]  # the same seed draws the same initial logits
    assert by_seed[(0, 1)] != by_seed[(5, 1)]
