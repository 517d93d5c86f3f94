"""Trust regions, the performance-difference lemma and the entropy change beyond first order
(docs/theory.md §7 and §8): the optional column groups ``improvement`` and ``second_order``
against references written here in NumPy, and their bounds on hundreds of random cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import entropy_sim as es
from entropy_sim import diagnostics, softmax
from entropy_sim.envs import contextual_bandit, mdp, random_token_tree

jax.config.update("jax_enable_x64", True)


def np_softmax(theta):
    e = np.exp(theta - theta.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_evaluate(P, r, gamma, mu, theta):
    """Exact evaluation of softmax(theta) in an MDP by NumPy's linear solves: pi, A, d, J."""
    pi = np_softmax(theta)
    S = r.shape[0]
    p_pi = np.einsum("sa,sat->st", pi, P)
    v = np.linalg.solve(np.eye(S) - gamma * p_pi, (pi * r).sum(-1))
    q = r + gamma * P @ v
    d = (1 - gamma) * np.linalg.solve((np.eye(S) - gamma * p_pi).T, mu)
    return pi, q - v[:, None], d, mu @ v


def random_mdp(rng, S, A, gamma):
    P = rng.dirichlet(np.full(S, 0.3), size=(S, A))
    return P, rng.uniform(size=(S, A)), gamma, rng.dirichlet(np.ones(S))


@jax.jit
def _columns(env, theta, dz):
    ev, ev_next = env.evaluate(theta, 0.0), env.evaluate(theta + dz, 0.0)
    m = diagnostics.step_metrics(ev, ev_next, dz)
    m.update(diagnostics.improvement(ev, ev_next, env.horizon, m["kl"]))
    m.update(diagnostics.second_order(ev, dz, m["dH_pred_cov"], m["kl_quad"]))
    return m


def columns(env, theta, dz):
    """Every column of the step ``theta -> theta + dz`` (compiled once per shape)."""
    return {k: float(v) for k, v in _columns(env, jnp.asarray(theta), jnp.asarray(dz)).items()}


def test_performance_difference_lemma_and_surrogate_equal_numpy_references_to_1e_10():
    """200 random MDPs (seed 18), gamma in [0, 0.95], random policies and steps: dJ_pdl is
    J(pi') - J(pi) from NumPy's own linear solves, and the surrogate is h sum_s d(s) sum_a pi'
    A, to 1e-10 (float64)."""
    rng = np.random.default_rng(18)
    for case in range(200):
        S, A = [(2, 2), (3, 4), (5, 3)][case % 3]
        P, r, gamma, mu = random_mdp(rng, S, A, rng.uniform(0.0, 0.95))
        theta = rng.normal(size=(S, A)) * rng.uniform(0.1, 3.0)
        dz = rng.normal(size=(S, A)) * 10 ** rng.uniform(-3, 0.5)
        got = columns(mdp(P, r, gamma, mu), theta, dz)
        pi, adv, d, J = np_evaluate(P, r, gamma, mu, theta)
        pi1, _, d1, J1 = np_evaluate(P, r, gamma, mu, theta + dz)
        h = 1 / (1 - gamma)
        abar = (pi1 * adv).sum(-1)
        assert abs(got["dJ_pdl"] - (J1 - J)) < 1e-10, case
        assert abs(got["dJ"] - (J1 - J)) < 1e-10, case
        assert abs(got["surrogate"] - h * d @ abar) < 1e-10, case
        assert abs(got["surrogate_gap"] - (J1 - J - h * d @ abar)) < 1e-10, case
        tv = 0.5 * np.abs(pi1 - pi).sum(-1)
        assert abs(got["tv_mean"] - d @ tv) < 1e-12 and abs(got["tv_max"] - tv.max()) < 1e-12
        assert abs(got["occ_tv"] - 0.5 * np.abs(d1 - d).sum()) < 1e-10


def random_env(rng, case):
    """A random MDP, token tree or contextual bandit, in turn."""
    kind, size = case % 3, case // 3 % 2  # two shapes of each kind
    if kind == 0:
        S, A = [(3, 2), (6, 4)][size]
        return mdp(*random_mdp(rng, S, A, rng.uniform(0.0, 0.99)))
    if kind == 1:
        key = jax.random.PRNGKey(int(rng.integers(2 ** 31)))
        vocab, length = [(2, 3), (3, 2)][size]
        return random_token_tree(key, vocab, length, prompts=2, num_correct=1)
    S, A = [(1, 3), (4, 5)][size]
    return contextual_bandit(rng.uniform(size=(S, A)).tolist(), rng.dirichlet(np.ones(S)).tolist())


def test_every_bound_holds_on_random_environments_policies_and_steps():
    """300 cases (seed 19): MDPs, token trees and contextual bandits, random policies and logit
    steps from tiny to large: |surrogate_gap| <= its bound, occ_tv <= its bound, tv_mean <= both
    tv_max and Pinsker's sqrt(kl / 2), |dH_pred_cov| <= dH_cov_bound, and the PDL identity."""
    rng = np.random.default_rng(19)
    tight = {"gap": 0.0, "occ": 0.0, "cov": 0.0}
    for case in range(300):
        env = random_env(rng, case)
        S, A = env.num_states, env.num_actions
        theta = rng.normal(size=(S, A)) * rng.uniform(0.1, 3.0)
        dz = rng.normal(size=(S, A)) * 10 ** rng.uniform(-3, 0.7)
        c = columns(env, theta, dz)
        slack = 1e-12
        assert abs(c["dJ_pdl"] - c["dJ"]) < 1e-10, case
        assert abs(c["surrogate_gap"]) <= c["surrogate_gap_bound"] + slack, (case, c)
        assert c["occ_tv"] <= c["occ_tv_bound"] + slack, (case, c)
        assert c["tv_mean"] <= c["tv_max"] + slack and c["tv_mean"] <= c["tv_pinsker"] + slack
        assert abs(c["dH_pred_cov"]) <= c["dH_cov_bound"] + slack, (case, c)
        if c["surrogate_gap_bound"] > 0:
            tight["gap"] = max(tight["gap"], abs(c["surrogate_gap"]) / c["surrogate_gap_bound"])
        if c["occ_tv_bound"] > 0:
            tight["occ"] = max(tight["occ"], c["occ_tv"] / c["occ_tv_bound"])
        tight["cov"] = max(tight["cov"], abs(c["dH_pred_cov"]) / c["dH_cov_bound"])
    # The bounds are not vacuous: some case comes within a factor of a few of each.
    assert tight["gap"] > 0.05 and tight["occ"] > 0.3 and tight["cov"] > 0.8, tight


def test_the_cauchy_schwarz_bound_is_attained_by_a_change_of_temperature():
    """dz affine in log pi (pi' ∝ pi^(1 + c)) makes |Cov(log pi, dz)| = sqrt(Var Var): equality."""
    theta = jnp.asarray(np.random.default_rng(3).normal(size=(3, 5)))
    env = contextual_bandit(np.zeros((3, 5)).tolist(), [0.2, 0.3, 0.5])
    c = columns(env, theta, 0.01 * jax.nn.log_softmax(theta, axis=-1))
    assert abs(abs(c["dH_pred_cov"]) - c["dH_cov_bound"]) < 1e-12 * c["dH_cov_bound"] + 1e-15


def test_second_order_term_is_half_the_finite_difference_second_derivative_of_the_entropy():
    """Per state, -(1/2)(E[u^2] + E[l u^2]) = (1/2) d^2/dt^2 H(softmax(theta + t dz)) at t = 0,
    the derivative by a central difference in float64 (error O(eps^2) + rounding/eps^2)."""
    rng = np.random.default_rng(20)
    for case in range(50):
        A = [2, 5, 8][case % 3]
        theta = rng.normal(size=A) * rng.uniform(0.2, 3.0)
        dz = rng.normal(size=A)
        H = lambda t: float(softmax.entropy(jnp.asarray(theta + t * dz)))  # noqa: E731
        e = 1e-4
        second = (H(e) - 2 * H(0.0) + H(-e)) / e ** 2
        pi = jnp.asarray(np_softmax(theta))
        got = float(softmax.second_order_term(pi, jnp.log(pi), jnp.asarray(dz)))
        assert abs(got - second / 2) < 1e-6 * (1 + abs(second)), (case, got, second / 2)


def slope(eta, err):
    return np.polyfit(np.log(eta), np.log(err), 1)[0]


def test_second_order_prediction_error_is_third_order_in_eta_as_the_first_order_one_is_second():
    """The e1 set-up (a 10-armed bandit, NPG, float64): the error of dH_pred_cov has log-log slope
    2 in eta, that of dH_pred_2nd slope 3."""
    cfg = {"seeds": 1, "steps": 1, "dtype": "float64", "diagnostics": ["second_order"],
           "env": {"kind": "bandit", "means": np.linspace(0, 1, 10).tolist()},
           "policy": {"init": "gaussian", "scale": 1.0},
           "algo": {"name": "npg", "eta": np.geomspace(1e-3, 1e-1, 7).tolist()}}
    df = es.run(cfg, progress=False).metrics.sort_values("eta")
    first = np.abs(df.dH_realized - df.dH_pred_cov)
    second = np.abs(df.dH_realized - df.dH_pred_2nd)
    assert 1.9 < slope(df.eta, first) < 2.1
    assert 2.85 < slope(df.eta, second) < 3.15
    assert (second < first).all()


@pytest.mark.parametrize("rule, extra", [("pg_entropy", {"tau": 0.1})])
def test_improvement_columns_in_a_run_use_the_unregularised_return(rule, extra):
    """dJ is the difference of the logged returns (the unregularised J under tau > 0: e9 checks
    the identity under the other rules), and the PDL identity holds on every row of a run on a
    Garnet MDP."""
    cfg = {"seeds": 3, "steps": 6, "dtype": "float64", "diagnostics": ["improvement"],
           "env": {"kind": "mdp", "generator": "garnet", "states": 6, "actions": 3, "gamma": 0.8},
           "policy": {"init": "gaussian"}, "algo": {"name": rule, "eta": 3.0, **extra}}
    df = es.run(cfg, progress=False).metrics.sort_values(["seed", "step"])
    for _, g in df.groupby("seed"):
        np.testing.assert_allclose(g["dJ"].values[:-1], np.diff(g["return"].values), atol=1e-12)
    np.testing.assert_allclose(df.dJ_pdl, df.dJ, atol=1e-10)
    assert (df.surrogate_gap.abs() <= df.surrogate_gap_bound).all()
    assert (df.surrogate_gap.abs() > 0).any()  # an MDP: the occupancy moves


# ----------------------------------------------------------------------------- the rules

def np_kl(pi, log_new, d):
    """sum_s d(s) KL(new || pi) for new = softmax(log_new)."""
    new = np_softmax(log_new)
    return d @ (new * (np.log(new) - np.log(pi))).sum(-1)


def np_trust_region_eta(pi, adv, d, delta):
    """The eta with sum_s d KL(pi exp(eta A) || pi) = delta, by NumPy bisection on eta itself."""
    lo, hi = 0.0, 1.0
    while np_kl(pi, np.log(pi) + hi * adv, d) < delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if np_kl(pi, np.log(pi) + mid * adv, d) > delta else (mid, hi)
    return (lo + hi) / 2


@jax.jit
def _rule_step(env, theta, hp, lam):
    from entropy_sim.rules import exact as rules
    ev = env.evaluate(theta, 0.0)
    out = {}
    for name in ("trust_region", "natural_gradient"):
        theta_next, _, info = getattr(rules, name)(theta, None, ev, env, hp, None, None)
        out[name] = (theta_next - theta, info)
    for dual in ("gradient", "ppo"):
        theta_next, lam_next, info = rules.kl_penalty(theta, lam, ev, env, hp, None, None, dual=dual)
        out[dual] = (theta_next - theta, lam_next, info)
    return out


def test_trust_region_natural_gradient_and_kl_penalty_steps_equal_numpy_references():
    """60 random MDPs (seed 21): the trust region's step is pi exp(eta A) with eta from a NumPy
    bisection (its KL equal to delta to 1e-10); the natural gradient's is
    sqrt(2 delta / g^T F^+ g) F^+ g with F built explicitly and pseudo-inverted by NumPy, and
    F^+ g is h A up to a per-state constant; kl_penalty steps A / lambda and updates lambda by
    the dual gradient or PPO's rule on the step's exact KL."""
    rng = np.random.default_rng(21)
    for case in range(60):
        S, A = [(2, 3), (4, 2), (3, 4)][case % 3]
        P, r, gamma, mu = random_mdp(rng, S, A, rng.uniform(0.0, 0.9))
        theta = rng.normal(size=(S, A))
        delta, lam, dual_lr = 10 ** rng.uniform(-4, -1), rng.uniform(0.3, 5.0), rng.uniform(1, 50)
        hp = {"delta": jnp.asarray(delta), "dual_lr": jnp.asarray(dual_lr)}
        out = _rule_step(mdp(P, r, gamma, mu), jnp.asarray(theta), hp, jnp.asarray(lam))
        pi, adv, d, _ = np_evaluate(P, r, gamma, mu, theta)
        h = 1 / (1 - gamma)
        # Trust region.
        eta = np_trust_region_eta(pi, adv, d, delta)
        dz, info = out["trust_region"]
        assert abs(float(info["eta_eff"]) / eta - 1) < 1e-8, case
        np.testing.assert_allclose(np.asarray(dz), eta * adv, rtol=1e-8, atol=1e-12)
        assert abs(np_kl(pi, np.log(pi) + np.asarray(dz), d) - delta) < 1e-10
        assert abs(float(info["multiplier"]) * eta - 1) < 1e-8
        # Natural gradient.
        F = np.zeros((S * A, S * A))
        for s in range(S):
            F[s * A:(s + 1) * A, s * A:(s + 1) * A] = d[s] * (np.diag(pi[s]) - np.outer(pi[s], pi[s]))
        g = (h * d[:, None] * pi * adv).ravel()
        x = np.linalg.pinv(F, rcond=1e-12) @ g
        want = np.sqrt(2 * delta / (g @ x)) * x
        dz, _ = out["natural_gradient"]
        np.testing.assert_allclose(np.asarray(dz).ravel(), want, rtol=1e-7, atol=1e-10)
        shift = x.reshape(S, A) - h * adv
        assert np.abs(shift - shift.mean(-1, keepdims=True)).max() < 1e-7 * h * np.abs(adv).max()
        # kl_penalty: dz = A / lambda, then lambda moves on the step's KL.
        kl = np_kl(pi, np.log(pi) + adv / lam, d)
        dz, lam_next, info = out["gradient"]
        np.testing.assert_allclose(np.asarray(dz), adv / lam, rtol=1e-12, atol=1e-14)
        assert abs(float(lam_next) - max(lam + dual_lr * (kl - delta), 1e-8)) < 1e-10
        assert float(info["multiplier"]) == lam
        _, lam_next, _ = out["ppo"]
        want = 2 * lam if kl > 1.5 * delta else lam / 2 if kl < delta / 1.5 else lam
        assert abs(float(lam_next) - want) < 1e-12


RULE_ENVS = [("trust_region", "contextual_bandit"), ("trust_region", "token_tree"),
             ("natural_gradient", "token_tree"), ("kl_penalty", "token_tree")]
ENVS = {"contextual_bandit": {"kind": "contextual_bandit", "contexts": 3, "actions": 4,
                              "generator": "verifiable"},
        "token_tree": {"kind": "token_tree", "vocab": 2, "length": 3}}


@pytest.mark.parametrize("rule, env", RULE_ENVS, ids=[f"{r}-{e}" for r, e in RULE_ENVS])
def test_trust_region_rules_run_from_a_config(rule, env):
    """The rules on a contextual bandit (a bandit is one with one context) and a token tree
    (e9 runs all three on Garnet MDPs, the NumPy tests above on random MDPs), swept over delta in
    one program, every column finite."""
    cfg = {"seeds": 2, "steps": 5, "env": ENVS[env], "policy": {"init": "gaussian"},
           "diagnostics": ["improvement", "second_order"],
           "algo": {"name": rule, "delta": [0.001, 0.01]}}
    df = es.run(cfg, progress=False).metrics
    assert sorted(df.delta.unique()) == [0.001, 0.01]
    assert np.isfinite(df.drop(columns=["dH_pred_closed"]).select_dtypes("number")).all().all()
    if rule == "trust_region":  # the exact KL is the budget (float32)
        np.testing.assert_allclose(df.kl, df.delta, rtol=2e-3)


def test_trust_region_rules_refuse_another_optimizer():
    from entropy_sim.errors import ConfigError

    with pytest.raises(ConfigError, match="algo.optimizer: this rule sets its own step size"):
        es.Config({"env": {"kind": "bandit", "means": [1.0, 0.0]},
                   "algo": {"name": "trust_region", "optimizer": "adam"}})
