//! The chaos suite's library, never shipped: a Jepsen-style workload and checker, fault
//! injectors and a body fuzzer that drive the real `sluice` binary from outside.
