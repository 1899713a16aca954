// The page's script (bundled by browser.cjs with esbuild): loads the plan, sends it with
// @segment/analytics-next to the collector named in the query string (settings given inline,
// so nothing is fetched from a CDN), and publishes the outcome in window.__compat.
import { AnalyticsBrowser } from "@segment/analytics-next";

// analytics.js sends each call in a request of its own, so the driver counts the 2xx answers.
const state = { done: false, sent: 0, requestPerEvent: true, failures: [], error: null };
window.__compat = state;

async function main() {
  const params = new URLSearchParams(window.location.search);
  const collector = new URL(params.get("collector"));
  const writeKey = params.get("key");
  const plan = await (await fetch("/plan.json")).json();
  const [analytics] = await AnalyticsBrowser.load(
    {
      writeKey,
      cdnSettings: { integrations: { "Segment.io": { apiKey: writeKey } } },
    },
    {
      integrations: {
        "Segment.io": {
          apiHost: `${collector.host}/v1`,
          protocol: collector.protocol.replace(":", ""),
        },
      },
    }
  );
  for (const msg of plan) {
    // Each call stands alone: the stored ids are those the plan names for it.
    analytics.reset();
    if (msg.anonymousId) analytics.setAnonymousId(msg.anonymousId);
    if (msg.userId && msg.type !== "identify" && msg.type !== "alias") analytics.user().id(msg.userId);
    let ctx;
    switch (msg.type) {
      case "identify":
        ctx = await analytics.identify(msg.userId, msg.traits || {});
        break;
      case "track":
        ctx = await analytics.track(msg.event, msg.properties || {});
        break;
      case "page":
        ctx = await analytics.page(msg.name, msg.properties || {});
        break;
      case "group":
        ctx = await analytics.group(msg.groupId, msg.traits || {});
        break;
      case "alias":
        ctx = await analytics.alias(msg.userId, msg.previousId);
        break;
      default:
        throw new Error(`unknown call type ${msg.type}`);
    }
    const failed = ctx && ctx.failedDelivery && ctx.failedDelivery();
    if (failed) state.failures.push(`${msg.type}: ${failed.reason}`);
    state.sent += 1;
  }
  state.done = true;
}

main().catch((err) => {
  state.error = String((err && err.stack) || err);
  state.done = true;
});
