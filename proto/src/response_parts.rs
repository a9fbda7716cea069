//! A discovery response in parts (`SubscribeResponse.more`): the controller splits a large one,
//! the proxy puts it back together before applying it. One message per response would make
//! tonic's encoder keep a buffer the size of the largest message for the life of the stream:
//! ~16 MiB for each ztunnel of a 50k-workload mesh, 2 GiB for 100 of them.

use std::sync::Arc;

use crate::api::discovery::{RemovedResource, Resource, SubscribeResponse};
use prost::Message;

/// Resources per part, in encoded bytes (a single larger resource goes alone).
pub const PART_BYTES: usize = 1 << 20;

/// A response whose resources are shared with the sender's snapshot. Resources are copied into
/// wire messages one part at a time, as the parts are taken: a full state of a 50k-workload
/// mesh copied whole is ~40 MiB per subscriber until its last part is sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedResponse {
    pub system_version: String,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    pub removed: Vec<RemovedResource>,
    pub full_state: bool,
}

impl SharedResponse {
    /// The parts, each with resources of about `part_bytes` at most. A response that fits is
    /// one part; every response is at least one part.
    pub fn into_parts(self, part_bytes: usize) -> Parts {
        Parts {
            header: SubscribeResponse {
                system_version: self.system_version,
                nonce: self.nonce,
                full_state: self.full_state,
                ..Default::default()
            },
            resources: self.resources.into_iter().peekable(),
            removed: Some(self.removed),
            part_bytes,
        }
    }
}

/// See [`SharedResponse::into_parts`].
pub struct Parts {
    /// Everything but resources, removals and `more`, which each part gets a copy of.
    header: SubscribeResponse,
    resources: std::iter::Peekable<std::vec::IntoIter<Arc<Resource>>>,
    /// Taken by the last part.
    removed: Option<Vec<RemovedResource>>,
    part_bytes: usize,
}

impl Iterator for Parts {
    type Item = SubscribeResponse;

    fn next(&mut self) -> Option<SubscribeResponse> {
        self.removed.as_ref()?;
        let mut part = self.header.clone();
        let mut bytes = 0;
        while let Some(next) = self.resources.peek() {
            let size = next.encoded_len();
            if !part.resources.is_empty() && bytes + size > self.part_bytes {
                break;
            }
            bytes += size;
            part.resources
                .extend(self.resources.next().map(|r| (*r).clone()));
        }
        part.more = self.resources.peek().is_some();
        if !part.more {
            part.removed = self.removed.take().unwrap_or_default();
        }
        Some(part)
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
    use crate::api::discovery::{RemovedResource, ResourceType};

    fn resource(name: &str, padding: usize) -> Resource {
        Resource {
            name: name.to_string(),
            version: "x".repeat(padding),
            kind: None,
        }
    }

    fn response(n: usize) -> SharedResponse {
        SharedResponse {
            system_version: "v7".into(),
            nonce: "3".into(),
            resources: (0..n)
                .map(|i| Arc::new(resource(&format!("r{i}"), 100)))
                .collect(),
            removed: vec![RemovedResource {
                r#type: ResourceType::Service.into(),
                name: "gone".into(),
            }],
            full_state: true,
        }
    }

    /// What the receiver should end up with.
    fn wire(r: &SharedResponse) -> SubscribeResponse {
        SubscribeResponse {
            system_version: r.system_version.clone(),
            nonce: r.nonce.clone(),
            resources: r.resources.iter().map(|r| (**r).clone()).collect(),
            removed: r.removed.clone(),
            full_state: r.full_state,
            more: false,
        }
    }

    #[test]
    fn parts_carry_the_header_and_put_back_together_are_the_response() {
        let whole = response(50);
        let parts: Vec<_> = whole.clone().into_parts(1000).collect();
        // ~105 bytes per resource: 9 per part of 1000 bytes.
        assert_eq!(parts.len(), 6);
        for (i, part) in parts.iter().enumerate() {
            let last = i == parts.len() - 1;
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
            let bytes: usize = part.resources.iter().map(Message::encoded_len).sum();
            assert!(bytes <= 1000 && !part.resources.is_empty());
        }
        let mut reassembly = Reassembly::new(1 << 20);
        let mut out = Vec::new();
        for part in parts {
            out.extend(reassembly.push(part).unwrap());
        }
        assert_eq!(out, [wire(&whole)]);
    }

    #[test]
    fn a_small_or_empty_response_is_one_part_and_a_big_resource_goes_alone() {
        assert_eq!(response(3).into_parts(PART_BYTES).count(), 1);
        let empty: Vec<_> = SharedResponse::default().into_parts(10).collect();
        assert_eq!(empty, [SubscribeResponse::default()]);
        let mut big = response(0);
        big.resources = [resource("a", 10), resource("huge", 5000), resource("b", 10)]
            .map(Arc::new)
            .into();
        let sizes: Vec<usize> = big.into_parts(1000).map(|p| p.resources.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }

    #[test]
    fn interleaved_or_oversized_parts_are_refused_and_the_next_response_starts_clean() {
        let mut parts: Vec<_> = response(50).into_parts(1000).collect();
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
        let whole = wire(&response(1));
        assert_eq!(reassembly.push(whole.clone()).unwrap(), Some(whole));

        let mut small = Reassembly::new(1500);
        let mut results = response(50).into_parts(1000).map(|p| small.push(p));
        assert!(results.next().unwrap().unwrap().is_none());
        let err = results.next().unwrap().unwrap_err();
        assert!(
            matches!(err, PartError::TooLarge { limit: 1500, .. }),
            "{err}"
        );
    }
}
