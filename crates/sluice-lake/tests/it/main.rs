//! The lake's integration tests, in one binary (linking delta-rs once, not once per file).

mod deliver;
mod typed;
