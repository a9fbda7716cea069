//! What the proxies' admin ports serve at `/config_dump`, as types both ends share: the proxy
//! that serializes them and the CLI (and tests) that read them, which so depend on neither
//! proxy.

pub mod waypoint;
pub mod ztunnel;
