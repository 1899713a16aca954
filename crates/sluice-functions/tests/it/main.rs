//! The integration tests of sluice-functions, as one binary (each test binary links the whole
//! dependency tree; one link instead of several keeps the build short).

mod chain;
mod reseal;
mod runner;
mod udf;
