"""The mathematics of docs/theory.md §1, §2 and §3, checked against the package.

Every expected value is a closed form of docs/theory.md or an independent computation written here:
``jax.grad`` / ``jax.jacobian`` of exact objectives coded in this file, linear solves and truncated
power series for MDPs, brute-force enumeration of every response for the token tree. Nothing is
compared with the package's own earlier output.

Each test does its arithmetic inside one ``jax.jit`` (eager JAX compiles every primitive for every
new shape, which would make this file slow) and asserts on the returned arrays.
"""

from __future__ import annotations

import functools
import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from entropy_sim import diagnostics, envs, softmax  # noqa: E402
from entropy_sim.engine.runner import init_state, step  # noqa: E402
from entropy_sim.envs.base import policy as env_policy  # noqa: E402
from entropy_sim.rules import registry as algorithms, exact as rules


# --------------------------------------------------------------------------------------------
# Independent reference maths (docs/theory.md §1), written without the package.
# --------------------------------------------------------------------------------------------

def ref_policy(theta):
    """``(pi, log_pi, H)`` of ``softmax(theta)`` over the last axis."""
    log_pi = theta - jax.scipy.special.logsumexp(theta, axis=-1, keepdims=True)
    pi = jnp.exp(log_pi)
    return pi, log_pi, -jnp.sum(pi * log_pi, axis=-1)


def ref_cov(p, x, y):
    """The definition of docs/theory.md §1.4, uncentred: ``sum p x y - (sum p x)(sum p y)``."""
    return jnp.sum(p * x * y, -1) - jnp.sum(p * x, -1) * jnp.sum(p * y, -1)


def ref_kl(log_p, log_q):
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1)


def ref_mdp(env, theta, tau):
    """Soft values, occupancy and ``J_tau`` of a tabular MDP by dense linear solves."""
    pi, log_pi, ent = ref_policy(theta)
    num_states = theta.shape[0]
    p_pi = jnp.einsum("sa,sat->st", pi, env.P)
    m = jnp.eye(num_states) - env.gamma * p_pi
    v = jnp.linalg.solve(m, jnp.sum(pi * env.r, -1) + tau * ent)
    q = env.r + env.gamma * env.P @ v
    adv = q - tau * log_pi - v[:, None]
    occ = (1.0 - env.gamma) * jnp.linalg.solve(m.T, env.mu)
    return dict(pi=pi, log_pi=log_pi, ent=ent, v=v, q=q, adv=adv, occ=occ, J=env.mu @ v)


def tree_rows(vocab, length, prompts):
    """``(seqs [V^L, L], rows [P, V^L, L])``: the row of ``theta`` of every prefix of every response,
    from the layout documented in token_tree.py (prompt-major, level offsets, base-V prefix index)."""
    seqs = np.array(list(itertools.product(range(vocab), repeat=length)), dtype=np.int64)
    nodes = sum(vocab ** t for t in range(length))
    rows = np.zeros((prompts, len(seqs), length), dtype=np.int64)
    for p in range(prompts):
        for t in range(length):
            offset = sum(vocab ** j for j in range(t))
            prefix = sum(seqs[:, i] * vocab ** (t - 1 - i) for i in range(t)) if t else 0
            rows[p, :, t] = p * nodes + offset + prefix
    return seqs, rows


def ref_tree(tree, theta, tau, temp=1.0):
    """Brute force over all ``V^L`` responses of every prompt for ``softmax(theta / temp)``:
    ``J_tau``, response probabilities ``[P, V^L]`` and the per-step visit distribution ``d [S]``."""
    seqs, rows = tree_rows(tree.vocab, tree.length, tree.num_prompts)
    _, log_pi, ent = ref_policy(theta / temp)
    tok = np.broadcast_to(seqs, rows.shape)
    log_prob = jnp.sum(log_pi[rows, tok], axis=-1)  # [P, V^L]
    prob = jnp.exp(log_prob)
    ent_path = jnp.sum(ent[rows], axis=-1)  # [P, V^L] sum of per-token entropies on the path
    J = tree.rho @ jnp.sum(prob * (tree.reward + tau * ent_path), axis=-1)
    weight = jnp.broadcast_to((tree.rho[:, None] * prob)[..., None] / tree.length, rows.shape)
    occ = jax.ops.segment_sum(weight.ravel(), rows.ravel(), tree.num_states)
    per_token_ent = tree.rho @ jnp.sum(prob * jnp.mean(ent[rows], -1), -1)
    return dict(J=J, prob=prob, log_prob=log_prob, occ=occ, per_token_ent=per_token_ent)


def hparams(**kw):
    return {k: jnp.asarray(v, jnp.float64) for k, v in kw.items()}


def run_rule(rule, env, theta, hp):
    """One sgd step of ``rule`` (traceable): ``(ev, theta_next, info)``."""
    opt = rules.make_optimizer("sgd", hp)
    ev = env.evaluate(theta, hp.get("tau", 0.0))
    theta_next, _, info = algorithms.RULES[rule].fn(theta, opt.init(theta), ev, env, hp,
                                               jax.random.PRNGKey(0), opt)
    return ev, theta_next, info


def close(actual, expected, rtol, atol=0.0, msg=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol,
                               err_msg=msg)


# --------------------------------------------------------------------------------------------
# Environments and non-uniform starting logits (uniform logits would make every Cov(log pi, .) 0).
# --------------------------------------------------------------------------------------------

BANDIT = envs.bandit([0.2, 0.9, 0.5, 0.1])
THETA_BANDIT = jnp.array([[0.8, -0.3, 0.4, 1.2]])

CBANDIT = envs.contextual_bandit([[0.1, 0.7, 0.3, 0.9], [0.5, 0.2, 0.8, 0.4], [1.0, 0.0, 0.6, 0.3]],
                                 [0.5, 0.3, 0.2])
BINARY_CBANDIT = envs.contextual_bandit([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]], [0.2, 0.5, 0.3])
THETA_CB = jnp.array([[0.3, -1.1, 0.9, 0.1], [1.4, 0.2, -0.6, -0.3], [-0.2, 0.8, 0.5, -1.3]])

# Built under jit: the generators are pure, and eager JAX would compile each of their primitives.
GARNET = jax.jit(envs.garnet, static_argnums=(1, 2, 3, 4))(jax.random.PRNGKey(5), 6, 3, 2, 0.9)
THETA_GARNET = jnp.array(np.random.default_rng(12).normal(size=(6, 3)))

TREE = envs.token_tree(3, 3, [[[0, 1, 2], [2, 2, 0]], [[1, 1, 1]]], rho=[0.6, 0.4])
THETA_TREE = jnp.array(np.random.default_rng(13).normal(size=(TREE.num_states, 3)))

RTREE = jax.jit(envs.random_token_tree, static_argnums=(1, 2, 3, 4))(jax.random.PRNGKey(7), 2, 4, 2, 3)
THETA_RTREE = jnp.array(0.7 * np.random.default_rng(14).normal(size=(RTREE.num_states, 2)))

ENVS = {
    "bandit": (BANDIT, THETA_BANDIT),
    "contextual_bandit": (CBANDIT, THETA_CB),
    "garnet": (GARNET, THETA_GARNET),
    "token_tree": (TREE, THETA_TREE),
    "random_token_tree": (RTREE, THETA_RTREE),
}


def random_logits(seed, n, num_actions):
    """``[n, A]`` logits with scales from 0.1 to 20 (near-uniform to sharply peaked)."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(np.log(0.1), np.log(20.0), size=(n, 1)))
    return jnp.asarray(scale * rng.normal(size=(n, num_actions)))


# --------------------------------------------------------------------------------------------
# T1 and the entropy gradient
# --------------------------------------------------------------------------------------------

@jax.jit
def _t1(theta):
    def expected_sq_score(z):
        jac = jax.jacobian(jax.nn.log_softmax)(z)  # jac[a] = grad_z log pi(a)
        return jnp.sum(jax.nn.softmax(z) * jnp.sum(jac ** 2, axis=-1))

    pi, _, ent = ref_policy(theta)
    return dict(lhs=jax.vmap(expected_sq_score)(theta), one_minus_sq=1.0 - jnp.sum(pi ** 2, -1),
                h2=-jnp.log(jnp.sum(pi ** 2, -1)), ent=ent,
                grad_sq_norm=softmax.grad_sq_norm(pi), renyi2=softmax.renyi2(pi))


@pytest.mark.parametrize("num_actions", [2, 5, 12])
def test_expected_squared_score_norm_equals_one_minus_sum_of_squared_probs_and_renyi2_form(num_actions):
    theta = random_logits(num_actions, 512, num_actions)
    theta = theta.at[0].set(jnp.zeros(num_actions)).at[1].set(jnp.eye(num_actions)[0] * 30.0)
    out = {k: np.asarray(v) for k, v in _t1(theta).items()}
    lhs = out["lhs"]
    close(lhs, out["one_minus_sq"], rtol=1e-10, atol=1e-14)
    close(lhs, 1.0 - np.exp(-out["h2"]), rtol=1e-10, atol=1e-14)
    close(out["grad_sq_norm"], lhs, rtol=1e-10, atol=1e-14)
    close(out["renyi2"], out["h2"], rtol=1e-12, atol=1e-14)
    # T1's bound by the Shannon entropy.
    assert np.all(lhs <= 1.0 - np.exp(-out["ent"]) + 1e-14)
    # The uniform policy attains 1 - 1/A; the near one-hot one almost 0.
    close(lhs[0], 1.0 - 1.0 / num_actions, rtol=1e-12)
    assert 0.0 <= lhs[1] < 1e-11


def test_expected_squared_score_norm_is_strictly_below_one_minus_exp_minus_shannon_entropy_off_uniform():
    out = _t1(random_logits(21, 512, 5))
    ent, gap = np.asarray(out["ent"]), np.asarray((1.0 - jnp.exp(-out["ent"])) - out["grad_sq_norm"])
    # H > H_2 away from the uniform (and one-hot) policies, so the bound is strict there.
    moderate = (ent > 0.05) & (ent < np.log(5) - 0.05)
    assert moderate.sum() > 50
    assert np.all(gap[moderate] > 0.0)


@jax.jit
def _entropy_grad(theta):
    pi, log_pi, ent = ref_policy(theta)
    return dict(autodiff=jax.vmap(jax.grad(softmax.entropy))(theta),
                expected=-pi * (log_pi + ent[:, None]),
                package=softmax.entropy_grad(pi, log_pi),
                ent=ent, package_ent=softmax.entropy(theta))


def test_autodiff_entropy_gradient_equals_minus_pi_times_log_pi_plus_entropy():
    out = _entropy_grad(random_logits(22, 512, 5))
    close(out["autodiff"], out["expected"], rtol=1e-9, atol=1e-13)
    close(out["package"], out["expected"], rtol=1e-9, atol=1e-13)
    close(out["package_ent"], out["ent"], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# T2: one-step KL
# --------------------------------------------------------------------------------------------

def _kl_instances(n=256, num_actions=5):
    rng = np.random.default_rng(31)
    theta = np.clip(np.asarray(random_logits(32, n, num_actions)), -8.0, 8.0)
    return jnp.asarray(theta), jnp.asarray(rng.normal(size=(n, num_actions)))


@jax.jit
def _kl_step(theta, direction, eta):
    pi, log_pi, ent = ref_policy(theta)
    dz = eta * direction
    log_next = jax.nn.log_softmax(theta + dz)
    num_actions = theta.shape[-1]
    return dict(kl=softmax.kl(log_next, log_pi), kl_direct=ref_kl(log_next, log_pi),
                var=softmax.var(pi, dz), var_direct=ref_cov(pi, dz, dz),
                bound=softmax.kl_bound(pi, ent, dz),
                bound_direct=0.5 * num_actions * jnp.max(jnp.abs(dz), -1) ** 2 * (1.0 - jnp.exp(-ent)))


def test_kl_of_a_logit_step_over_half_the_policy_variance_tends_to_one_with_error_linear_in_eta():
    theta, direction = _kl_instances()
    errs = []
    for eta in [0.08, 0.04, 0.02, 0.01]:
        out = _kl_step(theta, direction, eta)
        close(out["kl"], out["kl_direct"], rtol=1e-9, atol=1e-18)
        close(out["var"], out["var_direct"], rtol=1e-9, atol=1e-18)
        errs.append(np.asarray(out["kl"] / (0.5 * out["var"]) - 1.0))
    for big, small in zip(errs, errs[1:]):
        # Across instances the worst relative error halves with eta: it is O(eta), as T2's
        # o(||dz||^2) remainder over a quadratic term must be.
        ratio = np.max(np.abs(big)) / np.max(np.abs(small))
        assert 1.7 < ratio < 2.4, ratio
    assert np.max(np.abs(errs[-1])) < 0.05


def test_kl_of_a_small_logit_step_is_below_the_t2_bound_and_the_quadratic_term_always_is():
    theta, direction = _kl_instances()
    for eta in [0.01, 0.05]:
        out = {k: np.asarray(v) for k, v in _kl_step(theta, direction, eta).items()}
        close(out["bound"], out["bound_direct"], rtol=1e-12)
        assert np.all(0.5 * out["var_direct"] <= out["bound"] * (1 + 1e-12))
        assert np.all(out["kl_direct"] <= out["bound"])


def test_kl_bound_is_attained_to_second_order_by_a_two_action_uniform_policy_and_antisymmetric_step():
    out = _kl_step(jnp.zeros((1, 2)), jnp.array([[1.0, -1.0]]), 0.01)
    close(out["bound"], 0.5 * out["var_direct"], rtol=1e-12)
    close(out["bound"], 0.5 * 1e-4, rtol=1e-12)


@jax.jit
def _tilted(theta, dz):
    pi, log_pi, ent = ref_policy(theta)
    _, log_next, ent_next = ref_policy(theta + dz)
    # As the diagnostics call it: log pi' from the next evaluation, not recomputed.
    dH_given, kl_given = softmax.changes(pi, log_pi, dz, log_next)
    return dict(dH=softmax.entropy_change(pi, log_pi, dz), dH_direct=ent_next - ent,
                kl=softmax.kl_change(pi, dz), kl_direct=ref_kl(log_next, log_pi),
                dH_given=dH_given, kl_given=kl_given)


def test_entropy_change_and_kl_from_the_logit_change_equal_differences_of_exact_entropies():
    theta, direction = _kl_instances()
    for eta in [1e-3, 0.1, 1.0]:  # small to large steps: these are exact, not expansions
        out = _tilted(theta, eta * direction)
        # The direct differences carry absolute rounding errors ~1e-15 (checked against 50-digit
        # mpmath on the worst instances: there the package's values are the accurate ones).
        close(out["dH"], out["dH_direct"], rtol=1e-8, atol=1e-14, msg=f"eta={eta}")
        close(out["kl"], out["kl_direct"], rtol=1e-8, atol=1e-14, msg=f"eta={eta}")
        close(out["dH_given"], out["dH"], rtol=0, atol=0, msg=f"eta={eta}")  # no large rows here
        close(out["kl_given"], out["kl"], rtol=1e-8, atol=1e-14, msg=f"eta={eta}")
        assert np.all(np.asarray(out["kl"]) >= 0.0)


def test_entropy_change_from_the_logit_change_keeps_second_order_accuracy_in_float32():
    theta, direction = _kl_instances()
    theta = theta[np.max(np.abs(np.asarray(theta)), -1) < 3.0]  # moderate policies
    dz = 1e-3 * direction[:theta.shape[0]]
    truth = _tilted(theta, dz)
    f32 = _tilted(theta.astype(jnp.float32), dz.astype(jnp.float32))
    assert f32["dH"].dtype == jnp.float32
    dh_true, kl_true = np.asarray(truth["dH_direct"]), np.asarray(truth["kl_direct"])
    # T3's second-order error is ~1e-3 of dH at |dz| ~ 1e-3; float32 must resolve dH far better
    # (subtracting two float32 entropies does not: its error reaches several percent here).
    err = np.abs(np.asarray(f32["dH"], np.float64) - dh_true)
    assert np.all(err <= 1e-4 * np.abs(dh_true))
    naive = np.abs(np.asarray(f32["dH_direct"], np.float64) - dh_true)
    assert np.max(naive / np.abs(dh_true)) > 1e-3  # the check has teeth on this data
    # KL: m = E_pi[expm1(u)] sums O(dz) terms to O(dz^2), so its relative accuracy is
    # O(eps32 / |dz|) ~ 1e-4 (a few 1e-3 at worst), not O(eps32).
    err_kl = np.abs(np.asarray(f32["kl"], np.float64) - kl_true)
    assert np.all(err_kl <= 1e-2 * kl_true)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_entropy_change_and_kl_stay_finite_and_exact_for_huge_logit_changes(dtype):
    """A rarely drawn action under importance weights can move by thousands of nats: the tilt's
    exp(u) would overflow, so such rows use the plain differences (accurate there)."""
    theta = jnp.array([[0.0, -3.0, 1.0, 0.5], [2.0, 0.0, 0.0, -1.0]], dtype)
    dz = jnp.array([[0.0, 5000.0, 0.0, 0.0], [-200.0, 31.0, 0.0, 0.1]], dtype)
    got = _tilted(theta, dz)
    ref = _tilted(theta.astype(jnp.float64), dz.astype(jnp.float64))
    for k in ["dH", "kl"]:
        for given in ["", "_given"]:
            assert np.all(np.isfinite(np.asarray(got[k + given]))), k + given
            close(got[k + given], ref[f"{k}_direct"], rtol=1e-5, atol=1e-5, msg=k + given)
    # Uniform shifts are no change at all, however large (up to the rounding of dz itself).
    same = _tilted(theta, jnp.full_like(theta, 1e4))
    tol = 10 * 1e4 * float(jnp.finfo(dtype).eps)
    close(same["dH"], 0.0, rtol=0.0, atol=tol)
    close(same["kl"], 0.0, rtol=0.0, atol=tol)


@jax.jit
def _garnet_metrics(dz):
    env, theta = GARNET, THETA_GARNET
    ev, ev_next = env.evaluate(theta, 0.0), env.evaluate(theta + dz, 0.0)
    metrics = diagnostics.step_metrics(ev, ev_next, dz)
    ref, ref_next = ref_mdp(env, theta, 0.0), ref_mdp(env, theta + dz, 0.0)
    d, pi, log_pi, ent = ref["occ"], ref["pi"], ref["log_pi"], ref["ent"]
    d1, log_pi1, ent1 = ref_next["occ"], ref_next["log_pi"], ref_next["ent"]
    expected = {
        "entropy": d @ ent,
        "dH_realized": d1 @ ent1 - d @ ent,
        "dH_pred_cov": -d @ ref_cov(pi, log_pi, dz),
        "dH_within": d @ (ent1 - ent),
        "dH_shift": (d1 - d) @ ent1,
        "kl": d @ ref_kl(log_pi1, log_pi),
        "kl_quad": 0.5 * d @ ref_cov(pi, dz, dz),
        "kl_bound": d @ (0.5 * theta.shape[1] * jnp.max(jnp.abs(dz), -1) ** 2 * (1 - jnp.exp(-ent))),
        "grad_sq_norm": d @ (1.0 - jnp.sum(pi ** 2, -1)),
        "renyi2": d @ -jnp.log(jnp.sum(pi ** 2, -1)),
        "return": ref["J"],
        "dz_max": jnp.max(jnp.abs(dz)),
    }
    return metrics, expected


def test_step_metrics_columns_equal_direct_formulas_on_a_garnet_mdp_step():
    dz = jnp.asarray(0.3 * np.random.default_rng(41).normal(size=THETA_GARNET.shape))
    metrics, expected = _garnet_metrics(dz)
    for name, value in expected.items():
        close(metrics[name], value, rtol=1e-10, atol=1e-14, msg=name)
    assert float(metrics["kl"]) <= float(metrics["kl_bound"])


# --------------------------------------------------------------------------------------------
# Exact evaluation against independent computations
# --------------------------------------------------------------------------------------------

@jax.jit
def _garnet_series(tau):
    env, theta = GARNET, THETA_GARNET
    pi, log_pi, ent = ref_policy(theta)
    p_pi = jnp.einsum("sa,sat->st", pi, env.P)
    r_pi = jnp.sum(pi * env.r, -1) + tau * ent

    def body(carry, _):
        row, vec, occ, v = carry  # mu^T (gamma P_pi)^t and (gamma P_pi)^t r_pi
        return (env.gamma * row @ p_pi, env.gamma * p_pi @ vec, occ + row, v + vec), None

    zeros = jnp.zeros(env.num_states)
    (_, _, occ, v), _ = jax.lax.scan(body, (env.mu, r_pi, zeros, zeros), None, length=600)
    q = env.r + env.gamma * env.P @ v
    return env.evaluate(theta, tau), dict(occ=(1 - env.gamma) * occ, v=v, q=q, ent=ent,
                                          adv=q - tau * log_pi - v[:, None], J=env.mu @ v)


def test_garnet_occupancy_and_soft_values_equal_truncated_discounted_series():
    tau, gamma = 0.3, float(GARNET.gamma)
    ev, ref = _garnet_series(tau)
    close(ev.occ, ref["occ"], rtol=1e-10)
    close(jnp.sum(ev.occ), 1.0, rtol=1e-12)
    close(ev.v, ref["v"], rtol=1e-10)
    close(ev.q, ref["q"], rtol=1e-10)
    close(ev.adv, ref["adv"], rtol=1e-9, atol=1e-12)
    close(ev.ret_reg, ref["J"], rtol=1e-10)
    close(ev.ret, ref["J"] - tau / (1 - gamma) * (ref["occ"] @ ref["ent"]), rtol=1e-10)
    close(ev.entropy, ref["occ"] @ ref["ent"], rtol=1e-10)


@functools.partial(jax.jit, static_argnames="name")
def _tree_eval(name, tau):
    env, theta = ENVS[name]
    return env.evaluate(theta, tau), ref_tree(env, theta, tau)


@pytest.mark.parametrize("name", ["token_tree", "random_token_tree"])
def test_token_tree_evaluation_matches_brute_force_enumeration_of_all_responses(name):
    env = ENVS[name][0]
    ev, ref = _tree_eval(name, 0.2)
    close(ev.occ, ref["occ"], rtol=1e-10, atol=1e-15)
    close(jnp.sum(ev.occ), 1.0, rtol=1e-12)
    close(ev.ret_reg, ref["J"], rtol=1e-10)
    success = jnp.sum(ref["prob"] * env.reward, -1)
    close(ev.success, success, rtol=1e-10, atol=1e-15)
    close(ev.ret, env.rho @ success, rtol=1e-10, atol=1e-15)
    # docs/theory.md §1.6: per-token entropy E_o[(1/L) sum_t H(o_<t)] = sum_s d(s) H(s).
    close(ev.entropy, ref["per_token_ent"], rtol=1e-10)


@jax.jit
def _cbandit_eval(tau):
    env, theta = CBANDIT, THETA_CB
    pi, log_pi, ent = ref_policy(theta)
    v = jnp.sum(pi * (env.r - tau * log_pi), -1)
    return env.evaluate(theta, tau), dict(
        v=v, adv=env.r - tau * log_pi - v[:, None],
        ret_reg=env.rho @ (jnp.sum(pi * env.r, -1) + tau * ent), ret=env.rho @ jnp.sum(pi * env.r, -1))


def test_bandit_soft_advantage_and_regularised_return_match_their_definitions():
    ev, ref = _cbandit_eval(0.4)
    close(ev.v, ref["v"], rtol=1e-12)
    close(ev.adv, ref["adv"], rtol=1e-10, atol=1e-14)
    close(ev.ret_reg, ref["ret_reg"], rtol=1e-12)
    close(ev.ret, ref["ret"], rtol=1e-12)
    close(ev.occ, CBANDIT.rho, rtol=0)


# --------------------------------------------------------------------------------------------
# The PG rule is the exact gradient of J_tau
# --------------------------------------------------------------------------------------------

def independent_objective(name, env):
    """``(theta, tau) -> J_tau(theta)`` written in this file (not through ``env.evaluate``)."""
    if name in ("bandit", "contextual_bandit"):
        def objective(theta, tau):  # sum_s rho(s) [sum_a pi r + tau H]
            pi, _, ent = ref_policy(theta)
            return env.rho @ (jnp.sum(pi * env.r, -1) + tau * ent)
        return objective
    if name == "garnet":
        return lambda theta, tau: ref_mdp(env, theta, tau)["J"]
    return lambda theta, tau: ref_tree(env, theta, tau)["J"]


@functools.partial(jax.jit, static_argnames="name")
def _pg_vs_grad(name, eta, tau):
    """For ``pg`` (``tau = 0``) and ``pg_entropy`` (``tau``): the sgd step over ``eta`` and
    ``jax.grad`` of ``J_tau`` through ``env.evaluate`` and through the objective of this file."""
    env, theta = ENVS[name]
    out = {}
    for rule, t in [("pg", 0.0), ("pg_entropy", tau)]:
        hp = dict(eta=eta) if rule == "pg" else dict(eta=eta, tau=t)
        _, theta_next, _ = run_rule(rule, env, theta, hp)
        out[rule] = dict(direction=(theta_next - theta) / eta,
                         grad_eval=jax.grad(lambda th: env.evaluate(th, t).ret_reg)(theta),
                         grad_ref=jax.grad(independent_objective(name, env))(theta, t))
    return out


@pytest.mark.parametrize("name", ["bandit", "contextual_bandit", "garnet", "token_tree"])
def test_pg_rule_direction_equals_autodiff_gradient_of_the_exact_regularised_return(name):
    for rule, out in _pg_vs_grad(name, jnp.asarray(0.5), jnp.asarray(0.3)).items():
        scale = float(jnp.max(jnp.abs(out["grad_ref"])))
        assert scale > 1e-3  # a non-trivial gradient
        close(out["grad_eval"], out["grad_ref"], rtol=1e-8, atol=1e-12 * scale, msg=rule)
        close(out["direction"], out["grad_ref"], rtol=1e-8, atol=1e-12 * scale, msg=rule)


@functools.partial(jax.jit, static_argnames="name")
def _pg_steps(name, eta):
    env, theta = ENVS[name]
    _, pg_next, _ = run_rule("pg", env, theta, dict(eta=eta))
    _, pg0_next, _ = run_rule("pg_entropy", env, theta, dict(eta=eta, tau=jnp.asarray(0.0)))
    return pg_next - theta, pg0_next - theta


@pytest.mark.parametrize("name", ["garnet", "token_tree"])
def test_pg_rule_is_entropy_regularised_pg_at_tau_zero_and_scales_linearly_with_eta(name):
    dz1, dz1_tau0 = _pg_steps(name, jnp.asarray(1.0))
    dz2, _ = _pg_steps(name, jnp.asarray(0.25))
    close(dz1, dz1_tau0, rtol=1e-12, atol=1e-16)
    close(dz2, 0.25 * dz1, rtol=1e-10, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Each rule's dz against the T4 table (docs/theory.md §3.4), from independent values
# --------------------------------------------------------------------------------------------

TABLE_RULES = [("pg", 0.0), ("npg", 0.0), ("pg_entropy", 0.3), ("npg_entropy", 0.3)]


@functools.lru_cache(maxsize=None)
def dz_vs_table(name):
    """``{rule: (dz of the rule, dz from the table)}`` for every rule of TABLE_RULES, one jit."""

    @jax.jit
    def go(eta):
        env, theta = ENVS[name]
        out = {}
        for rule, tau in TABLE_RULES:
            hp = dict(eta=eta, tau=jnp.asarray(tau)) if rule.endswith("entropy") else dict(eta=eta)
            _, theta_next, _ = run_rule(rule, env, theta, hp)
            if name == "garnet":
                ref = ref_mdp(env, theta, tau)
                d, pi, adv, gamma = ref["occ"], ref["pi"], ref["adv"], env.gamma
            else:
                pi, log_pi, _ = ref_policy(theta)
                soft_r = env.r - tau * log_pi
                d, adv, gamma = env.rho, soft_r - jnp.sum(pi * soft_r, -1, keepdims=True), 0.0
            if rule.startswith("pg"):
                dz = eta * (d / (1 - gamma))[:, None] * pi * adv
            else:
                dz = eta * adv
            out[rule] = (theta_next - theta, dz)
        return out

    return go(jnp.asarray(0.7))


@pytest.mark.parametrize("rule,tau", TABLE_RULES)
@pytest.mark.parametrize("name", ["contextual_bandit", "garnet"])
def test_rule_logit_change_equals_the_t4_table_formula_with_independent_values(name, rule, tau):
    actual, expected = dz_vs_table(name)[rule]
    assert float(jnp.max(jnp.abs(expected))) > 1e-3
    close(actual, expected, rtol=1e-9, atol=1e-13)


# --------------------------------------------------------------------------------------------
# T3: the covariance law is first order, its error second order
# --------------------------------------------------------------------------------------------

T3_RULES = [
    ("pg", {}),
    ("npg", {}),
    ("npg_entropy", {"tau": 0.1}),
    ("temp_reinforce", {"temp": 0.7}),
]


@functools.lru_cache(maxsize=None)
def bandit_t3(rule, extra):
    """``{eta: (realized dH, T3 prediction)}`` of one step of ``rule`` on BANDIT, etas vmapped."""
    etas = (0.02, 0.01)

    @jax.jit
    def go(eta):
        env, theta = BANDIT, THETA_BANDIT
        _, theta_next, _ = run_rule(rule, env, theta, dict(hparams(**dict(extra)), eta=eta))
        pi, log_pi, ent = ref_policy(theta)
        _, _, ent_next = ref_policy(theta_next)
        return ent_next[0] - ent[0], -ref_cov(pi, log_pi, theta_next - theta)[0]

    real, pred = jax.vmap(go)(jnp.asarray(etas))
    return {eta: (float(real[i]), float(pred[i])) for i, eta in enumerate(etas)}


@pytest.mark.parametrize("rule,extra", T3_RULES)
def test_bandit_entropy_change_minus_covariance_prediction_quarters_when_eta_halves(rule, extra):
    (real1, pred1), (real2, pred2) = bandit_t3(rule, tuple(extra.items())).values()
    assert abs(pred1) > 1e-4  # the first-order term is really there ...
    close(pred1 / pred2, 2.0, rtol=1e-9)  # ... and exactly linear in eta
    err1, err2 = abs(real1 - pred1), abs(real2 - pred2)
    assert err1 < 0.1 * abs(pred1)
    assert 3.0 < err1 / err2 < 5.0, err1 / err2


GARNET_ETAS = (0.04, 0.02, 0.01)


@functools.lru_cache(maxsize=None)
def garnet_t3_all(rule, extra):
    """``(metrics, mine)`` dicts of ``[len(GARNET_ETAS)]`` arrays: package vs independent values."""
    go = functools.partial(_garnet_t3, rule, hparams(**dict(extra)))
    return jax.jit(jax.vmap(go))(jnp.asarray(GARNET_ETAS))


def _garnet_t3(rule, hp, eta):
    env, theta = GARNET, THETA_GARNET
    hp = dict(hp, eta=eta)
    tau = hp.get("tau", 0.0)
    ev, theta_next, _ = run_rule(rule, env, theta, hp)
    ev_next = env.evaluate(theta_next, tau)
    metrics = diagnostics.step_metrics(ev, ev_next, theta_next - theta)
    ref, ref_next = ref_mdp(env, theta, tau), ref_mdp(env, theta_next, tau)
    d, d1 = ref["occ"], ref_next["occ"]
    mine = {
        "dH_realized": d1 @ ref_next["ent"] - d @ ref["ent"],
        "dH_within": d @ (ref_next["ent"] - ref["ent"]),
        "dH_shift": (d1 - d) @ ref_next["ent"],
        "dH_pred_cov": -d @ ref_cov(ref["pi"], ref["log_pi"], theta_next - theta),
    }
    return {k: metrics[k] for k in mine}, mine


def garnet_t3(rule, extra, eta):
    metrics, mine = garnet_t3_all(rule, tuple(extra.items()))
    i = GARNET_ETAS.index(eta)
    for name, value in mine.items():
        close(metrics[name][i], value[i], rtol=1e-9, atol=1e-15, msg=name)
    return {k: float(v[i]) for k, v in mine.items()}


@pytest.mark.parametrize("rule,extra", T3_RULES)
def test_garnet_within_state_entropy_change_minus_covariance_prediction_quarters_when_eta_halves(rule, extra):
    eta = 0.02
    m1, m2 = garnet_t3(rule, extra, eta), garnet_t3(rule, extra, eta / 2)
    for m in (m1, m2):
        # The decomposition is an identity, not an approximation.
        close(m["dH_realized"], m["dH_within"] + m["dH_shift"], rtol=1e-10, atol=1e-16)
    assert abs(m1["dH_pred_cov"]) > 1e-5
    err1 = abs(m1["dH_within"] - m1["dH_pred_cov"])
    err2 = abs(m2["dH_within"] - m2["dH_pred_cov"])
    assert err1 < 0.1 * abs(m1["dH_pred_cov"])
    assert 3.0 < err1 / err2 < 5.0, err1 / err2


@pytest.mark.parametrize("rule,extra", [("pg", {}), ("npg", {})])
def test_garnet_distribution_shift_term_is_first_order_in_eta_not_second(rule, extra):
    etas = [0.04, 0.02, 0.01]
    steps = [garnet_t3(rule, extra, eta) for eta in etas]
    shifts = [m["dH_shift"] for m in steps]
    per_eta = [abs(s) / eta for s, eta in zip(shifts, etas)]
    # shift / eta tends to a non-zero constant: a fixed share of the first-order change, not a
    # vanishing one (here 11% of it under PG, 2% under NPG, at every eta)
    assert abs(shifts[-1]) > 0.01 * abs(steps[-1]["dH_pred_cov"])
    for big, small in zip(shifts, shifts[1:]):
        assert 1.6 < big / small < 2.4, big / small  # a second-order term would give ~4
    close(per_eta[1], per_eta[2], rtol=0.15)


# --------------------------------------------------------------------------------------------
# T4: every closed form is T3 evaluated on the rule's own dz
# --------------------------------------------------------------------------------------------

T4_RULES = [
    ("pg", {}),
    ("npg", {}),
    ("pg_entropy", {"tau": 0.25}),
    ("npg_entropy", {"tau": 0.25}),
    ("temp_reinforce", {"temp": 0.5}),
    ("temp_reinforce", {"temp": 1.0}),
    ("temp_reinforce", {"temp": 2.0}),
]


def independent_occupancy(name, env, theta):
    if name == "garnet":
        return ref_mdp(env, theta, 0.0)["occ"]
    if name in ("token_tree", "random_token_tree"):
        return ref_tree(env, theta, 0.0)["occ"]
    return env.rho


@functools.lru_cache(maxsize=None)
def closed_vs_t3(name):
    """``[(closed form, T3 on dz)]`` for every rule of T4_RULES on ``ENVS[name]``, one jit."""

    @jax.jit
    def go(eta):
        env, theta = ENVS[name]
        pi, log_pi, _ = ref_policy(theta)
        d = independent_occupancy(name, env, theta)
        out = []
        for rule, extra in T4_RULES:
            _, theta_next, info = run_rule(rule, env, theta, dict(hparams(**extra), eta=eta))
            out.append((info["dH_pred_closed"], -d @ ref_cov(pi, log_pi, theta_next - theta)))
        return out

    return [tuple(map(float, pair)) for pair in go(jnp.asarray(0.5))]


@pytest.mark.parametrize("name", ["contextual_bandit", "garnet", "token_tree"])
@pytest.mark.parametrize("index", range(len(T4_RULES)), ids=[f"{r}-{e}" for r, e in T4_RULES])
def test_rule_closed_form_entropy_change_equals_covariance_law_on_its_own_logit_change(name, index):
    closed, t3 = closed_vs_t3(name)[index]
    assert abs(t3) > 1e-6
    assert abs(closed - t3) <= 1e-10 * abs(t3), (closed, t3)


def _cbandit_table(rule, hp):
    env, theta, eta = BINARY_CBANDIT, THETA_CB, hp["eta"]
    _, _, info = run_rule(rule, env, theta, hp)
    pi, log_pi, _ = ref_policy(theta)
    r, d, tau = env.r, env.rho, hp.get("tau", 0.0)
    adv_tau = (r - tau * log_pi) - jnp.sum(pi * (r - tau * log_pi), -1, keepdims=True)
    if rule in ("pg", "pg_entropy"):
        dh = -eta * d * ref_cov(pi, log_pi, pi * adv_tau)
    elif rule == "npg":
        dh = -eta * ref_cov(pi, log_pi, adv_tau)
    elif rule == "npg_entropy":  # Q_tau = r in a bandit
        dh = -eta * (ref_cov(pi, log_pi, r) - tau * ref_cov(pi, log_pi, log_pi))
    else:
        pi_t, _, _ = ref_policy(theta / hp["temp"])
        num_actions = theta.shape[1]
        dh = jnp.zeros(theta.shape[0])
        for b in range(num_actions):  # b in A*(s): the binary reward r[s, b] masks the others out
            indicator = jnp.broadcast_to(jnp.eye(num_actions)[b], theta.shape)
            dh = dh + r[:, b] * pi_t[:, b] * ref_cov(pi, theta, indicator - pi)
        dh = -eta * d * dh
    return info["dH_pred_closed"], d @ dh


@functools.lru_cache(maxsize=None)
def cbandit_table():
    go = jax.jit(lambda eta: [_cbandit_table(rule, dict(hparams(**extra), eta=eta))
                              for rule, extra in T4_RULES])
    return [tuple(map(float, pair)) for pair in go(jnp.asarray(0.5))]


@pytest.mark.parametrize("index", range(len(T4_RULES)), ids=[f"{r}-{e}" for r, e in T4_RULES])
def test_contextual_bandit_closed_forms_equal_the_t4_table_computed_in_the_test(index):
    closed, expected = cbandit_table()[index]
    assert abs(expected) > 1e-5
    close(closed, expected, rtol=1e-10)


@jax.jit
def _garnet_npg_entropy(eta, tau):
    env, theta = GARNET, THETA_GARNET
    _, _, info = run_rule("npg_entropy", env, theta, dict(eta=eta, tau=tau))
    ref = ref_mdp(env, theta, tau)
    pi, log_pi = ref["pi"], ref["log_pi"]
    dh = -eta * (ref_cov(pi, log_pi, ref["q"]) - tau * ref_cov(pi, log_pi, log_pi))
    return info["dH_pred_closed"], ref["occ"] @ dh


def test_npg_entropy_closed_form_equals_table_on_a_garnet_with_soft_q_from_linear_solve():
    closed, expected = map(float, _garnet_npg_entropy(jnp.asarray(0.5), jnp.asarray(0.25)))
    assert abs(expected) > 1e-5
    close(closed, expected, rtol=1e-9)


def test_runner_step_reports_closed_form_equal_to_covariance_prediction_and_the_rule_step():
    env, theta = GARNET, THETA_GARNET
    hp = hparams(eta=0.5, tau=0.25)

    @jax.jit
    def go(hp):
        state = init_state(theta, env, hp, jax.random.PRNGKey(0), rule="npg_entropy",
                           opt_name="sgd")
        new, metrics = step(state, env, hp, jnp.asarray(0), rule="npg_entropy", opt_name="sgd",
                            pass_at=())
        ref = ref_mdp(env, theta, hp["tau"])
        pred = -ref["occ"] @ ref_cov(ref["pi"], ref["log_pi"], hp["eta"] * ref["adv"])
        return new.theta, metrics, theta + hp["eta"] * ref["adv"], pred, ref["J"]

    theta_next, metrics, theta_expected, pred, J = go(hp)
    close(theta_next, theta_expected, rtol=1e-10, atol=1e-14)
    close(metrics["dH_pred_cov"], pred, rtol=1e-9)
    close(metrics["dH_pred_closed"], pred, rtol=1e-9)
    close(metrics["return_reg"], J, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Temperature REINFORCE
# --------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames="name")
def _pg_vs_temp_one(name):
    env, theta = ENVS[name]
    eta = jnp.asarray(0.7)
    _, pg_next, pg_info = run_rule("pg", env, theta, dict(eta=eta))
    _, tr_next, tr_info = run_rule("temp_reinforce", env, theta, dict(eta=eta, temp=jnp.asarray(1.0)))
    return pg_next - theta, tr_next - theta, pg_info["dH_pred_closed"], tr_info["dH_pred_closed"]


@pytest.mark.parametrize("name", ["bandit", "contextual_bandit", "token_tree", "garnet"])
def test_temperature_reinforce_at_temperature_one_is_exactly_the_pg_update(name):
    pg_dz, tr_dz, pg_closed, tr_closed = _pg_vs_temp_one(name)
    assert float(jnp.max(jnp.abs(pg_dz))) > 1e-3
    close(tr_dz, pg_dz, rtol=1e-10, atol=1e-14)
    close(tr_closed, pg_closed, rtol=1e-10, atol=1e-16)


@jax.jit
def _binary_temp_reinforce(hp):
    env, theta = BINARY_CBANDIT, THETA_CB
    _, theta_next, _ = run_rule("temp_reinforce", env, theta, hp)
    return theta_next - theta, ref_policy(theta)[0], ref_policy(theta / hp["temp"])[0]


@pytest.mark.parametrize("temp", [0.5, 0.7, 1.0, 2.0])
def test_temperature_reinforce_on_a_binary_contextual_bandit_matches_the_hand_formula(temp):
    eta = 0.3
    actual, pi, pi_t = map(np.asarray, _binary_temp_reinforce(hparams(eta=eta, temp=temp)))
    r, rho = np.asarray(BINARY_CBANDIT.r), np.asarray(BINARY_CBANDIT.rho)
    dz = np.zeros(actual.shape)
    for s in range(dz.shape[0]):
        for a in range(dz.shape[1]):
            for b in np.flatnonzero(r[s] == 1.0):  # A*(s)
                dz[s, a] += pi_t[s, b] * (float(a == b) - pi[s, a])
            dz[s, a] *= eta * rho[s]
    close(actual, dz, rtol=1e-10, atol=1e-15)


@jax.jit
def _tree_temp_reinforce(hp):
    """``E_{o ~ pi_T}[R(o) grad_theta log pi(o)]`` by enumerating every response."""
    env, theta = TREE, THETA_TREE
    _, theta_next, _ = run_rule("temp_reinforce", env, theta, hp)
    weight = jax.lax.stop_gradient(env.rho[:, None] * ref_tree(env, theta, 0.0, hp["temp"])["prob"]
                                   * env.reward)
    score = jax.grad(lambda th: jnp.sum(weight * ref_tree(env, th, 0.0)["log_prob"]))(theta)
    return theta_next - theta, hp["eta"] * score


@pytest.mark.parametrize("temp", [0.5, 2.0])
def test_temperature_reinforce_on_the_token_tree_is_the_expected_score_of_responses_sampled_at_temp(temp):
    actual, expected = _tree_temp_reinforce(hparams(eta=0.4, temp=temp))
    assert float(jnp.max(jnp.abs(expected))) > 1e-3
    close(actual, expected, rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Identities and numerics
# --------------------------------------------------------------------------------------------

@jax.jit
def _identities(theta, y):
    pi, log_pi, _ = ref_policy(theta)
    return dict(cov_log_pi=softmax.cov(pi, log_pi, y), cov_theta=softmax.cov(pi, theta, y),
                ref_cov_theta=ref_cov(pi, theta, y), var=softmax.var(pi, y), ref_var=ref_cov(pi, y, y),
                mean=softmax.mean(pi, y), ref_mean=jnp.sum(pi * y, -1),
                ent=softmax.entropy(theta), h2=softmax.renyi2(pi))


def test_covariance_with_log_pi_equals_covariance_with_logits():
    theta = random_logits(51, 512, 5)
    y = jnp.asarray(np.random.default_rng(52).normal(size=theta.shape))
    out = _identities(theta, y)
    close(out["cov_log_pi"], out["cov_theta"], rtol=1e-9, atol=1e-12)
    close(out["cov_log_pi"], out["ref_cov_theta"], rtol=1e-7, atol=1e-10)
    close(out["var"], out["ref_var"], rtol=1e-9, atol=1e-12)
    close(out["mean"], out["ref_mean"], rtol=1e-12, atol=1e-15)


def test_shannon_entropy_is_at_least_renyi2_entropy_with_equality_at_uniform():
    theta = random_logits(53, 512, 5).at[0].set(jnp.zeros(5))
    out = _identities(theta, jnp.zeros_like(theta))
    ent, h2 = np.asarray(out["ent"]), np.asarray(out["h2"])
    assert np.all(ent >= h2 - 1e-12)
    assert np.mean(ent - h2 > 1e-3) > 0.5  # not trivially equal
    close(ent[0], np.log(5), rtol=1e-14)
    close(h2[0], np.log(5), rtol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_entropy_is_finite_and_zero_at_one_hot_logits(dtype):
    theta = jnp.array([[1000.0, 0.0, 0.0], [0.0, -1000.0, 1000.0], [-1e30, 0.0, -1e30]], dtype)

    @jax.jit
    def go(theta):
        log_uniform = jax.nn.log_softmax(jnp.zeros_like(theta))
        _, log_pi, env_ent = env_policy(theta)
        return dict(ent=softmax.entropy(theta), env_ent=env_ent,
                    grad=jax.grad(lambda t: jnp.sum(softmax.entropy(t)))(theta),
                    kl=softmax.kl(log_pi, log_uniform))

    out = {k: np.asarray(v) for k, v in go(theta).items()}
    assert out["ent"].dtype == dtype
    for k in ("ent", "env_ent", "grad", "kl"):
        assert np.all(np.isfinite(out[k])), k
    close(out["ent"], 0.0, rtol=0, atol=1e-6)
    close(out["env_ent"], 0.0, rtol=0, atol=1e-6)
    close(out["kl"], np.log(3.0), rtol=1e-5)
