"""Reads the lake without sluice: with the `deltalake` package (delta-rs), and with DuckDB over
the Parquet files of the table's current version. DuckDB's own `delta` extension is tried first;
it is downloaded at run time, so where the network allows only package registries it is not
available and DuckDB reads the files that deltalake lists instead (the output says which).

usage: openness.py LAKE_DIR TABLE
Prints one JSON document: {"deltalake": [...rows], "duckdb": [...rows], "duckdb_path": "..."}
with rows [event_id, event, user_id, timestamp µs] sorted by event_id.
"""
import json
import sys

import duckdb
from deltalake import DeltaTable

lake, table = sys.argv[1], sys.argv[2]
path = f"{lake}/{table}"
dt = DeltaTable(path)
arrow = dt.to_pyarrow_table(columns=["event_id", "event", "user_id", "timestamp"])
rows = []
for r in arrow.to_pylist():
    ts = r["timestamp"]
    micros = int(ts.timestamp()) * 1_000_000 + ts.microsecond
    rows.append([r["event_id"], r["event"], r["user_id"], micros])
rows.sort()

con = duckdb.connect()
query = "SELECT event_id, event, user_id, epoch_us(timestamp) FROM {} ORDER BY event_id"
try:
    con.execute("INSTALL delta")
    con.execute("LOAD delta")
    duck = con.execute(query.format(f"delta_scan('{path}')")).fetchall()
    how = "delta extension"
except duckdb.Error:
    files = dt.file_uris()
    duck = con.execute(query.format(f"read_parquet({files!r})")).fetchall()
    how = "parquet files of the current version (delta extension not downloadable)"
print(json.dumps({"deltalake": rows, "duckdb": [list(r) for r in duck], "duckdb_path": how}))
