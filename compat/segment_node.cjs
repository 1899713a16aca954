// Sends a plan of Segment calls to sluice with @segment/analytics-node.
//
// Usage: node segment_node.cjs HOST WRITE_KEY PLAN_JSON
// (NODE_PATH must point at the node_modules that `npm ci` made from package-lock.json.)
//
// flushAt batches several calls into one /v1/batch request (Basic auth); closeAndFlush waits
// for every request. Any delivery error makes the script exit non-zero.
"use strict";

const fs = require("node:fs");
const { Analytics } = require("@segment/analytics-node");

async function main() {
  const [host, writeKey, planPath] = process.argv.slice(2);
  const plan = JSON.parse(fs.readFileSync(planPath, "utf8"));
  const analytics = new Analytics({
    writeKey,
    host,
    path: "/v1/batch",
    flushAt: 3,
    flushInterval: 200,
    maxRetries: 3,
    httpRequestTimeout: 10000,
  });
  const errors = [];
  analytics.on("error", (err) => errors.push(String(err && (err.reason || err.message || err.code || err))));
  const statuses = [];
  analytics.on("http_response", (res) => statuses.push(res.status));

  for (const msg of plan) {
    const common = { messageId: msg.messageId };
    switch (msg.type) {
      case "track":
        analytics.track({
          ...common,
          userId: msg.userId,
          anonymousId: msg.anonymousId,
          event: msg.event,
          properties: msg.properties || {},
        });
        break;
      case "identify":
        analytics.identify({ ...common, userId: msg.userId, traits: msg.traits || {} });
        break;
      case "page":
        analytics.page({ ...common, userId: msg.userId, name: msg.name, properties: msg.properties || {} });
        break;
      case "screen":
        analytics.screen({ ...common, userId: msg.userId, name: msg.name, properties: msg.properties || {} });
        break;
      case "group":
        analytics.group({ ...common, userId: msg.userId, groupId: msg.groupId, traits: msg.traits || {} });
        break;
      case "alias":
        analytics.alias({ ...common, userId: msg.userId, previousId: msg.previousId });
        break;
      default:
        throw new Error(`unknown call type ${msg.type}`);
    }
  }
  await analytics.closeAndFlush({ timeout: 30000 });
  if (errors.length > 0) {
    console.error(`delivery errors: ${errors.join("; ")}`);
    process.exit(1);
  }
  console.log(`sent ${plan.length} calls; response statuses: ${statuses.join(",")}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
