//! Ambit ztunnel: the per-node L4 proxy (capture, HBONE, L4 authorization, TCP metrics).
