"""Cost of a sampled step against an exact one, and of inverse-CDF sampling against Gumbel-max.

    python benchmarks/sampling.py [--seeds 10000] [--steps 200] [--json out.json]

Workloads (10-armed Bernoulli bandits, every per-step diagnostic logged), each timed after
compilation (best of 3) in this process, so the ratios are robust to a noisy machine:

- exact PG (the expected-gradient step);
- sampled REINFORCE, batch 64, batch-mean baseline, with the engine's inverse-CDF sampler (one
  uniform per response, which also decides the Bernoulli reward);
- the same with Gumbel-max sampling (``jax.random.categorical``: one uniform and two logs per arm,
  plus a uniform for the reward);
- the irreducible part: drawing the 64 uniforms of every seed-step and nothing else.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

import entropy_sim as es
from entropy_sim import runner
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


def uniforms_time(seeds, steps):
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)

    @jax.jit
    def draw(keys):
        def body(total, t):
            u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, t), (BATCH,)))(keys)
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
    original = ContextualBandit.sample
    ContextualBandit.sample = gumbel_sample
    try:
        times["REINFORCE B=64, Gumbel-max"] = run_time(reinforce)
    finally:
        ContextualBandit.sample = original
        runner.compiled_chunk.cache_clear()
    times["64 uniforms per seed-step only"] = uniforms_time(args.seeds, args.steps)
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
    print(f"Gumbel-max / inverse CDF: {gumbel:.1f}x   ({args.seeds} seeds x {args.steps} steps)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "steps": args.steps, "rows": rows,
                       "gumbel_over_inverse_cdf": round(gumbel, 2)}, f, indent=2)


if __name__ == "__main__":
    main()
