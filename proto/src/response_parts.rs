//! How the controller sends discovery responses and a proxy reads them: resources encoded once
//! per snapshot ([`EncodedResponse`]), a large response in parts (`SubscribeResponse.more`) that
//! the proxy puts back together before applying it ([`Reassembly`]). One message per response
//! would make tonic's encoder keep a buffer the size of the largest message for the life of the
//! stream: ~16 MiB for each ztunnel of a 50k-workload mesh, 2 GiB for 100 of them.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::api::discovery::{RemovedResource, SubscribeResponse};

/// Resources per part, in encoded bytes (a single larger resource goes alone).
pub const PART_BYTES: usize = 1 << 20;

/// A `SubscribeResponse` as the controller sends it: its resources are the bytes they were
/// encoded to once per snapshot (shared, not copied, by every subscriber sent them), and on the
/// wire it is exactly the `SubscribeResponse` with those resources. Only ever encoded; decoding
/// one skips every field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedResponse {
    pub system_version: String,
    pub nonce: String,
    /// Each an encoded `Resource`.
    pub resources: Vec<Bytes>,
    pub removed: Vec<RemovedResource>,
    pub full_state: bool,
    pub more: bool,
    /// On the last part, as `removed`.
    pub answered: Vec<String>,
    pub unknown: Vec<String>,
}

impl EncodedResponse {
    /// The parts of this (whole) response, each with resources of about `part_bytes` at most.
    /// A response that fits is one part; every response is at least one part.
    pub fn into_parts(mut self, part_bytes: usize) -> Parts {
        let resources = std::mem::take(&mut self.resources).into_iter().peekable();
        let removed = Some(std::mem::take(&mut self.removed));
        let answered = (
            std::mem::take(&mut self.answered),
            std::mem::take(&mut self.unknown),
        );
        Parts {
            answered,
            header: self,
            resources,
            removed,
            part_bytes,
        }
    }
}

/// See [`EncodedResponse::into_parts`].
pub struct Parts {
    /// Everything but resources, removals and `more`, which each part gets a copy of.
    header: EncodedResponse,
    resources: std::iter::Peekable<std::vec::IntoIter<Bytes>>,
    /// Taken by the last part.
    removed: Option<Vec<RemovedResource>>,
    /// Taken by the last part too.
    answered: (Vec<String>, Vec<String>),
    part_bytes: usize,
}

impl Iterator for Parts {
    type Item = EncodedResponse;

    fn next(&mut self) -> Option<EncodedResponse> {
        self.removed.as_ref()?;
        let mut part = self.header.clone();
        let mut bytes = 0;
        while let Some(next) = self.resources.peek() {
            if !part.resources.is_empty() && bytes + next.len() > self.part_bytes {
                break;
            }
            bytes += next.len();
            part.resources.extend(self.resources.next());
        }
        part.more = self.resources.peek().is_some();
        if !part.more {
            part.removed = self.removed.take().unwrap_or_default();
            (part.answered, part.unknown) = std::mem::take(&mut self.answered);
        }
        Some(part)
    }
}

// Field numbers of `SubscribeResponse` (discovery.proto).
const SYSTEM_VERSION: u32 = 1;
const NONCE: u32 = 2;
const RESOURCES: u32 = 3;
const REMOVED: u32 = 4;
const FULL_STATE: u32 = 5;
const MORE: u32 = 6;
const ANSWERED: u32 = 7;
const UNKNOWN: u32 = 8;

impl Message for EncodedResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use prost::encoding::{bool, bytes, message, string};
        if !self.system_version.is_empty() {
            string::encode(SYSTEM_VERSION, &self.system_version, buf);
        }
        if !self.nonce.is_empty() {
            string::encode(NONCE, &self.nonce, buf);
        }
        for resource in &self.resources {
            bytes::encode(RESOURCES, resource, buf);
        }
        for removed in &self.removed {
            message::encode(REMOVED, removed, buf);
        }
        if self.full_state {
            bool::encode(FULL_STATE, &self.full_state, buf);
        }
        if self.more {
            bool::encode(MORE, &self.more, buf);
        }
        string::encode_repeated(ANSWERED, &self.answered, buf);
        string::encode_repeated(UNKNOWN, &self.unknown, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{bool, bytes, message, string};
        let text = |tag, value: &String| {
            if value.is_empty() {
                0
            } else {
                string::encoded_len(tag, value)
            }
        };
        let flag = |tag, value: bool| {
            if value {
                bool::encoded_len(tag, &value)
            } else {
                0
            }
        };
        text(SYSTEM_VERSION, &self.system_version)
            + text(NONCE, &self.nonce)
            + bytes::encoded_len_repeated(RESOURCES, &self.resources)
            + message::encoded_len_repeated(REMOVED, &self.removed)
            + flag(FULL_STATE, self.full_state)
            + flag(MORE, self.more)
            + string::encoded_len_repeated(ANSWERED, &self.answered)
            + string::encoded_len_repeated(UNKNOWN, &self.unknown)
    }

    fn clear(&mut self) {
        *self = EncodedResponse::default();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error(
        "the controller sent a part of response {got} while response {pending} was incomplete; a controller sends one response's parts in a row, so this one is broken (upgrade or restart it)"
    )]
    Interleaved { pending: String, got: String },
    #[error(
        "response {nonce} passed {limit} bytes in its parts before its last part; the proxy refuses responses that large"
    )]
    TooLarge { nonce: String, limit: usize },
}

/// Puts the parts of responses back together, one response at a time.
pub struct Reassembly {
    pending: Option<SubscribeResponse>,
    bytes: usize,
    limit: usize,
}

impl Reassembly {
    /// `limit`: the most encoded bytes one response may have across its parts.
    pub fn new(limit: usize) -> Self {
        Reassembly {
            pending: None,
            bytes: 0,
            limit,
        }
    }

    /// The whole response once `part` was its last; `None` while more parts are due. After an
    /// error the parts so far are dropped and the next part starts a new response.
    pub fn push(
        &mut self,
        part: SubscribeResponse,
    ) -> Result<Option<SubscribeResponse>, PartError> {
        if let Some(pending) = &self.pending
            && pending.nonce != part.nonce
        {
            let pending = self.reset().map(|p| p.nonce).unwrap_or_default();
            return Err(PartError::Interleaved {
                pending,
                got: part.nonce,
            });
        }
        self.bytes += part.encoded_len();
        if self.bytes > self.limit {
            self.reset();
            return Err(PartError::TooLarge {
                nonce: part.nonce,
                limit: self.limit,
            });
        }
        let more = part.more;
        match &mut self.pending {
            Some(pending) => {
                pending.resources.extend(part.resources);
                pending.removed.extend(part.removed);
                pending.answered.extend(part.answered);
                pending.unknown.extend(part.unknown);
            }
            None => self.pending = Some(part),
        }
        if more {
            return Ok(None);
        }
        let mut whole = self.reset();
        if let Some(w) = &mut whole {
            w.more = false;
        }
        Ok(whole)
    }

    fn reset(&mut self) -> Option<SubscribeResponse> {
        self.bytes = 0;
        self.pending.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::discovery::{Resource, ResourceType};

    fn resource(name: &str, padding: usize) -> Resource {
        Resource {
            name: name.to_string(),
            version: "x".repeat(padding),
            kind: None,
        }
    }

    fn response(resources: &[Resource]) -> EncodedResponse {
        EncodedResponse {
            system_version: "v7".into(),
            nonce: "3".into(),
            resources: resources.iter().map(|r| r.encode_to_vec().into()).collect(),
            removed: vec![RemovedResource {
                r#type: ResourceType::Service.into(),
                name: "gone".into(),
            }],
            full_state: true,
            more: false,
            answered: vec!["10.244.1.9".into()],
            unknown: vec!["10.244.1.9".into()],
        }
    }

    fn numbered(n: usize) -> Vec<Resource> {
        (0..n).map(|i| resource(&format!("r{i}"), 100)).collect()
    }

    /// A part as the proxy's generated client reads it.
    fn received(part: &EncodedResponse) -> SubscribeResponse {
        let wire = part.encode_to_vec();
        assert_eq!(wire.len(), part.encoded_len());
        SubscribeResponse::decode(&wire[..]).unwrap()
    }

    #[test]
    fn an_encoded_part_is_on_the_wire_the_response_it_stands_for() {
        let resources = numbered(3);
        let [part] = &response(&resources)
            .into_parts(PART_BYTES)
            .collect::<Vec<_>>()[..]
        else {
            panic!("one part expected")
        };
        let expected = SubscribeResponse {
            system_version: "v7".into(),
            nonce: "3".into(),
            resources: resources.clone(),
            removed: part.removed.clone(),
            full_state: true,
            more: false,
            answered: vec!["10.244.1.9".into()],
            unknown: vec!["10.244.1.9".into()],
        };
        assert_eq!(part.encode_to_vec(), expected.encode_to_vec());
        assert_eq!(
            received(&EncodedResponse::default()),
            SubscribeResponse::default()
        );
    }

    #[test]
    fn parts_carry_the_header_and_put_back_together_are_the_response() {
        let resources = numbered(50);
        let parts: Vec<_> = response(&resources).into_parts(1000).collect();
        // ~107 bytes per resource: 9 per part of 1000 bytes.
        assert_eq!(parts.len(), 6);
        let mut reassembly = Reassembly::new(1 << 20);
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let last = i == parts.len() - 1;
            let part = received(part);
            assert_eq!(part.more, !last);
            assert_eq!(
                (part.nonce.as_str(), part.system_version.as_str()),
                ("3", "v7")
            );
            assert!(part.full_state);
            assert_eq!(
                part.removed.is_empty(),
                !last,
                "removals ride on the last part"
            );
            assert_eq!(part.answered.is_empty(), !last, "so do lookup answers");
            let bytes: usize = part.resources.iter().map(Message::encoded_len).sum();
            assert!(bytes <= 1000 && !part.resources.is_empty());
            out.extend(reassembly.push(part).unwrap());
        }
        let [whole] = &out[..] else {
            panic!("{} responses", out.len())
        };
        assert_eq!(whole.resources, resources);
        assert!(whole.full_state && !whole.more && whole.removed.len() == 1);
        assert_eq!((whole.answered.len(), whole.unknown.len()), (1, 1));
    }

    #[test]
    fn a_small_or_empty_response_is_one_part_and_a_big_resource_goes_alone() {
        assert_eq!(response(&numbered(3)).into_parts(PART_BYTES).count(), 1);
        let empty: Vec<_> = EncodedResponse::default().into_parts(10).collect();
        assert_eq!(empty, [EncodedResponse::default()]);
        let big = response(&[resource("a", 10), resource("huge", 5000), resource("b", 10)]);
        let sizes: Vec<usize> = big.into_parts(1000).map(|p| p.resources.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }

    #[test]
    fn interleaved_or_oversized_parts_are_refused_and_the_next_response_starts_clean() {
        let mut parts: Vec<_> = response(&numbered(50))
            .into_parts(1000)
            .map(|p| received(&p))
            .collect();
        let mut reassembly = Reassembly::new(1 << 20);
        assert!(reassembly.push(parts.remove(0)).unwrap().is_none());
        let mut other = parts[0].clone();
        other.nonce = "4".into();
        let err = reassembly.push(other).unwrap_err();
        assert!(
            err.to_string()
                .contains("part of response 4 while response 3"),
            "{err}"
        );
        let whole = received(
            &response(&numbered(1))
                .into_parts(PART_BYTES)
                .next()
                .unwrap(),
        );
        assert_eq!(reassembly.push(whole.clone()).unwrap(), Some(whole));

        let mut small = Reassembly::new(1500);
        let mut results = response(&numbered(50))
            .into_parts(1000)
            .map(|p| small.push(received(&p)));
        assert!(results.next().unwrap().unwrap().is_none());
        let err = results.next().unwrap().unwrap_err();
        assert!(
            matches!(err, PartError::TooLarge { limit: 1500, .. }),
            "{err}"
        );
    }
}
