// The page's script (bundled by browser.cjs with esbuild): loads the plan, sends it with
// @snowplow/browser-tracker to the collector named in the query string, and publishes the
// outcome in window.__compat for the driver.
import {
  newTracker,
  setUserId,
  setCustomUrl,
  setReferrerUrl,
  trackPageView,
  trackStructEvent,
  trackSelfDescribingEvent,
} from "@snowplow/browser-tracker";

const state = { done: false, acked: 0, expected: 0, failures: [], error: null };
// done: every event acknowledged, or a request failed.
window.__compat = state;

function trackerConfig(appId, eventMethod) {
  return {
    appId,
    platform: "web",
    eventMethod,
    encodeBase64: eventMethod === "get",
    credentials: "include",
    bufferSize: 1,
    retryFailedRequests: false,
    stateStorageStrategy: "none",
    contexts: { webPage: true },
    onRequestSuccess: (batch) => {
      state.acked += batch.length;
      state.done = state.acked >= state.expected;
    },
    onRequestFailure: (failure) => {
      state.failures.push(
        `${failure.events.length} event(s): status ${failure.status} ${failure.message || ""}`
      );
      state.done = true;
    },
  };
}

async function main() {
  const params = new URLSearchParams(window.location.search);
  const collector = params.get("collector");
  const appId = params.get("key");
  const plan = await (await fetch("/plan.json")).json();
  state.expected = plan.length;
  newTracker("post", collector, trackerConfig(appId, "post"));
  newTracker("get", collector, trackerConfig(appId, "get"));
  // Anonymous tracking with server anonymisation: no user ids, and the SP-Anonymous header
  // (a CORS-preflighted request header) asks the collector to record no IP and no cookie id.
  newTracker("anon", collector, {
    ...trackerConfig(appId, "post"),
    anonymousTracking: { withServerAnonymisation: true },
  });
  for (const item of plan) {
    const trackers = [item.method || "post"];
    setUserId(item.user_id || null, trackers);
    const context = item.contexts || [];
    if (item.kind === "page_view") {
      setCustomUrl(item.url, trackers);
      if (item.referrer) setReferrerUrl(item.referrer, trackers);
      trackPageView({ title: item.title, context }, trackers);
    } else if (item.kind === "struct") {
      trackStructEvent(
        {
          category: item.category,
          action: item.action,
          label: item.label,
          property: item.property,
          value: item.value,
          context,
        },
        trackers
      );
    } else if (item.kind === "self_describing") {
      trackSelfDescribingEvent({ event: { schema: item.schema, data: item.data }, context }, trackers);
    } else {
      throw new Error(`unknown event kind ${item.kind}`);
    }
  }
}

main().catch((err) => {
  state.error = String((err && err.stack) || err);
  state.done = true;
});
