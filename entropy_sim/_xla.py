"""XLA:CPU settings that must be in place before JAX starts its CPU backend.

One CPU device per core. XLA runs one program on one device mostly on one thread when its arrays
are small, as a block of seeds is; the runner shards seeds over devices, so with a device per
core a run uses every core (sampled REINFORCE on 10,000 seeds: 2x on 2 cores). We set JAX's
``jax_num_cpu_devices`` to the cores this process may use, unless the user chose a count (that
option, ``JAX_NUM_CPU_DEVICES`` or ``--xla_force_host_platform_device_count``). Results do not
depend on the number of devices (``sharding.py``), and JAX's default device stays the first.

YNN fusions off. jaxlib 0.10 hands reductions to its experimental YNN library fusions by default. For this
package's workloads (many reductions over a short action axis, batched over thousands of seeds)
they are an order of magnitude slower than XLA's own fused loops: an exact NPG step on 10-armed
bandits takes 22 s per 10^7 seed-steps with them and 1.7 s without (on this project's 2-core test machine). We
switch them off unless the user set the flag, and only for jaxlib versions that know the flag
(an unknown flag in XLA_FLAGS aborts the process). It has no effect if the backend already started.
"""

import os

_FLAG = "xla_cpu_experimental_ynn_fusion_type"


def configure() -> None:
    _ynn_off()  # before JAX is imported
    _cpu_devices()


def _cpu_devices() -> None:
    import jax
    chosen = ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
              or "JAX_NUM_CPU_DEVICES" in os.environ or jax.config.jax_num_cpu_devices != -1)
    if chosen:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        jax.config.update("jax_num_cpu_devices", max(cores or 1, 1))
    except RuntimeError:  # JAX already started its backends: keep what they have
        pass


def _ynn_off() -> None:
    try:
        from importlib.metadata import version
        jaxlib_version = version("jaxlib")
    except Exception:  # pragma: no cover - jaxlib always present in an installed package
        return
    if not jaxlib_version.startswith("0.10."):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{_FLAG}=".strip()
