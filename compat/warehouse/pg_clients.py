"""psycopg against sluice's Postgres wire server: connect (SCRAM), run the queries a client and a
notebook send, print one JSON document with what came back.

usage: pg_clients.py HOST PORT USER PASSWORD
"""
import json
import sys

import psycopg

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {}
with psycopg.connect(host=host, port=port, user=user, password=password, dbname="sluice") as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM events")
        out["count"] = cur.fetchone()[0]
        # Extended protocol with a bound parameter.
        cur.execute("SELECT event, user_id FROM events WHERE event_id = %s", ("e-3",))
        out["by_id"] = list(cur.fetchone())
        cur.execute("SELECT timestamp FROM events WHERE event_id = 'e-3'")
        out["timestamp_type"] = type(cur.fetchone()[0]).__name__
        cur.execute("SELECT plan, count(*) AS n FROM signed_up GROUP BY plan ORDER BY plan")
        out["typed"] = [list(r) for r in cur.fetchall()]
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        )
        out["tables"] = [r[0] for r in cur.fetchall()]
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE events")
        out["drop"] = "allowed"
    except psycopg.Error as e:
        out["drop"] = e.sqlstate
print(json.dumps(out))
