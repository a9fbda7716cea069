//! Retries, in three small pieces the request path puts together:
//! - [`RetryBudget`]: how many retries the scope may still afford (ratio of recent requests
//!   plus a floor), so retries cannot multiply load during an outage;
//! - [`ReplayBody`]: the request body, kept (up to 64 KiB) so that it can be sent again;
//! - [`Policy`] and [`decide`]: which outcomes are retried, how many times, after what delay.
//!
//! The loop, per request (each attempt's request and response are dropped before the next):
//! ```text
//! budget.deposit();
//! let body = ReplayBody::new(body, DEFAULT_CAP);
//! for attempt in 1.. {
//!     let outcome = send(parts.clone(), body.clone()).await;      // drop it before retrying
//!     match decide(policy, attempt, &outcome, body.is_capped()) {
//!         Some(delay) if budget.try_withdraw() => sleep(delay).await,
//!         _ => return outcome,                                     // to the client
//!     }
//! }
//! ```

pub mod budget;
pub mod policy;
pub mod replay;

pub use budget::RetryBudget;
pub use policy::{
    Backoff, DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_BASE, Outcome, Policy, PolicyError, decide,
    decide_with, grpc_code, grpc_status, grpc_timeout, parse_grpc_timeout,
};
pub use replay::{DEFAULT_CAP, ReplayBody, ReplayError};
