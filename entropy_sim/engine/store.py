"""Per-seed metrics on disk: a Parquet dataset written unit by unit, read back in order.

A full-mode run with a progress folder (every ``entropy-sim run``) writes each work unit's rows
(one grid batch x one chunk of steps, ``runner.make_plan``) as soon as they reach the host, as one
file ``part-R-B-C.parquet`` (run ``R`` of a sweep over static fields, grid batch ``B``, chunk
``C``) of the folder ``metrics.parquet/``, while the next unit computes (``Background``). Host
memory then holds about two units of rows, whatever the seeds and steps.

A part's rows run over its grid points, then seeds, then logged steps (the order of
``Results.metrics``); its schema metadata records its numbers of grid points, seeds and logged steps, so
``read`` puts the parts of a grid batch side by side along the steps and returns the rows ordered
by run, grid point, seed and step: the table an in-memory run gives, bit for bit. ``read``
also selects (columns, seeds, steps, grid points) part by part, so a subset of a run larger than
memory can be read. Any Parquet reader reads the folder as one dataset (``pd.read_parquet``), in
the order of the parts.

Files are written with pyarrow directly: dictionary encoding only for the integer and text
columns (tried on floats, it fails on almost every page and triples the write time).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# Column order of metrics tables: identifiers, then the covariance law, then the rest.
LEADING = ("seed", "step", "entropy", "dH_realized", "dH_pred_cov", "dH_pred_closed", "dH_within",
           "dH_shift", "return", "return_reg")
META = b"entropy_sim.part"
PART = re.compile(r"^part-(\d+)-(\d+)-(\d+)\.parquet$")


def write_table(table: pa.Table | pd.DataFrame, path) -> None:
    """Write ``table`` to ``path`` as Parquet (snappy; dictionaries for non-float columns only),
    under a temporary name renamed into place, so ``path`` is whole or absent."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    coded = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, use_dictionary=coded or False, compression="snappy")
    os.replace(tmp, path)


def ordered(names) -> list[str]:
    """Metric names in the order of the tables: ``LEADING`` first, then the rest sorted."""
    lead = [c for c in LEADING if c in names]
    return lead + sorted(c for c in names if c not in lead)


def part_columns(rows: dict, swept: list[dict], steps: np.ndarray,
                 constants: dict | None = None) -> dict[str, np.ndarray]:
    """The flat columns of rows ``{name: [G, N, T]}``: ``constants`` (the static swept fields of a
    run), the traced swept hyperparameters of the ``G`` grid points (``swept``), ``seed``, ``step``
    (``steps: [T]``) and the metrics (``ordered``); one row per (g, n, t): the metrics table."""
    num_grid, num_seeds, num_steps = next(iter(rows.values())).shape
    size = num_grid * num_seeds * num_steps
    cols: dict[str, np.ndarray] = {}
    for name, value in (constants or {}).items():
        cols[name] = np.repeat(np.array([value]), size)
    for name in swept[0] if swept else ():
        cols[name] = np.repeat(np.array([p[name] for p in swept]), num_seeds * num_steps)
    cols["seed"] = np.tile(np.repeat(np.arange(num_seeds, dtype=np.int32), num_steps), num_grid)
    cols["step"] = np.tile(np.asarray(steps).astype(np.int32), num_grid * num_seeds)
    for name in ordered(rows):
        cols[name] = rows[name].reshape(size)
    return cols


def write_part(folder, unit: tuple[int, ...], rows: dict, swept: list[dict], steps: np.ndarray,
               constants: dict | None = None) -> Path:
    """Write one unit's rows ``{name: [G, N, T]}`` as ``folder/part-R-B-C.parquet`` (``unit``
    ``(B, C)`` or ``(R, B, C)``; ``R = 0`` if absent) with its shape in the schema metadata."""
    run, batch, chunk = (0, *unit) if len(unit) == 2 else unit
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_grid, num_seeds, num_steps = next(iter(rows.values())).shape
    table = pa.table(part_columns(rows, swept, steps, constants))
    meta = {"grid": num_grid, "seeds": num_seeds, "steps": num_steps}
    table = table.replace_schema_metadata({META: json.dumps(meta).encode()})
    path = folder / f"part-{run:03d}-{batch:05d}-{chunk:05d}.parquet"
    write_table(table, path)
    return path


def parts(folder) -> list[Path]:
    """The parts of ``folder`` in (run, batch, chunk) order."""
    found = [p for p in Path(folder).iterdir() if PART.match(p.name)]
    return sorted(found, key=lambda p: tuple(int(x) for x in PART.match(p.name).groups()))


def link_parts(sources: list[tuple[Path, int]], folder) -> None:
    """Put the parts of each ``(source folder, run)`` into ``folder`` as run ``run``'s: a hard link
    (no copy) where the file system allows, else a copy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for source, run in sources:
        for path in parts(source):
            _, batch, chunk = (int(x) for x in PART.match(path.name).groups())
            target = folder / f"part-{run:03d}-{batch:05d}-{chunk:05d}.parquet"
            try:
                os.link(path, target)
            except OSError:
                import shutil
                shutil.copyfile(path, target)


def read(folder, columns=None, *, seeds=None, steps=None, where: dict | None = None
         ) -> pd.DataFrame:
    """The rows of the parts in ``folder``, ordered by run, grid point, seed and step.

    ``columns``: metric columns to read (identifiers always come: swept fields, ``seed``,
    ``step``); ``seeds``: seed indices (a ``range``, list or slice); ``steps``: step values (a
    ``range``, list or slice, compared with the ``step`` column); ``where``: ``{swept field:
    value}``, the grid points to keep. Each part is read, cut, and then dropped, so memory holds
    the selection and one part."""
    groups: dict[tuple[int, int], list[Path]] = {}
    for path in parts(folder):
        run, batch, _ = (int(x) for x in PART.match(path.name).groups())
        groups.setdefault((run, batch), []).append(path)
    frames = []
    for paths in groups.values():
        pieces = [_read_part(p, columns, seeds, steps, where) for p in paths]
        pieces = [p for p in pieces if p is not None]
        if pieces:  # the chunks of a grid batch side by side along the steps
            joined = {k: np.concatenate([p[k] for p in pieces], axis=2) if len(pieces) > 1
                      else pieces[0][k] for k in pieces[0]}
            frames.append(pd.DataFrame({k: v.reshape(-1) for k, v in joined.items()}))
    if not frames:
        return pd.DataFrame()
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _read_part(path: Path, columns, seeds, steps, where) -> dict | None:
    """One part as ``{column: [G, N, T]}`` cut to the selection (None if nothing is left)."""
    schema = pq.read_schema(path)
    meta = _meta(schema)
    if columns is not None:
        ids = _identifiers(schema)
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; the folder has {schema.names}")
        wanted = ids + [c for c in columns if c not in ids]
        table = pq.read_table(path, columns=wanted)
    else:
        table = pq.read_table(path)
    shape = (meta["grid"], meta["seeds"], meta["steps"])
    cube = {name: table.column(name).to_numpy().reshape(shape) for name in table.column_names}
    keep_g = np.ones(shape[0], bool)
    for name, value in (where or {}).items():
        if name not in cube:
            raise ValueError(f"where: {name!r} is not a swept field of this folder")
        keep_g &= cube[name][:, 0, 0] == value
    keep_n = select(np.arange(shape[1]), seeds)
    keep_t = select(cube["step"][0, 0], steps)
    if not keep_g.any() or not keep_n.any() or not keep_t.any():
        return None
    for axis, keep in enumerate((keep_g, keep_n, keep_t)):
        if not keep.all():  # (indexing copies: only where something is cut)
            cube = {k: np.compress(keep, v, axis=axis) for k, v in cube.items()}
    return cube


def select(values: np.ndarray, which) -> np.ndarray:
    """A mask over ``values`` of the entries in ``which`` (None: all; a slice applies to the
    values, ``slice(10, 20)`` keeping ``10 <= v < 20``)."""
    if which is None:
        return np.ones(len(values), bool)
    if isinstance(which, slice):
        lo = -np.inf if which.start is None else which.start
        hi = np.inf if which.stop is None else which.stop
        mask = (values >= lo) & (values < hi)
        if which.step not in (None, 1):
            mask &= (values - (which.start or 0)) % which.step == 0
        return mask
    return np.isin(values, np.asarray(list(which)))


def _identifiers(schema: pa.Schema) -> list[str]:
    """The columns before the metrics: swept fields, ``seed``, ``step``."""
    names = schema.names
    return names[:names.index("step") + 1]


def _meta(schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(META)
    if raw is None:
        raise ValueError("not a part written by entropy_sim (no shape in its metadata)")
    return json.loads(raw)


class Background:
    """One background thread for the writes of a run: ``submit`` waits for the previous job
    (so at most one unit is being written while the next computes) and re-raises its error;
    leaving the ``with`` block waits for the last one."""

    def __init__(self):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.pending = None

    def submit(self, fn, *args) -> None:
        self.wait()
        self.pending = self.pool.submit(fn, *args)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.wait()
            elif self.pending is not None:  # finish the write under way, keep the first error
                concurrent.futures.wait([self.pending])
        finally:
            self.pool.shutdown(wait=True)
        return False
