//! The CLI's integration tests, in one binary (linking the server once, not once per file).
//! They drive the real `sluice` binary ([`sluice_testkit::SluiceProcess`]); `compat` needs the
//! tracker SDKs and is `#[ignore]`d (run with `--run-ignored all`).

mod abuse;
mod compat;
mod crash;
mod e2e;
mod functions;
mod keys;
mod replay;
