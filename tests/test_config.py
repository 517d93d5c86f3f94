"""Bad input gets a clear error naming the field, raised before anything is compiled or written."""

import json

import pytest

import entropy_sim as es
from conftest import small_config

BANDIT = {"kind": "bandit", "means": [1.0, 0.9, 0.1]}
MDP = {"kind": "mdp", "P": [[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [1.0, 0.0]]],
       "r": [[0.0, 1.0], [0.5, 0.0]], "gamma": 0.9, "mu": [1.0, 0.0]}


def with_env(**changes):
    return small_config(env={**BANDIT, **changes})


def with_mdp(**changes):
    return small_config(env={**MDP, **changes})


BAD = {
    "typo at top level": (small_config(stpes=10), "stpes", "did you mean 'steps'"),
    "typo in algo": (small_config(algo={"name": "pg", "eta": 0.1, "etta": 0.2}), "algo.etta", "did you mean 'eta'"),
    "typo in env": (with_env(meens=[1, 2]), "env.meens", "did you mean 'means'"),
    "key of another generator": (small_config(env={"kind": "bandit", "arms": 3, "p": 0.3}), "env.p", "not used"),
    "steps not an integer": (small_config(steps=1.5), "steps", "integer"),
    "seeds is a string": (small_config(seeds="10"), "seeds", "integer"),
    "eta a string": (small_config(algo={"name": "pg", "eta": "big"}), "algo.eta", "number"),
    "eta zero": (small_config(algo={"name": "pg", "eta": 0.0}), "algo.eta", "> 0"),
    "eta negative in a sweep": (small_config(algo={"name": "npg", "eta": [0.1, -0.1]}), "algo.eta[1]", "> 0"),
    "empty sweep": (small_config(algo={"name": "npg", "eta": []}), "algo.eta", "at least one"),
    "tau on pg": (small_config(algo={"name": "pg", "eta": 0.1, "tau": 0.1}), "algo.tau", "pg_entropy"),
    "tau negative on pg_entropy": (small_config(algo={"name": "pg_entropy", "eta": 0.1, "tau": -0.1}), "algo.tau", ">= 0"),
    "tau missing on npg_entropy": (small_config(algo={"name": "npg_entropy", "eta": 0.1}), "algo.tau", "required"),
    "temp zero": (small_config(algo={"name": "temp_reinforce", "eta": 0.1, "temp": 0.0}), "algo.temp", "> 0"),
    "unknown algorithm": (small_config(algo={"name": "ppo", "eta": 0.1}), "algo.name", "unknown algorithm"),
    "unknown optimizer": (small_config(algo={"name": "pg", "eta": 0.1, "optimizer": "lion"}), "algo.optimizer", "sgd"),
    "unknown env kind": (small_config(env={"kind": "atari"}), "env.kind", "unknown value"),
    "one action": (with_env(means=[1.0]), "env.means", "at least 2"),
    "one arm drawn": (small_config(env={"kind": "bandit", "arms": 1}), "env.arms", ">= 2"),
    "means and arms": (with_env(arms=3), "env.means", "exactly one"),
    "nan reward": (with_env(means=[1.0, float("nan")]), "env.means", "finite"),
    "infinite reward": (with_env(means=[float("inf"), 0.0]), "env.means", "finite"),
    "contextual one action": (small_config(env={"kind": "contextual_bandit", "r": [[1.0], [0.0]]}), "env.r", "at least 2"),
    "probs do not sum to 1": (small_config(policy={"init": "probs", "probs": [0.5, 0.3, 0.1]}), "policy.probs", "sum to 1"),
    "probs wrong length": (small_config(policy={"init": "probs", "probs": [0.5, 0.5]}), "policy.probs", "3 values"),
    "zero probability": (small_config(policy={"init": "probs", "probs": [1.0, 0.0, 0.0]}), "policy.probs", "positive"),
    "rho does not sum to 1": (small_config(env={"kind": "contextual_bandit", "r": [[1, 0], [0, 1]], "rho": [0.5, 0.6]}), "env.rho", "sum to 1"),
    "P not row-stochastic": (with_mdp(P=[[[0.9, 0.0], [0.0, 1.0]], [[0.5, 0.5], [1.0, 0.0]]]), "env.P", "sum to 1"),
    "P negative": (with_mdp(P=[[[1.5, -0.5], [0.0, 1.0]], [[0.5, 0.5], [1.0, 0.0]]]), "env.P", ">= 0"),
    "P wrong shape": (with_mdp(P=[[[1.0, 0.0]], [[1.0, 0.0]]]), "env.P", "shape"),
    "gamma one": (with_mdp(gamma=1.0), "env.gamma", "< 1"),
    "gamma negative": (with_mdp(gamma=-0.1), "env.gamma", ">= 0"),
    "mdp reward nan": (with_mdp(r=[[0.0, float("nan")], [0.5, 0.0]]), "env.r", "finite"),
    "mu does not sum to 1": (with_mdp(mu=[0.5, 0.4]), "env.mu", "sum to 1"),
    "garnet branching too big": (small_config(env={"kind": "mdp", "generator": "garnet", "states": 3, "actions": 2, "branching": 4}), "env.branching", "<= states"),
    "token answer out of vocab": (small_config(env={"kind": "token_tree", "vocab": 2, "length": 2, "answers": [[[0, 2]]]}), "env.answers[0][0]", "token ids"),
    "token answer wrong length": (small_config(env={"kind": "token_tree", "vocab": 2, "length": 2, "answers": [[[0]]]}), "env.answers[0][0]", "2 token ids"),
    "log_every does not divide": (small_config(steps=10, log_every=3), "log_every", "divide"),
    "prior correct_mass on mdp": (small_config(env=MDP, policy={"init": "prior", "correct_mass": 0.1}), "policy.correct_mass", "mdp"),
    "verifiable all correct": (small_config(env={"kind": "contextual_bandit", "contexts": 2, "actions": 3, "generator": "verifiable", "num_correct": 3}), "env.num_correct", "below"),
    # Sampled rules: static options, hyperparameter ranges, fields that must agree.
    "batch swept with a bad value": (small_config(algo={"name": "reinforce", "eta": 0.1, "batch": [8, 0]}), "algo.batch", "got 0 (in the run with algo.batch = 0)"),
    "output swept": (small_config(output=["full", "summary"]), "output", "cannot be swept"),
    "empty static sweep": (small_config(algo={"name": [], "eta": 0.1}), "algo.name", "at least one"),
    "a key no swept rule takes": (small_config(algo={"name": ["pg", "npg"], "eta": 0.1, "group": 4}), "algo.group", "pg takes no group; it takes eta; for entropy regularisation use pg_entropy (in the run with algo.name = 'pg')"),
    "batch zero": (small_config(algo={"name": "reinforce", "eta": 0.1, "batch": 0}), "algo.batch", ">= 1"),
    "batch not an integer": (small_config(algo={"name": "grpo", "eta": 0.1, "batch": 2.5}), "algo.batch", "integer"),
    "unknown baseline": (small_config(algo={"name": "reinforce", "eta": 0.1, "baseline": "critic"}), "algo.baseline", "loo"),
    "mean baseline of one sample": (small_config(algo={"name": "reinforce", "eta": 0.1, "batch": 1, "baseline": "mean"}), "algo.batch", ">= 2"),
    "baseline on grpo": (small_config(algo={"name": "grpo", "eta": 0.1, "baseline": "mean"}), "algo.baseline", "grpo takes no baseline"),
    "epochs on reinforce": (small_config(algo={"name": "reinforce", "eta": 0.1, "epochs": 2}), "algo.epochs", "reinforce takes no epochs"),
    "group zero": (small_config(algo={"name": "grpo", "eta": 0.1, "group": 0}), "algo.group", ">= 1"),
    "eps negative": (small_config(algo={"name": "grpo", "eta": 0.1, "eps": -0.2}), "algo.eps", ">= 0"),
    "kappa at most 1": (small_config(algo={"name": "entropy_adv", "eta": 0.1, "kappa": 1.0}), "algo.kappa", "> 1"),
    "frac above 1": (small_config(algo={"name": "clip_cov", "eta": 0.1, "frac": 1.5}), "algo.frac", "<= 1"),
    "w_high below w_low": (small_config(algo={"name": "clip_cov", "eta": 0.1, "w_low": 2.0, "w_high": 1.0}), "algo.w_high", "exceed w_low"),
    "entropy_target missing": (small_config(algo={"name": "aepo", "eta": 0.1}), "algo.entropy_target", "required"),
    "entropy_target above log A": (small_config(algo={"name": "aepo", "eta": 0.1, "entropy_target": 1.5}), "algo.entropy_target", "log(3)"),
    "pos_up fractional": (small_config(algo={"name": "aepo", "eta": 0.1, "entropy_target": 0.5, "pos_up": 2.5}), "algo.pos_up", "whole number"),
    "temp_high zero in a sweep": (small_config(algo={"name": "aepo", "eta": 0.1, "entropy_target": 0.5, "temp_high": [1.2, 0.0]}), "algo.temp_high[1]", "> 0"),
    "temp on aepo_t1": (small_config(algo={"name": "aepo_t1", "eta": 0.1, "entropy_target": 0.5, "temp_high": 1.2}), "algo.temp_high", "aepo_t1 takes no temp_high"),
    "rollout_length zero": (small_config(env={**MDP, "rollout_length": 0}), "env.rollout_length", ">= 1"),
    "rollout_length on a bandit": (with_env(rollout_length=10), "env.rollout_length", "not used"),
    # Keys are checked before values: the real mistake is named, not what it leaves missing.
    "misnamed table": ({**{k: v for k, v in small_config().items() if k != "algo"},
                        "algorithm": {"name": "pg", "eta": 0.1}}, "algorithm", "unknown table; did you mean [algo]?"),
    "top-level key inside a table": (small_config(algo={"name": "pg", "eta": 0.1, "seeds": 3}), "algo.seeds", "'seeds' is a top-level key"),
    "misspelled next to missing": (small_config(algo={"name": "pg", "etta": 0.1}), "algo.etta", "did you mean 'eta'"),
    "key of another table": (with_env(eta=0.1), "env.eta", "'eta' is a key of [algo]"),
    "table key at the top level": (small_config(tau=0.1), "tau", "'tau' is a key of [algo]"),
    "unknown table": (small_config(rule={"name": "pg"}), "rule", "the tables are"),
    "misspelled table": (small_config(policies={"init": "uniform"}), "policies", "did you mean [policy]?"),
    # A misspelled key is named even when the key it meant is required and so missing.
    "typo for a required algo key": (small_config(algo={"name": "pg", "etta": 0.1}), "algo.etta", "unknown key; did you mean 'eta'?"),
    "typo for a required env key": (small_config(env={"kind": "bandit", "arm": 3}), "env.arm", "unknown key; did you mean 'arms'?"),
    "typo for a required table": ({"env": BANDIT, "algoo": {"name": "pg", "eta": 0.1}}, "algoo", "did you mean [algo]?"),
    # quantile_metrics names columns this run logs, in either output mode.
    "quantile metric misspelled": (small_config(quantile_metrics=["entropi"]), "quantile_metrics", "did you mean 'entropy'?"),
    "quantile metric of another rule": (small_config(quantile_metrics=["batch_reward"]), "quantile_metrics", "unknown metric"),
    "pass@k quantile of graded rewards": (small_config(quantile_metrics=["pass_at_8"]), "quantile_metrics", "0 or 1"),
    "pass@k quantile not in pass_at": (small_config(env={"kind": "bandit", "means": [1.0, 0.0]}, pass_at=[1], quantile_metrics=["pass_at_8"]), "quantile_metrics", "unknown metric"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_raises_config_error_naming_the_field(case):
    raw, field, words = BAD[case]
    with pytest.raises(es.ConfigError) as err:
        es.Config(raw)
    assert err.value.field == field, str(err.value)
    assert words in str(err.value)
    assert str(err.value).startswith(field)


def test_quantile_metrics_accept_every_column_the_run_logs():
    binary = {"kind": "bandit", "means": [1.0, 0.0, 0.0]}
    es.Config(small_config(env=binary, quantile_metrics=["pass_at_8", "cov_abs_error", "dH_pred_closed"]))
    es.Config(small_config(algo={"name": "reinforce", "eta": 0.1}, quantile_metrics=["batch_reward"]))
    es.Config(small_config(algo={"name": "pg_entropy", "eta": 0.1, "tau": 0.1}, quantile_metrics=["return_reg"]))
    # Drawn environments: pass@k where the generator's declaration says the rewards are binary.
    for env in [{"kind": "contextual_bandit", "contexts": 2, "actions": 3, "generator": "verifiable"},
                {"kind": "bandit", "arms": 3, "low": 1.0, "high": 1.0},
                {"kind": "token_tree", "vocab": 2, "length": 2}]:
        es.Config(small_config(env=env, quantile_metrics=["pass_at_1"]))
    for env in [{"kind": "bandit", "arms": 3}, {"kind": "mdp", "generator": "chain", "states": 3}]:
        with pytest.raises(es.ConfigError, match="0 or 1"):
            es.Config(small_config(env=env, quantile_metrics=["pass_at_1"]))


def test_a_table_is_validated_from_its_declarations_alone():
    """The walker behind every table: fields in order, alternatives by marker key or by value,
    checks once the fields they read are in, defaults and bounds that depend on earlier fields."""
    from entropy_sim.parts import Cases, Field, OneOf, Variant
    from entropy_sim.schema import Section, names, select

    def ordered(v, ctx):
        if v["lo"] > v["hi"]:
            raise es.ConfigError("hi", f"must be >= lo = {v['lo']}")

    nodes = (Field("mode", "str", "a", "which", choices=("a", "b")),
             Cases("mode", {"a": Variant("a", (Field("lo", "int", 0, low=0), Field("hi", "int", lambda v, ctx: v["lo"] + 1), ordered)),
                            "b": Variant("b", (Field("ratio", "float", 0.5, low=0.0, high=1.0, high_open=True),))}),
             OneOf({"xs": Variant("listed", (Field("xs", "list", item="int", nonempty=True),)),
                    "n": Variant("counted", (Field("n", "int", low=1),))}))

    def read(data):
        sec = Section("t", data, names(nodes))
        chosen = sec.walk(nodes)
        return sec.finish(), chosen

    values, chosen = read({"lo": 2, "n": 3})
    assert values == {"mode": "a", "lo": 2, "hi": 3, "n": 3}
    assert [v.doc for v in chosen] == ["a", "counted"] == [v.doc for v in select(nodes, values)]
    assert read({"mode": "b", "xs": [1, 2]})[0] == {"mode": "b", "ratio": 0.5, "xs": [1, 2]}
    for data, message in [({"n": 1, "lo": 3, "hi": 2}, "t.hi: must be >= lo = 3"),
                          ({"n": 1, "ratio": 1.0}, "t.ratio: is not used with these settings (mode = 'a')"),
                          ({"mode": "b", "n": 1, "ratio": 1.0}, "t.ratio: must be < 1.0, got 1.0"),
                          ({"xs": [1], "n": 2}, "t.xs: give exactly one of t.xs (listed) or t.n (counted)"),
                          ({"xs": []}, "t.xs: expected a non-empty list of integers, got []"),
                          ({"xs": [1, "2"]}, "t.xs[1]: expected an integer, got '2'"),
                          ({"ratoi": 0.2}, "t.ratoi: unknown key; did you mean 'ratio'?"),
                          ({"mode": "c"}, "t.mode: unknown value 'c'; choose from a, b")]:
        with pytest.raises(es.ConfigError) as err:
            read(data)
        assert str(err.value) == message


def test_resolved_config_fills_every_default_and_round_trips_through_json():
    cfg = es.Config(small_config(env={"kind": "bandit", "arms": 5}))
    data = cfg.to_dict()
    assert data["env"]["generator"] == "uniform" and data["env"]["low"] == 0.0
    assert data["algo"]["optimizer"] == "sgd" and data["log_every"] == 1
    assert es.Config(json.loads(json.dumps(data))) == cfg


def test_override_strings_are_parsed_as_toml_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('steps = 5\n[env]\nkind = "bandit"\nmeans = [1.0, 0.0]\n[algo]\nname = "pg"\neta = 0.1\n')
    cfg = es.load_config(path, ["algo.eta=[0.1, 0.2]", "algo.name=npg", "seeds=7"])
    assert cfg["algo"]["eta"] == (0.1, 0.2) and cfg["algo"]["name"] == "npg" and cfg["seeds"] == 7
    assert cfg.sweep == {"eta": [0.1, 0.2]}
    with pytest.raises(es.ConfigError, match="algo.eta"):
        es.load_config(path, ["algo.eta=-1"])


def test_mdp_rollout_length_defaults_to_where_the_discount_falls_below_1e_3():
    cfg = es.Config(small_config(env={"kind": "mdp", "generator": "garnet", "states": 3, "actions": 2,
                                      "gamma": 0.9}))
    assert cfg["env"]["rollout_length"] == 66  # 0.9^66 = 9.6e-4 <= 1e-3 < 0.9^65
    assert es.Config(small_config(env={**MDP, "gamma": 0.0}))["env"]["rollout_length"] == 1


def test_static_options_get_their_defaults_and_reach_the_experiment():
    cfg = es.Config(small_config(algo={"name": "aepo", "eta": 0.1, "entropy_target": 0.5}))
    algo = cfg["algo"]
    assert (algo["batch"], algo["group"], algo["epochs"]) == (8, 8, 1)
    assert (algo["eps"], algo["alpha"], algo["temp_low"], algo["temp_high"]) == (0.2, 1.0, 0.8, 1.2)
    assert (algo["pos_up"], algo["pos_down"]) == (60, 30)
    assert es.build(cfg).options == {"batch": 8, "group": 8, "epochs": 1, "mini_batches": 1}


def test_grid_is_the_cartesian_product_of_sweep_lists_last_varying_fastest():
    cfg = es.Config(small_config(algo={"name": "pg_entropy", "eta": [0.1, 0.2, 0.3], "tau": [0.01, 0.1]}))
    hparams, swept = cfg.grid()
    assert len(swept) == 6
    assert swept[0] == {"eta": 0.1, "tau": 0.01} and swept[1] == {"eta": 0.1, "tau": 0.1}
    assert list(hparams["eta"]) == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]


def test_mdp_from_npz_path_relative_to_the_config_file(tmp_path):
    import numpy as np
    np.savez(tmp_path / "m.npz", P=np.array(MDP["P"]), r=np.array(MDP["r"]), gamma=0.5)
    (tmp_path / "c.toml").write_text('steps = 3\nseeds = 2\n[env]\nkind = "mdp"\npath = "m.npz"\n'
                                     '[algo]\nname = "npg"\neta = 0.5\n')
    res = es.run(es.load_config(tmp_path / "c.toml"), progress=False)
    assert res.arrays["entropy"].shape == (1, 2, 3)
    np.savez(tmp_path / "bad.npz", P=np.array(MDP["P"]) * 0.5, r=np.array(MDP["r"]), gamma=0.5)
    with pytest.raises(es.ConfigError, match="env.P"):
        es.load_config(tmp_path / "c.toml", ["env.path=bad.npz"])


def test_cli_bad_input_exits_nonzero_names_the_field_and_writes_nothing(tmp_path, capsys):
    """In this process (tests/test_cli.py runs one config error in a fresh process too)."""
    from entropy_sim import cli

    path = tmp_path / "c.toml"
    path.write_text('steps = 3\n[env]\nkind = "bandit"\nmeans = [1.0, 0.5]\n[algo]\nname = "pg"\neta = 0.1\n')
    cases = {"algo.eta=0": "algo.eta", "env.means=[1.0]": "env.means", "algo.name=ppo": "algo.name",
             "env.meanz=[1,2]": "env.meanz", "env.means=[1.0, nan]": "env.means"}
    for override, field in cases.items():
        out = tmp_path / "out"
        status = cli.main(["run", str(path), "--out", str(out), "--set", override])
        err = capsys.readouterr().err
        assert status == 2, err
        assert err.startswith(f"entropy-sim: error: {field}") and "Traceback" not in err
        assert not out.exists() and list(tmp_path.iterdir()) == [path]


def _mdp_arrays():
    import numpy as np
    return {"P": np.array(MDP["P"]), "r": np.array(MDP["r"]), "gamma": np.float64(0.5)}


def _write_npz(path, **arrays):
    import numpy as np
    with open(path, "wb") as f:  # np.savez would add .npz to a name without it
        np.savez(f, **arrays)


def _damaged(path):
    """A real archive with bytes in the middle of its first array overwritten (bad CRC)."""
    _write_npz(path, **_mdp_arrays())
    data = bytearray(path.read_bytes())
    data[100:140] = b"\xff" * 40
    path.write_bytes(bytes(data))


def _truncated(path):
    _write_npz(path, **_mdp_arrays())
    path.write_bytes(path.read_bytes()[:200])


def _single_npy(path):
    import numpy as np
    with open(path, "wb") as f:
        np.save(f, np.array(MDP["P"]))


def _object_array(path):
    import numpy as np
    _write_npz(path, **{**_mdp_arrays(), "P": np.array([[1.0, 0.0], "not a number"], dtype=object)})


def _missing_r(path):
    arrays = _mdp_arrays()
    del arrays["r"]
    _write_npz(path, **arrays)


NPZ_CASES = {
    "not there": (None, "cannot read"),
    "text file": (lambda p: p.write_text("P = [[1, 0]]\n"), "is not an .npz file"),
    "empty file": (lambda p: p.write_bytes(b""), "is not an .npz file"),
    "single .npy array": (_single_npy, "single .npy array"),
    "truncated archive": (_truncated, "damaged"),
    "corrupt archive": (_damaged, "damaged"),
    "pickled object array": (_object_array, "pickled"),
    "missing array": (_missing_r, "lacks array(s) r"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES), ids=list(NPZ_CASES))
def test_cli_bad_npz_file_exits_2_naming_env_path_and_the_file(tmp_path, case, capsys):
    from entropy_sim import cli

    make, words = NPZ_CASES[case]
    data = tmp_path / "m.npz"
    if make is not None:
        make(data)
    config = tmp_path / "c.toml"
    config.write_text('steps = 2\nseeds = 1\n[env]\nkind = "mdp"\npath = "m.npz"\n'
                      '[algo]\nname = "npg"\neta = 0.5\n')
    before = sorted(tmp_path.iterdir())
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entropy-sim: error: env.path: "), err
    assert repr(str(data)) in err and words in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_an_array_of_an_npz_file_that_is_wrong_names_its_field_and_the_file(tmp_path):
    import numpy as np
    _write_npz(tmp_path / "m.npz", **{**_mdp_arrays(), "gamma": np.float64(1.5)})
    with pytest.raises(es.ConfigError) as err:
        es.Config(small_config(env={"kind": "mdp", "path": str(tmp_path / "m.npz")}))
    assert err.value.field == "env.gamma" and str(tmp_path / "m.npz") in str(err.value)
