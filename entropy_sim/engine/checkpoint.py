"""Resumable runs: the progress of a run kept in a folder, one completed work unit at a time.

A work unit is one chunk of steps of one grid batch (``runner.make_plan``). After each unit the
runner stores its checked output and the state after it; a run started again with the same config
skips the units already done and continues from the stored state. The samples of step ``t`` depend
only on the seed's key and ``t``, and the state is stored bit for bit, so a resumed run ends with
results identical to an uninterrupted one.

Files (each written under a temporary name and renamed): ``manifest.json`` (the resolved config, the
plan and the units done; written last), ``unit-B-C.npz`` (the statistics over seeds),
``state-B-C.npz`` (the state after unit ``C`` of grid batch ``B``; only the latest per batch is
kept) and, in full mode, ``metrics.parquet/part-000-B-C.parquet`` (the unit's per-seed rows,
``store.py``; written first). A unit counts as done once the manifest lists it: one whose part
was written when the run was killed is computed again, and its part replaced. The folder is created
when the first unit completes: a run that stops before then leaves none.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np



class Checkpoint:
    """The progress folder of one run (see the module docstring)."""

    def __init__(self, folder, config: dict, plan, constants: dict | None = None):
        self.folder = Path(folder)
        self.constants = dict(constants or {})  # the static fields a sweep set for this run
        self.signature = {"config": config, "grid_batches": [list(b) for b in plan.grid_batches],
                          "chunks": [list(c) for c in plan.chunks]}
        self.done: list[tuple[int, int]] = []
        self.resumed_from: int | None = None  # units found done when opened
        manifest = self.folder / "manifest.json"
        if manifest.exists():
            record = json.loads(manifest.read_text())
            if record.get("signature") == self.signature:
                self.done = [tuple(u) for u in record["done"]]
                self.resumed_from = len(self.done)
            else:  # another config's leftovers: start afresh
                shutil.rmtree(self.folder)
        # The folder is made by the first completed unit: a run that fails or is interrupted
        # before then (a late config error, a non-finite step 0, Ctrl-C) leaves nothing behind.

    @property
    def rows_folder(self) -> Path:
        """Where the per-seed rows of a full-mode run go (``store.write_part``)."""
        return self.folder / "metrics.parquet"

    @property
    def total_units(self) -> int:
        return len(self.signature["grid_batches"]) * len(self.signature["chunks"])

    def completed(self) -> dict[tuple[int, int], dict]:
        """``{(batch, chunk): statistics}`` of the units already done."""
        return {u: _unflatten(np.load(self._unit(*u))) for u in self.done}

    def save(self, batch: int, chunk: int, state, out: dict) -> None:
        """Record unit ``(batch, chunk)``: its statistics over seeds ``out``, the state after it
        (host arrays of the real grid points and seeds, so any device layout can resume it),
        then the manifest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_savez(self._unit(batch, chunk), _flatten(out))
        leaves = jax.tree.leaves(state)
        _atomic_savez(self._state(batch, chunk), {f"{i}": x for i, x in enumerate(leaves)})
        self.done.append((batch, chunk))
        record = {"signature": self.signature, "done": [list(u) for u in self.done]}
        tmp = self.folder / "manifest.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.folder / "manifest.json")
        if chunk > 0:
            self._state(batch, chunk - 1).unlink(missing_ok=True)

    def load_state(self, batch: int, template):
        """The state after the last completed unit of ``batch`` (as saved: real grid points and
        seeds), with the tree structure of ``template``."""
        chunk = max(c for b, c in self.done if b == batch)
        data = np.load(self._state(batch, chunk))
        leaves, treedef = jax.tree.flatten(template)
        return jax.tree.unflatten(treedef, [data[f"{i}"] for i in range(len(leaves))])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _unit(self, batch: int, chunk: int) -> Path:
        return self.folder / f"unit-{batch}-{chunk}.npz"

    def _state(self, batch: int, chunk: int) -> Path:
        return self.folder / f"state-{batch}-{chunk}.npz"


def _atomic_savez(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def _unflatten(data) -> dict:
    tree: dict = {}
    for key in data.files:
        *path, leaf = key.split("/")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = data[key]
    return tree
