"""Result store: every tier against real services (PostgreSQL, a moto S3 server over HTTP,
a directory standing in for the shared volume), the fallback chain, cleanup, several
processes sharing the fs tier, and 500 MB streamed through fs and s3 in bounded memory.

The moto server runs in its own process: it keeps uploaded objects in memory, and the
500 MB runs measure the RSS of the worker process only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import psycopg
import pytest

from noetl_pg.store import (
    ResultMissing,
    ResultStore,
    SourceConsumed,
    StoreUnavailable,
)
from noetl_pg.store.fs import FsTier
from noetl_pg.store.s3 import S3Tier

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}
MOTO_SERVER = """
import sys, time
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]))
server.start()
while True:
    time.sleep(3600)
"""
MIB = 1024 * 1024
STREAM_BYTES = 500 * MIB
RSS_LIMIT_BYTES = 200 * MIB

# Child process of the 500 MB test: streams generated blocks into the store, reads them
# back through `open`, and prints both digests. It never holds more than a few blocks.
STREAM_WORKER = """
import hashlib, json, sys
from noetl_pg.store import ResultStore
dsn, tier, execution_id, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = ResultStore.from_env(dsn)
pattern = bytes(range(256)) * 4096
written = hashlib.sha256()

def blocks():
    for number in range(total // len(pattern)):
        block = number.to_bytes(8, "big") + pattern[8:]
        written.update(block)
        yield block

stored = store.put_stream(execution_id, "extract", "dump", blocks(), store=tier)
read = hashlib.sha256()
with store.open(stored.ref.to_event()) as stream:
    while block := stream.read(1 << 20):
        read.update(block)
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM:"))
print(json.dumps({"tier": stored.ref.store_tier, "size": stored.ref.bytes_size,
                  "written": written.hexdigest(), "read": read.hexdigest(),
                  "recorded": stored.ref.sha256, "vm_hwm_kib": peak_kib}))
"""

# Runs the command given in argv and reports its exit code, output and ru_maxrss (KiB) from
# wait4. A child's ru_maxrss starts from the RSS of the process that forked it, so the
# worker is forked from this small launcher, not from the test process (hundreds of MB).
LAUNCHER = """
import json, os, subprocess, sys
worker = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
output = worker.stdout.read()
_, status, usage = os.wait4(worker.pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss,
                  "output": output}))
"""

# Child process of the shared-volume test: `write` stores a result and prints its ref,
# `read` resolves a ref and prints the digest of what it read.
FS_WORKER = """
import hashlib, json, sys
from noetl_pg.store import ResultStore
dsn, action, argument = sys.argv[1], sys.argv[2], sys.argv[3]
store = ResultStore.from_env(dsn)
if action == "write":
    rows = [{"row": number, "text": "x" * 100} for number in range(20000)]
    print(json.dumps(store.externalize(int(argument), "load", "rows", rows).value))
else:
    rows = store.resolve(json.loads(argument))
    print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", MOTO_SERVER, str(port)], stdout=subprocess.DEVNULL, text=True
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, endpoint
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("moto server did not start")


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    process, endpoint = start_moto()
    yield endpoint
    stop(process)


@pytest.fixture
def execution_id() -> int:
    return uuid.uuid4().int >> 80


@pytest.fixture
def store(dsn: str, s3_endpoint: str, tmp_path: Path) -> ResultStore:
    return ResultStore(
        dsn,
        fs=FsTier(tmp_path),
        s3=S3Tier(s3_endpoint, "results", CREDENTIALS),
        pvc_tier_threshold_bytes=MIB,
    )


def store_env(dsn: str, mount: Path, s3_endpoint: str | None = None) -> dict[str, str]:
    env = {**os.environ, "NOETL_PVC_MOUNT_PATH": str(mount), "PYTHONPATH": str(ROOT)}
    env.pop("NOETL_S3_ENDPOINT", None)
    if s3_endpoint:
        env |= {
            "NOETL_S3_ENDPOINT": s3_endpoint,
            "NOETL_S3_BUCKET": "streamed",
            "NOETL_S3_ACCESS_KEY_ID": "testing",
            "NOETL_S3_SECRET_ACCESS_KEY": "testing",
        }
    return env


def blob_rows(dsn: str, execution_id: int) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select count(*) from noetl.result_blob where execution_id = %s", (execution_id,)
        ).fetchone()[0]


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_small_json_stays_inline(store: ResultStore, execution_id: int) -> None:
    value = {"rows": [1, 2, 3]}
    result = store.externalize(execution_id, "step", "result", value)
    assert result.inline and result.value == value and result.ref is None
    assert store.list_refs(execution_id) == []


@pytest.mark.parametrize("tier", ["db", "fs", "pvc", "s3", "minio"])
def test_json_and_binary_round_trip_on_every_tier(
    store: ResultStore, execution_id: int, tier: str
) -> None:
    value = {"items": [{"id": n, "name": f"item {n}"} for n in range(5000)], "ok": True}
    json_result = store.externalize(execution_id, "fetch", "items", value, store=tier)
    assert not json_result.inline and json_result.fallbacks == ()
    assert json_result.value["store_tier"] == tier
    assert store.is_ref(json_result.value)
    assert store.resolve(json_result.value) == value

    binary = bytes(range(256)) * 1000 + b"\x00tail"
    binary_result = store.externalize(execution_id, "fetch", "blob", binary, store=tier)
    assert binary_result.value["content_type"] == "application/octet-stream"
    assert store.resolve(binary_result.value) == binary
    with store.open(binary_result.ref) as stream:
        assert stream.read(4) == bytes(range(4))
        assert stream.read() == binary[4:]
    assert [ref.result_name for ref in store.list_refs(execution_id)] == ["items", "blob"]


@pytest.mark.parametrize("tier", ["db", "fs", "s3"])
def test_15_mb_dataset_round_trip(store: ResultStore, execution_id: int, tier: str) -> None:
    rows = [{"id": n, "payload": f"{n:08d}" * 20, "score": n / 7} for n in range(75_000)]
    result = store.externalize(execution_id, "extract", "dataset", rows, store=tier)
    assert result.ref is not None and result.ref.bytes_size > 15 * 1_000_000
    assert result.ref.store_tier == tier
    assert store.resolve(result.value) == rows


def test_automatic_tier_choice(dsn: str, s3_endpoint: str, tmp_path: Path) -> None:
    fs, s3 = FsTier(tmp_path), S3Tier(s3_endpoint, "results", CREDENTIALS)
    medium = {"text": "m" * 100_000}
    large = {"text": "l" * 2_000_000}
    execution_id = uuid.uuid4().int >> 80

    def tier_of(store: ResultStore, name: str, value: object) -> str:
        return store.externalize(execution_id, "choose", name, value).value["store_tier"]

    both = ResultStore(dsn, fs=fs, s3=s3, pvc_tier_threshold_bytes=MIB)
    assert tier_of(both, "medium", medium) == "s3"
    assert tier_of(both, "large", large) == "fs"
    assert tier_of(ResultStore(dsn, fs=fs, pvc_tier_threshold_bytes=MIB), "m2", medium) == "db"
    assert tier_of(ResultStore(dsn), "l2", large) == "db"


def test_ref_dict_stays_small(store: ResultStore, execution_id: int) -> None:
    step, name = "s" * 200, "n" * 200
    result = store.externalize(execution_id, step, name, b"\x01" * 100_000, store="s3")
    assert len(json.dumps(result.value).encode()) < 4096
    assert result.value["result_ref"] == f"noetl://execution/{execution_id}/result/{step}/{name}"


def test_rewrite_replaces_the_old_object(store: ResultStore, execution_id: int, tmp_path: Path):
    first = store.put(execution_id, "retry", "out", {"attempt": 1}, store="fs")
    second = store.put(execution_id, "retry", "out", {"attempt": 2}, store="db")
    assert first.ref.ref == second.ref.ref
    assert store.resolve(first.ref.ref) == {"attempt": 2}
    assert not (tmp_path / first.ref.physical_uri.removeprefix("fs://")).exists()


def test_bad_names_and_missing_refs(store: ResultStore, execution_id: int) -> None:
    with pytest.raises(ValueError):
        store.put(execution_id, "a/b", "out", {"x": 1})
    with pytest.raises(ValueError):
        store.put(execution_id, "step", "..", {"x": 1})
    with pytest.raises(ResultMissing):
        store.resolve(f"noetl://execution/{execution_id}/result/none/none")
    assert not store.is_ref({"result_ref": "elsewhere"})


def test_fallback_chain_when_s3_is_down(dsn: str, tmp_path: Path) -> None:
    process, endpoint = start_moto()
    s3 = S3Tier(endpoint, "results", CREDENTIALS)
    stop(process)
    execution_id = uuid.uuid4().int >> 80
    value = {"text": "v" * 100_000}

    to_fs = ResultStore(dsn, fs=FsTier(tmp_path), s3=s3, pvc_tier_threshold_bytes=MIB)
    result = to_fs.externalize(execution_id, "fall", "to_fs", value)
    assert result.value["store_tier"] == "fs"
    assert [(f.tier_from, f.tier_to) for f in result.fallbacks] == [("s3", "fs")]
    assert "s3" in result.fallbacks[0].error
    assert to_fs.resolve(result.value) == value

    to_db = ResultStore(dsn, fs=FsTier(tmp_path / "not-mounted"), s3=s3)
    result = to_db.externalize(execution_id, "fall", "to_db", value, store="s3")
    assert result.value["store_tier"] == "db"
    assert [(f.tier_from, f.tier_to) for f in result.fallbacks] == [("s3", "fs"), ("fs", "db")]
    assert to_db.resolve(result.value) == value

    # A one-shot stream falls back too: tiers are probed before the first block is read.
    stored = to_db.put_stream(execution_id, "fall", "stream", iter([b"a" * 10, b"b" * 10]))
    assert stored.ref.store_tier == "db" and len(stored.fallbacks) == 1
    assert to_db.resolve(stored.ref) == b"a" * 10 + b"b" * 10

    with pytest.raises(StoreUnavailable):
        to_db.resolve(f"noetl://execution/{execution_id}/result/fall/to_fs")


def test_one_shot_stream_broken_mid_write_is_not_replayed(dsn: str, tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    store = ResultStore(dsn, fs=FsTier(mount))

    def blocks() -> Iterator[bytes]:
        yield b"first block"
        (mount / "noetl-results").rename(tmp_path / "moved")
        mount.rmdir()
        yield b"second block"

    with pytest.raises(SourceConsumed) as raised:
        store.put_stream(uuid.uuid4().int >> 80, "cut", "stream", blocks(), store="fs")
    assert isinstance(raised.value.__cause__, StoreUnavailable)


def test_cleanup_execution_removes_rows_and_data(
    store: ResultStore, dsn: str, s3_endpoint: str, tmp_path: Path, execution_id: int
) -> None:
    refs = [
        store.put(execution_id, "clean", tier, {"tier": tier, "pad": "p" * 1000}, store=tier).ref
        for tier in ("db", "fs", "s3")
    ]
    orphan = tmp_path / "noetl-results" / str(execution_id) / "crashed" / "out" / "partial"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"written before a crash, never registered")
    assert blob_rows(dsn, execution_id) == 1

    report = store.cleanup_execution(execution_id)

    assert report.refs_deleted == 3 and report.leftovers == []
    assert store.list_refs(execution_id) == []
    assert blob_rows(dsn, execution_id) == 0
    assert not (tmp_path / "noetl-results" / str(execution_id)).exists()
    assert s3_keys(s3_endpoint, "results", f"noetl-results/{execution_id}/") == []
    for ref in refs:
        with pytest.raises(ResultMissing):
            store.resolve(ref)
    assert store.cleanup_execution(execution_id).refs_deleted == 0


def test_cleanup_expired_removes_only_expired(
    store: ResultStore, dsn: str, s3_endpoint: str, tmp_path: Path, execution_id: int
) -> None:
    past, future = datetime.now(UTC) - timedelta(minutes=1), datetime.now(UTC) + timedelta(days=1)
    expired = [
        store.put(execution_id, "old", tier, b"old" * 100, store=tier, expires_at=past).ref
        for tier in ("db", "fs", "s3")
    ]
    kept = store.put(execution_id, "new", "kept", b"new", store="fs", expires_at=future).ref

    report = store.cleanup_expired(batch_size=2)

    assert report.refs_deleted >= 3 and report.leftovers == []
    assert [ref.ref for ref in store.list_refs(execution_id)] == [kept.ref]
    assert blob_rows(dsn, execution_id) == 0
    assert not (tmp_path / expired[1].physical_uri.removeprefix("fs://")).exists()
    assert s3_keys(s3_endpoint, "results", f"noetl-results/{execution_id}/") == []
    assert store.resolve(kept) == b"new"


def test_two_workers_read_what_a_third_wrote(dsn: str, tmp_path: Path) -> None:
    env = store_env(dsn, tmp_path)
    execution_id = str(uuid.uuid4().int >> 80)

    def worker(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", FS_WORKER, dsn, *args],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    writer_out, _ = worker("write", execution_id).communicate(timeout=60)
    ref = json.loads(writer_out)
    assert ref["store_tier"] == "fs"
    readers = [worker("read", json.dumps(ref)) for _ in range(2)]
    digests = {reader.communicate(timeout=60)[0].strip() for reader in readers}
    rows = [{"row": number, "text": "x" * 100} for number in range(20000)]
    assert digests == {hashlib.sha256(json.dumps(rows).encode()).hexdigest()}
    assert all(reader.returncode == 0 for reader in readers)


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["fs", "s3"])
def test_500_mb_streamed_round_trip_in_bounded_memory(
    dsn: str, s3_endpoint: str, tmp_path: Path, tier: str
) -> None:
    execution_id = uuid.uuid4().int >> 80
    worker = [sys.executable, "-c", STREAM_WORKER, dsn, tier, str(execution_id), str(STREAM_BYTES)]
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *worker],
        env=store_env(dsn, tmp_path, s3_endpoint),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=240,
    )
    result = json.loads(launched.stdout)
    assert result["exit"] == 0
    report = json.loads(result["output"])
    peak_rss = result["maxrss_kib"] * 1024
    print(
        f"500 MB on {tier}: worker peak RSS {peak_rss / MIB:.1f} MiB "
        f"(VmHWM {report['vm_hwm_kib'] / 1024:.1f} MiB)"
    )
    assert report["tier"] == tier and report["size"] == STREAM_BYTES
    assert report["written"] == report["read"] == report["recorded"]
    assert peak_rss < RSS_LIMIT_BYTES
    ResultStore(dsn).cleanup_execution(execution_id)
