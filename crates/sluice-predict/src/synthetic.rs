//! A synthetic event stream whose true purchase model is known, for tests and benchmarks.
//!
//! Users identify with a `plan` trait (free or pro), then view products (`Product Viewed`
//! with `category`, `price` and `device`) at least 35 minutes apart. Each view leads to an
//! `Order Completed` within 1–20 minutes with probability
//! `σ(-2.6 + w[category] + 1.4·[plan = pro] + 0.7·[device = desktop] − 0.35·ln(1 + price))`
//! and never otherwise; since views are further apart than a 30-minute horizon, every view's
//! label is exactly its own draw, and the true probabilities give the best log-loss possible.

use serde_json::json;
use sluice_event::{Event, EventType, Position};

use crate::ftrl::sigmoid;

/// Per-category weights of the true model.
pub const CATEGORY_WEIGHTS: [f64; 8] = [-2.0, -1.2, -0.5, 0.0, 0.5, 1.0, 1.6, 2.2];

/// splitmix64: small, fast, good enough for test data.
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo).max(1) as u64) as i64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The generated stream.
pub struct Stream {
    /// Events in timestamp order.
    pub events: Vec<Event>,
    /// For each `Product Viewed` event id, the true purchase probability.
    pub truth: std::collections::HashMap<String, f64>,
}

/// Start of the synthetic day: 2026-11-27T00:00:00Z, µs.
pub const START_US: i64 = 1_795_737_600_000_000;

fn event(
    id: String,
    event_type: EventType,
    name: &str,
    user: &str,
    ts: i64,
    props: serde_json::Value,
) -> Event {
    Event {
        event_id: id,
        event_type,
        event: name.to_string(),
        source: "synthetic".into(),
        user_id: Some(user.to_string()),
        anonymous_id: None,
        timestamp: ts,
        sent_at: None,
        received_at: ts,
        device_timestamp: None,
        enriched: Default::default(),
        properties: serde_json::value::to_raw_value(&props).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("{}".into()).unwrap_or_default()
        }),
        context: serde_json::value::RawValue::from_string("{}".into()).unwrap_or_default(),
        raw: Position {
            partition: 0,
            offset: 0,
        },
    }
}

/// The true purchase probability of a view.
pub fn true_probability(category: usize, pro: bool, desktop: bool, price: f64) -> f64 {
    sigmoid(
        -2.6 + CATEGORY_WEIGHTS[category % CATEGORY_WEIGHTS.len()]
            + if pro { 1.4 } else { 0.0 }
            + if desktop { 0.7 } else { 0.0 }
            - 0.35 * price.ln_1p(),
    )
}

/// `users` users with `views` product views each, over about a day (times spread so that the
/// users interleave).
pub fn generate(seed: u64, users: usize, views: usize) -> Stream {
    let mut rng = Rng::new(seed);
    let mut events = Vec::with_capacity(users * (views + 2));
    let mut truth = std::collections::HashMap::new();
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        format!("ev-{seed}-{n}")
    };
    for u in 0..users {
        let user = format!("user-{u}");
        let pro = rng.unit() < 0.3;
        let desktop = rng.unit() < 0.5;
        let mut ts = START_US + rng.range(0, 24 * 3600) * 1_000_000;
        events.push(event(
            next_id(),
            EventType::Identify,
            "identify",
            &user,
            ts,
            json!({"plan": if pro { "pro" } else { "free" }}),
        ));
        for _ in 0..views {
            ts += rng.range(35 * 60, 3 * 3600) * 1_000_000;
            let category = (rng.next_u64() % CATEGORY_WEIGHTS.len() as u64) as usize;
            let price = (3.5 + rng.normal()).exp().min(10_000.0).round();
            let p = true_probability(category, pro, desktop, price);
            let id = next_id();
            truth.insert(id.clone(), p);
            events.push(event(
                id,
                EventType::Track,
                "Product Viewed",
                &user,
                ts,
                json!({"category": format!("c{category}"), "price": price,
                       "device": if desktop { "desktop" } else { "mobile" }}),
            ));
            if rng.unit() < p {
                let at = ts + rng.range(60, 20 * 60) * 1_000_000;
                events.push(event(
                    next_id(),
                    EventType::Track,
                    "Order Completed",
                    &user,
                    at,
                    json!({"revenue": price}),
                ));
            }
        }
    }
    events.sort_by_key(|e| e.timestamp);
    Stream { events, truth }
}
