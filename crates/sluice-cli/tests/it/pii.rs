//! `[enrich.pii]` through the real binary: with `bad_rows = true`, a native, a Segment and two
//! Snowplow events (a POST with a cookie, a pixel with `nuid`) that become bad rows keep no clear user id, anonymous id or address in
//! `bad_rows.payload`, and the pseudonyms there are the ones the same person's good events have
//! in `events`; and `sluice privacy delete` with the clear ids removes the person's
//! pseudonymised rows from `events`, the typed table and `bad_rows`, and their pseudonymised
//! profile from the hot tier, leaving everyone else's, and drops their new events.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice_functions::pseudonym;
use sluice_testkit::{SluiceProcess, wait_until};

use crate::support::{BIN, DEADLINE, count, eventually, sluice, sql};

const KEY: &str = "pii-test-key-of-more-than-16-bytes";
/// An address a tracker reports in an event (the collector records 127.0.0.1 besides).
const TRACKER_IP: &str = "198.51.100.7";
/// 1990-01-01, far outside `[functions] event_time_window`: an `event_time` bad row.
const LONG_AGO: &str = "1990-01-01T00:00:00Z";
const LONG_AGO_MS: &str = "631152000000";

fn hash(value: &str) -> String {
    pseudonym(KEY.as_bytes(), value)
}

/// A server with `[enrich.pii]` on, bad rows included.
fn start(dir: &Path) -> anyhow::Result<(SluiceProcess, PathBuf)> {
    let data = dir.join("data");
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[enrich.pii]
enabled = true
key = "{KEY}"
fields = ["user_id", "anonymous_id", "ip"]
bad_rows = true
"#
        ),
    )?;
    let config = config.to_str().expect("utf-8 path");
    let server = SluiceProcess::spawn(Path::new(BIN), &data, &["--config", config])?;
    Ok((server, data))
}

async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let resp = request.send().await?;
    let status = resp.status();
    anyhow::ensure!(status.is_success(), "{status}: {}", resp.text().await?);
    Ok(())
}

/// A native event of `user`/`anon`, dated `when` (now when `None`), with a tracker address.
fn native(id: &str, user: &str, anon: &str, when: Option<&str>) -> Value {
    let mut e = json!({"event_id": id, "event": "Page Viewed", "user_id": user,
                       "anonymous_id": anon, "properties": {"plan": "pro"}});
    if let Some(when) = when {
        e["timestamp"] = when.into();
        e["context"] = json!({"ip": TRACKER_IP});
    }
    e
}

/// A Segment track call, like [`native`].
fn segment(id: &str, user: &str, anon: &str, when: Option<&str>) -> Value {
    let mut e = json!({"messageId": id, "type": "track", "event": "Page Viewed",
                       "userId": user, "anonymousId": anon, "properties": {"plan": "pro"}});
    if let Some(when) = when {
        e["timestamp"] = when.into();
        e["context"] = json!({"ip": TRACKER_IP});
    }
    e
}

/// A Snowplow page view (tracker protocol 2), like [`native`]; `dtm` dates it.
fn snowplow(id: &str, user: &str, anon: &str, long_ago: bool) -> Value {
    let mut e = json!({"e": "pv", "eid": id, "aid": "shop", "p": "web", "uid": user,
                       "duid": anon, "url": "https://shop.example.com/"});
    if long_ago {
        e["dtm"] = LONG_AGO_MS.into();
        e["ip"] = TRACKER_IP.into();
    }
    e
}

/// Sends `events` (native), `segment` (one track call each) and `snowplow` (one POST, with
/// the network-user-id cookie `cookie`).
async fn post_all(
    client: &reqwest::Client,
    url: &str,
    events: &[Value],
    segment: &[Value],
    snowplow: &[Value],
    cookie: &str,
) -> anyhow::Result<()> {
    if !events.is_empty() {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        send(client.post(format!("{url}/v1/events")).body(body)).await?;
    }
    for e in segment {
        send(client.post(format!("{url}/v1/track")).json(e)).await?;
    }
    if !snowplow.is_empty() {
        let body = json!({
            "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
            "data": snowplow,
        });
        send(
            client
                .post(format!("{url}/com.snowplowanalytics.snowplow/tp2"))
                .header("cookie", format!("sp={cookie}"))
                .json(&body),
        )
        .await?;
    }
    Ok(())
}

/// The value at `path` (dot-separated) in `v`, as text.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_carry_the_pseudonyms_of_the_good_events() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, data) = start(dir.path())?;
    let url = server.url();
    let client = reqwest::Client::new();
    // Per protocol, one person: a good event, and one from 1990 that becomes a bad row.
    post_all(
        &client,
        &url,
        &[
            native("n-good", "nat-user", "nat-anon", None),
            native("n-bad", "nat-user", "nat-anon", Some(LONG_AGO)),
        ],
        &[
            segment("s-good", "seg-user", "seg-anon", None),
            segment("s-bad", "seg-user", "seg-anon", Some(LONG_AGO)),
        ],
        &[
            snowplow(
                "0c2c7d3e-51a1-4b8e-9c55-8f0d0c8a1d01",
                "sp-user",
                "sp-anon",
                false,
            ),
            snowplow(
                "0c2c7d3e-51a1-4b8e-9c55-8f0d0c8a1d02",
                "sp-user",
                "sp-anon",
                true,
            ),
        ],
        "sp-cookie",
    )
    .await?;
    // And a Snowplow pixel without a cookie: the `nuid` parameter is the network user id, the
    // anonymous id when there is no `duid`.
    for (eid, extra) in [
        ("0c2c7d3e-51a1-4b8e-9c55-8f0d0c8a1d03", String::new()),
        (
            "0c2c7d3e-51a1-4b8e-9c55-8f0d0c8a1d04",
            format!("&dtm={LONG_AGO_MS}&ip={TRACKER_IP}"),
        ),
    ] {
        let query = format!("e=pv&aid=shop&p=web&eid={eid}&uid=px-user&nuid=px-nuid{extra}");
        send(client.get(format!("{url}/i?{query}"))).await?;
    }
    wait_until(DEADLINE, "4 events and 4 bad rows", || {
        let good = count(&data, "SELECT count(*) AS n FROM events")?;
        let bad = count(&data, "SELECT count(*) AS n FROM bad_rows")?;
        Ok((good == 4 && bad == 4).then_some(()))
    })?;

    let clear = [
        "nat-user",
        "nat-anon",
        "seg-user",
        "seg-anon",
        "sp-user",
        "sp-anon",
        "sp-cookie",
        "px-user",
        "px-nuid",
        TRACKER_IP,
        "127.0.0.1",
    ];
    // The good events hold pseudonyms, and no clear value anywhere.
    let events = sql(
        &data,
        "SELECT user_id, anonymous_id, ip, context, \
         properties FROM events ORDER BY user_id",
    )?;
    let good = |user: &str| {
        events
            .iter()
            .find(|e| e["user_id"] == hash(user).as_str())
            .unwrap_or_else(|| panic!("no event with the pseudonym of {user}: {events:?}"))
    };
    for (user, anon) in [
        ("nat-user", "nat-anon"),
        ("seg-user", "seg-anon"),
        ("sp-user", "sp-anon"),
        ("px-user", "px-nuid"),
    ] {
        let e = good(user);
        assert_eq!(e["anonymous_id"], hash(anon).as_str(), "{e}");
        assert_eq!(e["ip"], hash("127.0.0.1").as_str(), "{e}");
    }
    for e in &events {
        let text = e.to_string();
        for value in clear {
            assert!(!text.contains(value), "{value} in the event {text}");
        }
    }

    // The bad rows: the same pseudonyms where each protocol keeps the ids, no clear value.
    let bad = sql(&data, "SELECT event_id, kind, payload FROM bad_rows")?;
    assert_eq!(bad.len(), 4, "{bad:?}");
    for row in &bad {
        assert_eq!(row["kind"], "event_time", "{row}");
        let text = row["payload"].as_str().expect("a payload");
        for value in clear {
            assert!(!text.contains(value), "{value} in the bad row {text}");
        }
        let raw: Value = serde_json::from_str(text)?;
        let (user, anon, paths) = match at(&raw, "protocol") {
            Some("native") => (
                "nat-user",
                "nat-anon",
                ["user_id", "anonymous_id", "context.ip"],
            ),
            Some("segment") => (
                "seg-user",
                "seg-anon",
                ["userId", "anonymousId", "context.ip"],
            ),
            Some("snowplow") if at(&raw, "payload.duid").is_some() => {
                ("sp-user", "sp-anon", ["uid", "duid", "ip"])
            }
            Some("snowplow") => ("px-user", "px-nuid", ["uid", "nuid", "ip"]),
            other => panic!("protocol {other:?} in {text}"),
        };
        let e = good(user);
        let [user_path, anon_path, ip_path] = paths.map(|p| format!("payload.{p}"));
        assert_eq!(at(&raw, &user_path), e["user_id"].as_str(), "{text}");
        assert_eq!(at(&raw, &anon_path), e["anonymous_id"].as_str(), "{text}");
        assert_eq!(at(&raw, &anon_path), Some(hash(anon).as_str()), "{text}");
        assert_eq!(
            at(&raw, &ip_path),
            Some(hash(TRACKER_IP).as_str()),
            "{text}"
        );
        assert_eq!(at(&raw, "ip"), e["ip"].as_str(), "{text}");
        if at(&raw, "protocol") == Some("snowplow") {
            let cookie = hash(if user == "sp-user" {
                "sp-cookie"
            } else {
                "px-nuid"
            });
            assert_eq!(at(&raw, "network_user_id"), Some(cookie.as_str()));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_person_removes_their_pseudonymised_rows() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, data) = start(dir.path())?;
    let url = server.url();
    let client = reqwest::Client::new();
    // carol: three events, a native and a Snowplow bad row; dave: two events and a bad row.
    let mut events: Vec<Value> = (0..3)
        .map(|i| native(&format!("c{i}"), "carol", "carol-anon", None))
        .collect();
    events.push(native("c-bad", "carol", "carol-anon", Some(LONG_AGO)));
    events.extend((0..2).map(|i| native(&format!("d{i}"), "dave", "dave-anon", None)));
    events.push(native("d-bad", "dave", "dave-anon", Some(LONG_AGO)));
    let carol_snowplow = snowplow(
        "5d7e3c1a-2b4f-4c6d-8e9f-0a1b2c3d4e5f",
        "carol",
        "carol-anon",
        true,
    );
    post_all(
        &client,
        &url,
        &events,
        &[],
        &[carol_snowplow],
        "carol-cookie",
    )
    .await?;
    wait_until(DEADLINE, "5 events, 5 typed rows and 3 bad rows", || {
        let good = count(&data, "SELECT count(*) AS n FROM events")?;
        let typed = count(&data, "SELECT count(*) AS n FROM page_viewed")?;
        let bad = count(&data, "SELECT count(*) AS n FROM bad_rows")?;
        Ok((good == 5 && typed == 5 && bad == 3).then_some(()))
    })?;
    let profile = |who: &str| {
        let request = client.get(format!("{url}/v1/profiles/{}", hash(who)));
        async move { anyhow::Ok(request.send().await?.status()) }
    };
    for who in ["carol", "dave"] {
        eventually("the profiles", || async {
            Ok((profile(who).await? == 200).then_some(()))
        })
        .await?;
    }

    let out = sluice(&[
        "privacy",
        "--server",
        &url,
        "delete",
        "--user",
        "carol",
        "--user",
        "carol-anon",
        "--wait",
    ])?;
    assert!(out.contains("done"), "{out}");

    let carol = format!("'{}'", hash("carol"));
    let carol_anon = format!("'{}'", hash("carol-anon"));
    for table in ["events", "page_viewed"] {
        let q = format!(
            "SELECT count(*) AS n FROM {table} WHERE user_id = {carol} OR anonymous_id = {carol_anon}"
        );
        assert_eq!(count(&data, &q)?, 0, "{table}");
        let q = format!("SELECT count(*) AS n FROM {table}");
        assert_eq!(count(&data, &q)?, 2, "{table} keeps dave's");
    }
    let bad = sql(&data, "SELECT payload FROM bad_rows")?;
    assert_eq!(bad.len(), 1, "only dave's bad row stays: {bad:?}");
    assert!(
        bad[0]["payload"]
            .as_str()
            .is_some_and(|p| p.contains(&hash("dave"))),
        "{bad:?}"
    );
    for who in ["carol", "carol-anon"] {
        assert_eq!(profile(who).await?, 404, "the profile of {who}");
    }
    assert_eq!(profile("dave").await?, 200);

    // Carol's new events, good or bad, are dropped by the clear id; dave's still arrive.
    post_all(
        &client,
        &url,
        &[
            native("c-new", "carol", "carol-anon", None),
            native("c-new-bad", "carol", "carol-anon", Some(LONG_AGO)),
            native("d-new", "dave", "dave-anon", None),
        ],
        &[],
        &[],
        "",
    )
    .await?;
    let suppressed = || async {
        let metrics = client
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let n = metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_privacy_suppressed_events_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        anyhow::Ok(n)
    };
    eventually("carol's new events dropped", || async {
        Ok((suppressed().await? >= 2.0).then_some(()))
    })
    .await?;
    wait_until(DEADLINE, "dave's new event", || {
        let q = "SELECT count(*) AS n FROM events WHERE event_id = 'd-new'";
        Ok((count(&data, q)? == 1).then_some(()))
    })?;
    assert_eq!(count(&data, "SELECT count(*) AS n FROM events")?, 3);
    assert_eq!(count(&data, "SELECT count(*) AS n FROM bad_rows")?, 1);
    assert_eq!(profile("carol").await?, 404);
    Ok(())
}
