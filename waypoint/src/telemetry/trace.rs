//! W3C Trace Context `traceparent` for the waypoint's hop.
//!
//! The waypoint is a hop of the trace, as an Envoy waypoint is: it keeps the trace id and
//! flags of the incoming `traceparent`, makes up a span id of its own and sends that upstream
//! as the parent (`00-<trace id>-<waypoint span id>-<flags>`). When the header is absent or
//! invalid, it starts a new trace: random 16-byte trace id, 8-byte span id, flags `01`
//! (sampled). A new trace also means the incoming `tracestate` must be dropped ([`Hop::restarted`]);
//! otherwise `tracestate` passes through untouched.
//!
//! Parsing follows the spec: version `00` is exactly 55 characters; lowercase hex only; trace
//! and parent ids not all zeros; version `ff` invalid; a later version is read for its first
//! four fields when followed by `-` or the end. Flags are kept, but only the bits defined so
//! far (sampled `01`, random `02`), since vendors must send the others as zero.

use std::fmt;

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The flag bits defined by Trace Context (level 2): sampled and random.
const KNOWN_FLAGS: u8 = 0x03;
pub const SAMPLED: u8 = 0x01;

/// A 16-byte trace id; displays as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span (parent) id; displays as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for SpanId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` when invalid.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&value[0..2])?[0];
        match version {
            0xff => return None,
            0x00 if value.len() != 55 => return None,
            _ if value.len() > 55 && value[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = hex::<16>(&value[3..35])?;
        let parent_id = hex::<8>(&value[36..52])?;
        let flags = hex::<1>(&value[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags: flags & KNOWN_FLAGS,
        })
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The header value, version `00`.
    pub fn to_header(&self) -> HeaderValue {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 55];
        let mut i = 0;
        let mut put = |bytes: &[u8], out: &mut [u8; 55]| {
            for b in bytes {
                out[i] = DIGITS[usize::from(b >> 4)];
                out[i + 1] = DIGITS[usize::from(b & 0xf)];
                i += 2;
            }
            if i < 55 {
                out[i] = b'-';
                i += 1;
            }
        };
        put(&[0], &mut out);
        put(&self.trace_id.0, &mut out);
        put(&self.parent_id.0, &mut out);
        put(&[self.flags], &mut out);
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
    }
}

/// Lowercase hex (exactly `2 × N` digits) to bytes.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The waypoint's hop of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub trace_id: TraceId,
    /// The waypoint's span: the parent id sent upstream.
    pub span_id: SpanId,
    /// The incoming parent (the caller's span), when the trace was continued.
    pub parent_id: Option<SpanId>,
    pub flags: u8,
    /// A new trace was started (the header was absent or invalid): drop `tracestate`.
    pub restarted: bool,
    /// The `traceparent` to send upstream.
    pub header: HeaderValue,
}

/// The hop for a request with these headers (one valid `traceparent`, else a new trace).
pub fn hop(headers: &HeaderMap) -> Hop {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let incoming = match (values.next(), values.next()) {
        (Some(v), None) => Some(v.as_bytes()),
        // Several traceparent headers: ambiguous, so invalid.
        _ => None,
    };
    hop_with(incoming, &mut fastrand::Rng::new())
}

/// The hop for an incoming `traceparent` value, with the random source given (for tests).
pub fn hop_with(incoming: Option<&[u8]>, rng: &mut fastrand::Rng) -> Hop {
    let span_id = SpanId(nonzero_u64(rng).to_be_bytes());
    let (parent, incoming_parent) = match incoming.and_then(TraceParent::parse) {
        Some(p) => (
            TraceParent {
                parent_id: span_id,
                ..p
            },
            Some(p.parent_id),
        ),
        None => {
            let trace_id = loop {
                let id = rng.u128(..);
                if id != 0 {
                    break TraceId(id.to_be_bytes());
                }
            };
            (
                TraceParent {
                    trace_id,
                    parent_id: span_id,
                    flags: SAMPLED,
                },
                None,
            )
        }
    };
    Hop {
        trace_id: parent.trace_id,
        span_id,
        parent_id: incoming_parent,
        flags: parent.flags,
        restarted: incoming_parent.is_none(),
        header: parent.to_header(),
    }
}

fn nonzero_u64(rng: &mut fastrand::Rng) -> u64 {
    loop {
        let v = rng.u64(..);
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parse_table() {
        let ok = |flags| {
            Some(TraceParent {
                trace_id: TraceId([
                    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e,
                    0x0e, 0x47, 0x36,
                ]),
                parent_id: SpanId([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
                flags,
            })
        };
        let cases: &[(&str, Option<TraceParent>)] = &[
            (VALID, ok(1)),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                ok(0),
            ),
            // Unknown flag bits are cleared; random (02) is kept.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
                ok(3),
            ),
            // Uppercase hex.
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
                None,
            ),
            // All-zero ids.
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            // Version ff, malformed version.
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            // Version 00 must be exactly 55 characters.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                None,
            ),
            // A later version: its first fields, when followed by '-' or the end.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ok(1),
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what",
                ok(1),
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01what",
                None,
            ),
            // Wrong separators, garbage.
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                None,
            ),
            ("", None),
            ("00", None),
        ];
        for (value, want) in cases {
            assert_eq!(TraceParent::parse(value.as_bytes()), *want, "{value:?}");
        }
    }

    #[test]
    fn header_round_trips() {
        let p = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(p.to_header(), VALID);
        assert!(p.is_sampled());
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn hop_table() {
        let mut rng = fastrand::Rng::with_seed(42);
        let cases: &[(Option<&str>, bool, u8)] = &[
            // incoming, continued?, flags sent
            (Some(VALID), true, 1),
            (
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
                true,
                0,
            ),
            (None, false, 1),
            (Some("garbage"), false, 1),
            (
                Some("00-00000000000000000000000000000000-00f067aa0ba902b7-00"),
                false,
                1,
            ),
        ];
        for (incoming, continued, flags) in cases {
            let hop = hop_with(incoming.map(str::as_bytes), &mut rng);
            let sent = TraceParent::parse(hop.header.as_bytes()).expect("valid header sent");
            assert_eq!(sent.trace_id, hop.trace_id, "{incoming:?}");
            assert_eq!(sent.parent_id, hop.span_id, "{incoming:?}");
            assert_eq!(sent.flags, *flags, "{incoming:?}");
            assert_eq!(hop.flags, *flags, "{incoming:?}");
            assert_eq!(hop.restarted, !continued, "{incoming:?}");
            assert!(hop.header.as_bytes().starts_with(b"00-"));
            if *continued {
                let p = TraceParent::parse(incoming.unwrap().as_bytes()).unwrap();
                assert_eq!(hop.trace_id, p.trace_id);
                assert_eq!(hop.parent_id, Some(p.parent_id));
                // A new span for the waypoint.
                assert_ne!(hop.span_id, p.parent_id);
            } else {
                assert_eq!(hop.parent_id, None);
                assert_ne!(hop.trace_id, TraceId([0; 16]));
            }
        }
    }

    #[test]
    fn new_traces_differ() {
        let a = hop(&HeaderMap::new());
        let b = hop(&HeaderMap::new());
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
    }

    #[test]
    fn hop_reads_headers() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let hop1 = hop(&h);
        assert!(!hop1.restarted);
        assert_eq!(
            hop1.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // Two traceparent headers: a new trace.
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(hop(&h).restarted);
    }
}
