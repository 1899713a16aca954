//! The server's integration tests, in one binary (linking DataFusion once, not once per file),
//! each against a server in this process ([`sluice_testkit::server::TestServer`]).

mod backpressure;
mod cluster;
mod functions;
mod hot;
mod hot_lake;
mod jetstream;
mod kinesis;
mod metrics;
mod reseal;
mod schemas;
mod segment;
mod shutdown;
mod snowplow;
