//! The harness of flip's integration tests and benchmark, as a library of the suite package:
//! real server processes and what to ask the kernel about them (`harness`, re-exported at the
//! root), a bounded HTTP load client (`load`), the test servers' event log (`events`) and the
//! gRPC demo service of the `grpc` example and its test (`demo`).

mod harness;

pub mod demo;
pub mod events;
pub mod load;

pub use harness::*;
