"""Sends a plan of Segment calls to sluice with segment-analytics-python.

Usage: segment_python.py HOST WRITE_KEY PLAN_JSON

The first half of the plan goes through the batching consumer thread (gzip bodies, one
/v1/batch request for several calls), the rest through sync_mode (one request per call,
plain bodies). Any delivery error makes the script exit non-zero.
"""

import json
import sys

from segment.analytics.client import Client


def send(client, msg):
    kind = msg["type"]
    common = {"message_id": msg["messageId"]}
    if kind == "track":
        ok, _ = client.track(
            user_id=msg.get("userId"),
            anonymous_id=msg.get("anonymousId"),
            event=msg["event"],
            properties=msg.get("properties", {}),
            **common,
        )
    elif kind == "identify":
        ok, _ = client.identify(user_id=msg["userId"], traits=msg.get("traits", {}), **common)
    elif kind == "page":
        ok, _ = client.page(
            user_id=msg["userId"], name=msg["name"], properties=msg.get("properties", {}), **common
        )
    elif kind == "screen":
        ok, _ = client.screen(
            user_id=msg["userId"], name=msg["name"], properties=msg.get("properties", {}), **common
        )
    elif kind == "group":
        ok, _ = client.group(
            user_id=msg["userId"], group_id=msg["groupId"], traits=msg.get("traits", {}), **common
        )
    elif kind == "alias":
        ok, _ = client.alias(previous_id=msg["previousId"], user_id=msg["userId"], **common)
    else:
        raise ValueError("unknown call type %r" % kind)
    if not ok:
        raise RuntimeError("the client refused to queue %r" % msg)


def main():
    host, write_key, plan_path = sys.argv[1:4]
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    half = len(plan) // 2
    errors = []

    def on_error(error, batch):
        errors.append("%s (batch of %d)" % (error, len(batch)))

    batched = Client(
        write_key,
        host=host,
        gzip=True,
        max_retries=3,
        upload_size=100,
        upload_interval=0.2,
        on_error=on_error,
    )
    for msg in plan[:half]:
        send(batched, msg)
    batched.shutdown()

    sync = Client(write_key, host=host, sync_mode=True, max_retries=3, on_error=on_error)
    for msg in plan[half:]:
        send(sync, msg)

    if errors:
        print("delivery errors: " + "; ".join(errors), file=sys.stderr)
        sys.exit(1)
    print("sent %d calls" % len(plan))


if __name__ == "__main__":
    main()
