//! Ambit controller: the mesh model, scoped config push, the certificate authority and the CLI.
