"""MeasurementStore: every real latency measurement, kept so nothing is measured twice.

Real measurements (TVM on llvm/cuda, TorchInductor) cost compile time plus many timed
repeats, and training, evaluation and the learned cost model all ask for the same
(device, group, schedule) latencies again and again. One SQLite file holds them all:

* WAL mode, so readers never wait for writers and several processes (vectorized envs,
  evaluation workers) can share one file;
* every write is one ``BEGIN IMMEDIATE`` transaction, waited for with SQLite's busy
  timeout and retried with a bounded backoff, so concurrent writers lose nothing and
  a writer killed mid-transaction leaves no partial row;
* the file is marked with our ``PRAGMA application_id`` and a schema version, so a
  wrong, corrupt or newer file is refused with a message that says how to fix it, and an
  older one is brought up to date in one transaction when it is opened;
* connections are per process: they are closed before ``fork`` and reopened on first
  use in any process, as SQLite requires.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sqlite3
import statistics
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

APPLICATION_ID = 0x46475953  # "FGYS": marks a SQLite file as a fusiongym measurement store
SCHEMA_VERSION = 2  # 2: a group timed in several spaced takes is stored as their median take
SPACED_TAKES = "spaced_takes_us"  # meta key: the latency of every spaced take of a group, in order
ENV_VAR = "FUSIONGYM_STORE"
DEFAULT_PATH = Path("~/.cache/fusiongym/measurements.db")

_KEY_COLUMNS = ("device", "backend", "backend_version", "signature", "schedule", "load_centi")
_VALUE_COLUMNS = ("median_us", "spread", "repeats", "timestamp", "meta")
_COLUMNS = ", ".join(_KEY_COLUMNS + _VALUE_COLUMNS)
_CSV_HEADER = (*_KEY_COLUMNS[:-1], "load_level", *_VALUE_COLUMNS)

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE measurements (
    device TEXT NOT NULL,
    backend TEXT NOT NULL,
    backend_version TEXT NOT NULL,
    signature TEXT NOT NULL,
    schedule TEXT NOT NULL,
    load_centi INTEGER NOT NULL,
    median_us REAL NOT NULL,
    spread REAL NOT NULL,
    repeats INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY ({", ".join(_KEY_COLUMNS)})
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
PRAGMA application_id = {APPLICATION_ID};
"""

_UPSERT_SQL = f"INSERT OR REPLACE INTO measurements ({_COLUMNS}) VALUES ({', '.join('?' * 11)})"
_SELECT_ONE_SQL = f"SELECT {_COLUMNS} FROM measurements WHERE " + " AND ".join(
    f"{column} = ?" for column in _KEY_COLUMNS
)
# One query for a whole batch, whatever its size: the keys travel as one JSON array
# and each is looked up through the primary key (no SQLite variable-count limit).
_SELECT_MANY_SQL = (
    f"SELECT {', '.join('m.' + c for c in _KEY_COLUMNS + _VALUE_COLUMNS)} "
    "FROM json_each(?) AS k JOIN measurements AS m ON "
    + " AND ".join(f"m.{c} = json_extract(k.value, '$[{i}]')" for i, c in enumerate(_KEY_COLUMNS))
)
# Keyset pagination: each page is its own short query, so iterating a large store
# neither loads it whole nor holds a read snapshot that blocks WAL checkpoints.
_PAGE_SQL = (
    f"SELECT {_COLUMNS} FROM measurements WHERE ({', '.join(_KEY_COLUMNS)}) > (?, ?, ?, ?, ?, ?) "
    f"ORDER BY {', '.join(_KEY_COLUMNS)} LIMIT ?"
)
_PAGE_SIZE = 1000

_MAX_ATTEMPTS = 6  # retries after the busy timeout itself ran out: bounded, not forever
_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0

_T = TypeVar("_T")


class StoreError(RuntimeError):
    """The store file cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class MeasurementKey:
    """What identifies a measurement: the same key means the same latency to expect."""

    device: str  # device fingerprint (see fingerprint.py)
    backend: str  # e.g. "tvm-llvm", "tvm-cuda", "torch-inductor"
    backend_version: str  # e.g. "tvm-0.27.0.post1"
    signature: str  # structural group signature (hex digest), independent of node ids
    schedule: str  # schedule name, e.g. "default", "parallel", "tile32"
    load_level: float  # runtime device load, rounded to 2 decimals in the key

    def __post_init__(self) -> None:
        for name in ("device", "backend", "backend_version", "signature", "schedule"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"MeasurementKey.{name} must be a non-empty string, got {value!r}")
        load = float(self.load_level)
        if not math.isfinite(load):
            raise ValueError(f"MeasurementKey.load_level must be finite, got {self.load_level!r}")
        # Rounded here, not only in SQL, so equal loads give equal, equally hashed keys.
        object.__setattr__(self, "load_level", round(load, 2))

    def _row(self) -> tuple[str, str, str, str, str, int]:
        """Key columns as stored: the load as an integer number of hundredths."""
        return (self.device, self.backend, self.backend_version, self.signature, self.schedule,
                round(self.load_level * 100))


@dataclass(frozen=True)
class Measurement:
    """One timed result: the median of `repeats` runs and their coefficient of variation."""

    key: MeasurementKey
    median_us: float  # of the repeats; of several spaced takes (meta[SPACED_TAKES]), median_take_us of them
    spread: float  # coefficient of variation of the repeats (std/mean); of several takes, one take's
    repeats: int
    timestamp: float  # unix seconds
    meta: dict[str, Any] = field(default_factory=dict)  # shapes, ops, plan hash, versions...

    def __post_init__(self) -> None:
        for name in ("median_us", "spread"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Measurement.{name} must be finite and >= 0, got {value!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"Measurement.repeats must be an int >= 1, got {self.repeats!r}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"Measurement.meta must be a dict, got {type(self.meta).__name__}")

    def _row(self) -> tuple[Any, ...]:
        """All columns as stored; meta becomes canonical JSON text."""
        try:
            meta = json.dumps(self.meta, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Measurement.meta must be JSON-serializable: {exc}") from exc
        return (*self.key._row(), float(self.median_us), float(self.spread), self.repeats,
                float(self.timestamp), meta)


@dataclass(frozen=True)
class StoreStats:
    """Lookups answered (hits) or not (misses) by this process's `get`/`get_many` calls."""

    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        """Share of lookups answered from the store; 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def resolve_store_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Store location: the argument, else $FUSIONGYM_STORE, else ~/.cache/fusiongym/."""
    chosen = path if path is not None else os.environ.get(ENV_VAR) or DEFAULT_PATH
    return Path(chosen).expanduser()


def _fix_hint(path: Path) -> str:
    return (f"Fix: delete or move {path}, or use another file (MeasurementStore(path=...) "
            f"or set {ENV_VAR}).")


def median_take_us(takes_us: Sequence[float]) -> float:
    """The latency a group timed in several spaced takes is stored with: the low median of the
    takes, so a real take (with two takes, the faster one).

    Why not the fastest take: on the 2-core Intel Xeon VM a kernel's timing moves both ways
    with the machine's state, by 12 % (std of ln) between takes, so the fastest take is a
    lucky spell that does not come back. Two independent 5-take stores of 1,221 kernels
    agreed at std of ln 0.082 by their median take and 0.153 by their fastest (README, "The
    median take"). A stalled take (contention slows a kernel 100x and more) still cannot
    move the median of three or more takes, nor the low median of two.
    """
    if not takes_us:
        raise ValueError("median_take_us needs at least one take")
    return statistics.median_low(takes_us)


def _from_row(row: tuple[Any, ...]) -> Measurement:
    device, backend, version, signature, schedule, load_centi, median, spread, repeats, ts, meta = row
    key = MeasurementKey(device, backend, version, signature, schedule, load_centi / 100)
    return Measurement(key, median, spread, repeats, ts, json.loads(meta))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLite reports lock contention only through the message in Python < 3.11."""
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _check_schema(conn: sqlite3.Connection, path: Path) -> int | None:
    """The file's schema version if it is ours and not newer than this code's, None if empty;
    raise otherwise."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):  # e.g. locked: the caller retries
            raise
        raise StoreError(f"{path} is not a fusiongym measurement store: it is not an SQLite "
                         f"database or is corrupt ({exc}). {_fix_hint(path)}") from exc
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if app_id == 0 and not tables:
        return None
    if app_id != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite database of another program, not a fusiongym "
                         f"measurement store (application_id={app_id}, tables: "
                         f"{', '.join(tables) or 'none'}). {_fix_hint(path)}")
    version = None
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else None
    if version is None or not str(version).isdigit():
        raise StoreError(f"{path} is a damaged fusiongym measurement store (no schema_version "
                         f"in its meta table). {_fix_hint(path)}")
    if int(version) > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer fusiongym (store schema {version}, this "
                         f"version reads schema {SCHEMA_VERSION}): upgrade fusiongym, or use "
                         f"another file (MeasurementStore(path=...) or set {ENV_VAR}).")
    if int(version) < 1:
        raise StoreError(f"{path} has unknown store schema {version}. {_fix_hint(path)}")
    return int(version)


def _store_median_takes(conn: sqlite3.Connection) -> None:
    """Schema 1 to 2: every group with several spaced takes gets its median take's latency
    (``median_take_us``) in place of its fastest take's. Its other columns stay the fastest
    take's; every take stays in its meta, so the fastest is still there to read."""
    rows = conn.execute(f"SELECT {', '.join(_KEY_COLUMNS)}, meta FROM measurements "
                        f"WHERE json_array_length(meta, '$.{SPACED_TAKES}') > 1").fetchall()
    update = "UPDATE measurements SET median_us = ? WHERE " + " AND ".join(f"{c} = ?" for c in _KEY_COLUMNS)
    conn.executemany(update, [(median_take_us(json.loads(row[-1])[SPACED_TAKES]), *row[:-1]) for row in rows])


_MIGRATIONS = {1: _store_median_takes}  # from schema version N to N + 1


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring an older store up to SCHEMA_VERSION, all steps in one transaction: a process
    killed halfway leaves the file as it was."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_schema(conn, path)   # again under the write lock: another process may have migrated it
        while version is not None and version < SCHEMA_VERSION:
            _MIGRATIONS[version](conn)
            version += 1
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Check the file, create the schema in a new file or migrate an older one, switch to WAL."""
    conn.execute("BEGIN")   # the check's reads in one snapshot: another process may be creating the file
    try:
        version = _check_schema(conn, path)
    finally:
        conn.execute("ROLLBACK")
    if version is not None and version < SCHEMA_VERSION:
        _migrate(conn, path)
    if version is None:
        # Another process may be creating the same file: decide again under the write lock.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _check_schema(conn, path) is None:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: commits survive a killed process


class MeasurementStore:
    """SQLite-backed store of `Measurement`s, safe to share between processes.

    Thread-safe within a process (one connection behind a lock); each process opens its
    own connection. Pickling keeps only the path and timeout, so a store can be handed
    to spawned workers.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout_s: float = 10.0) -> None:
        self.path = resolve_store_path(path)
        self.timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._reset_process_state()
        _LIVE_STORES.add(self)
        self._run(lambda conn: None)  # open now: a bad file should fail here, not later

    # -- public API -------------------------------------------------------------------

    def get(self, key: MeasurementKey) -> Measurement | None:
        """The stored measurement for `key`, or None; counted in `stats`."""
        row = self._run(lambda conn: conn.execute(_SELECT_ONE_SQL, key._row()).fetchone())
        self._count(hits=int(row is not None), misses=int(row is None))
        return _from_row(row) if row is not None else None

    def get_many(self, keys: Iterable[MeasurementKey]) -> dict[MeasurementKey, Measurement]:
        """Stored measurements for the keys that have one, in one query; counted in `stats`."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        payload = json.dumps([key._row() for key in wanted])
        rows = self._run(lambda conn: conn.execute(_SELECT_MANY_SQL, (payload,)).fetchall())
        found = {m.key: m for m in map(_from_row, rows)}
        self._count(hits=len(found), misses=len(wanted) - len(found))
        return found

    def put(self, measurement: Measurement) -> None:
        """Insert or replace one measurement (one transaction)."""
        self.put_many([measurement])

    def put_many(self, measurements: Iterable[Measurement]) -> None:
        """Insert or replace measurements, all in one transaction: all or none are stored."""
        rows = [m._row() for m in measurements]
        if rows:
            self._run(lambda conn: self._write(conn, rows))

    def __len__(self) -> int:
        return int(self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]))

    def __contains__(self, key: object) -> bool:
        """Membership test; not counted in `stats`, which track `get` lookups."""
        if not isinstance(key, MeasurementKey):
            return False
        return self._run(lambda conn: conn.execute(_SELECT_ONE_SQL, key._row()).fetchone()) is not None

    def iter_all(self) -> Iterator[Measurement]:
        """All measurements in key order, read page by page."""
        last: tuple[Any, ...] = ("", "", "", "", "", -(2**62))
        while True:
            page = self._run(lambda conn: conn.execute(_PAGE_SQL, (*last, _PAGE_SIZE)).fetchall())
            yield from map(_from_row, page)
            if len(page) < _PAGE_SIZE:
                return
            last = page[-1][: len(_KEY_COLUMNS)]

    @property
    def stats(self) -> StoreStats:
        """Hit/miss counters of this process (reset in a forked child)."""
        return StoreStats(self._hits, self._misses)

    def export_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write every measurement to a CSV file (meta as JSON text); returns the path."""
        with atomic_output(Path(path)) as tmp:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(_CSV_HEADER)
                writer.writerows(_export_row(m) for m in self.iter_all())
        return Path(path)

    def export_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write every measurement to a Parquet file (needs pyarrow); returns the path."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("export_parquet needs pyarrow: pip install fusiongym[parquet]") from exc
        types = [pa.string()] * 5 + [pa.float64()] * 3 + [pa.int64(), pa.float64(), pa.string()]
        schema = pa.schema(list(zip(_CSV_HEADER, types)))
        columns = list(zip(*(_export_row(m) for m in self.iter_all()))) or [()] * len(_CSV_HEADER)
        table = pa.table([list(values) for values in columns], schema=schema)
        with atomic_output(Path(path)) as tmp:
            pq.write_table(table, tmp)
        return Path(path)

    def close(self) -> None:
        """Close this process's connection; the store cannot be used afterwards."""
        self._ensure_own_process()
        with self._lock:
            self._release_connection()
            self._closed = True

    def __enter__(self) -> MeasurementStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MeasurementStore({str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["timeout_s"])  # type: ignore[misc]

    # -- internals --------------------------------------------------------------------

    def _count(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def _reset_process_state(self) -> None:
        """Start afresh in a new process: own lock, own counters, no inherited connection."""
        if self._conn is not None:
            _INHERITED_CONNECTIONS.append(self._conn)
            self._conn = None
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._hits = 0
        self._misses = 0

    def _ensure_own_process(self) -> None:
        """Catch forks that bypassed os.fork's hooks (e.g. fork() called from C)."""
        if self._pid != os.getpid():
            self._reset_process_state()

    def _release_connection(self) -> None:
        """Close the connection if this process opened it; never close an inherited one."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"measurement store {self.path} is closed")
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open measurement store {self.path}: {exc}. "
                             f"{_fix_hint(self.path)}") from exc
        try:
            _retry_busy(lambda: _prepare(conn, self.path), self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `operation` on this process's connection, retrying lock contention."""
        self._ensure_own_process()
        with self._lock:
            conn = self._connection()
            try:
                return _retry_busy(lambda: operation(conn), self.path)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"measurement store {self.path}: {exc}. If the file is "
                                 f"damaged: {_fix_hint(self.path)}") from exc

    @staticmethod
    def _write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT_SQL, rows)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def _export_row(m: Measurement) -> tuple[Any, ...]:
    row = m._row()
    return (*row[:5], m.key.load_level, *row[6:])


def _retry_busy(operation: Callable[[], _T], path: Path) -> _T:
    """Retry an operation that met a lock the busy timeout could not wait out."""
    attempt = 0
    while True:
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            attempt += 1
            if not _is_busy(exc):
                raise
            if attempt >= _MAX_ATTEMPTS:
                raise StoreError(f"measurement store {path} stayed locked by another process "
                                 f"after {_MAX_ATTEMPTS} attempts ({exc}); is a writer stuck? "
                                 f"Retry later or use another file (set {ENV_VAR}).") from exc
            time.sleep(min(_MAX_BACKOFF_S, _BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.0))


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`, moved onto it only if writing succeeded."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# -- fork safety ------------------------------------------------------------------------
# SQLite forbids using a connection across fork(), and even an idle open connection
# leaves lock bookkeeping behind in the child. So every live store closes its connection
# (under its lock, so no transaction is cut) just before os.fork; both sides reopen on
# first use. Connections inherited some other way are kept referenced, never closed in
# the child, since closing could checkpoint or delete the parent's WAL.
_LIVE_STORES: weakref.WeakSet[MeasurementStore] = weakref.WeakSet()
_FORKING: list[MeasurementStore] = []
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def _before_fork() -> None:
    for store in list(_LIVE_STORES):
        store._ensure_own_process()
        store._lock.acquire()
        _FORKING.append(store)
        store._release_connection()


def _after_fork_in_parent() -> None:
    while _FORKING:
        _FORKING.pop()._lock.release()


def _after_fork_in_child() -> None:
    while _FORKING:
        _FORKING.pop()._reset_process_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
