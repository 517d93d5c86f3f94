"""Sampled update rules against their exact expectations (docs/theory.md §1, §3, §4, §5).

Every sampled check averages ``N`` independent calls of a rule, each on its own key, inside one
``jax.jit`` and compares the Monte Carlo mean with its exact expectation: ``h d pi A`` from the exact
evaluation for REINFORCE, the ``batch = 0`` step for temperature REINFORCE (whose formula
test_theory.py checks by hand).
Tolerance: ``|mean - target| <= Z * se`` elementwise with ``se = std / sqrt(N)`` the standard error
of that very mean. The mean of ``N >= 20k`` i.i.d. draws is normal to an excellent approximation,
so one element fails a correct rule with probability ``2 * Phi(-5) = 5.7e-7``; a test compares at
most a few hundred elements, so a false alarm has probability below 1e-3 per test (and the keys
are fixed, so a run is reproducible anyway). The only absolute floor (1e-12) is on elements whose
``se`` is exactly 0, structural zeros where every sample is exactly 0. Every such comparison is
paired with a deliberately wrong target that the same tolerance must reject, so the test can fail.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from entropy_sim import diagnostics, envs, optim, prng, sampling  # noqa: E402
from entropy_sim.rules import registry as algorithms

Z = 5.0  # z-threshold; see the module docstring
FLOOR = 1e-12  # absolute tolerance only where se == 0 (structural zeros)
BATCH = 4  # small B: the (1 - 1/B) factor of the "mean" baseline is 25%, easy to resolve
ETA = 1.0  # sgd with eta = 1: the logit change is the direction itself


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------

def hparams(**kw):
    return {k: jnp.asarray(v, jnp.float64) for k, v in kw.items()}


def ref_cov(p, x, y):
    """The definition of docs/theory.md §1.4, uncentred: ``sum p x y - (sum p x)(sum p y)``
    (last axis)."""
    return jnp.sum(p * x * y, -1) - jnp.sum(p * x, -1) * jnp.sum(p * y, -1)


def exact_pg_direction(env, theta):
    """The expected REINFORCE direction ``h d(s) pi(a|s) A(s, a)`` (T4, tau = 0). ``[S, A]``."""
    ev = env.evaluate(theta, 0.0)
    return env.horizon * ev.occ[:, None] * ev.pi * ev.adv


def rule_next(rule, env, theta, hp, key, **options):
    """One sgd step of ``rule``: ``(theta_next, info)``. Traceable."""
    spec = algorithms.RULES[rule]
    opt = optim.make_optimizer("sgd", hp)
    ev = env.evaluate(theta, 0.0)
    theta_next, _, info = spec.fn(theta, opt.init(theta), ev, env, hp, key, opt, **options)
    return theta_next, info


def rule_step(rule, env, theta, hp, key, **options):
    """``(direction, info)`` of one sgd step, ``direction = (theta_next - theta) / eta``."""
    theta_next, info = rule_next(rule, env, theta, hp, key, **options)
    return (theta_next - theta) / hp["eta"], info


def moments(samples):
    """Mean over the leading axis and the standard error of that mean."""
    n = samples.shape[0]
    return jnp.mean(samples, 0), jnp.std(samples, 0, ddof=1) / jnp.sqrt(n)


def mc_moments(rule, env, theta, hp, keys, **options):
    """Mean and standard error of the directions of independent steps, one per key. Traceable."""
    return moments(jax.vmap(lambda k: rule_step(rule, env, theta, hp, k, **options)[0])(keys))


def within(mean, se, target):
    """Elementwise ``|mean - target| <= Z se`` (``FLOOR`` where ``se == 0``)."""
    mean, se, target = map(np.asarray, (mean, se, target))
    tol = np.where(se == 0.0, FLOOR, Z * se)
    return np.abs(mean - target) <= tol


def assert_matches(mean, se, target, msg):
    ok = within(mean, se, target)
    z = np.abs(np.asarray(mean) - np.asarray(target)) / np.maximum(np.asarray(se), 1e-300)
    assert ok.all(), f"{msg}: {np.sum(~ok)} of {ok.size} elements off, max z = {z.max():.2f}"


def assert_rejects(mean, se, wrong, msg):
    """The same tolerance must reject a wrong target somewhere, or the test has no power."""
    assert not within(mean, se, wrong).all(), f"{msg}: a wrong target passes the tolerance"


def logits(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


# --------------------------------------------------------------------------------------------
# Environments with non-uniform logits (uniform logits make many covariances vanish)
# --------------------------------------------------------------------------------------------

MEANS = [1.0, 0.2, 0.6, 0.0]
THETA_BANDIT = jnp.array([[-0.4, 0.9, 0.2, 0.5]])
CB_R = [[0.1, 0.9, 0.4, 0.0], [0.7, 0.2, 0.0, 1.0], [0.0, 0.5, 1.0, 0.3]]
CB_RHO = [0.6, 0.3, 0.1]
TREE_ANSWERS = [[[0, 1, 2], [2, 2, 0], [1, 0, 1]]]
# gamma = 0.5 and H = 40: the truncated tail of every return is at most gamma^H / (1 - gamma)
# ~ 2e-12 (rewards in [0, 1]); the standard errors below are ~1e-3, nine orders larger.
GAMMA, ROLLOUT = 0.5, 40
GARNET = dataclasses.replace(
    jax.jit(envs.garnet, static_argnums=(1, 2, 3, 4))(jax.random.PRNGKey(3), 5, 3, 2, GAMMA),
    rollout_length=ROLLOUT)


UNBIASED_ENVS = {
    # name: (env, theta, number of sampled steps)
    "bandit_deterministic": (envs.bandit(MEANS), THETA_BANDIT, 50_000),
    "bandit_bernoulli": (envs.bandit(MEANS, noise="bernoulli"), THETA_BANDIT, 50_000),
    "bandit_gaussian": (envs.bandit(MEANS, noise="gaussian", noise_std=0.3), THETA_BANDIT, 50_000),
    "contextual_bandit": (envs.contextual_bandit(CB_R, CB_RHO), logits(1, (3, 4)), 50_000),
    "token_tree": (envs.token_tree(3, 3, TREE_ANSWERS), logits(2, (13, 3), 0.8), 50_000),
    "garnet": (GARNET, logits(3, (5, 3)), 20_000),
}


# --------------------------------------------------------------------------------------------
# 1-2. REINFORCE is unbiased (the "mean" baseline: (1 - 1/B) times the gradient) and logs T4
# --------------------------------------------------------------------------------------------

BASELINES = ("none", "mean", "loo", "value")


def t4_pg_closed(env, theta, eta):
    """T4's PG row aggregated as the package documents it (rules/exact.py, docs/theory.md §3.2's
    ``within``): ``sum_s d(s) dH(s)`` with ``dH(s) = -eta h d(s) Cov_pi(log pi, pi A)``, i.e. T3
    on the expected ``dz = eta h d pi A``. The occupancy therefore enters squared."""
    log_pi = jax.nn.log_softmax(theta, axis=-1)
    pi = jnp.exp(log_pi)
    ev = env.evaluate(theta, 0.0)
    dh_s = -eta * env.horizon * ev.occ * ref_cov(pi, log_pi, pi * ev.adv)
    return jnp.sum(ev.occ * dh_s)


@functools.partial(jax.jit, static_argnames="n")
def _reinforce_moments(env, theta, key, n):
    """The exact direction and T4 value, and per baseline: MC mean and se of ``n`` sampled
    directions, and ``dH_pred_closed`` of one step. The baselines share their keys (XLA then draws
    the samples once), so their four estimates are correlated; each is checked on its own."""
    hp = hparams(eta=ETA)
    keys = jax.random.split(key, n)
    out = {"exact": exact_pg_direction(env, theta), "closed": t4_pg_closed(env, theta, hp["eta"])}
    for baseline in BASELINES:
        dirs, info = jax.vmap(lambda k: rule_step("reinforce", env, theta, hp, k, batch=BATCH,
                                                  baseline=baseline))(keys)
        out[baseline] = moments(dirs) + (info["dH_pred_closed"],)
    return out


@functools.lru_cache(maxsize=None)
def reinforce_results(name):
    env, theta, n = MC_ENVS[name]
    return jax.tree.map(np.asarray, _reinforce_moments(env, theta, jax.random.PRNGKey(10), n))


@pytest.mark.parametrize("name", list(UNBIASED_ENVS))
def test_reinforce_mean_direction_is_the_exact_policy_gradient_for_every_baseline(name):
    out = reinforce_results(name)
    exact = out["exact"]
    for baseline in ("none", "loo", "value"):
        mean, se, _ = out[baseline]
        assert_matches(mean, se, exact, f"{name}/{baseline}")
        assert_rejects(mean, se, 1.1 * exact, f"{name}/{baseline} vs 1.1 x exact")
    mean, se, _ = out["mean"]
    assert_matches(mean, se, (1.0 - 1.0 / BATCH) * exact, f"{name}/mean")
    assert_rejects(mean, se, exact, f"{name}/mean without the (1 - 1/B) factor")


@pytest.mark.parametrize("name", list(UNBIASED_ENVS))
def test_reinforce_logs_the_pg_closed_form_entropy_change_scaled_for_the_mean_baseline(name):
    out = reinforce_results(name)
    closed = float(out["closed"])
    assert abs(closed) > 1e-4  # a non-degenerate policy: the comparison means something
    for baseline in BASELINES:
        logged = out[baseline][2]  # one value per key; the closed form does not depend on it
        expected = closed * (1.0 - 1.0 / BATCH if baseline == "mean" else 1.0)
        np.testing.assert_allclose(logged, expected, rtol=1e-10, err_msg=f"{name}/{baseline}")


# A deterministic cycle in which every action of a state has the same reward and successor: every
# Q(s, a) = V(s), so with the exact value baseline each token's weight gamma^t (G_t - V(s_t)) is
# only the truncated tail -gamma^H V(s_H) ~ 1e-12 (gamma = 0.5, H = 40) and every sampled
# direction vanishes, though the actions are random. Without the discount on the baseline (or
# with no baseline) the weights are O(1) and so are the directions. Same shapes as GARNET, so
# _reinforce_moments reuses its compilation.
CYCLE = dataclasses.replace(
    envs.mdp([[np.eye(5)[(s + 1) % 5]] * 3 for s in range(5)],
             [[0.3] * 3, [1.0] * 3, [0.0] * 3, [0.6] * 3, [0.1] * 3], GAMMA),
    rollout_length=ROLLOUT)
MC_ENVS = {**UNBIASED_ENVS, "cycle": (CYCLE, logits(4, (5, 3)), UNBIASED_ENVS["garnet"][2])}


def test_value_baseline_is_an_exact_control_variate_when_all_actions_are_equivalent():
    out = reinforce_results("cycle")
    n = MC_ENVS["cycle"][2]
    mean, se, _ = out["value"]
    assert np.abs(mean).max() < 1e-9 and se.max() * np.sqrt(n) < 1e-9, (mean, se)
    # The actions are random: without a baseline the sampled directions are O(1).
    assert out["none"][1].max() * np.sqrt(n) > 0.1


# --------------------------------------------------------------------------------------------
# 3. Temperature REINFORCE: at T = 1 it is REINFORCE; at T != 1 its samples average to batch=0
# --------------------------------------------------------------------------------------------

TREE2 = envs.token_tree(2, 3, [[[0, 1, 1], [1, 0, 0]], [[1, 1, 1]]], rho=[0.7, 0.3])
TEMP_ENVS = {
    # name: (env, theta). The bandit has binary (verifiable) rewards, the contextual bandit not.
    "binary_bandit": (envs.bandit([0.0, 1.0, 0.0, 1.0, 0.0]), jnp.array([[0.3, -0.2, 1.0, 0.1, -0.7]])),
    "contextual_bandit": (envs.contextual_bandit(CB_R, CB_RHO), logits(1, (3, 4))),
    "token_tree": (TREE2, logits(5, (14, 2), 0.8)),
}
TEMP_ONE_KEYS = 8


@functools.partial(jax.jit, static_argnames="n")
def _temp_moments(env, theta, key, temp, n):
    """For ``temp`` (traced: both temperatures of an environment share one compilation): the
    exact (batch = 0) direction, the MC mean and se of ``n`` sampled (batch = B) directions and the
    T = 1 exact direction; and, at T = 1, ``theta_next`` of temp_reinforce and of REINFORCE without
    baseline on the same few keys."""
    hp = dict(hparams(eta=ETA), temp=temp)
    expected, _ = rule_step("temp_reinforce", env, theta, hp, key, batch=0)
    mean, se = mc_moments("temp_reinforce", env, theta, hp, jax.random.split(key, n), batch=BATCH)
    hp_one = hparams(eta=0.3, temp=1.0)

    def at_one(k):
        tr, _ = rule_next("temp_reinforce", env, theta, hp_one, k, batch=BATCH)
        rf, _ = rule_next("reinforce", env, theta, hp_one, k, batch=BATCH, baseline="none")
        return tr, rf

    tr, rf = jax.vmap(at_one)(jax.random.split(jax.random.fold_in(key, 1), TEMP_ONE_KEYS))
    return expected, mean, se, exact_pg_direction(env, theta), tr, rf


@functools.lru_cache(maxsize=None)
def temp_results(name, temp):
    env, theta = TEMP_ENVS[name]
    out = _temp_moments(env, theta, jax.random.PRNGKey(12), jnp.asarray(temp, jnp.float64), 50_000)
    return tuple(map(np.asarray, out))


@pytest.mark.parametrize("name", ["binary_bandit", "token_tree"])
def test_sampled_temperature_reinforce_at_temperature_one_is_reinforce_without_baseline(name):
    theta = np.asarray(TEMP_ENVS[name][1])
    tr, rf = temp_results(name, 0.6)[4:]  # computed at T = 1 whatever the temp argument
    # Same samples (theta / 1 == theta), same weights R, same score: the same step, to rounding.
    np.testing.assert_allclose(tr, rf, rtol=0, atol=1e-12)
    # A batch without a correct response takes no step; most of these batches have one.
    moved = np.sum(np.abs(tr - theta).max(axis=(1, 2)) > 1e-3)
    assert moved >= TEMP_ONE_KEYS // 2, moved


@pytest.mark.parametrize("temp", [0.6, 1.8])
@pytest.mark.parametrize("name", list(TEMP_ENVS))
def test_sampled_temperature_reinforce_averages_to_its_exact_expectation(name, temp):
    expected, mean, se, at_one = temp_results(name, temp)[:4]
    assert_matches(mean, se, expected, f"{name} T={temp}")
    # Power: the T = 1 expectation (the exact PG direction; samples drawn at theta, not theta / T)
    # must be rejected, and so must a 10% error.
    assert_rejects(mean, se, at_one, f"{name} T={temp} vs the T = 1 direction")
    assert_rejects(mean, se, 1.1 * expected, f"{name} T={temp} vs 1.1 x expected")


# --------------------------------------------------------------------------------------------
# 4. Theorem 4.3 on random bandit policies, and diagnostics.temperature_law
# --------------------------------------------------------------------------------------------

def delta_h(theta, r, temp, eta):
    """T4's last row (docs/theory.md §3.4) for one bandit state, written from the definitions:
    ``DeltaH(T) = -eta sum_{b in A*} pi_T(b) Cov_pi(theta, 1[. = b] - pi)``, binary ``r`` masking
    the incorrect ``b``. ``theta, r: [A]``."""
    pi = jax.nn.softmax(theta)
    pi_t = jax.nn.softmax(theta / temp)
    eye = jnp.eye(theta.shape[0])  # row b: the indicator 1[. = b]
    cov_b = ref_cov(pi[None], theta[None], eye - pi[None])  # [A] one covariance per b
    return -eta * jnp.sum(r * pi_t * cov_b)


THM_ETA = 0.7
FD_STEP = 1e-5  # central difference: error ~ FD_STEP^2 |DeltaH'''| + eps / FD_STEP ~ 1e-10


@jax.jit
def _theorem_43(instances):
    """``instances``: one ``(theta, r, temp)`` per action count; one compilation for all."""
    def one(th, rr, t):
        eta = jnp.asarray(THM_ETA)
        f = lambda T: delta_h(th, rr, T, eta)  # noqa: E731
        one_ = jnp.ones(())
        env = envs.ContextualBandit(r=rr[None], rho=jnp.ones(1), noise_std=jnp.zeros(()))
        law = diagnostics.temperature_law(env.evaluate(th[None], 0.0), th[None], t, eta)
        return {"h1": f(one_), "slope": jax.grad(f)(one_),
                "fd": (f(one_ + FD_STEP) - f(one_ - FD_STEP)) / (2 * FD_STEP), "h_temp": f(t),
                **{k: law[k] for k in ("dH_temp", "dH_dT", "thm43_premise", "thm43_conclusion")}}
    return [jax.vmap(one)(*inst) for inst in instances]


def random_instances(num_actions, count, seed):
    """``count`` random bandit policies: logits N(0, scale^2) with scale log-uniform on [0.05, 8],
    binary rewards with 1..A-1 correct actions at random positions, temperatures in [0.3, 3]."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(np.log(0.05), np.log(8.0), count))
    theta = scale[:, None] * rng.standard_normal((count, num_actions))
    correct = rng.integers(1, num_actions, count)  # 1 .. A - 1
    rank = np.argsort(np.argsort(rng.random((count, num_actions)), axis=1), axis=1)
    r = (rank < correct[:, None]).astype(np.float64)
    return theta, r, rng.uniform(0.3, 3.0, count)


THM_ACTIONS = (3, 5, 10)


@functools.lru_cache(maxsize=None)
def theorem_results():
    out = _theorem_43([random_instances(a, 2000, seed=a) for a in THM_ACTIONS])
    return dict(zip(THM_ACTIONS, jax.tree.map(np.asarray, out)))


@pytest.mark.parametrize("num_actions", THM_ACTIONS)
def test_theorem_4_3_collapse_at_t1_implies_hotter_sampling_raises_entropy(num_actions, record_property):
    out = theorem_results()[num_actions]
    # jax.grad of our DeltaH against a central finite difference.
    np.testing.assert_allclose(out["slope"], out["fd"], rtol=1e-6, atol=1e-9)
    premise = out["h1"] < 0
    # Theorem 4.3 on every instance: DeltaH(1) < 0 implies dDeltaH/dT(1) > 0.
    assert np.all(out["slope"][premise] > 0), np.flatnonzero(premise & (out["slope"] <= 0))
    # Not vacuous: the premise holds on a non-trivial fraction (about half of them, in fact).
    assert 0.05 < premise.mean() < 0.95, premise.mean()
    record_property("premise_fraction", float(premise.mean()))
    # The package's diagnostic: same numbers, and its theorem flags agree with ours (a bandit has
    # one state with d = 1, so both flags are exactly 0 or 1).
    # atol: DeltaH is a sum of O(|theta| pi) terms that can cancel to ~0; the two codes round
    # differently at ~1e-16 of those terms.
    np.testing.assert_allclose(out["dH_temp"], out["h_temp"], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(out["dH_dT"], out["slope"], rtol=1e-9, atol=1e-13)
    clear = np.abs(out["h1"]) > 1e-12  # a sign at rounding level may legitimately differ
    np.testing.assert_array_equal(out["thm43_premise"][clear], premise[clear].astype(np.float64))
    np.testing.assert_array_equal(out["thm43_conclusion"], out["thm43_premise"])


# --------------------------------------------------------------------------------------------
# 5. The inverse-CDF sampler and the environments' batches
# --------------------------------------------------------------------------------------------

def assert_frequencies(draws, probs, msg):
    """Per-category z-test of the empirical frequencies with the binomial standard error
    ``sqrt(p (1 - p) / n)``; a category of probability 0 must never be drawn."""
    draws, probs = np.asarray(draws).ravel(), np.asarray(probs, np.float64)
    probs = probs / probs.sum()
    n = draws.size
    freq = np.bincount(draws, minlength=probs.size) / n
    assert freq.size == probs.size, f"{msg}: a draw outside [0, K)"
    zero = probs == 0
    assert np.all(freq[zero] == 0), f"{msg}: a category of probability 0 was drawn"
    se = np.sqrt(probs * (1 - probs) / n)
    z = np.abs(freq - probs)[~zero] / se[~zero]
    assert np.all(z <= Z), f"{msg}: z = {z}"


PROBS = np.array([0.0, 0.05, 0.0, 0.3, 0.15, 0.002, 0.498, 0.0])


@jax.jit
def _categorical_draws(key):
    k1, k2, k3 = jax.random.split(key, 3)
    n = (200_000,)
    return (sampling.categorical(k1, jnp.asarray(PROBS), n),
            sampling.categorical(k2, jnp.asarray(PROBS, jnp.float32), n),
            sampling.categorical(k3, jnp.asarray(3.0 * PROBS), n))  # unnormalised weights


def test_inverse_cdf_categorical_draws_have_the_given_frequencies_and_never_a_zero_category():
    f64, f32, scaled = _categorical_draws(jax.random.PRNGKey(13))
    assert f64.dtype == jnp.int32 and f64.shape == (200_000,)
    for draws, msg in ((f64, "float64"), (f32, "float32"), (scaled, "unnormalised")):
        assert_frequencies(draws, PROBS, msg)
    # Wrong probabilities are rejected by the same test (it can fail).
    with pytest.raises(AssertionError):
        assert_frequencies(f64, np.roll(PROBS, 1), "shifted")


def test_inverse_cdf_boundaries():
    cdf = jnp.array([0.0, 0.25, 0.25, 1.0])  # category 0 and 2 have probability 0
    u = jnp.array([0.0, 0.1, 0.2499, 0.25, 0.7, 0.999999])
    np.testing.assert_array_equal(sampling.inverse_cdf(u, cdf), [1, 1, 1, 3, 3, 3])
    # A cdf not ending at 1 is rescaled: the same categories at half the scale.
    np.testing.assert_array_equal(sampling.inverse_cdf(u, 0.5 * cdf), [1, 1, 1, 3, 3, 3])


SAMPLE_CASES = {
    # name: (env, theta, prompts M, group G)
    "contextual_bandit": (envs.contextual_bandit(CB_R, CB_RHO), logits(7, (3, 4)), 4000, 25),
    "token_tree": (TREE2, logits(8, (14, 2), 1.5), 300, 8),
    "garnet": (GARNET, logits(9, (5, 3)), 50, 4),
}


@functools.lru_cache(maxsize=None)
def batches():
    """One ``env.sample`` batch per case of SAMPLE_CASES, in one compilation, as numpy."""
    @jax.jit
    def go(key):
        return {name: env.sample(jax.random.fold_in(key, i), theta, m, g)
                for i, (name, (env, theta, m, g)) in enumerate(SAMPLE_CASES.items())}
    return jax.tree.map(np.asarray, go(jax.random.PRNGKey(14)))


def test_bandit_batch_shapes_and_contents():
    env, theta, m, g = SAMPLE_CASES["contextual_bandit"]
    batch = batches()["contextual_bandit"]
    assert batch.prompt.shape == (m,)
    assert batch.state.shape == (m, g, 1)
    assert batch.action.shape == (m, g, 1)
    assert batch.reward.shape == (m, g)
    assert batch.togo.shape == (m, g, 1)
    assert batch.discount.shape == (1,)
    assert batch.num_responses == m * g
    np.testing.assert_array_equal(batch.state[..., 0], np.broadcast_to(batch.prompt[:, None], (m, g)))
    mean_reward = np.asarray(env.r)[batch.prompt[:, None], batch.action[..., 0]]
    np.testing.assert_array_equal(batch.reward, mean_reward)  # deterministic rewards
    np.testing.assert_array_equal(batch.togo[..., 0], batch.reward)
    np.testing.assert_array_equal(batch.discount, [1.0])
    # Prompts follow rho; the actions of each prompt follow softmax(theta[prompt]).
    assert_frequencies(batch.prompt, CB_RHO, "prompts")
    pi = np.asarray(jax.nn.softmax(theta, axis=-1))
    for s in range(3):
        assert_frequencies(batch.action[batch.prompt == s], pi[s], f"actions of prompt {s}")


def test_token_tree_batch_matches_sequence_indexing_and_rewards():
    env, _, m, g = SAMPLE_CASES["token_tree"]
    batch = batches()["token_tree"]
    length, vocab = env.length, env.vocab
    assert batch.state.shape == batch.action.shape == batch.togo.shape == (m, g, length)
    assert batch.reward.shape == (m, g) and batch.discount.shape == (length,)
    seqs = envs.all_sequences(vocab, length)
    reward_table = np.asarray(env.reward)
    offsets = [sum(vocab ** j for j in range(t)) for t in range(length)]
    hits = 0
    for i in range(m):
        p = int(batch.prompt[i])
        for j in range(g):
            tokens = batch.action[i, j].tolist()
            index = env.sequence_index(tokens)
            assert seqs[index].tolist() == tokens
            assert batch.reward[i, j] == reward_table[p, index]
            hits += int(batch.reward[i, j] == 1.0)
            for t in range(length):
                # token_tree.py's layout: prefix o_<t is row offset[t] + sum_i o_i V^(t-1-i).
                prefix = sum(o * vocab ** (t - 1 - i) for i, o in enumerate(tokens[:t]))
                assert batch.state[i, j, t] == p * env.num_nodes + offsets[t] + prefix
    assert 0 < hits < m * g  # both outcomes occur, so the reward check is not vacuous
    np.testing.assert_array_equal(batch.togo, np.broadcast_to(batch.reward[..., None], (m, g, length)))
    np.testing.assert_array_equal(batch.discount, np.ones(length))
    assert set(np.unique(batch.prompt)) == {0, 1}


def test_mdp_rollout_returns_to_go_are_discounted_sums_along_feasible_transitions():
    env, _, m, g = SAMPLE_CASES["garnet"]
    batch = batches()["garnet"]
    P, r, gamma = np.asarray(env.P), np.asarray(env.r), float(env.gamma)
    assert batch.state.shape == batch.action.shape == batch.togo.shape == (m, g, ROLLOUT)
    np.testing.assert_allclose(batch.discount, gamma ** np.arange(ROLLOUT), rtol=1e-14)
    np.testing.assert_array_equal(batch.state[..., 0], np.broadcast_to(batch.prompt[:, None], (m, g)))
    step_reward = batch.discount * r[batch.state, batch.action]  # gamma^t r_t
    togo = np.flip(np.cumsum(np.flip(step_reward, -1), -1), -1)
    np.testing.assert_allclose(batch.togo, togo, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(batch.reward, togo[..., 0], rtol=1e-12)
    feasible = P[batch.state[..., :-1], batch.action[..., :-1], batch.state[..., 1:]]
    assert np.all(feasible > 0)


def test_temperature_law_at_t1_is_the_temp_reinforce_closed_form_on_every_environment():
    """``dH_temp`` at ``T = 1`` is T4's last row with ``pi_T = pi``, occupancy and horizon included."""
    cases = {
        "contextual": envs.contextual_bandit([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [0.7, 0.3]),
        "token_tree": envs.token_tree(2, 3, [[[0, 1, 1], [1, 1, 1]]]),
        "garnet": envs.garnet(jax.random.PRNGKey(4), 4, 3, 2, 0.8),
    }
    hp = {"eta": jnp.asarray(0.3), "temp": jnp.asarray(1.0)}
    opt = optim.make_optimizer("sgd", hp)
    for name, env in cases.items():
        theta = jax.random.normal(jax.random.PRNGKey(5), (env.num_states, env.num_actions))
        ev = env.evaluate(theta, 0.0)
        _, _, info = algorithms.RULES["temp_reinforce"].fn(theta, opt.init(theta), ev, env, hp,
                                                          jax.random.PRNGKey(0), opt, batch=0)
        np.testing.assert_allclose(info["dH_temp"], info["dH_pred_closed"], rtol=1e-12, err_msg=name)
        assert float(info["thm43_conclusion"]) <= float(info["thm43_premise"]) + 1e-15


def test_bernoulli_rewards_of_binary_means_are_exact_in_float32():
    """One uniform decides action and reward; a mean of 0 never pays and a mean of 1 always does.
    (The sampler decides means of 0 and 1 without arithmetic; an earlier version computed the
    interval start as ``cdf - probs``, which flips about one reward in 10^7 draws in float32, too
    rare for this sanity check of 10^6 draws to see.)"""
    means = jnp.asarray([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], jnp.float32)
    env = envs.ContextualBandit(r=means[None], rho=jnp.ones((1,), jnp.float32),
                                noise_std=jnp.zeros((), jnp.float32), noise="bernoulli")
    logits = jnp.asarray([[0.1, -3.0, 2.2, 0.7, -1.3, 1.9, -0.4]], jnp.float32)
    batch = jax.jit(lambda k: env.sample(k, logits, 1, 1_000_000))(jax.random.PRNGKey(9))
    assert batch.reward.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(batch.reward), np.asarray(means[batch.action[..., 0]]))


def test_bernoulli_rewards_pay_with_probability_the_mean_of_the_action_drawn():
    """``P(R = 1 | a) = r[a]`` per action, each a z-test with the binomial standard error, in
    float32 and float64. Action 2 has probability exactly 0 and mean 1: its empty interval must not
    pay for the draws of its neighbours (R counts the winning intervals holding the uniform)."""
    means = np.array([0.3, 0.9, 1.0, 0.05, 0.0, 0.6])
    logits = np.array([[0.4, -0.2, -np.inf, 0.9, 0.1, -0.7]])
    for dtype in (jnp.float32, jnp.float64):
        env = envs.ContextualBandit(r=jnp.asarray(means[None], dtype), rho=jnp.ones((1,), dtype),
                                    noise_std=jnp.zeros((), dtype), noise="bernoulli")
        batch = jax.jit(lambda k: env.sample(k, jnp.asarray(logits, dtype), 1, 1_000_000))(
            jax.random.PRNGKey(21))
        action, reward = np.asarray(batch.action).ravel(), np.asarray(batch.reward).ravel()
        assert set(np.unique(reward)) <= {0.0, 1.0}
        assert not np.any(action == 2)
        for a in (0, 1, 3, 4, 5):
            paid = reward[action == a]
            se = np.sqrt(means[a] * (1 - means[a]) / paid.size)
            assert abs(paid.mean() - means[a]) <= max(Z * se, FLOOR), (dtype, a, paid.mean())
        # The same test rejects a wrong mean.
        paid = reward[action == 0]
        assert abs(paid.mean() - 0.31) > Z * np.sqrt(0.3 * 0.7 / paid.size)


def test_bandit_bernoulli_draws_by_counting_equal_the_per_draw_inverse_cdf_and_gather():
    """A bandit's Bernoulli sampler counts thresholds instead of gathering one per draw; its
    actions and rewards must equal, draw for draw, the direct rule from the same uniforms:
    ``a = min(#{c_a <= u c_{A-1}}, A - 1)`` and ``R = [u c_{A-1} < t_a]`` with ``t_a`` the start of
    ``a``'s interval plus ``r[a]`` of its width (``-inf, inf`` for means 0 and 1). Means 0 and 1,
    a zero-probability action and near-degenerate policies, in float32 and float64."""
    means = np.array([0.0, 0.37, 1.0, 0.999, 0.5, 1e-3, 1.0, 0.0])
    logits = np.array([[0.0, 0.4, -np.inf, 1.3, -0.7, 0.2, 0.0, -2.0],
                       [12.0, -9.0, 3.0, 0.0, -np.inf, 11.5, -30.0, 12.0],
                       [-np.inf, 0.0, 0.0, -np.inf, 0.0, -np.inf, -np.inf, 0.0]])
    for dtype in (jnp.float32, jnp.float64):
        env = envs.ContextualBandit(r=jnp.asarray(means[None], dtype), rho=jnp.ones((1,), dtype),
                                    noise_std=jnp.zeros((), dtype), noise="bernoulli")
        for row, seed in itertools.product(range(3), range(3)):
            key, theta = jax.random.PRNGKey(seed), jnp.asarray(logits[row:row + 1], dtype)
            batch = jax.jit(lambda k, z: env.sample(k, z, 16, 4096))(key, theta)
            u = np.asarray(prng.uniform(prng.fold_in(key, 1), (16, 4096), dtype))
            cdf = np.asarray(jnp.cumsum(jax.nn.softmax(theta, axis=-1), axis=-1))[0]
            x = u * cdf[-1]
            action = np.minimum(np.sum(x[..., None] >= cdf, axis=-1), len(cdf) - 1)
            start = np.concatenate([[0.0], cdf[:-1]]).astype(cdf.dtype)
            stop = np.where(means >= 1, np.inf, np.where(means <= 0, -np.inf,
                            start + (cdf - start) * means.astype(cdf.dtype)))
            np.testing.assert_array_equal(np.asarray(batch.action[..., 0]), action)
            np.testing.assert_array_equal(np.asarray(batch.reward), (x < stop[action]).astype(cdf.dtype))
            assert 0 < batch.reward.mean() < 1


def test_count_at_least_counts_every_threshold_for_any_batch_size():
    """``count_at_least`` sums in blocks of 32: sizes around and between the blocks, ties included."""
    rng = np.random.default_rng(0)
    for n in (1, 31, 32, 33, 64, 100):
        x = np.round(rng.uniform(size=n), 1).astype(np.float32)
        t = np.sort(np.round(rng.uniform(size=7), 1)).astype(np.float32)
        got = np.asarray(sampling.count_at_least(jnp.asarray(x), jnp.asarray(t)))
        np.testing.assert_array_equal(got, np.sum(x[None, :] >= t[:, None], axis=1), err_msg=f"n={n}")


@pytest.mark.parametrize("noise", ["bernoulli", "deterministic"])
def test_bandit_tally_is_the_histogram_of_the_sampled_draws(noise):
    """``ContextualBandit.tally`` (counts and reward sums per arm by counting uniforms above
    thresholds) must equal, arm for arm, the histogram of ``sample``'s actions and rewards from the
    same key: batch sizes around the blocks of 32, means 0 and 1, zero-probability arms and
    near-degenerate policies, in float32 and float64."""
    means = np.array([0.0, 0.37, 1.0, 0.999, 0.5, 1e-3, 1.0, 0.0])
    logits = np.array([[0.0, 0.4, -np.inf, 1.3, -0.7, 0.2, 0.0, -2.0],
                       [12.0, -9.0, 3.0, 0.0, -np.inf, 11.5, -30.0, 12.0],
                       [-np.inf, 0.0, 0.0, -np.inf, 0.0, -np.inf, -np.inf, 0.0]])
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    for dtype, size in itertools.product((jnp.float32, jnp.float64), (1, 33, 64, 100)):
        env = envs.ContextualBandit(r=jnp.asarray(means[None], dtype), rho=jnp.ones((1,), dtype),
                                    noise_std=jnp.zeros((), dtype), noise=noise)
        assert env.tallies

        @jax.jit
        def draws(theta, key):
            batch = env.sample(key, theta, size, 1)
            return batch.action, batch.reward, env.tally(key, jax.nn.softmax(theta, axis=-1), size)

        for row, seed in itertools.product(range(3), range(len(keys))):
            action, reward, tally = draws(jnp.asarray(logits[row:row + 1], dtype), keys[seed])
            action, reward = np.asarray(action).ravel(), np.asarray(reward).ravel()
            count = np.bincount(action, minlength=len(means))
            wins = np.bincount(action, weights=reward, minlength=len(means))
            msg = f"{noise} {dtype.__name__} row {row} B={size} seed {seed}"
            np.testing.assert_array_equal(np.asarray(tally.count[0]), count, err_msg=msg)
            np.testing.assert_allclose(np.asarray(tally.reward[0]), wins, rtol=1e-6, err_msg=msg)
    assert not dataclasses.replace(env, noise="gaussian").tallies
    assert not envs.contextual_bandit(CB_R, CB_RHO).tallies


@pytest.mark.parametrize("baseline", BASELINES)
def test_reinforce_from_the_tally_takes_the_step_of_its_draws_one_by_one(baseline, monkeypatch):
    """REINFORCE and stochastic NPG on a plain bandit read the batch from ``tally``; with the
    tally switched off they take the per-draw path (actions, rewards, scatter) on the same
    draws. Both must give the same step for every baseline, up to the rounding of the sums."""
    env = envs.bandit(MEANS, noise="bernoulli")
    hp = hparams(eta=ETA)
    keys = jax.random.split(jax.random.PRNGKey(4), 32)

    def steps(rule):
        return jax.jit(jax.vmap(lambda k: rule_step(rule, env, THETA_BANDIT, hp, k, batch=33,
                                                    baseline=baseline)))(keys)

    tallied = {rule: steps(rule) for rule in ("reinforce", "sampled_npg")}
    monkeypatch.setattr(envs.ContextualBandit, "tallies", False)
    for rule, (direction, info) in tallied.items():
        per_draw, per_draw_info = steps(rule)
        assert float(jnp.max(jnp.abs(direction))) > 0.1
        np.testing.assert_allclose(direction, per_draw, rtol=1e-9, atol=1e-12, err_msg=rule)
        np.testing.assert_allclose(info["batch_reward"], per_draw_info["batch_reward"], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Stochastic NPG: importance-weighted estimates average to Q - b (docs/theory.md §5.3)
# --------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames="n")
def _sampled_npg_moments(env, theta, key, n):
    hp = hparams(eta=ETA)
    keys = jax.random.split(key, n)
    out = {}
    for baseline in ("none", "value", "mean"):
        dirs, info = jax.vmap(lambda k: rule_step("sampled_npg", env, theta, hp, k, batch=BATCH,
                                                  baseline=baseline))(keys)
        out[baseline] = moments(dirs) + (info["dH_pred_closed"][0],)
    return out


@pytest.mark.parametrize("name", ["bandit_bernoulli", "contextual_bandit", "token_tree", "garnet"])
def test_sampled_npg_averages_to_q_without_baseline_and_to_a_with_the_value_baseline(name):
    env, theta, n = UNBIASED_ENVS[name]
    out = jax.tree.map(np.asarray, _sampled_npg_moments(env, theta, jax.random.PRNGKey(11), n))
    ev = env.evaluate(theta, 0.0)
    q, adv = np.asarray(ev.q), np.asarray(ev.adv)
    assert_matches(*out["none"][:2], q, f"{name}/none -> Q")
    assert_rejects(*out["none"][:2], adv, f"{name}/none vs A")
    assert_matches(*out["value"][:2], adv, f"{name}/value -> A")
    assert_rejects(*out["value"][:2], q, f"{name}/value vs Q")
    # T4's NPG row: -eta Cov(log pi, A) per state, aggregated with d(s).
    pi, log_pi = np.asarray(ev.pi), np.asarray(ev.log_pi)
    closed = -np.sum(np.asarray(ev.occ) * ref_cov(pi, log_pi, adv))
    np.testing.assert_allclose(out["none"][2], closed, rtol=1e-10)
    np.testing.assert_allclose(out["mean"][2], (1 - 1 / BATCH) * closed, rtol=1e-10)
