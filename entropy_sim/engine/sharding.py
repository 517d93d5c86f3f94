"""Grid points and seeds across devices, seeds in blocks of a fixed size: a two-axis
``jax.sharding.Mesh`` named ``("grid", "seeds")``.

Every batched array is ``[G, N, ...]`` (grid point, seed) or ``[N, ...]``; it is split along ``G``
and ``N`` over the mesh, everything else is replicated. On each device the update runs one grid
point and one block of ``block`` seeds at a time (``blockwise``): the compiled code that computes
a seed's numbers then has the same shapes whatever the number of seeds, devices or grid points, so
its floating-point results are bitwise the same too (XLA's code for a shape, e.g. its vector loop
and remainder, can round differently for another shape). ``N`` is padded to a multiple of
``block * seed devices`` with copies of seed 0, which compute like any seed and are dropped from
every output (their ``real`` flag is false); ``G`` to at least 2 rows per grid device, which are
never computed. The statistics over seeds (``summary.py``) use sorts and additions in a fixed
order, so they are layout-independent as well. XLA inserts the collectives itself: the same code
runs on one CPU, on every core of one (``_xla.py`` makes a device per core), on 8 GPUs, or across
hosts after ``jax.distributed.initialize()``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from entropy_sim.errors import ConfigError


# Default seeds per block: small on a CPU, where a block of 256 seeds keeps a step's arrays in
# cache; large on accelerators, where each kernel needs many seeds to fill the device and every
# extra block is another round of kernel launches (benchmarks/accelerator.py measures both).
DEFAULT_BLOCK = 256
ACCELERATOR_BLOCK = 2 ** 16


def default_block(num_seeds: int, platform: str) -> int:
    """``min(num_seeds, 256)`` on a CPU, ``min(num_seeds, 65536)`` on a GPU or TPU."""
    return min(num_seeds, DEFAULT_BLOCK if platform == "cpu" else ACCELERATOR_BLOCK)


class Layout(NamedTuple):
    """The device ``mesh`` (grid devices x seed devices), the real and padded numbers of seeds,
    the seed block size, and the grid rows of one compiled call (padded)."""

    mesh: Mesh
    num_seeds: int
    padded: int
    block: int
    grid_size: int

    @property
    def seed_devices(self) -> int:
        return self.mesh.devices.shape[1]


def layout(num_seeds: int, num_grid: int, devices: int, block: int = 0) -> Layout:
    """The layout of ``num_grid`` grid points (one compiled call) and ``num_seeds`` seeds in
    blocks of ``block`` (0 = ``default_block``: ``min(num_seeds, 256)`` on a CPU, which does not
    depend on the number of devices, and larger on accelerators) on
    ``devices`` devices (0 = all of ``jax.devices()``, or in one process as few of them as give
    the least work per device)."""
    available = jax.devices()
    block = block or default_block(num_seeds, available[0].platform)
    count = len(available) if devices == 0 else devices
    if count > len(available):
        raise ConfigError("devices", f"{count} requested but only {len(available)} available "
                                     f"({available[0].platform}); use 0 for all of them")
    exact = devices != 0 or jax.process_count() > 1  # every process must hold a part
    grid_dev, seed_dev = mesh_shape(count, exact, num_grid, -(-num_seeds // block))
    padded = -(-num_seeds // (block * seed_dev)) * block * seed_dev
    grid_size = grid_dev * max(2, -(-num_grid // grid_dev))
    mesh = Mesh(np.array(available[:grid_dev * seed_dev]).reshape(grid_dev, seed_dev),
                ("grid", "seeds"))
    return Layout(mesh, num_seeds, padded, block, grid_size)


def mesh_shape(devices: int, exact: bool, num_grid: int, blocks: int) -> tuple[int, int]:
    """``(grid devices, seed devices)`` for ``num_grid`` grid points of ``blocks`` seed blocks:
    the least work per device (grid points x blocks), then the fewest devices (less padding),
    then seeds split before grid points. ``exact``: use all ``devices``."""
    shapes = [(g, s) for g in range(1, devices + 1) for s in range(1, devices // g + 1)
              if not exact or g * s == devices]
    return min(shapes, key=lambda gs: (-(-num_grid // gs[0]) * -(-blocks // gs[1]),
                                       gs[0] * gs[1], gs[0]))


def blockwise(fn, lay: Layout, env_per_seed: bool):
    """``fn(state, env, hp, t)`` batched over ``block`` seeds (state leaves ``[B, ...]``, env
    leaves ``[B, ...]`` if ``env_per_seed``, hp scalars) applied to state ``[G, N, ...]``, env
    ``[N, ...]`` and hp ``[G]``: split over the devices along ``G`` and ``N``, then one grid point
    and one block at a time on each. The result takes a fifth argument, ``trips(lay, g)`` (``g``
    real grid points; the rows after them are not computed). Outputs are ``[G, N, ...]``."""
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

        # This device's real grid points: rows [i num_grid, (i + 1) num_grid) of the global grid.
        first = jax.lax.axis_index("grid") * num_grid
        out = _map(one_grid_point, (state, hp), num_grid,
                   jnp.clip(trips[0] - first, 0, num_grid))
        return jax.tree.map(lambda x: x.reshape((num_grid, blocks * block) + x.shape[3:]), out)

    both, rows = P("grid", "seeds"), P("seeds") if env_per_seed else P()
    return jax.shard_map(local, mesh=lay.mesh, in_specs=(both, rows, P("grid"), P(), P()),
                         out_specs=both, check_vma=False)


def trips(lay: Layout, num_grid: int):
    """The runtime loop counts ``[real grid points, blocks per device]`` that ``blockwise``
    needs."""
    return jnp.array([num_grid, lay.padded // lay.seed_devices // lay.block], jnp.int32)


def _map(fn, xs: tuple, length: int, count):
    """``lax.map(lambda x: fn(*x), xs)`` as a loop whose trip count ``count`` (= ``length``) is a
    runtime value: XLA would inline a loop it knows runs once into its surroundings, where it can
    be fused differently and round differently."""
    # ``fn`` is traced once: ``closure_convert`` keeps its program (with the values it closes
    # over as arguments), which both the output shapes and the loop body then evaluate. Tracing it
    # again for each, at every level of nesting, would multiply the time spent in Python.
    example = jax.tree.map(lambda x: x[0], xs)
    traced, consts = jax.closure_convert(lambda *x: fn(*x), *example)
    first = jax.eval_shape(traced, *example, *consts)
    init = jax.tree.map(lambda s: jnp.zeros((length,) + s.shape, s.dtype), first)

    def body(i, out):
        y = traced(*jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), xs),
                   *consts)
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
    """A copy on every device."""
    return _put(tree, lay, P())


def place_grid(tree, lay: Layout):
    """Hyperparameters ``[G]``, split along ``G``."""
    return _put(tree, lay, P("grid"))


def place_state(state, lay: Layout):
    """The run state, every leaf ``[G, N, ...]``, split along ``G`` and ``N``."""
    return _put(state, lay, P("grid", "seeds"))
