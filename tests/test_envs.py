"""Exact evaluation of the environments against independent computations (docs/theory.md §1).

Every expected value here is computed in plain numpy inside the test: iterative policy evaluation
and power-series occupancies for MDPs, brute-force enumeration of all ``V^L`` responses for the
token tree, closed forms for bandits. Nothing is compared against earlier output of the package.
"""

import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import entropy_sim as es  # noqa: E402
from entropy_sim import envs, errors, policies  # noqa: E402


# One compiled evaluation per environment shape; tau is traced, so both tau values share it.
EVAL = jax.jit(lambda env, theta, tau: env.evaluate(theta, tau))


def evaluate(env, theta, tau=0.0):
    return EVAL(env, jnp.asarray(theta, jnp.float64), jnp.asarray(tau, jnp.float64))


def normal(seed, shape, scale=1.0):
    """Random logits from numpy (cheaper than compiling a jax.random call per shape)."""
    return scale * np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------------------- numpy references

def np_policy(theta):
    """``(pi, log_pi, H)`` of ``softmax(theta)`` over the last axis, in numpy float64."""
    theta = np.asarray(theta, np.float64)
    z = theta - theta.max(axis=-1, keepdims=True)
    log_pi = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    pi = np.exp(log_pi)
    return pi, log_pi, -(pi * log_pi).sum(axis=-1)


def iterative_policy_evaluation(P, r, gamma, pi, log_pi, tau=0.0, tol=1e-14):
    """Soft ``V, Q, A`` by repeating ``V <- r_pi + tau H + gamma P_pi V`` until it stops moving."""
    P, r = np.asarray(P, np.float64), np.asarray(r, np.float64)
    ent = -(pi * log_pi).sum(-1)
    p_pi = np.einsum("sa,sat->st", pi, P)
    r_pi = (pi * r).sum(-1) + tau * ent
    v = np.zeros(r.shape[0])
    for _ in range(100_000):
        v_new = r_pi + gamma * p_pi @ v
        if np.max(np.abs(v_new - v)) < tol:
            v = v_new
            break
        v = v_new
    else:
        raise AssertionError("policy evaluation did not converge")
    q = r + gamma * np.einsum("sat,t->sa", P, v)
    adv = q - tau * log_pi - v[:, None]
    return v, q, adv


def occupancy_by_iteration(P, gamma, mu, pi):
    """``d = (1 - gamma) sum_t gamma^t mu^T P_pi^t``, summed until the terms vanish."""
    p_pi = np.einsum("sa,sat->st", pi, np.asarray(P, np.float64))
    x = np.asarray(mu, np.float64).copy()
    d = np.zeros_like(x)
    weight = 1.0 - gamma
    while weight > 1e-18:
        d += weight * x
        x = x @ p_pi
        weight *= gamma
    return d


def tree_row(prompt, prefix, vocab, length):
    """Row of the prefix ``prefix`` of prompt ``prompt`` in the layout of envs/token_tree.py."""
    nodes = sum(vocab ** t for t in range(length))
    t = len(prefix)
    offset = sum(vocab ** j for j in range(t))
    return prompt * nodes + offset + sum(int(o) * vocab ** (t - 1 - i) for i, o in enumerate(prefix))


def brute_force_tree(theta, rewards, rho, vocab, length, tau):
    """Enumerate every response of every prompt. ``rewards(p, seq) -> float``.

    Returns per-prompt success, soft root value, per-token entropy, and the occupancy, soft Q and
    correct mask of every row.
    """
    pi, log_pi, ent = np_policy(theta)
    num_states = theta.shape[0]
    num_prompts = len(rho)
    seqs = list(itertools.product(range(vocab), repeat=length))
    success = np.zeros(num_prompts)
    soft_root = np.zeros(num_prompts)
    per_token_ent = np.zeros(num_prompts)
    occ = np.zeros(num_states)
    q = np.zeros((num_states, vocab))
    correct = np.zeros((num_states, vocab), bool)
    for p in range(num_prompts):
        for seq in seqs:
            rows = [tree_row(p, seq[:t], vocab, length) for t in range(length)]
            probs = [pi[rows[t], seq[t]] for t in range(length)]
            prob = float(np.prod(probs))
            reward = rewards(p, seq)
            ents = [ent[row] for row in rows]
            success[p] += prob * reward
            soft_root[p] += prob * (reward + tau * sum(ents))
            per_token_ent[p] += prob * sum(ents) / length
            for t in range(length):
                # Visits: the prefix o_<t is visited with the probability of its tokens.
                if all(o == 0 for o in seq[t:]):  # count each prefix once
                    occ[rows[t]] += rho[p] * float(np.prod(probs[:t])) / length
                # Soft Q(o_<t, o_t): expectation over the completion after o_t.
                q[rows[t], seq[t]] += float(np.prod(probs[t + 1:])) * (
                    reward + tau * sum(ents[t + 1:]))
                if reward > 0:
                    correct[rows[t], seq[t]] = True
    return success, soft_root, per_token_ent, occ, q, correct


# ----------------------------------------------------------------------------- MDPs

GARNET_SHAPES = [
    # (states, actions, branching, gamma): one state and action count (a random-number compile per
    # shape is slow), branching from one successor to all of them.
    (5, 3, 1, 0.5),
    (5, 3, 2, 0.9),
    (5, 3, 5, 0.95),
]
KEYS_PER_SHAPE = 2


@pytest.fixture(scope="module")
def garnets():
    """``[(env, theta)]``: two random Garnet MDPs of every shape, with random logits."""
    out = []
    for i, (states, actions, branching, gamma) in enumerate(GARNET_SHAPES):
        for j in range(KEYS_PER_SHAPE):
            env = envs.garnet(jax.random.PRNGKey(10 * i + j), states, actions, branching, gamma)
            out.append((env, normal(10 * i + j, (states, actions), 1.5)))
    return out


@pytest.fixture(scope="module")
def mdps(garnets):
    """The Garnets plus the structured MDPs (a chain and a slippery gridworld), with random logits."""
    structured = [envs.chain(6, 3, 0.8, 0.05), envs.gridworld(3, 0.9, 0.2)]
    return garnets + [(env, normal(50 + i, (env.num_states, env.num_actions), 2.0))
                      for i, env in enumerate(structured)]


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_mdp_values_from_the_linear_solve_agree_with_iterative_policy_evaluation(mdps, tau):
    for env, theta in mdps:
        ev = evaluate(env, theta, tau)
        pi, log_pi, ent = np_policy(theta)
        v, q, adv = iterative_policy_evaluation(env.P, env.r, float(env.gamma), pi, log_pi, tau)
        np.testing.assert_allclose(ev.pi, pi, rtol=0, atol=1e-13)
        np.testing.assert_allclose(ev.log_pi, log_pi, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ev.ent, ent, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ev.v, v, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ev.q, q, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ev.adv, adv, rtol=0, atol=1e-10)
        # The soft advantage is centred under the policy: E_pi[A_tau] = 0.
        np.testing.assert_allclose((pi * np.asarray(ev.adv)).sum(-1), 0.0, atol=1e-10)


def test_mdp_occupancy_is_a_distribution_equal_to_the_discounted_power_series(mdps):
    for i, (env, theta) in enumerate(mdps):
        states = env.num_states
        # A non-uniform start distribution, so that mu and d cannot coincide by symmetry.
        mu = np.random.default_rng(i).dirichlet(np.ones(states))
        env = envs.mdp(np.asarray(env.P), np.asarray(env.r), float(env.gamma), mu)
        occ = np.asarray(evaluate(env, theta).occ)
        assert occ.shape == (states,)
        assert np.all(occ >= -1e-15)
        assert occ.sum() == pytest.approx(1.0, abs=1e-12)
        pi, _, _ = np_policy(theta)
        np.testing.assert_allclose(occ, occupancy_by_iteration(env.P, float(env.gamma), mu, pi),
                                   atol=1e-12)


@pytest.mark.parametrize("states, gamma", [(2, 0.5), (7, 0.9), (40, 0.999)])
def test_the_mdp_solver_matches_numpy_on_both_systems_and_calls_no_lapack(states, gamma):
    """``solve_dominant`` (Gauss-Jordan without pivoting) against ``numpy.linalg.solve`` with
    pivoting, on ``I - gamma P`` and its transpose, to a relative error of the conditioning's order
    ``1e-16 / (1 - gamma)``; and the compiled MDP evaluation holds no LAPACK custom call (those can
    deadlock inside the runner's loops on jaxlib 0.10)."""
    from entropy_sim.envs.mdp import solve_dominant
    rng = np.random.default_rng(states)
    m = np.eye(states) - gamma * rng.dirichlet(np.full(states, 0.3), size=states)
    b = rng.standard_normal((2, states))
    x = np.asarray(solve_dominant(jnp.stack([m, m.T]), jnp.asarray(b)))
    tol = 1e-13 / (1 - gamma)
    for got, matrix, rhs in ((x[0], m, b[0]), (x[1], m.T, b[1])):
        want = np.linalg.solve(matrix, rhs)
        assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))
    env = envs.garnet(jax.random.PRNGKey(0), 6, 3, 2, 0.9)
    hlo = EVAL.lower(env, jnp.zeros((6, 3)), jnp.asarray(0.0)).compile().as_text()
    calls = [line for line in hlo.splitlines() if "custom-call" in line]
    assert not calls, calls[0][:400]


@pytest.mark.parametrize("tau", [0.0, 0.25])
def test_mdp_return_is_mu_dot_v_and_the_unregularised_return_removes_the_entropy_bonus(mdps, tau):
    for env, theta in mdps:
        gamma = float(env.gamma)
        ev = evaluate(env, theta, tau)
        pi, log_pi, ent = np_policy(theta)
        mu = np.asarray(env.mu)
        v_soft, _, _ = iterative_policy_evaluation(env.P, env.r, gamma, pi, log_pi, tau)
        v_plain, _, _ = iterative_policy_evaluation(env.P, env.r, gamma, pi, log_pi, 0.0)
        d = occupancy_by_iteration(env.P, gamma, mu, pi)
        assert float(env.horizon) == pytest.approx(1 / (1 - gamma))
        assert float(ev.ret_reg) == pytest.approx(mu @ v_soft, abs=1e-10)
        assert float(ev.ret) == pytest.approx(mu @ v_plain, abs=1e-10)
        assert float(ev.ret) == pytest.approx(
            float(ev.ret_reg) - tau * (1 / (1 - gamma)) * (d @ ent), abs=1e-10)
        assert float(ev.entropy) == pytest.approx(d @ ent, abs=1e-12)
        np.testing.assert_allclose(ev.success, [mu @ v_plain], atol=1e-10)


def test_garnet_transitions_are_row_stochastic_with_exactly_branching_successors(garnets):
    shapes = [shape for shape in GARNET_SHAPES for _ in range(KEYS_PER_SHAPE)]
    for (env, _), (states, actions, branching, gamma) in zip(garnets, shapes):
        P = np.asarray(env.P)
        assert P.shape == (states, actions, states)
        assert P.dtype == np.float64
        assert np.all(P >= 0)
        np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
        np.testing.assert_array_equal((P > 0).sum(-1), branching)
        r = np.asarray(env.r)
        assert r.shape == (states, actions) and np.all((r >= 0) & (r <= 1))
        np.testing.assert_allclose(np.asarray(env.mu), 1.0 / states)
        assert float(env.gamma) == gamma
    # Different keys give different MDPs.
    for i in range(0, len(garnets), KEYS_PER_SHAPE):
        assert not np.allclose(garnets[i][0].r, garnets[i + 1][0].r)
    # With branching > 1 the successors of a state-action pair are spread over several states.
    P = np.asarray(garnets[0][0].P)
    assert len({tuple(np.flatnonzero(row)) for row in P.reshape(-1, P.shape[-1])}) > 1


def test_chain_is_row_stochastic_and_moves_right_on_action_zero_and_back_otherwise():
    env = envs.chain(5, 3, 0.8, 0.05)
    P = np.asarray(env.P)
    assert P.shape == (5, 3, 5)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=0)
    for s in range(5):
        assert P[s, 0, min(s + 1, 4)] == 1.0
        np.testing.assert_array_equal(P[s, 1:, 0], 1.0)
    expected_r = np.zeros((5, 3))
    expected_r[4, 0] = 1.0
    expected_r[0, 1:] = 0.05
    np.testing.assert_array_equal(np.asarray(env.r), expected_r)
    np.testing.assert_array_equal(np.asarray(env.mu), np.eye(5)[0])


@pytest.mark.parametrize("size, slip", [(3, 0.0), (4, 0.2), (2, 1.0)])
def test_gridworld_is_row_stochastic_with_an_absorbing_rewarding_goal(size, slip):
    env = envs.gridworld(size, 0.9, slip)
    P = np.asarray(env.P)
    states = size * size
    assert P.shape == (states, 4, states)
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(P[states - 1, :, states - 1], 1.0)
    np.testing.assert_array_equal(np.asarray(env.r)[states - 1], 1.0)
    assert np.asarray(env.r)[:-1].sum() == 0
    # From the top-left corner, "down" (action 1) reaches the cell below with prob 1 - slip + slip/4.
    assert P[0, 1, size] == pytest.approx(1 - slip + slip / 4)


def test_a_hand_made_mdp_given_as_nested_lists_validates_and_evaluates_in_closed_form():
    # Two states, two actions. Action 0 stays, action 1 switches; reward 1 for staying in state 1.
    P = [[[1.0, 0.0], [0.0, 1.0]],
         [[0.0, 1.0], [1.0, 0.0]]]
    r = [[0.0, 0.0], [1.0, 0.0]]
    gamma = 0.5
    env = envs.mdp(P, r, gamma, [1.0, 0.0])
    assert isinstance(env, envs.TabularMDP)
    assert env.num_states == 2 and env.num_actions == 2
    # Uniform policy: P_pi = [[.5, .5], [.5, .5]], r_pi = [0, .5].
    # V = r_pi + gamma P_pi V  =>  V = r_pi + gamma * mean(V) * 1; mean(V) = 0.25 / (1 - 0.5) = 0.5.
    ev = evaluate(env, np.zeros((2, 2)))
    np.testing.assert_allclose(ev.v, [0.25, 0.75], atol=1e-14)
    assert float(ev.ret) == pytest.approx(0.25, abs=1e-14)
    # d = (1 - gamma) mu^T (I - gamma P_pi)^-1 = 0.5 * mu + 0.5 * (0.5, 0.5).
    np.testing.assert_allclose(ev.occ, [0.75, 0.25], atol=1e-14)


@pytest.mark.parametrize("bad, field", [
    (dict(P=[[[0.5, 0.4], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]), "P"),
    (dict(P=[[[1.5, -0.5], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]), "P"),
    (dict(gamma=1.0), "gamma"),
    (dict(mu=[0.5, 0.6]), "mu"),
    (dict(r=[[0.0], [1.0]]), "r"),
])
def test_a_malformed_hand_made_mdp_is_rejected_naming_the_field(bad, field):
    args = dict(P=[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]], r=[[0.0, 0.0], [1.0, 0.0]],
                gamma=0.9, mu=[1.0, 0.0])
    args.update(bad)
    with pytest.raises(errors.ConfigError) as info:
        envs.mdp(args["P"], args["r"], args["gamma"], args["mu"])
    assert info.value.field == field


# ----------------------------------------------------------------------------- token tree

TREES = [
    # (vocab, length, answers, rho)
    (2, 3, [[[0, 1, 1], [1, 1, 0]], [[0, 0, 0]]], [0.3, 0.7]),
    (3, 2, [[[2, 1]], [[0, 0], [0, 2], [1, 1]], []], [0.5, 0.25, 0.25]),
    (2, 1, [[[1]]], None),
    (3, 3, [[[0, 1, 2], [2, 2, 2], [2, 2, 0]]], None),
    (4, 2, [[[3, 0], [1, 2]], [[0, 1]]], [0.6, 0.4]),
]


@pytest.mark.parametrize("vocab, length, answers, rho", TREES)
@pytest.mark.parametrize("tau", [0.0, 0.4])
def test_token_tree_evaluation_equals_brute_force_enumeration_of_all_responses(
        vocab, length, answers, rho, tau):
    env = envs.token_tree(vocab, length, answers, rho)
    num_prompts = len(answers)
    rho_np = np.full(num_prompts, 1 / num_prompts) if rho is None else np.asarray(rho)
    nodes = sum(vocab ** t for t in range(length))
    assert env.num_states == num_prompts * nodes
    assert float(env.horizon) == length
    theta = normal(vocab * 31 + length, (env.num_states, vocab), 1.3)
    ev = evaluate(env, theta, tau)

    answer_sets = [{tuple(a) for a in prompt} for prompt in answers]
    rewards = lambda p, seq: float(tuple(seq) in answer_sets[p])  # noqa: E731
    success, soft_root, per_token_ent, occ, q, _ = brute_force_tree(
        np.asarray(theta), rewards, rho_np, vocab, length, tau)

    np.testing.assert_allclose(ev.success, success, atol=1e-12)
    assert float(ev.ret) == pytest.approx(rho_np @ success, abs=1e-12)
    assert float(ev.ret_reg) == pytest.approx(rho_np @ soft_root, abs=1e-12)
    assert float(ev.entropy) == pytest.approx(rho_np @ per_token_ent, abs=1e-12)
    np.testing.assert_allclose(ev.occ, occ, atol=1e-12)
    assert float(jnp.sum(ev.occ)) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(ev.q, q, atol=1e-12)
    roots = [tree_row(p, (), vocab, length) for p in range(num_prompts)]
    np.testing.assert_allclose(np.asarray(ev.v)[roots], soft_root, atol=1e-12)
    # A_tau = Q_tau - tau log pi - V_tau with V_tau = E_pi[Q_tau - tau log pi].
    pi, log_pi, _ = np_policy(theta)
    v = (pi * (q - tau * log_pi)).sum(-1)
    np.testing.assert_allclose(ev.v, v, atol=1e-12)
    np.testing.assert_allclose(ev.adv, q - tau * log_pi - v[:, None], atol=1e-12)
    # ret = ret_reg - tau * L * sum_s d(s) H(s).
    _, _, ent = np_policy(theta)
    assert float(ev.ret) == pytest.approx(float(ev.ret_reg) - tau * length * (occ @ ent), abs=1e-12)


@pytest.mark.parametrize("vocab, length, answers, rho", TREES)
def test_token_tree_correct_mask_and_last_level_q_match_brute_force(vocab, length, answers, rho):
    env = envs.token_tree(vocab, length, answers, rho)
    num_prompts = len(answers)
    rho_np = np.full(num_prompts, 1 / num_prompts) if rho is None else np.asarray(rho)
    answer_sets = [{tuple(a) for a in prompt} for prompt in answers]
    rewards = lambda p, seq: float(tuple(seq) in answer_sets[p])  # noqa: E731
    theta = normal(5, (env.num_states, vocab))
    *_, correct = brute_force_tree(theta, rewards, rho_np, vocab, length, 0.0)
    np.testing.assert_array_equal(np.asarray(env.correct_mask()), correct)

    # Q at the last level is the reward of the completed response, whatever the policy and tau.
    ev = evaluate(env, theta, 0.7)
    for p in range(num_prompts):
        for prefix in itertools.product(range(vocab), repeat=length - 1):
            row = tree_row(p, prefix, vocab, length)
            expected = [rewards(p, prefix + (a,)) for a in range(vocab)]
            np.testing.assert_array_equal(np.asarray(ev.q)[row], expected)
    assert float(env.optimal_return()) == pytest.approx(
        sum(rho_np[p] for p in range(num_prompts) if answer_sets[p]))


def test_all_sequences_lists_every_response_in_sequence_index_order():
    env = envs.token_tree(3, 3, [[[0, 0, 0]]])
    seqs = envs.all_sequences(3, 3)
    assert seqs.shape == (27, 3)
    np.testing.assert_array_equal(seqs, np.array(list(itertools.product(range(3), repeat=3))))
    for i, seq in enumerate(seqs):
        assert env.sequence_index(seq) == i


def test_random_token_tree_has_num_correct_answers_per_prompt_and_matches_brute_force():
    key = jax.random.PRNGKey(3)
    env = envs.random_token_tree(key, 3, 3, prompts=3, num_correct=4)
    reward = np.asarray(env.reward)
    assert reward.shape == (3, 27)
    assert set(np.unique(reward)) <= {0.0, 1.0}
    np.testing.assert_array_equal(reward.sum(-1), 4)
    assert not np.array_equal(reward[0], reward[1])  # prompts get their own answers
    seqs = [tuple(s) for s in envs.all_sequences(3, 3)]
    rewards = lambda p, seq: reward[p, seqs.index(tuple(seq))]  # noqa: E731
    theta = normal(4, (env.num_states, 3))
    ev = evaluate(env, theta)
    success, *_ = brute_force_tree(np.asarray(theta), rewards, np.full(3, 1 / 3), 3, 3, 0.0)
    np.testing.assert_allclose(ev.success, success, atol=1e-12)


def test_pass_at_k_columns_equal_one_minus_the_failure_probability_to_the_power_k():
    vocab, length = 2, 3
    answers = [[[0, 1, 1], [1, 0, 0]], [[1, 1, 1]]]
    rho = [0.4, 0.6]
    env = envs.token_tree(vocab, length, answers, rho)
    theta0 = normal(11, (env.num_states, vocab))
    res = es.run({"seeds": 1, "steps": 1, "dtype": "float64", "pass_at": [1, 3, 16],
                  "env": {"kind": "token_tree", "vocab": vocab, "length": length,
                          "answers": answers, "rho": rho},
                  "policy": {"init": "logits", "logits": theta0.tolist()},
                  "algo": {"name": "pg", "eta": 0.1}}, progress=False)
    answer_sets = [{tuple(a) for a in prompt} for prompt in answers]
    success, *_ = brute_force_tree(theta0, lambda p, s: float(tuple(s) in answer_sets[p]),
                                   np.asarray(rho), vocab, length, 0.0)
    for k in (1, 3, 16):
        expected = np.asarray(rho) @ (1 - (1 - success) ** k)
        assert res.arrays[f"pass_at_{k}"][0, 0, 0] == pytest.approx(expected, abs=1e-12)
    assert res.arrays["return"][0, 0, 0] == pytest.approx(np.asarray(rho) @ success, abs=1e-12)


# ----------------------------------------------------------------------------- contextual bandits

@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_contextual_bandit_has_occupancy_rho_q_equal_r_and_return_rho_dot_pi_r(tau):
    r = np.array([[1.0, 0.2, 0.0, 0.5], [0.3, 0.3, 0.9, 0.1], [0.0, 1.0, 0.4, 0.4]])
    rho = np.array([0.5, 0.2, 0.3])
    env = envs.contextual_bandit(r.tolist(), rho.tolist())
    theta = normal(0, (3, 4))
    ev = evaluate(env, theta, tau)
    pi, log_pi, ent = np_policy(theta)
    np.testing.assert_allclose(ev.occ, rho, atol=0)
    np.testing.assert_allclose(ev.q, r, atol=0)
    np.testing.assert_allclose(ev.success, (pi * r).sum(-1), atol=1e-14)
    assert float(ev.ret) == pytest.approx(rho @ (pi * r).sum(-1), abs=1e-14)
    v = (pi * r).sum(-1) + tau * ent
    np.testing.assert_allclose(ev.v, v, atol=1e-14)
    np.testing.assert_allclose(ev.adv, r - tau * log_pi - v[:, None], atol=1e-14)
    assert float(ev.ret_reg) == pytest.approx(rho @ v, abs=1e-14)
    assert float(env.horizon) == 1.0
    assert float(env.optimal_return()) == pytest.approx(rho @ r.max(-1))
    np.testing.assert_array_equal(np.asarray(env.correct_mask()), r == r.max(-1, keepdims=True))


def test_a_bandit_is_a_contextual_bandit_with_one_context():
    env = envs.bandit([0.1, 0.7, 0.3])
    assert env.num_states == 1 and env.num_actions == 3
    theta = jnp.array([[0.2, -1.0, 0.5]])
    pi, _, _ = np_policy(theta)
    ev = evaluate(env, theta)
    assert float(ev.ret) == pytest.approx(pi[0] @ [0.1, 0.7, 0.3], abs=1e-14)
    np.testing.assert_allclose(ev.occ, [1.0])


def test_every_environment_states_the_interface_explicitly():
    """Each environment class implements ``envs.Environment`` member by member: the runner and
    the rules ask it, never probe it for attributes."""
    cases = [  # env, tallies, correct_answers, binary_rewards
        (envs.bandit([1.0, 0.0, 0.0]), True, True, True),
        (envs.bandit([1.0, 0.0], noise="gaussian"), False, True, True),
        (envs.contextual_bandit([[1.0, 0.0], [0.5, 0.0]]), False, True, False),
        (envs.mdp([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]], [[0.0, 1.0], [1.0, 0.0]], 0.5),
         False, False, False),
        (envs.chain(3), False, False, False),
        (envs.token_tree(2, 2, [[[0, 1]], [[1, 1]]]), False, True, True),
    ]
    for env, tallies, correct, binary in cases:
        assert isinstance(env, envs.Environment), type(env)
        assert (env.tallies, env.correct_answers, env.binary_rewards()) == (tallies, correct, binary)
        assert env.prompt_weights().shape == (env.num_prompts,)
        assert env.evaluate(jnp.zeros((env.num_states, env.num_actions))).success.shape == (env.num_prompts,)
        if not isinstance(env, envs.ContextualBandit):  # multi-token responses: no tallies
            with pytest.raises(NotImplementedError):
                env.tally(jax.random.PRNGKey(0), jnp.full((1, env.num_actions), 0.5), 4)
        if not correct:
            with pytest.raises(NotImplementedError):
                env.correct_mask()


@pytest.mark.parametrize("arms, contexts, num_correct", [(10, 3, 9)])
def test_verifiable_generator_gives_exactly_num_correct_ones_per_prompt(arms, contexts, num_correct):
    keys = jax.random.split(jax.random.PRNGKey(arms), 6)
    batch = jax.vmap(lambda k: envs.random_bandit(k, arms, generator="verifiable",
                                                  contexts=contexts, num_correct=num_correct))(keys)
    r = np.asarray(batch.r)
    assert r.shape == (6, contexts, arms)
    assert set(np.unique(r)) == {0.0, 1.0}
    np.testing.assert_array_equal(r.sum(-1), num_correct)
    np.testing.assert_allclose(np.asarray(batch.rho), 1 / contexts)
    # The correct subsets are random: not all prompts and seeds share one.
    assert len({tuple(row) for row in r.reshape(-1, arms)}) > 1


# ----------------------------------------------------------------------------- initial policies

def _config(env, policy, seeds=3):
    return es.Config({"seeds": seeds, "steps": 1, "dtype": "float64", "env": env, "policy": policy,
                      "algo": {"name": "pg", "eta": 0.1}})


def test_probs_init_round_trips_through_softmax_for_a_vector_and_a_table():
    probs = [0.1, 0.6, 0.3]
    exp = es.build(_config({"kind": "bandit", "means": [0.0, 1.0, 0.5]},
                           {"init": "probs", "probs": probs}))
    assert exp.theta0.shape == (3, 1, 3)
    np.testing.assert_allclose(np_policy(exp.theta0)[0], np.broadcast_to(probs, (3, 1, 3)), atol=1e-15)

    table = [[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]
    exp = es.build(_config({"kind": "contextual_bandit", "r": [[1, 0, 0], [0, 1, 0]]},
                           {"init": "probs", "probs": table}))
    np.testing.assert_allclose(np_policy(exp.theta0)[0], np.broadcast_to(table, (3, 2, 3)), atol=1e-15)
    np.testing.assert_allclose(np_policy(policies.from_probs(jnp.asarray(table), 2))[0], table,
                               atol=1e-15)


def test_prior_init_puts_peak_on_one_random_action_and_shares_the_rest_equally():
    peak, arms = 0.7, 5
    r = np.random.default_rng(0).uniform(size=(6, arms))  # the rewards play no part here
    exp = es.build(_config({"kind": "contextual_bandit", "r": r.tolist()},
                           {"init": "prior", "peak": peak}, seeds=4))
    pi = np_policy(exp.theta0)[0]  # [N, S, A]
    assert pi.shape == (4, 6, arms)
    is_peak = np.isclose(pi, peak, atol=1e-12)
    np.testing.assert_array_equal(is_peak.sum(-1), 1)
    np.testing.assert_allclose(pi[~is_peak], (1 - peak) / (arms - 1), atol=1e-12)
    favoured = pi.argmax(-1)
    assert len(np.unique(favoured)) > 1  # drawn at random, not always the same action


def test_prior_init_with_correct_mass_puts_that_total_mass_on_the_correct_answers():
    peak, mass, arms = 0.6, 0.3, 5
    exp = es.build(_config({"kind": "contextual_bandit", "contexts": 8, "actions": arms,
                            "generator": "verifiable", "num_correct": 2},
                           {"init": "prior", "peak": peak, "correct_mass": mass}, seeds=4))
    pi = np_policy(exp.theta0)[0]  # [N, S, A]
    correct = np.asarray(exp.env.r) > 0.5  # [N, S, A], per-seed environments
    np.testing.assert_array_equal(correct.sum(-1), 2)  # the verifiable generator: 2 correct of 5
    np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.where(correct, pi, 0).sum(-1), mass, atol=1e-12)
    # Relative probabilities inside and outside the correct set are those of the plain prior.
    rest = (1 - peak) / (arms - 1)
    allowed = [1.0, peak / rest, rest / peak]
    for n, s in itertools.product(range(4), range(8)):
        for group in (correct[n, s], ~correct[n, s]):
            p = pi[n, s][group]
            ratios = p[:, None] / p[None, :]
            assert np.all(np.min(np.abs(ratios[..., None] - allowed), -1) < 1e-9)


def test_prior_init_with_correct_mass_on_a_token_tree_leaves_states_without_correct_answers_alone():
    peak, mass = 0.8, 0.4
    answers = [[[0, 1, 1]]]
    exp = es.build(_config({"kind": "token_tree", "vocab": 2, "length": 3, "answers": answers},
                           {"init": "prior", "peak": peak, "correct_mass": mass}, seeds=3))
    pi = np_policy(exp.theta0)[0]  # [N, 7, 2]
    mask = np.zeros((7, 2), bool)  # the rows along the path 0, 1, 1 of the correct answer
    for t, o in enumerate(answers[0][0]):
        mask[tree_row(0, tuple(answers[0][0][:t]), 2, 3), o] = True
    mixed = mask.any(-1)
    np.testing.assert_allclose(pi[:, mixed][mask[mixed][None].repeat(3, 0)], mass, atol=1e-12)
    off = pi[:, ~mixed]  # no correct continuation: the plain prior
    np.testing.assert_allclose(np.sort(off, -1), np.broadcast_to([1 - peak, peak], off.shape),
                               atol=1e-12)


# ----------------------------------------------------------------------------- reproducibility

RANDOM_RUN = {"steps": 20, "dtype": "float64",
              "env": {"kind": "contextual_bandit", "contexts": 3, "actions": 4},
              "policy": {"init": "gaussian", "scale": 1.0},
              "algo": {"name": "npg", "eta": [0.1, 0.5]}}


@pytest.fixture(scope="module")
def random_runs():
    """The same random config (per-seed bandits and starts) run with 3, 3 again and 5 seeds."""
    return (es.run({**RANDOM_RUN, "seeds": 3}, progress=False),
            es.run({**RANDOM_RUN, "seeds": 3}, progress=False),
            es.run({**RANDOM_RUN, "seeds": 5}, progress=False))


def test_the_same_config_run_twice_gives_identical_arrays(random_runs):
    a, b, _ = random_runs
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        assert a.arrays[name].shape == (2, 3, 20)
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    np.testing.assert_array_equal(a.final_theta, b.final_theta)
    assert a.metrics.equals(b.metrics)
    # The runs are not trivially constant: seeds differ from each other.
    assert not np.allclose(a.arrays["return"][:, 0], a.arrays["return"][:, 1])


def test_the_numbers_of_seed_n_do_not_change_when_the_number_of_seeds_grows(random_runs):
    small, _, large = random_runs
    for name in small.arrays:
        assert large.arrays[name].shape == (2, 5, 20)
        np.testing.assert_allclose(large.arrays[name][:, :3], small.arrays[name], rtol=1e-12,
                                   atol=1e-14, err_msg=name)
    np.testing.assert_allclose(large.final_theta[:, :3], small.final_theta, rtol=1e-12, atol=1e-14)
    # The extra seeds are genuinely new runs.
    for n in (3, 4):
        assert not np.allclose(large.arrays["return"][:, n], large.arrays["return"][:, 0])
    # The environments and starts of the first three seeds are bit-identical.
    e3 = es.build(es.Config({**RANDOM_RUN, "seeds": 3}))
    e5 = es.build(es.Config({**RANDOM_RUN, "seeds": 5}))
    np.testing.assert_array_equal(np.asarray(e5.env.r)[:3], np.asarray(e3.env.r))
    np.testing.assert_array_equal(np.asarray(e5.theta0)[:3], np.asarray(e3.theta0))


def _differs_across_seeds(leaf):
    leaf = np.asarray(leaf)
    return all(not np.array_equal(leaf[n], leaf[0]) for n in range(1, leaf.shape[0]))


@pytest.mark.parametrize("env, field", [
    ({"kind": "bandit", "arms": 4}, "r"),
    ({"kind": "token_tree", "vocab": 2, "length": 2, "prompts": 2, "num_correct": 2}, "reward"),
])
def test_per_seed_environments_differ_across_seeds_and_shared_makes_them_one(env, field):
    base = {"seeds": 4, "steps": 5, "dtype": "float64", "algo": {"name": "pg", "eta": 0.5}}
    own = es.build(es.Config({**base, "env": dict(env)}))
    assert own.env_per_seed
    assert getattr(own.env, field).shape[0] == 4
    assert _differs_across_seeds(getattr(own.env, field))
    shared = es.build(es.Config({**base, "env": {**env, "shared": True}}))
    assert not shared.env_per_seed
    assert getattr(shared.env, field).shape == getattr(own.env, field).shape[1:]


def test_with_a_shared_environment_every_seed_from_the_same_start_follows_the_same_run():
    base = {"seeds": 4, "steps": 5, "dtype": "float64", "policy": {"init": "uniform"},
            "algo": {"name": "pg", "eta": 0.5}, "env": {"kind": "bandit", "arms": 4}}
    own = es.run(base, progress=False)
    shared = es.run({**base, "env": {**base["env"], "shared": True}}, progress=False)
    ret_own, ret_shared = own.arrays["return"][0], shared.arrays["return"][0]  # [N, T]
    for n in range(1, 4):
        assert not np.allclose(ret_own[n, 1:], ret_own[0, 1:])
        np.testing.assert_array_equal(ret_shared[n], ret_shared[0])
        np.testing.assert_array_equal(shared.final_theta[0, n], shared.final_theta[0, 0])


# ----------------------------------------------------------------------------- kinds of your own

TWO_STATE_R = [[0.0, 0.0], [1.0, 1.0]]


def two_state_P(p):
    """State 0: action 1 reaches the rewarding state 1 with probability p; state 1 absorbs."""
    return [[[1.0, 0.0], [1 - p, p]], [[0.0, 1.0], [0.0, 1.0]]]


@pytest.fixture
def two_state():
    """A user-defined kind, registered the way the README shows, removed afterwards."""
    @es.envs.kind("two_state", es.envs.Field("p", "float", 0.5, "P(action 1 reaches state 1)",
                                             low=0.0, high=1.0),
                  es.envs.ROLLOUT_LENGTH, prepare=es.envs.with_rollout, replace=True)
    def build(cfg):
        return es.envs.mdp(two_state_P(cfg["p"]), TWO_STATE_R, gamma=0.9, mu=[1.0, 0.0])

    yield build
    del es.envs.KINDS["two_state"]


def test_a_user_defined_environment_kind_runs_from_a_config_dict(two_state):
    cfg = {"seeds": 2, "steps": 6, "dtype": "float64", "env": {"kind": "two_state", "p": 0.3},
           "policy": {"init": "gaussian"}, "algo": {"name": "npg", "eta": 0.5}}
    res = es.run(cfg, progress=False)
    assert res.config["env"] == {"kind": "two_state", "p": 0.3, "rollout_length": 66}
    assert res.arrays["entropy"].shape == (1, 2, 6)
    # The same numbers as the same MDP given as arrays.
    same = es.run({**cfg, "env": {"kind": "mdp", "P": two_state_P(0.3), "r": TWO_STATE_R,
                                  "gamma": 0.9, "mu": [1.0, 0.0]}}, progress=False)
    for name in res.arrays:
        np.testing.assert_array_equal(res.arrays[name], same.arrays[name], err_msg=name)
    # Its field is validated from its declaration, with the usual messages.
    assert es.Config({**cfg, "env": {"kind": "two_state"}})["env"]["p"] == 0.5
    for env, field, words in [({"p": 1.5}, "env.p", "<= 1.0"), ({"pp": 0.3}, "env.pp", "did you mean 'p'"),
                              ({"arms": 3}, "env.arms", "not used"),
                              ({"rollout_length": 0}, "env.rollout_length", ">= 1")]:
        with pytest.raises(es.ConfigError) as err:
            es.Config({**cfg, "env": {"kind": "two_state", **env}})
        assert err.value.field == field and words in str(err.value), str(err.value)
    # A sampled rule gets the rollout length it declares.
    sampled = es.build(es.Config({**cfg, "env": {"kind": "two_state", "rollout_length": 5},
                                  "algo": {"name": "reinforce", "eta": 0.5, "batch": 4}}))
    assert sampled.env.rollout_length == 5 and es.build(es.Config(cfg)).env.rollout_length == 0


def test_a_user_defined_random_kind_draws_one_environment_per_seed_like_a_built_in_one():
    es.envs.register(es.envs.EnvKind(
        "tiny_garnet", lambda v: es.envs.Draw(envs.garnet, dict(states=3, actions=2, branching=2,
                                                                gamma=v["gamma"])),
        (es.envs.Field("gamma", "float", 0.5, "discount", low=0.0, high=1.0, high_open=True),)))
    try:
        with pytest.raises(ValueError, match="registered already"):
            es.envs.register(es.envs.KINDS["tiny_garnet"])
        base = {"seeds": 3, "steps": 2, "dtype": "float64", "algo": {"name": "pg", "eta": 0.5}}
        mine = es.build(es.Config({**base, "env": {"kind": "tiny_garnet"}}))
        built_in = es.build(es.Config({**base, "env": {"kind": "mdp", "generator": "garnet", "states": 3,
                                                       "actions": 2, "gamma": 0.5}}))
        assert mine.env_per_seed and mine.theta0.shape == (3, 3, 2)  # shape found without drawing
        for a, b in zip(jax.tree.leaves(mine.env), jax.tree.leaves(built_in.env)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    finally:
        del es.envs.KINDS["tiny_garnet"]
