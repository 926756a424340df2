"""Analysts' clients against the real binary (run by scripts/test-delta): the ADBC Flight
SQL driver and psycopg (the PostgreSQL wire protocol) from PyPI, as a notebook uses them.

Serve with API keys, send spans into two workspaces over OTLP/HTTP JSON, then with each
client: connect with a key, list workspaces and tables, run a GROUP BY and a parameterized
query and compare them with `POST …/sql`; a wrong key, another key's workspace, DDL/DML/COPY
and a query over the memory pool are refused with clear errors, and the server answers the
next query after each.
"""

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import urllib.request

import datetime

import adbc_driver_flightsql.dbapi as flightsql
import psycopg
from adbc_driver_manager import Error as AdbcError

KEYS = """
[[keys]]
key = "k-alpha"
workspaces = ["alpha"]
scopes = ["ingest", "read"]

[[keys]]
key = "k-beta"
workspaces = ["beta"]
scopes = ["ingest", "read"]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, data_dir, keys):
        self.http, self.flight, self.pg = free_port(), free_port(), free_port()
        args = [binary, "serve", "--data-dir", data_dir, "--api-keys", keys,
                "--grpc-addr", f"127.0.0.1:{free_port()}",
                "--http-addr", f"127.0.0.1:{self.http}",
                "--flight-addr", f"127.0.0.1:{self.flight}",
                "--pg-addr", f"127.0.0.1:{self.pg}",
                "--query-memory-bytes", str(32 << 20)]
        self.proc = subprocess.Popen(args, env={**os.environ, "RUST_LOG": "warn"},
                                     stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            if line.startswith("spanlake: ready"):
                return
        raise RuntimeError("spanlake did not start")

    def call(self, path, body, key):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 200, resp.status
            return json.loads(resp.read() or b"{}")

    def ingest(self, workspace, key, names):
        spans = [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": f"{i + 1:016x}",
                  "name": name, "kind": 2,
                  "startTimeUnixNano": str(1_718_000_000_000_000_000 + i),
                  "endTimeUnixNano": str(1_718_000_000_500_000_000 + i)}
                 for i, name in enumerate(names)]
        body = {"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": workspace}}]},
            "scopeSpans": [{"spans": spans}]}]}
        self.call(f"/apis/intake/v2/workspaces/{workspace}/ingest/otlp/v1/traces", body, key)

    def sql(self, workspace, key, query):
        return self.call(f"/apis/intake/v2/workspaces/{workspace}/sql", {"query": query},
                         key)["rows"]

    def connect(self, key):
        return flightsql.connect(f"grpc://127.0.0.1:{self.flight}",
                                 db_kwargs={"username": "analyst", "password": key},
                                 autocommit=True)

    def pg_connect(self, key, workspace="alpha", **kwargs):
        return psycopg.connect(host="127.0.0.1", port=self.pg, dbname=workspace,
                               user="analyst", password=key, **kwargs)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, "SIGTERM ends in exit 0"


def refused(cursor, query, *words):
    try:
        cursor.execute(query)
        cursor.fetchall()
    except AdbcError as e:
        text = str(e)
        assert all(w in text for w in words), f"{query}: {text}"
        print(f"check_analysts: refused as expected: {query[:60]!r}: {text.splitlines()[0]}")
        return
    raise AssertionError(f"{query} was not refused")


def pg_refused(conn, query, sqlstate, *words):
    try:
        conn.execute(query).fetchall()
    except psycopg.Error as e:
        text = str(e)
        assert e.sqlstate == sqlstate, f"{query}: {e.sqlstate} {text}"
        assert all(w in text for w in words), f"{query}: {text}"
        print(f"check_analysts: psycopg refused as expected: {query[:60]!r}: {sqlstate} "
              f"{text.splitlines()[0]}")
        return
    raise AssertionError(f"{query} was not refused")


def check_psycopg(server):
    """The PostgreSQL wire protocol with psycopg 3: server-side binding, binary and text
    results, a transaction opened by the driver, refusals with their SQLSTATE."""
    query = "SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name"
    expected = server.sql("alpha", "k-alpha", query)
    # psycopg opens a transaction before the first statement unless autocommit is on.
    with server.pg_connect("k-alpha") as conn:
        rows = conn.execute(query).fetchall()
        assert [{"name": n, "n": c} for n, c in rows] == expected, rows
        # A named (server-side) cursor: DECLARE with a bound parameter, FETCH in pages.
        with conn.cursor(name="pages") as cur:
            cur.itersize = 2
            cur.execute("SELECT name FROM spans WHERE name <> %s ORDER BY name", ("x",))
            first = cur.fetchmany(2)
            assert first == [("cart",), ("checkout",)], first
            assert [r for r in cur] == [("checkout",)]
        conn.commit()
        # Committing closes a cursor without HOLD (psycopg then sends no CLOSE): its name
        # is free again.
        for value in (1, 2):
            cur = conn.cursor(name="again")
            cur.execute("SELECT %s::BIGINT AS v", (value,))
            assert cur.fetchone() == (value,)
            conn.commit()
            cur.close()
        # As in PostgreSQL, a failed statement fails its transaction until it is rolled back.
        pg_refused(conn, "SELECT count(*) FROM beta.spans", "42501", "workspace beta")
        pg_refused(conn, "SELECT count(*) FROM spans", "25P02", "transaction is aborted")
        conn.rollback()
        pg_refused(conn, "SELECT count(*) FROM beta.spans", "42501", "workspace beta")
        assert conn.execute("COMMIT").statusmessage == "ROLLBACK"  # what ends a failed one
        assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 3
    with server.pg_connect("k-alpha", autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = %s ORDER BY table_name", ("alpha",)).fetchall()
        assert tables == [("alpha", "spans"), ("alpha", "traces")], tables
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        for name, want in [("checkout", 2), ("cart", 1), ("nothing", 0)]:
            n = conn.execute("SELECT count(*) FROM spans WHERE name = %s AND start_time > %s",
                             (name, epoch)).fetchone()[0]
            assert n == want, (name, n)
        # Binary results: timestamps as aware datetimes, maps as dicts.
        with conn.cursor(binary=True) as cur:
            start, attrs = cur.execute(
                "SELECT start_time, resource_attributes FROM spans WHERE name = %s",
                ("cart",)).fetchone()
            assert start.tzinfo is not None and start.year == 2024, start
            assert attrs["service.name"] == "alpha", attrs
        print("check_analysts: psycopg lists alpha's tables; GROUP BY and %s parameters "
              "match POST …/sql; a named cursor pages; timestamptz and jsonb arrive typed")

        pg_refused(conn, "SELECT count(*) FROM beta.spans", "42501", "workspace beta")
        for write in ["DROP TABLE spans", "INSERT INTO spans SELECT * FROM spans",
                      "COPY (SELECT 1) TO '/tmp/spanlake-copy.csv'"]:
            pg_refused(conn, write, "25006", "not allowed")
        chain = "WITH t0 AS (SELECT 'aaaaaaaaaaaaaaaa' AS s)" + "".join(
            f", t{i} AS (SELECT s||s||s||s||s||s||s||s AS s FROM t{i - 1})"
            for i in range(1, 15)) + " SELECT length(s) FROM t14"
        pg_refused(conn, chain, "53200", "memory limit")
        assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 3
    try:
        server.pg_connect("not-a-key").close()
        raise AssertionError("a wrong key was accepted")
    except psycopg.OperationalError as e:
        assert "password authentication failed" in str(e), e
        print("check_analysts: psycopg: a wrong key is refused: password authentication failed")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        keys = pathlib.Path(work, "keys.toml")
        keys.write_text(KEYS)
        server = Server(args.binary, os.path.join(work, "data"), str(keys))
        try:
            server.ingest("alpha", "k-alpha", ["checkout", "checkout", "cart"])
            server.ingest("beta", "k-beta", ["secret"])

            with server.connect("k-alpha") as conn:
                objects = conn.adbc_get_objects().read_all().to_pylist()
                schemas = [s["db_schema_name"] for c in objects for s in c["catalog_db_schemas"]]
                assert schemas == ["alpha"], objects
                tables = sorted(t["table_name"] for c in objects
                                for s in c["catalog_db_schemas"] for t in s["db_schema_tables"])
                assert tables == ["spans", "traces"], tables
                schema = conn.adbc_get_table_schema("spans", db_schema_filter="alpha")
                assert "trace_id" in schema.names, schema

                cur = conn.cursor()
                query = "SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name"
                cur.execute(query)
                got = [{"name": n, "n": c} for n, c in cur.fetchall()]
                assert got == server.sql("alpha", "k-alpha", query), got
                for name, want in [("checkout", 2), ("cart", 1), ("nothing", 0)]:
                    cur.execute("SELECT count(*) AS n FROM spans WHERE name = ?", (name,))
                    assert cur.fetchone()[0] == want, name
                cur.execute("SELECT count(*) FROM spans WHERE service_name = ?", ("alpha",))
                assert cur.fetchone()[0] == 3
                # ADBC compares each answer's schema with the announced one.
                for query in ["SELECT * FROM spans", "SELECT * FROM traces",
                              "SELECT name || '!' AS shout, service_name FROM spans"]:
                    cur.execute(query)
                    assert cur.fetch_arrow_table().num_rows > 0, query
                print("check_analysts: ADBC lists alpha's tables; GROUP BY and ? parameters "
                      "match POST …/sql")

                refused(cur, "SELECT count(*) FROM beta.spans", "workspace beta")
                for write in ["DROP TABLE spans", "INSERT INTO spans SELECT * FROM spans",
                              "COPY (SELECT 1) TO '/tmp/spanlake-copy.csv'"]:
                    refused(cur, write, "not allowed")
                chain = "WITH t0 AS (SELECT 'aaaaaaaaaaaaaaaa' AS s)" + "".join(
                    f", t{i} AS (SELECT s||s||s||s||s||s||s||s AS s FROM t{i - 1})"
                    for i in range(1, 15)) + " SELECT length(s) FROM t14"
                refused(cur, chain, "memory limit")
                cur.execute("SELECT count(*) FROM spans")
                assert cur.fetchone()[0] == 3
                cur.close()

            try:
                with server.connect("not-a-key") as conn:
                    conn.cursor().execute("SELECT 1")
                raise AssertionError("a wrong key was accepted")
            except AdbcError as e:
                assert "unknown API key" in str(e), e
                print("check_analysts: a wrong key is refused: unknown API key")

            check_psycopg(server)
        finally:
            server.stop()
    print("check_analysts: ok")


if __name__ == "__main__":
    main()
