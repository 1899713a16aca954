//! Test support, never shipped: an in-memory journal, a local S3 store ([`Moto`]), a private
//! NATS server with JetStream ([`NatsServer`]), the journal contract as checks any backend must
//! pass (`journal_contract`), a handle that starts the real `sluice`
//! binary in a temporary directory for end-to-end and crash tests, a TCP [`Proxy`] that cuts a
//! process off from a service, the server in this process
//! (`TestServer`, feature `server`), and HTTP helpers.

pub mod http;
pub mod journal_contract;
pub mod lock;
pub mod mem_journal;
pub mod moto;
pub mod nats;
pub mod process;
pub mod proxy;
#[cfg(feature = "server")]
pub mod server;
pub mod tools;

pub use lock::lock_exclusive;
pub use moto::Moto;
pub use nats::{NatsCluster, NatsServer};
pub use process::{SluiceProcess, wait_until};
pub use proxy::Proxy;
