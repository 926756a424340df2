"""DuckDB's time for the analyst GROUP BY of the query benchmark, on the same files.

Usage: duckdb_groupby.py TABLE_DIR WORKSPACE. Prints p50/p90 of 20 runs after 3 of
warm-up, reading the table's files through the Delta log (delta_scan) and as the list of
Parquet files of the current version (read_parquet).
"""

import pathlib
import sys
import time

import deltalake
import duckdb
import duckdb_extension_delta

table, workspace = sys.argv[1], sys.argv[2]
ext = next(
    pathlib.Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension")
)
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.load_extension(str(ext))
files = [
    f for f in deltalake.DeltaTable(table).file_uris() if f"workspace={workspace}/" in f
]
quoted = ", ".join(f"'{f.removeprefix('file://')}'" for f in files)
queries = {
    "delta_scan": f"SELECT service_name, count(*), avg(duration_ns) FROM delta_scan('{table}') "
    f"WHERE workspace = '{workspace}' GROUP BY 1",
    "read_parquet": f"SELECT service_name, count(*), avg(duration_ns) FROM read_parquet([{quoted}]) "
    "GROUP BY 1",
}
print(f"duckdb {duckdb.__version__}, {duckdb.sql('SELECT current_setting(' + repr('threads') + ')').fetchone()[0]} threads, {len(files)} files")
for name, sql in queries.items():
    times = []
    for i in range(23):
        t = time.perf_counter()
        rows = con.sql(sql).fetchall()
        if i >= 3:
            times.append(time.perf_counter() - t)
    times.sort()
    print(f"DuckDB {name:14} p50 {times[len(times) // 2] * 1e3:8.1f} ms  p90 {times[len(times) * 9 // 10] * 1e3:8.1f} ms  {len(rows)} rows")
