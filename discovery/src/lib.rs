//! The proxies' side of Ambit's control plane, shared by ztunnel and the waypoint: the TLS link
//! to the controller and the credentials sent on it ([`link`]), certificates from the
//! controller's CA ([`ca_client`]), the discovery subscription that keeps a proxy's config
//! current ([`client`]), and the mesh state that config is applied to, indexed for the data
//! path's lookups ([`state`]) and held as one version swapped whole ([`current`]) with the memory a large update freed given back ([`memory`]), the root and controller identity it starts from ([`trust`]); the proxy's own endpoints that tools read ([`admin`]), and what it reports of the traffic it carries ([`telemetry`]).

pub mod admin;
pub mod ca_client;
pub mod client;
pub mod current;
pub mod dump;
pub mod link;
pub mod lookups;
pub mod memory;
pub mod state;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod trust;

pub use ca_client::CaClient;
pub use client::{Apply, Client, ClientError};
pub use current::Current;
pub use link::{ControllerLink, LinkError};
pub use lookups::{LookupError, Lookups};
pub use state::{ProxyState, StateError};
pub use trust::{Trust, TrustError};
