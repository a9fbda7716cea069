//! Ambit waypoint: the per-namespace L7 proxy (routing, splits, retries, timeouts, L7 authorization).
