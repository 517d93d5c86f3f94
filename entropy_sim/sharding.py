"""Seeds across devices, in blocks of a fixed size: a one-axis ``jax.sharding.Mesh`` named ``seeds``.

Every batched array is ``[G, N, ...]`` (grid point, seed) or ``[N, ...]``; it is split along ``N``
over the devices, everything else is replicated. On each device the update runs one grid point and
one block of ``block`` seeds at a time (``blockwise``): the compiled code that computes a seed's
numbers then has the same shapes whatever the number of seeds, devices or grid points, so its
floating-point results are bitwise the same too (XLA's code for a shape, e.g. its vector loop and
remainder, can round differently for another shape). ``N`` is padded to a multiple of
``block * devices`` with copies of seed 0, which compute like any seed and are dropped from every
output (their ``real`` flag is false). The statistics over seeds (``summary.py``) use sorts and
additions in a fixed order, so they are layout-independent as well. XLA inserts the collectives
itself: the same code runs on one CPU, on 8 GPUs, or across hosts after
``jax.distributed.initialize()``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from entropy_sim.errors import ConfigError


DEFAULT_BLOCK = 256


class Layout(NamedTuple):
    """The device ``mesh``, the real and the padded number of seeds, and the seed block size."""

    mesh: Mesh
    num_seeds: int
    padded: int
    block: int

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size


def layout(num_seeds: int, devices: int, block: int = 0) -> Layout:
    """The layout for ``devices`` devices and seed blocks of ``block`` seeds (0 = ``min(num_seeds,
    256)``, which does not depend on the devices). ``devices = 0``: all of ``jax.devices()``, but
    in one process no more than it takes to give each device as few blocks as all of them would
    (the same time, less padding; a single block runs on one device)."""
    available = jax.devices()
    block = block or min(num_seeds, DEFAULT_BLOCK)
    count = len(available) if devices == 0 else devices
    if count > len(available):
        raise ConfigError("devices", f"{count} requested but only {len(available)} available "
                                     f"({available[0].platform}); use 0 for all of them")
    if devices == 0 and jax.process_count() == 1:
        blocks = -(-num_seeds // block)
        count = -(-blocks // -(-blocks // count))
    padded = -(-num_seeds // (block * count)) * block * count
    return Layout(Mesh(np.array(available[:count]), ("seeds",)), num_seeds, padded, block)


def blockwise(fn, lay: Layout, env_per_seed: bool):
    """``fn(state, env, hp, t)`` batched over ``block`` seeds (state leaves ``[B, ...]``, env
    leaves ``[B, ...]`` if ``env_per_seed``, hp scalars) applied to state ``[G, N, ...]``, env
    ``[N, ...]`` and hp ``[G]``: split over the devices along ``N``, then one grid point and one
    block at a time on each. The result takes a fifth argument, ``trips(lay, G)``. Outputs are
    ``[G, N, ...]``."""
    block = lay.block

    def local(state, env, hp, t, trips):
        num_grid, num_local = jax.tree.leaves(state)[0].shape[:2]
        blocks = num_local // block
        split = lambda x: x.reshape((blocks, block) + x.shape[1:])  # noqa: E731
        env_blocks = jax.tree.map(split, env) if env_per_seed else None
        state = jax.tree.map(lambda x: x.reshape((num_grid, blocks, block) + x.shape[2:]), state)

        def one_grid_point(state_g, hp_g):
            if env_per_seed:
                return _map(lambda s, e: fn(s, e, hp_g, t), (state_g, env_blocks), blocks, trips[1])
            return _map(lambda s: fn(s, env, hp_g, t), (state_g,), blocks, trips[1])

        out = _map(one_grid_point, (state, hp), num_grid, trips[0])
        return jax.tree.map(lambda x: x.reshape((num_grid, blocks * block) + x.shape[3:]), out)

    seeds, rows = P(None, "seeds"), P("seeds") if env_per_seed else P()
    return jax.shard_map(local, mesh=lay.mesh, in_specs=(seeds, rows, P(), P(), P()),
                         out_specs=seeds, check_vma=False)


def trips(lay: Layout, num_grid: int):
    """The runtime loop counts ``[grid points, blocks per device]`` that ``blockwise`` needs."""
    return jnp.array([num_grid, lay.padded // lay.num_devices // lay.block], jnp.int32)


def _map(fn, xs: tuple, length: int, count):
    """``lax.map(lambda x: fn(*x), xs)`` as a loop whose trip count ``count`` (= ``length``) is a
    runtime value: XLA would inline a loop it knows runs once into its surroundings, where it can
    be fused differently and round differently."""
    first = jax.eval_shape(lambda: fn(*jax.tree.map(lambda x: x[0], xs)))
    init = jax.tree.map(lambda s: jnp.zeros((length,) + s.shape, s.dtype), first)

    def body(i, out):
        y = fn(*jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), xs))
        return jax.tree.map(lambda o, v: jax.lax.dynamic_update_index_in_dim(o, v, i, 0), out, y)

    return jax.lax.fori_loop(0, count, body, init)


def _pad_seeds(x, padded: int, axis: int = 0):
    extra = padded - x.shape[axis]
    if extra == 0:
        return x
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    return jnp.concatenate([x, jnp.repeat(first, extra, axis=axis)], axis=axis)


def _put(tree, lay: Layout, spec: P):
    """``tree`` (the same values in every process) as global arrays laid out by ``spec``."""
    sharding = NamedSharding(lay.mesh, spec)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x  # already a global array (computed under this layout)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def to_host(tree):
    """Global arrays as numpy arrays (gathered from every process under ``jax.distributed``)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def place_seeds(exp, lay: Layout):
    """``(env, theta0, keys, real)`` padded and split over the devices; ``real: [N_padded]``."""
    pad = lambda tree: jax.tree.map(lambda x: _pad_seeds(x, lay.padded), tree)  # noqa: E731
    env = exp.env
    if exp.env_per_seed:
        env = _put(pad(env), lay, P("seeds"))
    else:
        env = _put(env, lay, P())
    theta0 = _put(pad(exp.theta0), lay, P("seeds"))
    keys = _put(pad(exp.keys), lay, P("seeds"))
    real = _put(jnp.arange(lay.padded) < lay.num_seeds, lay, P("seeds"))
    return env, theta0, keys, real


def replicate(tree, lay: Layout):
    """Hyperparameters ``[G]``: a copy on every device."""
    return _put(tree, lay, P())


def place_state(state, lay: Layout):
    """The run state, every leaf ``[G, N, ...]``, split along ``N``."""
    return _put(state, lay, P(None, "seeds"))
