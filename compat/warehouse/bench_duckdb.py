"""DuckDB over the same Parquet files as sluice: the benchmark's other half.

usage: bench_duckdb.py LAKE_DIR QUERIES_JSON
QUERIES_JSON maps a query name to DuckDB SQL over the views events, page_viewed and
order_completed (each the Parquet files of the table's current Delta version, as deltalake lists
them). Prints {"name": {"best_ms": .., "rows": .., "first": [..]}, ...}: the best of three runs,
with DuckDB limited to two threads.
"""
import json
import sys
import time

import duckdb
from deltalake import DeltaTable

lake, queries = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
con.execute("SET threads = 2")
for table in ["events", "page_viewed", "order_completed"]:
    files = DeltaTable(f"{lake}/{table}").file_uris()
    con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({files!r}, hive_partitioning = true)")
out = {}
for name, sql in queries.items():
    best = None
    rows = []
    for _ in range(3):
        start = time.perf_counter()
        rows = con.execute(sql).fetchall()
        ms = (time.perf_counter() - start) * 1000
        best = ms if best is None else min(best, ms)
    out[name] = {"best_ms": round(best, 1), "rows": len(rows), "first": [str(v) for v in rows[0]] if rows else []}
print(json.dumps(out))
