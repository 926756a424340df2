"""End-to-end ingest cost per shape: spans per server CPU-second (utime + stime of the
server over its whole life, final flush included, from wait4), the bare protobuf decode
of the same requests measured in the same run and the ratio, bytes on disk per span next
to OTLP bytes per span, and the server's peak RSS.

Usage: bench_ingest.py BINARY [--spans N] [--runs PROTOCOL:SHAPE:CLIENTS,...]
       [--batch 512]. Standard library only. The default runs cover every target of the
ingest work: both shapes over gRPC with 4 clients, HTTP protobuf against HTTP JSON, and
32 clients sending LLM spans (peak RSS under saturating load).
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(why, log):
    sys.exit(f"{why}; the server's log:\n{pathlib.Path(log).read_text()[-4000:]}")


def wait_ready(http, proc, log):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"the server exited early with {proc.returncode}", log)
        try:
            with urllib.request.urlopen(f"http://{http}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    fail("the server did not become ready", log)


def files_bytes(root, hidden):
    """Bytes of the Parquet files under root: the data files, or (hidden) the index's."""
    total = 0
    for p in pathlib.Path(root).rglob("*.parquet"):
        rel = p.relative_to(root).as_posix()
        if rel.startswith("_trace_index/") == hidden and not rel.startswith("_delta_log"):
            total += p.stat().st_size
    return total


def one(binary, protocol, shape, clients, args):
    with tempfile.TemporaryDirectory() as data:
        grpc, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        log = os.path.join(data, "server.log")
        server = subprocess.Popen(
            [binary, "serve", "--data-dir", os.path.join(data, "d"), "--grpc-addr", grpc,
             "--http-addr", http, "--flight-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0", "--wal-sync", "always"],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"),
        )
        wait_ready(http, server, log)
        common = ["--spans", str(args.spans), "--batch", str(args.batch), "--shape", shape,
                  "--seed", "1", "--json", "--quiet"]
        endpoint = f"http://{grpc}" if protocol == "grpc" else f"http://{http}"
        load = subprocess.run(
            [binary, "loadgen", "--endpoint", endpoint, "--protocol", protocol,
             "--concurrency", str(clients), *common],
            check=True, capture_output=True, text=True,
        )
        summary = json.loads(load.stdout)
        server.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(server.pid, 0)
        if status != 0:
            fail(f"the server exited with status {status}", log)
        cpu = usage.ru_utime + usage.ru_stime
        decode = json.loads(subprocess.run(
            [binary, "loadgen", "--decode-only", "--endpoint", f"http://{grpc}", *common],
            check=True, capture_output=True, text=True,
        ).stdout)
        spans = summary["acked_spans"]
        table = os.path.join(data, "d", "spans")
        return {
            "protocol": protocol,
            "clients": clients,
            "shape": shape,
            "spans": spans,
            "errors": summary["errors"],
            "wall_s": summary["seconds"],
            "server_cpu_s": cpu,
            "spans_per_cpu_s": spans / cpu,
            "decode_s": decode["seconds"],
            "decode_spans_per_s": decode["spans"] / decode["seconds"],
            "x_decode": cpu / decode["seconds"],
            "otlp_bytes_per_span": decode["bytes"] / decode["spans"],
            "disk_bytes_per_span": files_bytes(table, False) / spans,
            "index_bytes_per_span": files_bytes(table, True) / spans,
            "peak_rss_mib": usage.ru_maxrss / 1024,
        }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--spans", type=int, default=2_000_000)
    p.add_argument("--runs", default="grpc:microservice:4,grpc:llm-agent:4,"
                   "http-protobuf:microservice:4,http-json:microservice:4,grpc:llm-agent:32")
    p.add_argument("--batch", type=int, default=512)
    args = p.parse_args()
    rows = []
    for run in args.runs.split(","):
        protocol, shape, clients = run.split(":")
        rows.append(one(args.binary, protocol, shape, int(clients), args))
    print(f"{os.cpu_count()} cores, {args.spans} spans per run, batches of {args.batch}, "
          "--wal-sync always, default settings otherwise")
    print("| protocol | clients | shape | spans per server CPU-second | x bare prost decode | "
          "bytes on disk per span (+ index) | OTLP bytes per span | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['protocol']} | {r['clients']} | {r['shape']} | "
              f"{r['spans_per_cpu_s']:,.0f} | {r['x_decode']:.1f}x "
              f"(decode {r['decode_spans_per_s']:,.0f}/s) | {r['disk_bytes_per_span']:.0f} "
              f"(+ {r['index_bytes_per_span']:.1f}) | {r['otlp_bytes_per_span']:.0f} | "
              f"{r['peak_rss_mib']:,.0f} MiB |")
        if r["errors"]:
            print(f"  errors: {r['errors']}")
    print(json.dumps(rows))


main()
