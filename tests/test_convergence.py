"""Convergence results from the literature (docs/theory.md §3.6, §3.7, §6), checked on exact
dynamics.

Reference values are closed forms (softmax(r / tau), asymptotic rates from the linearised update),
independent numpy iterations, or value iteration written here; none comes from earlier package output.
"""

import functools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import entropy_sim as es  # noqa: E402
from entropy_sim import envs  # noqa: E402
from entropy_sim.rules import registry as algorithms, exact as rules


# ----------------------------------------------------------------------------- helpers

def _trajectory(env, theta0, hp, *, rule, steps):
    """``steps`` updates of ``rule`` (plain SGD: ``dz = eta * direction``) from ``theta0``, the way
    the runner steps it. Returns per-iterate records for ``k = 0..steps``."""
    opt = rules.make_optimizer("sgd", hp)
    fn = algorithms.RULES[rule].fn
    tau = hp.get("tau", 0.0)

    def body(carry, _):
        theta, opt_state = carry
        ev = env.evaluate(theta, tau)
        theta_next, opt_state, _ = fn(theta, opt_state, ev, env, hp, jax.random.PRNGKey(0), opt)
        record = dict(theta=theta, ret=ev.ret, ret_reg=ev.ret_reg, entropy=ev.entropy, v=ev.v, q=ev.q)
        return (theta_next, opt_state), record

    _, out = jax.lax.scan(body, (theta0, opt.init(theta0)), None, length=steps + 1)
    return out


trajectory = jax.jit(_trajectory, static_argnames=("rule", "steps"))


def run_rule(env, theta0, rule, steps, **hp):
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in hp.items()}
    out = trajectory(env, jnp.asarray(theta0, jnp.float64), hp, rule=rule, steps=steps)
    return {k: np.asarray(v) for k, v in out.items()}


def log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def centred(x):
    """Logits modulo a constant per state: subtract the mean over actions."""
    return x - x.mean(-1, keepdims=True)


def value_iteration(P, r, gamma, tau=0.0, tol=1e-13):
    """Optimal ``Q*`` (``tau = 0``) or soft-optimal ``Q*_tau`` (``V = tau logsumexp(Q / tau)``)."""
    P, r = np.asarray(P, np.float64), np.asarray(r, np.float64)
    q = np.zeros_like(r)
    for _ in range(100_000):
        if tau > 0:
            m = q.max(-1)
            v = m + tau * np.log(np.exp((q - m[:, None]) / tau).sum(-1))
        else:
            v = q.max(-1)
        q_new = r + gamma * np.einsum("sat,t->sa", P, v)
        if np.max(np.abs(q_new - q)) < tol:
            return q_new
        q = q_new
    raise AssertionError("value iteration did not converge")


@pytest.fixture(scope="module")
def garnet():
    return envs.garnet(jax.random.PRNGKey(1), 5, 3, 2, 0.9)


# ----------------------------------------------------------------------------- the PG step is the gradient

def _np_mdp_return(P, r, gamma, mu, theta, tau):
    """``J_tau = mu^T (I - gamma P_pi)^-1 (r_pi + tau H)`` in numpy."""
    log_pi = log_softmax(theta)
    pi = np.exp(log_pi)
    p_pi = np.einsum("sa,sat->st", pi, P)
    r_pi = (pi * r).sum(-1) - tau * (pi * log_pi).sum(-1)
    return mu @ np.linalg.solve(np.eye(len(mu)) - gamma * p_pi, r_pi)


def _np_tree_return(reward, rho, vocab, length, theta, tau):
    """``J_tau = sum_p rho_p E[R + tau sum_t H(pi(.|o_<t))]`` by backward induction over levels."""
    log_pi = log_softmax(theta)
    pi = np.exp(log_pi)
    nodes = sum(vocab ** t for t in range(length))
    total = 0.0
    for p in range(len(rho)):
        value = reward[p]  # values of the level below, [V^(t+1)]
        for t in reversed(range(length)):
            rows = p * nodes + sum(vocab ** j for j in range(t)) + np.arange(vocab ** t)
            q = value.reshape(vocab ** t, vocab)
            value = (pi[rows] * (q - tau * log_pi[rows])).sum(-1)
        total += rho[p] * value[0]
    return total


def _finite_difference_gradient(f, theta, h=1e-5):
    grad = np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        e = np.zeros_like(theta)
        e[idx] = h
        grad[idx] = (f(theta + e) - f(theta - e)) / (2 * h)
    return grad


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_the_pg_step_is_eta_times_the_gradient_of_the_regularised_return_on_an_mdp_and_a_tree(
        garnet, tau):
    rule, eta = ("pg_entropy", 0.7) if tau > 0 else ("pg", 0.7)
    hp = dict(eta=eta, tau=tau) if tau > 0 else dict(eta=eta)
    rng = np.random.default_rng(4)

    P, r, mu, gamma = (np.asarray(garnet.P), np.asarray(garnet.r), np.asarray(garnet.mu),
                       float(garnet.gamma))
    theta = rng.standard_normal((5, 3))
    out = run_rule(garnet, theta, rule, 1, **hp)
    grad = _finite_difference_gradient(lambda th: _np_mdp_return(P, r, gamma, mu, th, tau), theta)
    np.testing.assert_allclose(out["theta"][1] - theta, eta * grad, atol=1e-8)

    answers = [[[0, 1, 1], [1, 1, 0]], [[2, 0, 1]]]
    tree = envs.token_tree(3, 3, answers, [0.35, 0.65])
    theta = rng.standard_normal((tree.num_states, 3))
    out = run_rule(tree, theta, rule, 1, **hp)
    rho = np.array([0.35, 0.65])
    reward = np.zeros((2, 27))
    for p, prompt in enumerate(answers):
        for seq in prompt:
            reward[p, 9 * seq[0] + 3 * seq[1] + seq[2]] = 1.0
    grad = _finite_difference_gradient(lambda th: _np_tree_return(reward, rho, 3, 3, th, tau), theta)
    np.testing.assert_allclose(out["theta"][1] - theta, eta * grad, atol=1e-8)


# ----------------------------------------------------------------------------- entropy-regularised PG

def test_entropy_regularised_pg_on_a_bandit_converges_linearly_to_softmax_r_over_tau():
    r = np.array([1.0, 0.6, 0.3, 0.0])
    tau, eta, steps = 0.5, 1.0, 300
    pi_star = np.exp(r / tau) / np.exp(r / tau).sum()
    out = run_rule(envs.bandit(r.tolist()), np.log([[0.1, 0.2, 0.3, 0.4]]), "pg_entropy", steps,
                   eta=eta, tau=tau)

    pi_final = np.exp(log_softmax(out["theta"][-1, 0]))
    np.testing.assert_allclose(pi_final, pi_star, atol=1e-6)
    # The regularised return climbs to its maximum tau * logsumexp(r / tau).
    assert out["ret_reg"][-1] == pytest.approx(tau * np.log(np.exp(r / tau).sum()), abs=1e-10)

    err = np.linalg.norm(centred(log_softmax(out["theta"][:, 0]) - np.log(pi_star)), axis=-1)
    ratio = err[1:] / err[:-1]
    assert np.all(ratio < 1)  # the error shrinks at every step
    # Linear convergence: the ratio settles to a constant. Linearising theta -> theta + eta pi A_tau
    # at the optimum gives the map I - eta tau F with F = diag(pi*) - pi* pi*^T (F 1 = 0), so the
    # error in logits modulo constants contracts asymptotically by 1 - eta tau lambda_2(F).
    fisher = np.diag(pi_star) - np.outer(pi_star, pi_star)
    lam = np.sort(np.linalg.eigvalsh(fisher))[1]
    predicted = 1 - eta * tau * lam
    assert predicted < 0.99
    late = ratio[150:]
    np.testing.assert_allclose(late, predicted, atol=2e-4)
    # log error is linear in the step: a straight-line fit explains it.
    k = np.arange(150, steps + 1)
    slope, intercept = np.polyfit(k, np.log(err[150:]), 1)
    assert slope == pytest.approx(np.log(predicted), rel=1e-3)
    assert np.max(np.abs(np.log(err[150:]) - (slope * k + intercept))) < 1e-2


# ----------------------------------------------------------------------------- entropy-regularised NPG

def _contextual():
    r = np.array([[1.0, 0.2, 0.5, 0.0], [0.0, 0.3, 0.3, 1.0], [0.4, 0.9, 0.1, 0.2]])
    rho = np.array([0.5, 0.3, 0.2])
    return r, envs.contextual_bandit(r.tolist(), rho.tolist())


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_entropy_regularised_npg_with_eta_one_over_tau_reaches_softmax_r_over_tau_in_one_step(tau):
    r, env = _contextual()
    log_pi_star = log_softmax(r / tau)
    theta0 = np.random.default_rng(0).standard_normal(r.shape) * 2
    out = run_rule(env, theta0, "npg_entropy", 1, eta=1 / tau, tau=tau)
    np.testing.assert_allclose(log_softmax(out["theta"][1]), log_pi_star, atol=1e-10)
    np.testing.assert_allclose(np.exp(log_softmax(out["theta"][1])), np.exp(log_pi_star), atol=1e-10)
    # The starting policy was far from it.
    assert np.max(np.abs(log_softmax(out["theta"][0]) - log_pi_star)) > 0.5


def test_entropy_regularised_npg_one_step_through_the_runner_on_a_bandit():
    r, tau = [0.2, 1.0, 0.5, 0.7, 0.0], 0.3
    res = es.run({"seeds": 1, "steps": 1, "dtype": "float64", "env": {"kind": "bandit", "means": r},
                  "policy": {"init": "probs", "probs": [0.6, 0.05, 0.1, 0.05, 0.2]},
                  "algo": {"name": "npg_entropy", "eta": 1 / tau, "tau": tau}}, progress=False)
    np.testing.assert_allclose(np.exp(log_softmax(res.final_theta[0, 0, 0])),
                               np.exp(log_softmax(np.array(r) / tau)), atol=1e-10)


@pytest.mark.parametrize("eta_tau", [0.1, 0.3, 0.7])
def test_entropy_regularised_npg_error_contracts_by_one_minus_eta_tau_per_step(eta_tau):
    # Cen et al.: log pi_{k+1} = (1 - eta tau) log pi_k + eta r + const, so in a (contextual)
    # bandit the error in logits modulo constants shrinks by exactly 1 - eta tau at every step.
    r, env = _contextual()
    tau = 0.25
    theta0 = np.random.default_rng(1).standard_normal(r.shape) * 3
    steps = 25
    out = run_rule(env, theta0, "npg_entropy", steps, eta=eta_tau / tau, tau=tau)
    err = np.linalg.norm(centred(log_softmax(out["theta"]) - log_softmax(r / tau)), axis=-1)  # [T, S]
    expected = err[0] * (1 - eta_tau) ** np.arange(steps + 1)[:, None]
    np.testing.assert_allclose(err, expected, rtol=1e-8, atol=1e-13)
    big = expected[:-1] > 1e-6  # ratios of errors still far above rounding
    assert big.sum() >= 3 * 10
    np.testing.assert_allclose((err[1:] / err[:-1])[big], 1 - eta_tau, rtol=1e-8)


@pytest.mark.parametrize("eta_cen_tau", [1.0, 0.5])
def test_entropy_regularised_npg_on_an_mdp_satisfies_cen_et_al_linear_convergence_bounds(
        garnet, eta_cen_tau):
    gamma, tau, steps = float(garnet.gamma), 0.2, 60
    # Cen et al.'s step; the project's divides by 1 - gamma (docs/theory.md §3.7).
    eta_cen = eta_cen_tau * (1 - gamma) / tau
    q_star = value_iteration(garnet.P, garnet.r, gamma, tau)
    log_pi_star = log_softmax(q_star / tau)
    theta0 = np.random.default_rng(2).standard_normal((5, 3))
    out = run_rule(garnet, theta0, "npg_entropy", steps, eta=eta_cen / (1 - gamma), tau=tau)

    log_pi = log_softmax(out["theta"])
    c1 = (np.max(np.abs(q_star - out["q"][0]))
          + 2 * tau * (1 - eta_cen * tau / (1 - gamma)) * np.max(np.abs(log_pi_star - log_pi[0])))
    rate = (1 - eta_cen * tau) ** np.arange(steps)
    q_err = np.max(np.abs(q_star - out["q"][1:]), axis=(1, 2))
    pi_err = np.max(np.abs(log_pi_star - log_pi[1:]), axis=(1, 2))
    assert np.all(q_err <= c1 * gamma * rate * (1 + 1e-9) + 1e-12)
    assert np.all(pi_err <= 2 * c1 / tau * rate * (1 + 1e-9) + 1e-12)
    assert pi_err[-1] < 1e-3  # and it does converge to softmax(Q*_tau / tau)


# ----------------------------------------------------------------------------- Mei et al.: plateaus, O(1/t)

MEI_R = [1.0, 0.9, 0.1]
MEI_ETA = 0.4
MEI_STEPS = 10_000


@pytest.fixture(scope="module")
def mei_runs():
    """Exact PG through the runner from a bad start (best arm 0.01, second best 0.05) and a good
    one (0.05, 0.01); the worst arm has 0.94 in both."""
    out = {}
    for name, probs in (("bad", [0.01, 0.05, 0.94]), ("good", [0.05, 0.01, 0.94])):
        out[name] = es.run({"seeds": 1, "steps": MEI_STEPS, "dtype": "float64",
                            "env": {"kind": "bandit", "means": MEI_R},
                            "policy": {"init": "probs", "probs": probs},
                            "algo": {"name": "pg", "eta": MEI_ETA}}, progress=False)
    return out


def _first(mask):
    assert mask.any(), "never happens"
    return int(np.argmax(mask))


def test_pg_runner_returns_equal_a_plain_numpy_iteration_of_the_exact_softmax_gradient(mei_runs):
    r = np.array(MEI_R)
    for name, probs in (("bad", [0.01, 0.05, 0.94]), ("good", [0.05, 0.01, 0.94])):
        theta = np.log(probs)
        expected = np.empty(MEI_STEPS)
        for k in range(MEI_STEPS):
            pi = np.exp(log_softmax(theta))
            expected[k] = pi @ r
            theta = theta + MEI_ETA * pi * (r - expected[k])
        np.testing.assert_allclose(mei_runs[name].arrays["return"][0, 0], expected, atol=1e-9)
        np.testing.assert_allclose(log_softmax(mei_runs[name].final_theta[0, 0, 0]),
                                   log_softmax(theta), atol=1e-6)


def test_pg_from_a_small_best_arm_probability_plateaus_near_the_second_best_arm(mei_runs):
    bad = mei_runs["bad"].arrays["return"][0, 0]
    good = mei_runs["good"].arrays["return"][0, 0]
    assert bad[0] == pytest.approx(0.01 * 1.0 + 0.05 * 0.9 + 0.94 * 0.1)
    hit_bad, hit_good = _first(bad > 0.99), _first(good > 0.99)
    assert hit_bad > 20 * hit_good
    assert hit_bad > 3000
    plateau_bad = np.sum((bad > 0.85) & (bad < 0.95))
    plateau_good = np.sum((good > 0.85) & (good < 0.95))
    assert plateau_bad > 3000
    assert plateau_good < 100
    # The plateau is a stretch of consecutive steps near J = 0.9, i.e. at the second-best arm.
    start = _first(bad > 0.85)
    assert np.all(np.abs(bad[start + 100:start + 3000] - 0.9) < 0.02)
    # Both runs end at the best arm.
    assert bad[-1] > 0.999 and good[-1] > 0.999


def test_pg_on_a_three_armed_bandit_has_suboptimality_of_order_one_over_t(mei_runs):
    # Near the optimum, delta = J* - J obeys d delta/dt = -eta delta^2 - eta sum_a (pi_a Delta_a)^2,
    # so t delta tends to a value between 1 / (2 eta) and 1 / ((1 + 1/K') eta), K' = 2 worse arms.
    gap = 1.0 - mei_runs["good"].arrays["return"][0, 0]
    t = np.arange(MEI_STEPS)
    scaled = (t * gap)[1000:]
    assert np.all(scaled > 0.98 / (2 * MEI_ETA))
    assert np.all(scaled < 1.02 / (1.5 * MEI_ETA))
    assert scaled[-1] / scaled[len(scaled) // 2] == pytest.approx(1.0, abs=0.05)


def test_pg_on_a_two_armed_bandit_has_suboptimality_one_over_two_eta_t():
    # Two arms, gap Delta: the logit gap z obeys dz = 2 eta Delta pi_1 pi_2, so
    # e^z ~ 2 eta Delta t and t (J* - J_t) -> 1 / (2 eta), whatever Delta.
    eta, steps = 0.5, 4000
    for delta in (1.0, 0.3):
        out = run_rule(envs.bandit([1.0, 1.0 - delta]), np.zeros((1, 2)), "pg", steps, eta=eta)
        t = np.arange(steps + 1)
        scaled = t * (1.0 - out["ret"])
        assert np.all(scaled[1:] < 2 / eta)  # bounded throughout
        np.testing.assert_allclose(scaled[2000:], 1 / (2 * eta), rtol=0.03 if delta == 1 else 0.06)
        assert np.all(np.diff(out["ret"]) > 0)  # exact PG improves monotonically


# ----------------------------------------------------------------------------- Agarwal et al.: NPG on an MDP

@pytest.mark.parametrize("eta", [0.2, 2.0])
def test_npg_on_an_mdp_from_zero_logits_satisfies_agarwal_et_al_bound(garnet, eta):
    gamma, steps = float(garnet.gamma), 300
    mu = np.asarray(garnet.mu)
    v_star = value_iteration(garnet.P, garnet.r, gamma).max(-1)
    out = run_rule(garnet, np.zeros((5, 3)), "npg", steps, eta=eta)
    v = out["v"]  # [T + 1, S]
    np.testing.assert_allclose(out["ret"], v @ mu, atol=1e-12)
    assert np.all(v <= v_star + 1e-10)  # nothing beats the optimal values
    eta_prime = eta * (1 - gamma)
    T = np.arange(1, steps + 1)
    gap = v_star @ mu - v[1:] @ mu
    bound = np.log(3) / (eta_prime * T) + 1 / ((1 - gamma) ** 2 * T)
    assert np.all(gap <= bound)
    # NPG improves the value of every state at every step (Agarwal et al., Lemma 15).
    assert np.all(np.diff(v, axis=0) >= -1e-12)
    assert gap[-1] < 0.05 * gap[0]  # and it converges


# ----------------------------------------------------------------------------- entropy collapse

@pytest.fixture(scope="module")
def random_bandits():
    """256 ten-armed bandits with means uniform on [0, 1], stacked along a seed axis."""
    means = np.random.default_rng(3).uniform(size=(256, 10))
    bandits = [envs.bandit(m.tolist()) for m in means]
    return means, jax.tree.map(lambda *x: jnp.stack(x), *bandits)


@functools.lru_cache(maxsize=None)
def _batched(rule, steps):
    return jax.jit(jax.vmap(functools.partial(_trajectory, rule=rule, steps=steps),
                            in_axes=(0, None, None)))


@pytest.mark.parametrize("rule, eta", [("pg", 1.0), ("npg", 0.5)])
def test_entropy_collapses_under_exact_pg_and_npg_on_bandits_from_uniform(random_bandits, rule, eta):
    means, env = random_bandits
    steps = 100
    out = _batched(rule, steps)(env, jnp.zeros((1, 10)), {"eta": jnp.asarray(eta)})
    entropy = np.asarray(out["entropy"])  # [N, T + 1]
    assert entropy[:, 0] == pytest.approx(np.log(10))
    mean = entropy.mean(0)
    assert np.all(np.diff(mean) <= 1e-12)  # the mean over seeds never goes up
    assert mean[-1] < 0.6 * np.log(10)  # and it has dropped a lot
    if rule == "npg":
        # From uniform, NPG on a bandit is pi_k = softmax(k eta r): every seed's entropy decreases,
        # and equals the closed form.
        assert np.all(np.diff(entropy, axis=1) <= 1e-12)
        k = np.arange(steps + 1)
        logits = k[None, :, None] * eta * means[:, None, :]
        log_pi = log_softmax(logits)
        expected = -(np.exp(log_pi) * log_pi).sum(-1)
        np.testing.assert_allclose(entropy, expected, atol=1e-9)
