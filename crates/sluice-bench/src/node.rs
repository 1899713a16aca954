//! The Node.js side of `sluice bench --chain`: the same per-event modules over the same events,
//! run as a Lambda would run them (`JSON.parse` each event, call `transform`, `JSON.stringify`
//! the result), one thread, timed around that loop only. It runs only when `node` is on the
//! PATH.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

/// One module's pass over the events.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct NodeRun {
    #[serde(skip)]
    pub label: &'static str,
    pub us_per_event: f64,
    /// Events returned (an array counts its elements).
    pub kept: usize,
    /// Calls that threw.
    pub failed: usize,
}

/// Every module's pass, and the version of Node.js.
#[derive(Debug)]
pub(crate) struct Node {
    pub version: String,
    pub runs: Vec<NodeRun>,
}

/// Loads the module, warms up on the first 2,000 events, then times one pass over all.
const RUNNER: &str = r#"import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [modulePath, eventsPath] = process.argv.slice(2);
const { transform } = await import(pathToFileURL(modulePath).href);
const lines = readFileSync(eventsPath, "utf8").split("\n").filter((l) => l.length > 0);
const ctx = Object.freeze({ source: "web", partition: 0, function: "bench", version: 1, config: {}, secrets: {}, log: console.log });
function pass(n) {
  let kept = 0, failed = 0, bytes = 0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    try {
      const out = transform(JSON.parse(lines[i]), ctx);
      if (out !== null && out !== undefined) {
        bytes += JSON.stringify(out).length;
        kept += Array.isArray(out) ? out.length : 1;
      }
    } catch (e) {
      failed++;
    }
  }
  const ns = Number(process.hrtime.bigint() - start);
  return { us_per_event: ns / 1e3 / Math.max(n, 1), kept, failed, bytes };
}
pass(Math.min(lines.length, 2000));
console.log(JSON.stringify(pass(lines.length)));
"#;

/// The fields a function gets as RFC 3339 strings (the `events` records hold microseconds).
const TIMES: [&str; 4] = ["timestamp", "sent_at", "received_at", "device_timestamp"];

/// Runs each `(label, module)` of `modules` in Node.js over `events` (good records of the
/// chain), in a directory under `root`. `None` when `node` is not on the PATH.
pub(crate) fn measure(
    root: &Path,
    events: &[bytes::Bytes],
    modules: &[(&'static str, &str)],
) -> anyhow::Result<Option<Node>> {
    let version = match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => return Ok(None),
    };
    let dir = root.join("node");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lines = String::new();
    for e in events {
        lines.push_str(&as_seen(e)?.to_string());
        lines.push('\n');
    }
    let events_path = dir.join("events.jsonl");
    std::fs::write(&events_path, lines).context("writing the events for Node.js")?;
    let runner = dir.join("runner.mjs");
    std::fs::write(&runner, RUNNER).context("writing the Node.js runner")?;
    let mut runs = Vec::new();
    for (label, code) in modules {
        let module = dir.join(format!("{label}.mjs"));
        std::fs::write(&module, code).context("writing a module for Node.js")?;
        let out = Command::new("node")
            .arg(&runner)
            .arg(&module)
            .arg(&events_path)
            .output()
            .context("running node")?;
        if !out.status.success() {
            anyhow::bail!(
                "node failed on the {label} module: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut run: NodeRun = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("reading what node printed for the {label} module"))?;
        run.label = label;
        runs.push(run);
    }
    Ok(Some(Node { version, runs }))
}

/// A good record as a function sees the event: times as RFC 3339 strings, no part marker.
fn as_seen(record: &[u8]) -> anyhow::Result<Value> {
    let mut v: Value = serde_json::from_slice(record).context("reading a good record")?;
    let obj = v
        .as_object_mut()
        .context("a good record is not a JSON object")?;
    for k in TIMES {
        if let Some(t) = obj.get(k).and_then(Value::as_i64) {
            obj.insert(k.into(), sluice_event::format_micros(t).into());
        }
    }
    obj.remove("part");
    Ok(v)
}
