"""JAX's persistent compilation cache: compiled programs kept on disk between processes.

A second ``entropy-sim run`` of the same shapes loads its programs instead of compiling them. The
command line turns the cache on by default in ``$XDG_CACHE_HOME/entropy_sim/jax`` (or
``~/.cache/entropy_sim/jax``); the environment variable ``ENTROPY_SIM_COMPILATION_CACHE`` set to
``0`` turns it off, and set to a folder uses that folder. Importing entropy_sim changes nothing:
from Python, ``enable_compilation_cache(path=None)`` turns it on for the rest of the process.

Every program is cached, however small or quick to compile: JAX by default keeps only programs
that took at least a second to compile, which leaves out many of a run's programs on a CPU. The
folder grows with every new shape (seeds, steps per chunk, devices, rule); delete it at any time.
As JAX warns, whoever can write to the folder can make JAX run code: keep it private.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

ENV_VAR = "ENTROPY_SIM_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")
# JAX's options, and the values that make it cache every program.
_SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,  # -1: no size threshold, none added later
}


def default_dir(environ=None) -> Path:
    """``$XDG_CACHE_HOME/entropy_sim/jax``, or ``~/.cache/entropy_sim/jax`` without it."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "entropy_sim" / "jax"


def cli_dir(environ=None) -> Path | None:
    """The command line's cache folder: ``ENTROPY_SIM_COMPILATION_CACHE`` unset, empty or ``1``:
    ``default_dir``; ``0`` (or ``off``, ``false``, ``no``): None (no cache); anything else: that
    folder."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR, "").strip()
    if value in ("", "1"):
        return default_dir(environ)
    if value.lower() in _OFF:
        return None
    return Path(value).expanduser()


def enable_compilation_cache(path=None) -> Path:
    """Turn on JAX's persistent compilation cache in ``path`` (default ``default_dir()``) for the
    rest of this process, caching every program; returns the folder. Changes JAX's global
    configuration (``jax_compilation_cache_dir`` and the two thresholds above)."""
    folder = Path(default_dir() if path is None else path).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    _apply({"jax_compilation_cache_dir": str(folder), **_SETTINGS})
    return folder


def active_dir() -> str | None:
    """The persistent cache folder JAX uses now, None when it uses none."""
    import jax

    return jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None


@contextlib.contextmanager
def using(path):
    """The cache in ``path`` inside the ``with`` block (nothing if ``path`` is None), JAX's
    previous settings restored after it, so an in-process ``cli.main`` leaves no trace."""
    if path is None:
        yield None
        return
    import jax

    names = ("jax_compilation_cache_dir", *_SETTINGS)
    before = {name: getattr(jax.config, name) for name in names}
    try:
        folder = enable_compilation_cache(path)
    except OSError as err:  # a cache is an optimisation: run without it
        warnings.warn(f"persistent compilation cache off: {err}", stacklevel=3)
        yield None
        return
    try:
        yield folder
    finally:
        _apply(before)


def _apply(settings: dict) -> None:
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    for name, value in settings.items():
        jax.config.update(name, value)
    # JAX opens its cache folder once, at the first compile after a folder is set; forget it so
    # the next compile opens the folder now configured (or none).
    compilation_cache.reset_cache()
