//! Ambit waypoint: the per-namespace L7 proxy. One module per layer of the request path, in
//! its order: [`ingress`] (HBONE, [`destination`], [`detect`]) → [`serve`] (HTTP) →
//! [`forward`] strings together [`route`] → [`filters`] → [`authz`] → timeouts and [`retry`]
//! → [`balance`] over [`endpoints`] → [`upstream`]; [`report`] records each request with
//! [`telemetry`]. Opaque TCP takes [`tcp`]. [`app`] starts it all from [`config`]. Each
//! service's [`traffic`] policy sets its circuit [`breaker`], [`outlier`] ejection and pool.

pub mod app;
pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod config;
pub mod destination;
pub mod detect;
pub mod endpoints;
pub mod filters;
pub mod flows;
pub mod forward;
pub mod http_limits;
pub mod ingress;
pub mod local_reply;
pub mod outlier;
pub mod pages;
pub mod path;
pub mod report;
pub mod retry;
pub mod route;
pub mod serve;
pub mod smuggling;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod traffic;
pub mod upstream;
