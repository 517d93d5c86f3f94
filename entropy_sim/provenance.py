"""Where a result came from: the ``run.json`` of a result folder.

``collect`` records the versions of entropy_sim, JAX, jaxlib, NumPy and Python, the git commit of
the package (and whether its tracked files differ from it) when it is run from a git checkout,
the devices the run used, when it started (ISO 8601, local time with its UTC offset), its wall
time in seconds, the persistent compilation cache it used (``compile_cache.py``), and the command
line and working folder when it was started from ``entropy-sim``. Everything is JSON: strings,
numbers, booleans, ``None``.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

GIT_TIMEOUT_S = 5.0
PACKAGE_DIR = Path(__file__).resolve().parent


def collect(*, start: datetime.datetime | None = None, wall_s: float | None = None,
            devices=None, command: list[str] | None = None, resumed_units: int = 0,
            compilation_cache: str | None = None) -> dict:
    """The provenance record of a run.

    Args:
      start: when the run started (timezone-aware); None when unknown.
      wall_s: the run's wall time in seconds (building, compiling and running); None when unknown.
      devices: the ``jax.Device`` objects the run used (any iterable, e.g. a mesh's
        ``devices.flat``); None when unknown.
      command: the command line (``["entropy-sim", "run", ...]``); None for the Python API.
      resumed_units: work units read back from a progress folder instead of computed.
      compilation_cache: the persistent compilation cache folder in use, None when off.
    """
    import jax
    import jaxlib

    import entropy_sim

    return {
        "entropy_sim": entropy_sim.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "git": git_state(PACKAGE_DIR),
        "devices": device_summary(devices),
        "processes": jax.process_count(),
        "start": None if start is None else start.isoformat(timespec="seconds"),
        "wall_s": None if wall_s is None else round(float(wall_s), 3),
        "resumed_units": int(resumed_units),
        "compilation_cache": compilation_cache,
        "command": None if command is None else list(command),
        "cwd": None if command is None else os.getcwd(),
    }


def now() -> datetime.datetime:
    """The current local time, timezone-aware (its ``isoformat`` carries the UTC offset)."""
    return datetime.datetime.now().astimezone()


def device_summary(devices) -> dict | None:
    """``{"platform", "kind", "count"}`` of the devices a run used (the first device's platform
    and kind: a run uses one kind), or None."""
    if devices is None:
        return None
    devices = list(devices)
    if not devices:
        return None
    return {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)}


def git_state(package_dir: Path) -> dict | None:
    """``{"commit": sha, "dirty": bool}`` when ``package_dir`` is the package folder of a git
    checkout (its parent is the repository's top level), else None. ``dirty``: tracked files
    differ from the commit (untracked files do not count). Never raises and prints nothing: git
    missing, not a repository, an unsafe owner or a slow git all give None."""
    out = _git(package_dir, "rev-parse", "--show-toplevel", "HEAD")
    if out is None or len(out.split()) != 2:
        return None
    top, commit = out.split()
    if Path(top).resolve() != Path(package_dir).resolve().parent:
        return None  # installed inside some other repository: its commit is not ours
    status = _git(package_dir, "--no-optional-locks", "status", "--porcelain",
                  "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status.strip())}


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder args...``'s standard output, or None if it fails in any way."""
    command = ["git", "-C", str(folder), *args]
    if args and args[0].startswith("--"):  # global options go before -C's command
        command = ["git", args[0], "-C", str(folder), *args[1:]]
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None
