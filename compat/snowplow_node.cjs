// Sends a plan of Snowplow events to sluice with @snowplow/node-tracker.
//
// Usage: node snowplow_node.cjs URL APP_ID METHOD(post|get) BASE64(true|false) PLAN_JSON
// (NODE_PATH must point at the node_modules that `npm ci` made from package-lock.json.)
//
// The plan is the one snowplow_python.py takes. Prints the event ids in plan order as JSON on
// the last line; any failed request makes the script exit non-zero.
"use strict";

const fs = require("node:fs");
const {
  newTracker,
  buildPageView,
  buildStructEvent,
  buildSelfDescribingEvent,
} = require("@snowplow/node-tracker");

async function main() {
  const [url, appId, method, b64, planPath] = process.argv.slice(2);
  const plan = JSON.parse(fs.readFileSync(planPath, "utf8"));
  const failures = [];
  const statuses = [];
  // Every request goes through this fetch, so the script can wait for all of them and see each
  // answer (the tracker's flush() does not wait for the requests it starts).
  const inflight = new Set();
  const customFetch = (input, init) => {
    const p = fetch(input, init).then(
      (res) => {
        statuses.push(res.status);
        if (!res.ok) failures.push(`status ${res.status}`);
        return res;
      },
      (err) => {
        failures.push(`request failed: ${err.cause || err}`);
        throw err;
      }
    );
    inflight.add(p);
    p.catch(() => {}).finally(() => inflight.delete(p));
    return p;
  };
  const tracker = newTracker(
    { namespace: "compat-node", appId, encodeBase64: b64 === "true" },
    {
      endpoint: url,
      eventMethod: method,
      bufferSize: 2,
      retryFailedRequests: false,
      customFetch,
    }
  );
  const ids = [];
  for (const item of plan) {
    tracker.setUserId(item.user_id || undefined);
    const context = item.contexts || [];
    let event;
    if (item.kind === "page_view") {
      event = buildPageView({ pageUrl: item.url, pageTitle: item.title, referrer: item.referrer });
    } else if (item.kind === "struct") {
      event = buildStructEvent({
        category: item.category,
        action: item.action,
        label: item.label,
        property: item.property,
        value: item.value,
      });
    } else if (item.kind === "self_describing") {
      event = buildSelfDescribingEvent({ event: { schema: item.schema, data: item.data } });
    } else {
      throw new Error(`unknown event kind ${item.kind}`);
    }
    const payload = tracker.track(event, context);
    ids.push(payload && payload.eid);
  }
  await tracker.flush();
  while (inflight.size > 0) {
    await Promise.allSettled([...inflight]);
  }
  if (failures.length > 0) {
    console.error(`delivery failures: ${failures.join("; ")}`);
    process.exit(1);
  }
  console.error(`response statuses: ${statuses.join(",")}`);
  console.log(JSON.stringify({ event_ids: ids }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
