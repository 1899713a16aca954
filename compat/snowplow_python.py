"""Sends a plan of Snowplow events to sluice with snowplow-tracker (Python).

Usage: snowplow_python.py URL APP_ID METHOD(post|get) BASE64(true|false) PLAN_JSON

Plan items: {"kind": "page_view", "url", "title", "referrer"}, {"kind": "struct", "category",
"action", "label", "property", "value"}, {"kind": "self_describing", "schema", "data"}, each
with an optional "user_id" (the subject's uid) and "contexts" ([{"schema", "data"}]).
Prints the event ids the tracker assigned, in plan order, as JSON on the last line. Any failed
request makes the script exit non-zero.
"""

import json
import sys
from urllib.parse import urlsplit

from snowplow_tracker import Emitter, SelfDescribingJson, Subject, Tracker
from snowplow_tracker.events import PageView, SelfDescribing, StructuredEvent


def main():
    url, app_id, method, b64, plan_path = sys.argv[1:6]
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    parts = urlsplit(url)
    failures = []

    def on_failure(sent, failed):
        failures.append("%d event(s) failed after %d sent" % (len(failed), sent))

    emitter = Emitter(
        parts.hostname,
        protocol=parts.scheme,
        port=parts.port,
        method=method,
        batch_size=2,
        on_failure=on_failure,
        request_timeout=10,
    )
    tracker = Tracker(
        namespace="compat-py",
        emitters=emitter,
        app_id=app_id,
        encode_base64=(b64 == "true"),
    )
    ids = []
    for item in plan:
        subject = Subject()
        if item.get("user_id"):
            subject.set_user_id(item["user_id"])
        contexts = [SelfDescribingJson(c["schema"], c["data"]) for c in item.get("contexts", [])]
        kind = item["kind"]
        if kind == "page_view":
            event = PageView(
                page_url=item["url"],
                page_title=item.get("title"),
                referrer=item.get("referrer"),
                event_subject=subject,
                context=contexts,
            )
        elif kind == "struct":
            event = StructuredEvent(
                category=item["category"],
                action=item["action"],
                label=item.get("label"),
                property_=item.get("property"),
                value=item.get("value"),
                event_subject=subject,
                context=contexts,
            )
        elif kind == "self_describing":
            event = SelfDescribing(
                SelfDescribingJson(item["schema"], item["data"]),
                event_subject=subject,
                context=contexts,
            )
        else:
            raise ValueError("unknown event kind %r" % kind)
        ids.append(tracker.track(event))
    tracker.flush()
    if failures:
        print("delivery failures: " + "; ".join(failures), file=sys.stderr)
        sys.stdout.flush()
        # A failed batch leaves a retry timer thread behind: do not wait for it.
        import os

        os._exit(1)
    print(json.dumps({"event_ids": ids}))


if __name__ == "__main__":
    main()
