"""XLA:CPU settings that must be in place before JAX starts its CPU backend; they apply only where
JAX will run on the CPU.

One CPU device per core. XLA runs one program on one device mostly on one thread when its arrays
are small, as a block of seeds is; the runner shards seeds over devices, so with a device per
core a run uses every core (sampled REINFORCE on 10,000 seeds: 2x on 2 cores). We set JAX's
``jax_num_cpu_devices`` to the cores this process may use, unless the user chose a count (that
option, ``JAX_NUM_CPU_DEVICES`` or ``--xla_force_host_platform_device_count``) or JAX will run on
an accelerator (``JAX_PLATFORMS`` names another platform first, or a GPU or TPU plugin of JAX is
installed and ``JAX_PLATFORMS`` does not ask for the CPU). Results do not depend on the number of
devices (``engine/sharding.py``), and JAX's default device stays the first. If JAX started its CPU
backend before entropy_sim was imported, the count cannot change any more: a warning says so.

YNN fusions off. jaxlib 0.10 hands reductions to its experimental YNN library fusions by default. For this
package's workloads (many reductions over a short action axis, batched over thousands of seeds)
they are an order of magnitude slower than XLA's own fused loops: an exact NPG step on 10-armed
bandits takes 22 s per 10^7 seed-steps with them and 1.7 s without (on this project's 2-core test machine). We
switch them off unless the user set the flag, and only for jaxlib versions that know the flag
(an unknown flag in XLA_FLAGS aborts the process), and only where JAX runs on the CPU; it has no
effect if the backend already started.
"""

import os
import warnings

_FLAG = "xla_cpu_experimental_ynn_fusion_type"
# Distributions that give JAX an accelerator backend (JAX's own plugin wheels and libtpu).
_ACCELERATOR_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin",
                        "jax-rocm7-plugin", "libtpu", "libtpu-nightly")


def configure() -> None:
    if on_cpu():
        _ynn_off()  # before JAX is imported
        _cpu_devices()


def on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, decided without starting any backend."""
    platforms = os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", "")).strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    from importlib.metadata import PackageNotFoundError, version
    for name in _ACCELERATOR_PLUGINS:
        try:
            version(name)
            return False
        except PackageNotFoundError:
            continue
    return True


def _cpu_devices() -> None:
    import jax
    chosen = ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
              or "JAX_NUM_CPU_DEVICES" in os.environ or jax.config.jax_num_cpu_devices != -1)
    if chosen:
        return
    cores = max(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1, 1)
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # JAX already started its backends: keep what they have
        if cores > 1 and jax.default_backend() == "cpu" and len(jax.devices()) < cores:
            warnings.warn(
                f"JAX started before entropy_sim was imported, with {len(jax.devices())} CPU "
                f"device(s) for {cores} cores: runs will use fewer cores. Import entropy_sim "
                f"first, or set JAX_NUM_CPU_DEVICES={cores} (or 1 to silence this).",
                RuntimeWarning, stacklevel=4)


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
