//! The one body type every layer of the waypoint passes along: requests and responses are
//! boxed once at the edge (client side and upstream side), so layers need no generics.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body on its way through the waypoint.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body from any `http_body::Body` whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pub fn empty() -> Body {
    boxed(Empty::<Bytes>::new().map_err(|never| match never {}))
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()).map_err(|never| match never {}))
}
