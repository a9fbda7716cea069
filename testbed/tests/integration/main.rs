//! The testbed's own namespace tests, in one binary so the dependencies are linked once.

mod common;

mod connectivity;
mod crash;
mod lifecycle;
