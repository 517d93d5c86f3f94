"""Cost of a sampled step against an exact one, and of inverse-CDF sampling against Gumbel-max.

    python benchmarks/sampling.py [--seeds 10000] [--steps 200] [--json out.json]

Workloads (10-armed Bernoulli bandits, every per-step diagnostic logged), each timed after
compilation (best of 3) in this process, so the ratios are robust to a noisy machine:

- exact PG (the expected-gradient step);
- sampled REINFORCE, batch 64, batch-mean baseline, with the engine's inverse-CDF sampler (one
  uniform per response, which also decides the Bernoulli reward);
- the same with the uniforms of ``jax.random.uniform`` instead of ``entropy_sim.prng.uniform``
  (the same Threefry generator; JAX hashes one block per number and runs it as a rolled loop);
- the same with Gumbel-max sampling (``jax.random.categorical``: one uniform and two logs per arm,
  plus a uniform for the reward);
- the same from sufficient statistics drawn directly instead of one draw per response: counts per arm
  (conditional binomials) and successes per arm (binomials), each binomial by inverting its CDF;
- the random bits alone: the 64 uniforms of every seed-step and nothing else, from either source.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp

import entropy_sim as es
from entropy_sim import prng, runner
from entropy_sim.algorithms import RULES
from entropy_sim.rules import finish, pg_closed
from entropy_sim.envs import ContextualBandit
from entropy_sim.sampling import Batch, draw_prompts

BATCH = 64


def best_of(fn, repeats=3):
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_time(config):
    exp = es.build(es.Config(config))
    runner.compiled_chunk.cache_clear()
    return best_of(lambda: runner.run_arrays(exp, progress=False))


def gumbel_sample(self, key, logits, prompts, group):
    """``ContextualBandit.sample`` with Gumbel-max draws, for comparison."""
    k_prompt, k_action, k_reward = jax.random.split(key, 3)
    prompt = draw_prompts(k_prompt, self.rho, prompts)
    log_pi = jax.nn.log_softmax(logits, axis=-1)[prompt]
    action = jax.random.categorical(k_action, log_pi[:, None, :], shape=(prompts, group))
    mean = self.r[prompt[:, None], action]
    reward = (jax.random.uniform(k_reward, mean.shape, mean.dtype) < mean).astype(mean.dtype)
    state = jnp.broadcast_to(prompt[:, None, None], (prompts, group, 1))
    return Batch(prompt, state, action[..., None].astype(jnp.int32), reward, reward[..., None],
                 jnp.ones((1,), reward.dtype))


def binomial(u, n, p, n_max):
    """Binomial(n, p) by inversion of its CDF with uniform ``u`` (elementwise; ``n <= n_max``,
    float counts). Sums terms of the smaller tail probability, so ``P(0) >= 2^-n_max``."""
    flip = p > 0.5
    q = jnp.where(flip, 1.0 - p, p)
    ratio = q / (1.0 - q)
    pmf = jnp.exp(n * jnp.log1p(-q))  # P(X = 0)
    cdf, count = pmf, jnp.zeros_like(n)
    for j in range(n_max):  # X > j iff u >= F(j)
        count = count + (u >= cdf)
        pmf = pmf * jnp.maximum(n - j, 0.0) * (ratio / (j + 1))
        cdf = cdf + pmf
    count = jnp.minimum(count, n)
    return jnp.where(flip, n - count, count)


def counts_and_successes(key, pi, mean, batch):
    """Sufficient statistics of ``batch`` draws on a Bernoulli bandit, drawn directly: the counts
    per arm (Multinomial(batch, pi) as conditional binomials) and the successes per arm
    (Binomial(count, mean)). ``pi, mean: [K] -> ([K], [K])``; 2K uniforms."""
    arms = pi.shape[0]
    u = prng.uniform(key, (2 * arms,), pi.dtype)
    tail = jnp.cumsum(pi[::-1])[::-1]  # P(arm >= a)
    left, counts = jnp.asarray(float(batch), pi.dtype), []
    for a in range(arms - 1):
        n_a = binomial(u[a], left, jnp.clip(pi[a] / jnp.maximum(tail[a], 1e-30), 0.0, 1.0), batch)
        counts.append(n_a)
        left = left - n_a
    counts = jnp.stack(counts + [left])
    return counts, binomial(u[arms:], counts, mean, batch)


def counts_reinforce(theta, opt_state, ev, env, hp, key, opt, *, batch, baseline):
    """``sampled.reinforce`` with the batch-mean baseline on a bandit, from the sufficient
    statistics: the token weights sum to ``S_a - N_a mean(R)`` per arm."""
    counts, wins = counts_and_successes(jax.random.fold_in(key, 1), ev.pi[0], env.r[0], batch)
    table = (wins - counts * jnp.sum(wins) / batch)[None]
    direction = (table - jnp.sum(table, axis=-1, keepdims=True) * ev.pi) / batch
    closed = (1.0 - 1.0 / batch) * pg_closed(ev, env, hp["eta"])
    return finish(opt, theta, opt_state, direction, closed, ev, {"batch_reward": jnp.sum(wins) / batch})


def jax_uniform(key, shape=(), dtype=jnp.float32):
    """``prng.uniform``'s signature, ``jax.random.uniform``'s numbers."""
    return jax.random.uniform(key, shape, dtype)


def uniforms_time(seeds, steps, uniform):
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)

    @jax.jit
    def draw(keys):
        def body(total, t):
            u = jax.vmap(lambda k: uniform(jax.random.fold_in(k, t), (BATCH,)))(keys)
            return total + jnp.sum(u), None
        return jax.lax.scan(body, 0.0, jnp.arange(steps))[0]

    return best_of(lambda: draw(keys).block_until_ready())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    base = {"seeds": args.seeds, "steps": args.steps,
            "env": {"kind": "bandit", "arms": 10, "generator": "uniform", "noise": "bernoulli"}}
    reinforce = {**base, "algo": {"name": "reinforce", "eta": 0.1, "batch": BATCH, "baseline": "mean"}}
    times = {"exact PG": run_time({**base, "algo": {"name": "pg", "eta": 0.1}}),
             "REINFORCE B=64, inverse CDF": run_time(reinforce)}
    prng.uniform, engine_uniform = jax_uniform, prng.uniform
    try:
        times["REINFORCE B=64, jax.random.uniform"] = run_time(reinforce)
    finally:
        prng.uniform = engine_uniform
        runner.compiled_chunk.cache_clear()
    original = ContextualBandit.sample
    ContextualBandit.sample = gumbel_sample
    try:
        times["REINFORCE B=64, Gumbel-max"] = run_time(reinforce)
    finally:
        ContextualBandit.sample = original
        runner.compiled_chunk.cache_clear()
    spec = RULES["reinforce"]
    RULES["reinforce"] = dataclasses.replace(spec, fn=counts_reinforce)
    try:
        times["REINFORCE B=64, counts drawn directly"] = run_time(reinforce)
    finally:
        RULES["reinforce"] = spec
        runner.compiled_chunk.cache_clear()
    times["64 uniforms per seed-step only"] = uniforms_time(args.seeds, args.steps, prng.uniform)
    times["64 uniforms, jax.random.uniform"] = uniforms_time(args.seeds, args.steps, jax_uniform)
    seed_steps = args.seeds * args.steps
    exact = times["exact PG"]
    rows = [{"workload": k, "seconds": round(v, 3), "seed_steps_per_s": round(seed_steps / v),
             "ratio_to_exact": round(v / exact, 2)} for k, v in times.items()]
    width = max(len(r["workload"]) for r in rows)
    print(f"{'workload':{width}s}  seconds  seed-steps/s  x exact step")
    for r in rows:
        print(f"{r['workload']:{width}s}  {r['seconds']:7.3f}  {r['seed_steps_per_s']:12,d}"
              f"  {r['ratio_to_exact']:12.2f}")
    gumbel = times["REINFORCE B=64, Gumbel-max"] / times["REINFORCE B=64, inverse CDF"]
    counts = times["REINFORCE B=64, counts drawn directly"] / times["REINFORCE B=64, inverse CDF"]
    bits = times["REINFORCE B=64, jax.random.uniform"] / times["REINFORCE B=64, inverse CDF"]
    print(f"Gumbel-max / inverse CDF: {gumbel:.1f}x; counts drawn directly / inverse CDF: {counts:.2f}x;"
          f" jax.random.uniform / prng.uniform: {bits:.2f}x"
          f"   ({args.seeds} seeds x {args.steps} steps)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "steps": args.steps, "rows": rows,
                       "gumbel_over_inverse_cdf": round(gumbel, 2),
                       "counts_over_inverse_cdf": round(counts, 2),
                       "jax_uniform_over_prng": round(bits, 2)}, f, indent=2)


if __name__ == "__main__":
    main()
