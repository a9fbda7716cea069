//! A request body that can be sent again, for retries (the semantics of Linkerd's
//! `ReplayBody`, written afresh).
//!
//! Wrap the request body once with [`ReplayBody::new`] and send a [`Clone`] of it with each
//! attempt (or the original with the first). The first attempt streams the client's body to
//! the upstream as it arrives and keeps a copy of what it read, up to a cap ([`DEFAULT_CAP`],
//! 64 KiB). A clone polled later (the retry) yields that copy again and then carries on reading the client's body where the
//! earlier attempt stopped: so a retry also works when the first attempt read only part of the
//! body (the upstream answered early, or failed midway), or none of it (connection refused).
//! Trailers are kept and replayed too.
//!
//! Once the body streamed past the cap, the copy is dropped and no replay is possible:
//! [`ReplayBody::is_capped`] says so and the request must not be retried (a clone polled
//! anyway fails with [`ReplayError::Capped`] rather than send a truncated body). A body whose
//! size hint already exceeds the cap is not copied at all; it can still be retried as long as
//! none of it was read (a connection failure before the request was sent).
//!
//! Attempts are sequential: only one holder reads at a time. A clone polled while an earlier
//! attempt's body is still being read waits (returns `Pending`) until that body ends or is
//! dropped, so the caller must drop the previous attempt (its request, hence its body) before
//! awaiting the next one. Hedged requests (two attempts in flight) are not supported.
//!
//! Cost: one `Arc` (the shared state) per wrapped request, and a `Vec` of the body's chunks
//! (the `Bytes` handles, not copies of the data) while the body is under the cap.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;

use crate::body::{Body, BoxError};

/// How much of a request body is kept for a retry: Linkerd's limit.
pub const DEFAULT_CAP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The body streamed past the replay cap: what was sent is gone and cannot be sent again.
    #[error("request body exceeded the retry buffer and cannot be replayed")]
    Capped,
    /// The client's body failed during an earlier attempt.
    #[error("request body failed during an earlier attempt")]
    SourceFailed,
}

/// A body that buffers what it reads so that its clones can replay it; see the module docs.
pub struct ReplayBody<B = Body> {
    /// The shared state while this holder is the one reading: taken from `shared` when first
    /// polled, given back when dropped or when its body ended.
    state: Option<State<B>>,
    shared: Arc<Shared<B>>,
    /// Bytes of the body this holder yielded.
    offset: u64,
    /// Buffered chunks this holder yielded.
    pos: usize,
    trailers_sent: bool,
    /// This holder yielded its whole body and gave the state back.
    done: bool,
}

struct Shared<B> {
    slot: Mutex<Slot<B>>,
    /// Set once a replay became impossible (capped after reading, or the source failed).
    capped: AtomicBool,
    /// The wrapped body's size hint and end-of-stream when it was wrapped.
    hint: SizeHint,
    was_empty: bool,
}

struct Slot<B> {
    state: Option<State<B>>,
    /// A clone waiting for the state to come back.
    waiter: Option<Waker>,
}

struct State<B> {
    /// The data read so far, while under the cap.
    chunks: Vec<Bytes>,
    buffered: usize,
    /// Bytes read from the source so far.
    read: u64,
    trailers: Option<HeaderMap>,
    /// The client's body; `None` once it ended or failed.
    source: Option<B>,
    failed: bool,
    /// Past the cap: `chunks` is empty and no longer grows.
    capped: bool,
    cap: usize,
}

impl<B: http_body::Body> ReplayBody<B> {
    /// Wraps `body`, keeping up to `cap` bytes for replays.
    pub fn new(body: B, cap: usize) -> Self {
        let hint = body.size_hint();
        let was_empty = body.is_end_stream();
        let state = State {
            chunks: Vec::new(),
            buffered: 0,
            read: 0,
            trailers: None,
            source: Some(body),
            failed: false,
            capped: hint.lower() > cap as u64,
            cap,
        };
        ReplayBody {
            // Taken by whichever holder is polled first, this one or a clone.
            state: None,
            shared: Arc::new(Shared {
                slot: Mutex::new(Slot {
                    state: Some(state),
                    waiter: None,
                }),
                capped: AtomicBool::new(false),
                hint,
                was_empty,
            }),
            offset: 0,
            pos: 0,
            trailers_sent: false,
            done: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// True once no replay is possible: the body streamed past the cap (or the client's body
    /// failed). Check it after an attempt, before retrying; when true, never retry.
    pub fn is_capped(&self) -> bool {
        self.shared.capped.load(Ordering::Acquire)
    }
}

impl<B> Clone for ReplayBody<B> {
    /// A body that replays from the first byte when polled.
    fn clone(&self) -> Self {
        ReplayBody {
            state: None,
            shared: self.shared.clone(),
            offset: 0,
            pos: 0,
            trailers_sent: false,
            done: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// This holder's body ended: the state goes back at once, so that a retry need not wait
    /// for this body to be dropped.
    fn finish<E>(&mut self) -> Poll<Option<E>> {
        self.done = true;
        self.release();
        Poll::Ready(None)
    }

    /// Gives the state back for the next holder, waking it if it waits.
    fn release(&mut self) {
        if let Some(state) = self.state.take() {
            let waiter = {
                let mut slot = self.shared.slot.lock();
                slot.state = Some(state);
                slot.waiter.take()
            };
            if let Some(waker) = waiter {
                waker.wake();
            }
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B> State<B>
where
    B: http_body::Body,
{
    /// Whether a holder that yielded `offset` bytes (and the trailers, if `trailers_sent`) has
    /// nothing left to yield.
    fn is_end_for(&self, offset: u64, trailers_sent: bool) -> bool {
        offset == self.read
            && !self.failed
            && self.source.as_ref().is_none_or(|s| s.is_end_stream())
            && (self.trailers.is_none() || trailers_sent)
    }

    fn size_hint_for(&self, offset: u64) -> SizeHint {
        let Some(replay) = self.read.checked_sub(offset) else {
            return SizeHint::default();
        };
        if self.capped && replay > 0 {
            return SizeHint::default();
        }
        match &self.source {
            None => SizeHint::with_exact(replay),
            Some(source) => {
                let inner = source.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(replay));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(replay));
                }
                hint
            }
        }
    }
}

impl<B> http_body::Body for ReplayBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.state.is_none() {
            let mut slot = this.shared.slot.lock();
            match slot.state.take() {
                Some(state) => this.state = Some(state),
                None => {
                    // An earlier attempt still holds the body; it wakes us when dropped.
                    slot.waiter = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let Some(state) = this.state.as_mut() else {
            return Poll::Pending;
        };

        // First what an earlier attempt read.
        if this.offset < state.read {
            if state.capped {
                return Poll::Ready(Some(Err(ReplayError::Capped.into())));
            }
            let Some(chunk) = state.chunks.get(this.pos).cloned() else {
                // Cannot happen: `read` counts exactly the bytes in `chunks` until capped.
                return Poll::Ready(Some(Err(ReplayError::Capped.into())));
            };
            this.pos += 1;
            this.offset += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }

        // Then the rest of the client's body.
        if let Some(source) = state.source.as_mut() {
            let frame = match Pin::new(source).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            let out = match frame {
                None => {
                    state.source = None;
                    None
                }
                Some(Err(error)) => {
                    state.source = None;
                    state.failed = true;
                    this.shared.capped.store(true, Ordering::Release);
                    Some(Err(error.into()))
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let len = data.len();
                        state.read += len as u64;
                        this.offset = state.read;
                        if !state.capped && state.buffered + len > state.cap {
                            state.capped = true;
                            state.chunks = Vec::new();
                            state.buffered = 0;
                        }
                        if state.capped {
                            if len > 0 {
                                this.shared.capped.store(true, Ordering::Release);
                            }
                        } else if len > 0 {
                            state.buffered += len;
                            state.chunks.push(data.clone());
                            this.pos = state.chunks.len();
                        }
                        Some(Ok(Frame::data(data)))
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            state.trailers = Some(trailers.clone());
                            state.source = None;
                            this.trailers_sent = true;
                            Some(Ok(Frame::trailers(trailers)))
                        }
                        // A frame kind http-body does not have yet: ends the body.
                        Err(_) => {
                            state.source = None;
                            None
                        }
                    },
                },
            };
            return match out {
                Some(frame) => Poll::Ready(Some(frame)),
                None => this.finish(),
            };
        }

        // The client's body ended earlier: its trailers, if this holder has not sent them.
        if state.failed {
            return Poll::Ready(Some(Err(ReplayError::SourceFailed.into())));
        }
        if !this.trailers_sent
            && let Some(trailers) = &state.trailers
        {
            this.trailers_sent = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
        }
        this.finish()
    }

    fn is_end_stream(&self) -> bool {
        if self.done || self.shared.was_empty {
            return true;
        }
        match &self.state {
            Some(state) => state.is_end_for(self.offset, self.trailers_sent),
            None => self
                .shared
                .slot
                .lock()
                .state
                .as_ref()
                .is_some_and(|state| state.is_end_for(0, false)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        match &self.state {
            Some(state) => state.size_hint_for(self.offset),
            None => match &self.shared.slot.lock().state {
                Some(state) => state.size_hint_for(0),
                None => self.shared.hint,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::future::poll_fn;

    use http::HeaderValue;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    /// A body yielding scripted frames; `None` entries are a `Pending` (waking itself).
    struct Script {
        steps: VecDeque<Option<Result<Frame<Bytes>, BoxError>>>,
        hint: SizeHint,
        /// Whether `hint` is exact (and kept so); else it is unknown, as for a chunked body.
        exact: bool,
    }

    impl Script {
        fn new(steps: Vec<Option<Result<Frame<Bytes>, BoxError>>>) -> Self {
            let len: u64 = steps
                .iter()
                .flatten()
                .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.len() as u64))
                .sum();
            Script {
                steps: steps.into(),
                hint: SizeHint::with_exact(len),
                exact: true,
            }
        }

        fn without_hint(mut self) -> Self {
            self.hint = SizeHint::new();
            self.exact = false;
            self
        }

        fn data(chunks: &[&'static str]) -> Self {
            Self::new(
                chunks
                    .iter()
                    .map(|c| Some(Ok(Frame::data(Bytes::from_static(c.as_bytes())))))
                    .collect(),
            )
        }
    }

    impl http_body::Body for Script {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.steps.pop_front() {
                None => Poll::Ready(None),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(frame)) => {
                    if let Ok(Some(d)) = frame.as_ref().map(|f| f.data_ref())
                        && self.exact
                    {
                        let rest = self.hint.lower() - d.len() as u64;
                        self.hint = SizeHint::with_exact(rest);
                    }
                    Poll::Ready(Some(frame))
                }
            }
        }

        fn is_end_stream(&self) -> bool {
            self.steps.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            self.hint
        }
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t
    }

    fn data(s: &'static str) -> Option<Result<Frame<Bytes>, BoxError>> {
        Some(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))
    }

    /// Everything a body yields: its data concatenated and its trailers.
    async fn collect<B>(body: B) -> Result<(Bytes, Option<HeaderMap>), BoxError>
    where
        B: http_body::Body<Data = Bytes, Error = BoxError>,
    {
        let c = body.collect().await?;
        let trailers = c.trailers().cloned();
        Ok((c.to_bytes(), trailers))
    }

    async fn next_frame<B>(body: &mut B) -> Option<Result<Frame<Bytes>, BoxError>>
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
    {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn replays_whole_body_and_trailers() {
        let mut steps = vec![data("hello "), None, data("world")];
        steps.push(Some(Ok(Frame::trailers(trailers()))));
        let first = ReplayBody::new(Script::new(steps), DEFAULT_CAP);
        let retry = first.clone();
        let retry2 = first.clone();
        let (bytes, t) = collect(first).await.unwrap();
        assert_eq!(bytes, "hello world");
        assert_eq!(t, Some(trailers()));
        assert!(!retry.is_capped());
        assert!(!retry.is_end_stream());
        assert_eq!(retry.size_hint().exact(), Some(11));
        let (bytes, t) = collect(retry).await.unwrap();
        assert_eq!(bytes, "hello world");
        assert_eq!(t, Some(trailers()));
        // And again, from a clone taken before the first attempt.
        let (bytes, t) = collect(retry2).await.unwrap();
        assert_eq!(bytes, "hello world");
        assert_eq!(t, Some(trailers()));
    }

    #[tokio::test]
    async fn replay_continues_after_partial_read() {
        let mut first = ReplayBody::new(Script::data(&["a", "bc", "def"]), DEFAULT_CAP);
        let retry = first.clone();
        let f = next_frame(&mut first).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        // The upstream answered (or failed) after one chunk; the attempt is dropped.
        drop(first);
        assert_eq!(retry.size_hint().exact(), Some(6));
        assert!(!retry.is_end_stream());
        let third = retry.clone();
        let mut retry = retry;
        // The replay yields the buffered chunk, then reads on: 1 + 2 of 3 chunks.
        let f = next_frame(&mut retry).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        assert_eq!(retry.size_hint().exact(), Some(5));
        let f = next_frame(&mut retry).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "bc");
        drop(retry);
        let (bytes, t) = collect(third).await.unwrap();
        assert_eq!(bytes, "abcdef");
        assert_eq!(t, None);
    }

    #[tokio::test]
    async fn replay_of_unread_body_reads_the_source() {
        // Connection refused: the first attempt never polled its body.
        let first = ReplayBody::new(Script::data(&["x", "y"]), DEFAULT_CAP);
        let retry = first.clone();
        assert_eq!(first.size_hint().exact(), Some(2));
        drop(first);
        assert_eq!(collect(retry).await.unwrap().0, "xy");
    }

    #[tokio::test]
    async fn over_the_cap_no_replay() {
        let first = ReplayBody::new(Script::data(&["1234", "5678", "9"]).without_hint(), 8);
        let retry = first.clone();
        let mut first = first;
        next_frame(&mut first).await.unwrap().unwrap();
        next_frame(&mut first).await.unwrap().unwrap();
        assert!(!retry.is_capped());
        // The first attempt itself is unaffected by the cap.
        let f = next_frame(&mut first).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "9");
        assert!(next_frame(&mut first).await.is_none());
        assert!(retry.is_capped());
        drop(first);
        let err = collect(retry).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::Capped)
        );
    }

    #[tokio::test]
    async fn exactly_the_cap_replays() {
        let first = ReplayBody::new(Script::data(&["1234", "5678"]), 8);
        let retry = first.clone();
        collect(first).await.unwrap();
        assert!(!retry.is_capped());
        assert_eq!(collect(retry).await.unwrap().0, "12345678");
    }

    #[tokio::test]
    async fn large_size_hint_is_not_buffered_but_unread_body_can_retry() {
        let first = ReplayBody::new(Script::data(&["123456789"]), 8);
        let retry = first.clone();
        let spare = first.clone();
        assert!(!first.is_capped());
        drop(first);
        // Nothing was read: the retry streams the source.
        assert_eq!(collect(retry).await.unwrap().0, "123456789");
        assert!(spare.is_capped());
    }

    #[tokio::test]
    async fn source_error_is_passed_on_and_stops_replays() {
        let steps = vec![data("ab"), Some(Err("client went away".into()))];
        let first = ReplayBody::new(Script::new(steps), DEFAULT_CAP);
        let retry = first.clone();
        let err = collect(first).await.unwrap_err();
        assert_eq!(err.to_string(), "client went away");
        assert!(retry.is_capped());
        let mut retry = retry;
        let f = next_frame(&mut retry).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let err = next_frame(&mut retry).await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::SourceFailed)
        );
    }

    #[tokio::test]
    async fn empty_body_is_end_stream() {
        let first = ReplayBody::new(crate::body::empty(), DEFAULT_CAP);
        let retry = first.clone();
        assert!(first.is_end_stream());
        assert!(retry.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        drop(first);
        assert_eq!(collect(retry).await.unwrap().0, "");
    }

    #[tokio::test]
    async fn is_end_stream_tracks_replay_progress() {
        let mut first = ReplayBody::new(crate::body::full("abc"), DEFAULT_CAP);
        assert!(!first.is_end_stream());
        let f = next_frame(&mut first).await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        assert!(first.is_end_stream());
        let mut retry = first.clone();
        drop(first);
        assert!(!retry.is_end_stream());
        next_frame(&mut retry).await.unwrap().unwrap();
        assert!(retry.is_end_stream());
        assert!(next_frame(&mut retry).await.is_none());
    }

    #[tokio::test]
    async fn clone_waits_for_the_earlier_attempt_to_be_dropped() {
        let mut first = ReplayBody::new(Script::data(&["a", "b"]), DEFAULT_CAP);
        next_frame(&mut first).await.unwrap().unwrap();
        let retry = first.clone();
        // While the attempt holds the body, a clone reports the original hint.
        assert_eq!(retry.size_hint().exact(), Some(2));
        let task = tokio::spawn(collect(retry));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        drop(first);
        assert_eq!(task.await.unwrap().unwrap().0, "ab");
    }

    #[tokio::test]
    async fn a_finished_attempt_need_not_be_dropped() {
        let mut first = ReplayBody::new(Script::data(&["a", "b"]), DEFAULT_CAP);
        let retry = first.clone();
        while let Some(frame) = next_frame(&mut first).await {
            frame.unwrap();
        }
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        // `first` is still alive (a connection task may hold it a while).
        assert_eq!(collect(retry).await.unwrap().0, "ab");
        assert!(next_frame(&mut first).await.is_none());
    }

    #[tokio::test]
    async fn every_attempt_may_be_a_clone() {
        // The retry loop keeps the wrapped body aside and sends clones only.
        let body = ReplayBody::new(Script::data(&["a", "b", "c"]), DEFAULT_CAP);
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        let mut attempt = body.clone();
        next_frame(&mut attempt).await.unwrap().unwrap();
        drop(attempt);
        let mut attempt = body.clone();
        next_frame(&mut attempt).await.unwrap().unwrap();
        next_frame(&mut attempt).await.unwrap().unwrap();
        drop(attempt);
        assert_eq!(collect(body.clone()).await.unwrap().0, "abc");
        assert_eq!(collect(body).await.unwrap().0, "abc");
    }

    #[tokio::test]
    async fn boxes_into_the_waypoint_body() {
        let first = ReplayBody::new(crate::body::full("boxed"), DEFAULT_CAP);
        let retry = first.clone();
        let boxed: Body = crate::body::boxed(first);
        assert_eq!(collect(boxed).await.unwrap().0, "boxed");
        assert_eq!(collect(crate::body::boxed(retry)).await.unwrap().0, "boxed");
    }
}
