//! The whole-mesh suite (real binaries, network namespaces, root), in one binary so the
//! dependencies are linked once.

mod ambit_cli;
mod lifecycle;
mod traffic;
