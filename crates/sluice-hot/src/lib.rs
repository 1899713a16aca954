//! The hot tier: per-user state and windowed counters projected from `good`, exactly once.
