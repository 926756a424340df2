"""Outside readers against the table the real binary writes (run by scripts/test-delta).

For each location (a local directory, then S3 on the local server the script started):
serve, send OTLP/JSON spans in separate flushes (one request twice, as a client's retry),
and after every step read the table with the `deltalake` package, Polars and (on local
disk) DuckDB's `delta_scan`: they must see exactly the acknowledged spans, the exact
nanosecond times, and after compaction each span once; then retention removes the old
hour and the readers see only the recent spans.
"""

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import deltalake
import duckdb
import duckdb_extension_delta
import polars as pl

HOUR_NS = 3_600_000_000_000
OLD_HOUR = 1_718_000_000_000_000_000 - 1_718_000_000_000_000_000 % HOUR_NS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, data_dir, storage, env, *extra):
        self.http = free_port()
        args = [binary, "serve", "--data-dir", data_dir,
                "--grpc-addr", f"127.0.0.1:{free_port()}",
                "--http-addr", f"127.0.0.1:{self.http}",
                "--flight-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0",
                "--flush-interval", "100ms", *extra]
        if storage:
            args += ["--storage", storage]
        self.proc = subprocess.Popen(args, env={**os.environ, **env, "RUST_LOG": "warn"},
                                     stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            if line.startswith("spanlake: ready"):
                return
        raise RuntimeError("spanlake did not start")

    def post(self, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/v1/traces",
                                     data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 200, resp.status

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, "SIGTERM ends in exit 0"


def request(first, n, hour_start):
    spans = []
    for i in range(first, first + n):
        start = hour_start + i * 1_000_003 + 7  # sub-microsecond digits on purpose
        spans.append({
            "traceId": "0c" * 16,
            "spanId": f"{i:016x}",
            "name": "reader-test",
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + 1_000),
            "events": [{"timeUnixNano": str(start + 5), "name": "e"}],
        })
    return {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "readers"}}]},
        "scopeSpans": [{"spans": spans}]}]}


def expected(first, n, hour_start):
    return {f"{i:016x}": hour_start + i * 1_000_003 + 7 for i in range(first, first + n)}


def read_all(uri, options, local):
    """(rows by reader, number of files): each reader's list of (span_id, start ns, start µs)."""
    dt = deltalake.DeltaTable(uri, storage_options=options)
    files = len(dt.file_uris())
    table = dt.to_pyarrow_table(columns=["span_id", "start_time_unix_nano", "start_time", "events"])
    got = {"deltalake": sorted(zip(table["span_id"].to_pylist(),
                                   table["start_time_unix_nano"].to_pylist(),
                                   table["start_time"].cast("int64").to_pylist()))}
    # Event times keep their nanoseconds too.
    for s, n, events in zip(table["span_id"].to_pylist(), table["start_time_unix_nano"].to_pylist(),
                            table["events"].to_pylist()):
        assert events[0]["time_unix_nano"] == n + 5, (s, events)
    df = pl.read_delta(uri, storage_options=options)
    got["polars"] = sorted(
        (s, n, t) for s, n, t in zip(df["span_id"], df["start_time_unix_nano"],
                                     df["start_time"].cast(pl.Int64)))
    if local:
        ext = next(pathlib.Path(duckdb_extension_delta.__file__).parent.glob(
            "extensions/*/delta.duckdb_extension"))
        con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
        con.load_extension(str(ext))
        got["duckdb"] = sorted(con.sql(
            f"SELECT span_id, start_time_unix_nano, epoch_us(start_time) "
            f"FROM delta_scan('{uri}')").fetchall())
    return got, files


def check(uri, options, local, want, copies, step):
    """Every reader sees the spans of `want` (span id -> start ns), each `copies[id]` times."""
    got, files = read_all(uri, options, local)
    for reader, rows in got.items():
        ids = {}
        for s, n, us in rows:
            assert n == want[s], f"{step}/{reader}: {s} has start {n}, sent {want[s]}"
            assert us == n // 1000, f"{step}/{reader}: {s} µs {us} for ns {n}"
            ids[s] = ids.get(s, 0) + 1
        assert set(ids) == set(want), f"{step}/{reader}: {sorted(set(ids) ^ set(want))}"
        for s, c in ids.items():
            assert c == copies.get(s, 1), f"{step}/{reader}: {s} stored {c} times"
    print(f"  {step}: {', '.join(got)} see {len(want)} spans in {files} files")
    return files


def run(binary, uri, storage, options, env, local):
    with tempfile.TemporaryDirectory() as data:
        server = Server(binary, data, storage, env, "--maintenance-interval", "1h")
        want = {}
        for k in range(3):
            server.post(request(1 + 10 * k, 10, OLD_HOUR))
            want.update(expected(1 + 10 * k, 10, OLD_HOUR))
            time.sleep(0.5)
            check(uri, options, local, want, {}, f"flush {k + 1}")
        server.post(request(11, 10, OLD_HOUR))  # a client's retry of the second request
        time.sleep(0.5)
        retried = {f"{i:016x}": 2 for i in range(11, 21)}
        check(uri, options, local, want, retried, "retry (stored twice until compaction)")
        now = time.time_ns()
        recent = now - now % HOUR_NS
        server.post(request(101, 5, recent))
        recent_want = expected(101, 5, recent)
        want.update(recent_want)
        server.stop()

        server = Server(binary, data, storage, env, "--maintenance-interval", "300ms")
        wait_for_files(uri, options, local, 2, "compaction")
        check(uri, options, local, want, {}, "compaction")
        server.stop()

        server = Server(binary, data, storage, env, "--maintenance-interval", "300ms",
                        "--retention", "1d")
        wait_for_files(uri, options, local, 1, "retention")
        check(uri, options, local, recent_want, {}, "retention")
        server.stop()


def wait_for_files(uri, options, local, files, step):
    """Waits (up to a minute) until the table has `files` files, which `step` leads to."""
    deadline = time.time() + 60
    while read_all(uri, options, local)[1] != files:
        assert time.time() < deadline, f"no {step}"
        time.sleep(0.3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as table:
        print(f"local table {table}")
        run(a.binary, table, table, None, {}, True)
    env = {"AWS_ENDPOINT_URL": a.endpoint, "AWS_ALLOW_HTTP": "true",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1"}
    uri = f"s3://{a.bucket}/readers-{time.time_ns()}"
    print(f"S3 table {uri}")
    run(a.binary, uri, uri, env, env, False)
    print("readers: every check passed")


if __name__ == "__main__":
    sys.exit(main())
