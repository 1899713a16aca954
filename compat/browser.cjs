// Runs a browser tracker page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against sluice.
//
// Usage: node browser.cjs PAGE COLLECTOR_URL KEY PLAN_JSON
//   PAGE: snowplow (browser/snowplow_page.js, KEY = app id) or segment
//   (browser/segment_page.js, KEY = write key)
// (NODE_PATH must point at the node_modules that `npm ci` made from package-lock.json.)
//
// Bundles the page's script with esbuild, serves it with the plan from a loopback port (another
// origin than the collector, so CORS with credentials is exercised), opens the page, waits until
// the page has sent the whole plan and every event is acknowledged (by the tracker's callbacks,
// or one 2xx answer per event when the tracker sends a request per event).
// Exits non-zero on any failed or non-2xx request, page error or timeout.
"use strict";

const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");
const esbuild = require("esbuild");
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const DEADLINE_MS = 60000;

async function main() {
  const [pageName, collector, key, planPath] = process.argv.slice(2);
  const plan = fs.readFileSync(planPath);
  const planLength = JSON.parse(plan).length;
  const bundle = await esbuild.build({
    entryPoints: [path.join(__dirname, "browser", `${pageName}_page.js`)],
    bundle: true,
    write: false,
    format: "iife",
    target: "es2020",
    nodePaths: (process.env.NODE_PATH || "").split(path.delimiter).filter(Boolean),
    logLevel: "warning",
  });
  const script = bundle.outputFiles[0].contents;
  const html = '<!doctype html><html><head><meta charset="utf-8"><title>sluice compat</title></head>' +
    '<body><h1>sluice compat</h1><script src="/page.js"></script></body></html>';
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    const send = (type, body) => {
      res.writeHead(200, { "content-type": type, "cache-control": "no-store" });
      res.end(body);
    };
    if (url.pathname === "/") send("text/html; charset=utf-8", html);
    else if (url.pathname === "/page.js") send("text/javascript", script);
    else if (url.pathname === "/plan.json") send("application/json", plan);
    else if (url.pathname === "/favicon.ico") send("image/x-icon", "");
    else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const pageUrl = `http://127.0.0.1:${server.address().port}/?collector=${encodeURIComponent(collector)}&key=${encodeURIComponent(key)}`;

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const problems = [];
  const requests = [];
  let acked = 0;
  try {
    const page = await browser.newPage();
    page.on("pageerror", (err) => problems.push(`page error: ${err}`));
    page.on("console", (msg) => {
      if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
    });
    page.on("requestfailed", (req) => problems.push(`request failed: ${req.method()} ${req.url()} ${req.failure() && req.failure().errorText}`));
    page.on("response", (res) => {
      const method = res.request().method();
      if (!res.url().startsWith(collector) || method === "OPTIONS") return;
      requests.push(`${method} ${new URL(res.url()).pathname} -> ${res.status()}`);
      if (res.status() >= 200 && res.status() < 300) acked += 1;
      else problems.push(`collector answered ${res.status()} to ${method} ${res.url()}`);
    });
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.__compat && window.__compat.done, null, { timeout: DEADLINE_MS });
    const state = await page.evaluate(() => window.__compat);
    if (state.error) problems.push(`page script error: ${state.error}`);
    for (const f of state.failures) problems.push(`tracker request failure: ${f}`);
    // A page whose tracker sends one request per event says so (analytics.js): wait for the
    // last answers. Otherwise the page counts the events its tracker saw acknowledged.
    if (state.requestPerEvent) {
      const end = Date.now() + DEADLINE_MS;
      while (problems.length === 0 && acked < planLength && Date.now() < end) {
        await page.waitForTimeout(50);
      }
      if (acked !== planLength) problems.push(`the collector acknowledged ${acked} requests for ${planLength} events`);
    } else if (state.acked !== planLength) {
      problems.push(`the tracker saw ${state.acked} of ${planLength} events acknowledged`);
    }
    if (acked === 0) problems.push("the collector answered no request with 2xx");
    console.error(`collector requests: ${requests.join(", ")}`);
  } finally {
    await browser.close();
    server.close();
  }
  if (problems.length > 0) {
    console.error(problems.join("\n"));
    process.exit(1);
  }
  console.log(`the browser tracker delivered ${planLength} events`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
