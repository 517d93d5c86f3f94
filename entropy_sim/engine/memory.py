"""What a run will hold in memory, estimated before anything of its size is built or compiled.

``estimate(config, streamed)`` adds up, from the config and a two-seed copy of the experiment
(its environments and state traced abstractly, ``jax.eval_shape``):

- the run state on the devices: every seed's carry (logits, the optimiser's state, the exact
  evaluation of the policy; twice, as a chunk reads one and writes the next), the environments and
  the initial logits;
- one chunk of per-seed metrics on the devices, twice (the values and their copy split by steps
  for the statistics over seeds);
- on the host: the per-seed rows of a full-mode run (about three chunks when they are streamed to
  disk: one arriving, one being written, its Parquet encoding; all of them when kept in
  memory), the statistics, the final logits and the final-policy table;
- about 0.5 GB for JAX itself and the compiled programs.

``check(config, streamed)`` raises ``MemoryLimitError`` with the estimate and the remedies when
it exceeds what the machine has: on a CPU the available memory (``MemAvailable``); on an
accelerator its memory for the device part and the host's for the rest. The estimate errs on
the large side by design, within a factor of about two.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from entropy_sim.dryrun import _size as size, plan
from entropy_sim.errors import ConfigError

BASELINE = 512 * 2 ** 20  # JAX's runtime and the compiled programs


class MemoryLimitError(ConfigError):
    """A run that cannot fit in memory, refused before it starts."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes a run holds at its peak, by part (see the module docstring)."""

    state: int
    chunk: int
    rows: int
    final: int
    platform: str

    @property
    def device(self) -> int:
        return self.state + self.chunk

    @property
    def host(self) -> int:
        return self.rows + self.final + BASELINE

    @property
    def total(self) -> int:
        return self.device + self.host

    def breakdown(self) -> str:
        return (f"state {size(self.state)}, a chunk of per-seed metrics {size(self.chunk)}, "
                f"rows and statistics on the host {size(self.rows)}, final policy "
                f"{size(self.final)}, JAX {size(BASELINE)}")


def estimate(config, *, streamed: bool, dry=None) -> Estimate:
    """The peak memory of a run of ``config`` (one that sweeps no static field); ``streamed``:
    full-mode rows go to disk as the run goes (a run with a checkpoint folder); ``dry``: its
    ``dryrun.plan`` if already made."""
    dry = dry or plan(config)
    per_seed_state, per_seed_env, shared_env = _per_seed_bytes(config)
    seeds, rows = dry.padded_seeds, dry.grid_rows
    item = dry.itemsize
    policy = dry.num_states * dry.num_actions * item
    state = (2 * rows * seeds * per_seed_state + seeds * (per_seed_env + policy + 8) + shared_env)
    chunk = 2 * dry.device_bytes
    real_chunk = (dry.grid_batches[0][1] * config["seeds"] * dry.chunk_logged * len(dry.columns)
                  * item)
    if config["output"] == "full":
        host_rows = dry.host_bytes + real_chunk
        if streamed:
            host_rows = min(3 * real_chunk, host_rows)
        per_entry = 12 + 2 * item + 8 * len(dry.sweep)  # seed, state, action, logit, prob, swept
        final = dry.final_logits_bytes + 2 * dry.final_logits_bytes // item * per_entry
    else:
        host_rows = dry.host_bytes
        final = 3 * dry.final_logits_bytes  # the logits and their float64 probabilities
    host_rows += dry.grid_points * dry.logged_steps * (len(dry.columns) + 3) * 8 * 7  # statistics
    platform = jax.devices()[0].platform
    return Estimate(int(state), int(chunk), int(host_rows), int(final), platform)


def _per_seed_bytes(config) -> tuple[int, int, int]:
    """``(state bytes per seed and grid point, environment bytes per seed, shared environment
    bytes)`` from a two-seed copy of the experiment, its initial state traced abstractly."""
    from entropy_sim.config import Config
    from entropy_sim.engine.experiment import build, precision
    from entropy_sim.engine.runner import init_state

    small = config.to_dict()
    small["seeds"] = 2
    exp = build(Config(small))
    env_bytes = sum(x.nbytes for x in jax.tree.leaves(exp.env))
    one_env = jax.tree.map(lambda x: x[0], exp.env) if exp.env_per_seed else exp.env
    hp = {k: v[0] for k, v in exp.hparams.items()}
    with precision(config["dtype"]):
        state = jax.eval_shape(
            lambda theta, env, key: init_state(theta, env, hp, key, rule=exp.rule.name,
                                               opt_name=config["algo"]["optimizer"]),
            exp.theta0[0], one_env, exp.keys[0])
    state_bytes = sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape))
                      for x in jax.tree.leaves(state))
    if exp.env_per_seed:
        return state_bytes, env_bytes // 2, 0
    return state_bytes, 0, env_bytes


def available() -> tuple[int | None, int | None]:
    """``(host bytes available, bytes of the first accelerator device or None)``: the host's
    ``MemAvailable`` (None where unknown) and, on a GPU or TPU, its memory limit."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
    except OSError:
        pass
    device = None
    first = jax.devices()[0]
    if first.platform != "cpu":
        try:
            device = int(first.memory_stats()["bytes_limit"]) * len(jax.devices())
        except (KeyError, TypeError, AttributeError, RuntimeError):
            device = None
    return host, device


def check(config, *, streamed: bool) -> Estimate | None:
    """Refuse (``MemoryLimitError``) a run that cannot fit; return its estimate otherwise (None
    where a rough bound from the sizes is under a quarter of the memory on a CPU, or the check is
    off: ``ENTROPY_SIM_MEMORY_CHECK=0``)."""
    if os.environ.get("ENTROPY_SIM_MEMORY_CHECK", "1") == "0":
        return None
    host, device = available()
    dry = plan(config)
    if host is not None and dry.final_logits_bytes > host:  # from the sizes alone
        raise MemoryLimitError("seeds", _message(config, dry, None, dry.final_logits_bytes, host,
                                                 "memory available on this machine",
                                                 ["fewer seeds or grid points"]))
    if device is None and host is not None and _rough_bound(config, dry) < host // 4:
        return None  # far from the limit: not worth building the two-seed experiment
    est = estimate(config, streamed=streamed, dry=dry)
    if device is None:  # a CPU: the devices' memory is the host's
        need, have, where = est.total, host, "memory available on this machine"
    elif est.device > device:
        need, have, where = est.device, device, f"{est.platform} memory"
    else:
        need, have, where = est.host, host, "host memory available"
    if have is not None and need > have:
        raise MemoryLimitError("seeds", _message(config, dry, est, need, have, where))
    return est


def _rough_bound(config, dry) -> int:
    """A cheap upper bound of ``estimate`` from the sizes alone (64 policy-sized arrays per seed
    and grid row, an MDP's transitions per seed, every row in memory, 8 bytes per number)."""
    policy = dry.num_states * dry.num_actions * 8
    env = policy * (dry.num_states if config["env"]["kind"] == "mdp" else 4)
    rows = dry.rows * (len(dry.columns) + 2) * 8 if config["output"] == "full" else 0
    return (dry.grid_rows * dry.padded_seeds * 64 * policy + dry.padded_seeds * env
            + 2 * dry.device_bytes * 2 + rows + 8 * dry.final_logits_bytes * 8 + BASELINE)


def _message(config, dry, est, need: int, have: int, where: str, remedies=None) -> str:
    parts = f" ({est.breakdown()})" if est is not None else " for the final logits alone"
    if remedies is not None:
        return (f"{config['seeds']} seeds x {dry.grid_points} grid point(s) need about "
                f"{size(need)}{parts}, but {size(have)} of {where}; try " + "; ".join(remedies))
    remedies = ["fewer seeds or grid points (or split them over several runs with seed)"]
    if config["output"] == "full":
        remedies.insert(0, 'output = "summary" (statistics over seeds only)')
        remedies.append("log_every > 1")
    if dry.padded_seeds > config["seeds"]:
        remedies.append("a seed_block that divides seeds (less padding)")
    remedies.append("more devices (devices = 0 uses all)")
    return (f"{config['seeds']} seeds x {dry.grid_points} grid point(s) need about {size(need)}"
            f"{parts}, but {size(have)} of {where}; try " + "; ".join(remedies)
            + " (ENTROPY_SIM_MEMORY_CHECK=0 runs it anyway)")
