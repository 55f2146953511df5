"""MeasurementStore and device fingerprints: real SQLite files, real processes."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fusiongym.reward import fingerprint as fingerprint_module
from fusiongym.reward import store as store_module
from fusiongym.reward.fingerprint import (
    cpu_fingerprint,
    cuda_fingerprint,
    describe_machine,
    device_fingerprint,
)
from fusiongym.reward.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Measurement,
    MeasurementKey,
    MeasurementStore,
    StoreError,
)

_CTX = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _key(signature: str = "ab12", schedule: str = "default", load: float = 0.0) -> MeasurementKey:
    return MeasurementKey("cpu:test:2c:isa-0", "tvm-llvm", "tvm-0.27.0.post1", signature, schedule, load)


def _measurement(key: MeasurementKey, median_us: float = 10.0, **meta: object) -> Measurement:
    return Measurement(key, median_us, 0.02, 30, 1_700_000_000.5, dict(meta))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "measurements.db"


@pytest.fixture
def store(db: Path):
    with MeasurementStore(db) as opened:
        yield opened


# -- basic API ------------------------------------------------------------------------


def test_round_trip_keeps_every_field_and_meta(store: MeasurementStore, db: Path) -> None:
    meta = {"shapes": [[1, 3, 224, 224]], "ops": ["conv2d", "relu"], "plan": "9f0c", "nested": {"a": None}}
    m = Measurement(_key(), 123.456, 0.031, 25, 1_700_000_123.25, meta)
    store.put(m)
    assert db.exists()
    assert store.get(_key()) == m
    with MeasurementStore(db) as reopened:  # survives reopening, not just a cache
        assert reopened.get(_key()) == m


def test_load_level_is_rounded_to_two_decimals_in_the_key(store: MeasurementStore) -> None:
    assert _key(load=0.304) == _key(load=0.3)
    assert hash(_key(load=0.304)) == hash(_key(load=0.3))
    store.put(_measurement(_key(load=0.304)))
    assert store.get(_key(load=0.299)).key.load_level == 0.3
    assert _key(load=0.31) not in store


def test_put_upserts(store: MeasurementStore) -> None:
    store.put(_measurement(_key(), 10.0, run=1))
    store.put(_measurement(_key(), 20.0, run=2))
    assert len(store) == 1
    got = store.get(_key())
    assert (got.median_us, got.meta) == (20.0, {"run": 2})


def test_get_many_returns_only_stored_keys(store: MeasurementStore) -> None:
    stored = [_key(f"sig{i}", load=i / 10) for i in range(5)]
    store.put_many(_measurement(k, float(i)) for i, k in enumerate(stored))
    missing = [_key("absent"), _key("sig0", schedule="tile32")]
    found = store.get_many(stored + missing + stored[:2])
    assert set(found) == set(stored)
    assert all(found[k].key == k for k in stored)
    assert found[stored[3]].median_us == 3.0
    assert store.get_many([]) == {}


def test_stats_count_hits_and_misses(store: MeasurementStore) -> None:
    assert store.stats.hit_rate == 0.0
    store.put(_measurement(_key("a")))
    store.get(_key("a"))
    store.get(_key("b"))
    store.get_many([_key("a"), _key("c"), _key("d")])
    assert (store.stats.hits, store.stats.misses) == (2, 3)
    assert store.stats.hit_rate == pytest.approx(0.4)
    assert _key("a") in store and _key("b") not in store
    assert (store.stats.hits, store.stats.misses) == (2, 3)  # `in` is not a lookup


def test_iter_all_pages_through_everything(store: MeasurementStore, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "_PAGE_SIZE", 3)
    keys = [_key(f"s{i:02d}", schedule=s) for i in range(4) for s in ("default", "parallel")]
    store.put_many(_measurement(k) for k in keys)
    assert [m.key for m in store.iter_all()] == sorted(keys, key=lambda k: k._row())


def test_invalid_measurements_are_rejected(store: MeasurementStore) -> None:
    with pytest.raises(ValueError, match="signature"):
        _key(signature="")
    with pytest.raises(ValueError, match="repeats"):
        Measurement(_key(), 1.0, 0.0, 0, 0.0, {})
    with pytest.raises(ValueError, match="median_us"):
        Measurement(_key(), float("nan"), 0.0, 1, 0.0, {})
    with pytest.raises(TypeError, match="JSON"):
        store.put(Measurement(_key(), 1.0, 0.0, 1, 0.0, {"bad": object()}))
    assert len(store) == 0


def test_path_from_env_var_and_parent_dirs(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "a" / "b" / "env.db"
    monkeypatch.setenv("FUSIONGYM_STORE", str(target))
    with MeasurementStore() as s:
        s.put(_measurement(_key()))
        assert s.path == target
    assert target.exists()
    assert store_module.resolve_store_path(tmp_path / "x.db") == tmp_path / "x.db"


def test_file_is_wal_and_marked_as_ours(store: MeasurementStore, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    finally:
        conn.close()


def test_closed_store_refuses_use_and_pickle_reopens(store: MeasurementStore, db: Path) -> None:
    store.put(_measurement(_key()))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get(_key()) is not None and clone.stats.hits == 1
    clone.close()
    with pytest.raises(StoreError, match="closed"):
        clone.get(_key())


# -- exports --------------------------------------------------------------------------


def test_export_csv_content(store: MeasurementStore, tmp_path: Path) -> None:
    store.put(Measurement(_key("b", load=0.5), 7.25, 0.1, 12, 1_700_000_000.0, {"ops": ["add"]}))
    store.put(Measurement(_key("a"), 3.5, 0.05, 40, 1_700_000_001.0, {}))
    out = tmp_path / "exports" / "m.csv"
    assert store.export_csv(out) == out
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["signature"] for r in rows] == ["a", "b"]
    assert rows[1] == {
        "device": "cpu:test:2c:isa-0", "backend": "tvm-llvm", "backend_version": "tvm-0.27.0.post1",
        "signature": "b", "schedule": "default", "load_level": "0.5", "median_us": "7.25",
        "spread": "0.1", "repeats": "12", "timestamp": "1700000000.0", "meta": '{"ops":["add"]}',
    }
    assert json.loads(rows[0]["meta"]) == {}
    assert [p.name for p in out.parent.iterdir()] == ["m.csv"]  # no temp file left behind


def test_export_parquet_without_pyarrow_names_the_extra(store: MeasurementStore, tmp_path: Path,
                                                        monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install fusiongym\[parquet\]"):
        store.export_parquet(tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_export_parquet_round_trip(store: MeasurementStore, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    store.put(_measurement(_key(), 5.0, ops=["mul"]))
    table = pq.read_table(store.export_parquet(tmp_path / "m.parquet"))
    assert table.column("median_us").to_pylist() == [5.0]
    assert table.column("meta").to_pylist() == ['{"ops":["mul"]}']


# -- bad files ------------------------------------------------------------------------


def test_corrupt_file_is_refused_with_path_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "measurements.db"
    content = b"definitely not sqlite\n" * 50
    bad.write_bytes(content)
    with pytest.raises(StoreError) as info:
        MeasurementStore(bad)
    message = str(info.value)
    assert str(bad) in message and "not an SQLite database" in message
    assert "delete or move" in message and "FUSIONGYM_STORE" in message
    assert bad.read_bytes() == content


def test_foreign_sqlite_db_is_refused_and_left_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another program") as info:
        MeasurementStore(foreign)
    assert str(foreign) in str(info.value) and "users" in str(info.value)
    conn = sqlite3.connect(foreign)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    finally:
        conn.close()


def test_newer_schema_is_refused(store: MeasurementStore, db: Path) -> None:
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer fusiongym") as info:
        MeasurementStore(db)
    assert str(db) in str(info.value)


def test_a_schema_1_store_is_migrated_to_median_takes_on_opening(store: MeasurementStore, db: Path) -> None:
    """Schema 1 stored a group's fastest spaced take; opening it stores the median take
    instead, once, and leaves every take and every single-take group as they were."""
    five = _measurement(_key("five"), 110.0, spaced_takes_us=[120.0, 100.0, 130.0, 90.0, 110.0])
    two = _measurement(_key("two"), 40.0, spaced_takes_us=[40.0, 55.0])
    one = _measurement(_key("one"), 7.0, graph="g")
    store.put_many([five, two, one])
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE measurements SET median_us = 90.0 WHERE signature = 'five'")   # schema 1: the fastest
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with MeasurementStore(db) as migrated:
        assert {m.key.signature: m.median_us for m in migrated.iter_all()} == {"five": 110.0, "two": 40.0, "one": 7.0}
        assert {m.key.signature: m.meta for m in migrated.iter_all()} == {"five": five.meta, "two": two.meta,
                                                                          "one": one.meta}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
    finally:
        conn.close()
    with MeasurementStore(db) as again:   # already current: opening it again changes nothing
        assert again.get(_key("five")).median_us == 110.0


def test_median_take_is_a_real_take() -> None:
    assert store_module.median_take_us([90.0]) == 90.0
    assert store_module.median_take_us([55.0, 40.0]) == 40.0                  # two takes: the faster
    assert store_module.median_take_us([100.0, 9000.0, 95.0]) == 100.0        # a stalled take moves nothing
    assert store_module.median_take_us([40.0, 9000.0, 70.0, 100.0]) == 70.0   # even counts: the low median
    with pytest.raises(ValueError, match="at least one take"):
        store_module.median_take_us([])


# -- processes ------------------------------------------------------------------------


def _write_rows(path: str, tag: str, count: int, start) -> None:
    """Child process: open the store itself and write `count` rows, one transaction each."""
    start.wait(10)
    with MeasurementStore(path) as s:
        for i in range(count):
            s.put(_measurement(_key(f"{tag}-{i:04d}"), float(i), writer=tag))


def _open_store(path: str, start) -> None:
    start.wait(10)
    len(MeasurementStore(path))


def test_processes_creating_one_store_at_once_all_open_it(tmp_path: Path) -> None:
    """A process must not take a half-created store (tables, no application id yet) for a
    foreign file: before the fix, 16 of 200 such races failed so."""
    for round_index in range(40):
        start = _CTX.Event()
        path = str(tmp_path / f"race{round_index}.db")
        procs = [_CTX.Process(target=_open_store, args=(path, start)) for _ in range(3)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0, 0], f"round {round_index}"


def test_concurrent_writers_lose_nothing(db: Path) -> None:
    start = _CTX.Event()
    procs = [_CTX.Process(target=_write_rows, args=(str(db), tag, 300, start)) for tag in ("p", "q")]
    for p in procs:
        p.start()
    start.set()  # both race to create the file and then to write
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with MeasurementStore(db) as s:
        assert len(s) == 600
        keys = [_key(f"{tag}-{i:04d}") for tag in ("p", "q") for i in range(300)]
        assert len(s.get_many(keys)) == 600


def _use_inherited_store(s: MeasurementStore) -> None:
    s.put(_measurement(_key("child")))
    assert s.get(_key("parent")) is not None
    assert s.stats.hits == 1  # counters are per process


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_store_survives_fork(store: MeasurementStore) -> None:
    store.put(_measurement(_key("parent")))
    store.get(_key("parent"))
    child = mp.get_context("fork").Process(target=_use_inherited_store, args=(store,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert store.get(_key("child")) is not None
    assert store.stats.hits == 2


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from fusiongym.reward import store as S

    def m(sig, pad=""):
        key = S.MeasurementKey("cpu:test:2c:isa-0", "tvm-llvm", "tvm-0.27.0.post1", sig, "default", 0.0)
        return S.Measurement(key, 1.0, 0.0, 1, 0.0, {"pad": pad})

    s = S.MeasurementStore(sys.argv[1])
    s.put_many([m(f"committed-{i}") for i in range(5)])
    conn = s._connection()
    conn.execute("BEGIN IMMEDIATE")
    # Enough rows to spill uncommitted pages into the WAL file before the kill.
    conn.executemany(S._UPSERT_SQL, [m(f"partial-{i}", "x" * 300)._row() for i in range(20000)])
    print("in-transaction", flush=True)
    time.sleep(60)
""")


def test_writer_killed_mid_transaction_leaves_no_partial_rows(store: MeasurementStore, db: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(db)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "in-transaction", child.stderr.read()
        assert len(store) == 5  # readers never see an open transaction
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    with MeasurementStore(db) as reopened:
        assert len(reopened) == 5
        assert {m.key.signature for m in reopened.iter_all()} == {f"committed-{i}" for i in range(5)}
        reopened.put(_measurement(_key("after-kill")))  # the dead writer's lock is gone
        assert len(reopened) == 6


# -- fingerprints ---------------------------------------------------------------------


def test_cpu_fingerprint_is_stable_and_non_empty() -> None:
    first = cpu_fingerprint()
    cpu_fingerprint.cache_clear()
    assert cpu_fingerprint() == first
    assert first.startswith("cpu:") and f":{os.cpu_count()}c:isa-" in first
    assert device_fingerprint("cpu") == first


def test_device_fingerprint_rejects_unknown_devices() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        device_fingerprint("tpu")


def test_cuda_fingerprint_without_gpu_says_how_to_fix() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        assert cuda_fingerprint().startswith("cuda:")
        return
    with pytest.raises(RuntimeError, match="device='cpu'"):
        device_fingerprint("cuda:0")


def test_describe_machine_is_json_and_hostname_free() -> None:
    info = describe_machine()
    assert {"cpu_model", "cpu_cores", "memory_gib", "os", "python", "torch", "tvm"} <= set(info)
    text = json.dumps(info)
    hostname = socket.gethostname()
    if len(hostname) > 3:
        assert hostname not in text


def test_describe_machine_names_the_cpu_generation_and_caches(tmp_path: Path, monkeypatch) -> None:
    """Two CPUs of one name and ISA share a fingerprint; their results must still say which ran."""
    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                                 (2, "Unified", "1024K"), (3, "Unified", "32768K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    (tmp_path / "index4").mkdir()   # a cache sysfs cannot describe is left out, not an error
    monkeypatch.setattr(fingerprint_module, "_CPU0_CACHES", tmp_path)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
                       "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n")
    monkeypatch.setattr(fingerprint_module, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(fingerprint_module, "cpu_fingerprint", lambda: "cpu:AMD EPYC:2c:isa-0")  # cached per process
    info = describe_machine()
    assert info["cpu_generation"] == "family 25 model 17 stepping 1"
    assert info["cpu_caches"] == {"L1d": "32K", "L1i": "32K", "L2": "1024K", "L3": "32768K"}
    cpuinfo.write_text("Hardware\t: BCM2835\n")   # no x86 numbers (an Arm board): none, not a guess
    assert describe_machine()["cpu_generation"] is None


def test_describe_machine_does_not_import_tvm() -> None:
    code = ("import sys; from fusiongym.reward.fingerprint import describe_machine; "
            "describe_machine(); assert 'tvm' not in sys.modules, 'tvm imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_code_stored_measurements_depend_on_is_the_recorded_code():
    """A changed schedule or timing protocol must be a decision, not a silent reuse of old timings."""
    import hashlib
    from pathlib import Path

    from fusiongym.reward import signature

    folder = Path(signature.__file__).parent
    digest = hashlib.sha256(b"".join((folder / name).read_bytes() for name in signature.MEASURED_CODE)).hexdigest()
    assert digest[:16] == signature.MEASURED_CODE_DIGEST, (
        f"{', '.join(signature.MEASURED_CODE)} changed: if measurements taken with the old code no longer "
        f"hold, bump SIGNATURE_VERSION in reward/signature.py (it re-keys every store); then set "
        f"MEASURED_CODE_DIGEST = {digest[:16]!r}")
