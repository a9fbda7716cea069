//! One subscription's bookkeeping, apart from any I/O: what the proxy holds, what it refused, and
//! the one response awaiting its ACK. One response at a time: changes that arrive meanwhile are
//! folded into the next delta, so a slow proxy gets fewer, larger updates instead of a backlog.

use std::collections::HashMap;

use ambit_proto::api::discovery::RemovedResource;
use ambit_proto::response_parts::EncodedResponse;

use super::desired::Desired;
use super::snapshot::WireResource;
use super::{ResourceKey, Scope};

/// A resource's version, or `None` for its removal.
type Change = (ResourceKey, Option<Version>);

/// A resource version as a session keeps it: the controller's versions are 16 lowercase hex
/// digits on the wire (see `snapshot::content_version`), kept as their number, since a session holds one for
/// every resource in its scope (45k per ztunnel at 50k workloads; as strings they were a third
/// of a session's heap). Any other string, which a proxy may claim in `known_versions`, is no
/// version of ours and equals none.
#[derive(Debug, Clone, Copy)]
struct Version(Option<u64>);

impl Version {
    fn of(text: &str) -> Self {
        let ours = text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        Version(ours.then(|| u64::from_str_radix(text, 16).ok()).flatten())
    }

    fn ours(resource: &WireResource) -> Self {
        Version(Some(resource.version))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.0.is_some() && self.0 == other.0
    }
}

struct InFlight {
    nonce: String,
    full_state: bool,
    changes: Vec<Change>,
    /// The scope's version this response brings the proxy to.
    system_version: String,
}

/// What a proxy's answer meant.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Ack,
    /// The proxy refused the response and keeps its previous config.
    Nack {
        changes: usize,
    },
    /// A nonce that is not the one awaited (a late answer after a reconnect, or a plain request).
    Stale,
}

pub(super) struct Session {
    /// Versions the proxy holds: those it ACKed, or claimed in `known_versions`.
    acked: HashMap<ResourceKey, Version>,
    /// Changes the proxy NACKed. They are not sent again until the resource changes once more,
    /// so a proxy that cannot take something is not sent it in a loop.
    rejected: HashMap<ResourceKey, Option<Version>>,
    in_flight: Option<InFlight>,
    sent: u64,
    /// What the proxy should hold. Kept here, and changed only through [`Self::replace`] and
    /// [`Self::change_in_place`], so that the session always knows what changed since it last
    /// diffed it: a desired state handed over without saying so was either diffed whole again
    /// on every call (an on-demand lookup's ACK cost a diff and a copy of the whole
    /// subscription) or, once that was skipped, missed.
    desired: Desired,
    /// How `desired` differs from what the last diff looked at.
    pending: Pending,
    /// A copy of the desired state last diffed whole, so that the next replaced one can be
    /// diffed by what changed in between (see [`Desired::candidates_since`]); `None` once it
    /// was changed in place, which that comparison would not see.
    synced: Option<Desired>,
    /// How many keys the last diff looked at (tests hold the diff's cost to this).
    #[cfg(test)]
    compared: usize,
}

/// What the next diff has to look at.
enum Pending {
    /// Nothing: the desired state is the one last diffed.
    Nothing,
    /// These keys, where the desired state last diffed was changed in place since.
    InPlace(Scope),
    /// Everything (or what [`Desired::candidates_since`] says): a new desired state.
    Replaced,
}

impl Session {
    /// A session for a proxy that already holds `known` (from `known_versions`; empty on a first
    /// connection, which then gets the full state). It desires nothing until [`Self::replace`].
    pub fn new(known: HashMap<ResourceKey, String>) -> Self {
        Session {
            acked: known
                .into_iter()
                .map(|(key, version)| (key, Version::of(&version)))
                .collect(),
            rejected: HashMap::new(),
            in_flight: None,
            sent: 0,
            desired: Desired::default(),
            pending: Pending::Replaced,
            synced: None,
            #[cfg(test)]
            compared: 0,
        }
    }

    /// What the proxy should hold, as last replaced or changed.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// A new desired state (from a new snapshot): diffed as a whole, or by what changed since
    /// the last one diffed whole.
    pub fn replace(&mut self, desired: Desired) {
        self.desired = desired;
        self.pending = Pending::Replaced;
    }

    /// Changes the desired state in place (a lookup's entries added, a release's removed);
    /// `change` returns the keys whose entry it added, removed or replaced, which are all the
    /// next diff looks at.
    pub fn change_in_place<I>(&mut self, change: impl FnOnce(&mut Desired) -> I)
    where
        I: IntoIterator<Item = ResourceKey>,
    {
        let keys = change(&mut self.desired);
        match &mut self.pending {
            Pending::Nothing => self.pending = Pending::InPlace(keys.into_iter().collect()),
            Pending::InPlace(changed) => changed.extend(keys),
            Pending::Replaced => {}
        }
        // The copy no longer follows from what was diffed: a key added here and gone from the
        // next replaced state would be in neither's own part.
        self.synced = None;
    }

    /// `desired` replaces the desired state and the response that brings the proxy to it is
    /// made, if one is due.
    #[cfg(test)]
    pub fn next_response(&mut self, desired: &Desired) -> Option<EncodedResponse> {
        self.replace(desired.clone());
        self.next_response_or_empty(false)
    }

    /// The response that brings the proxy to the desired state, if one is due: the first
    /// response always is (so the proxy learns it is current), later ones only when something
    /// differs, or when `always` (one that answers lookups); none while one awaits its answer.
    pub fn next_response_or_empty(&mut self, always: bool) -> Option<EncodedResponse> {
        if self.in_flight.is_some() {
            return None;
        }
        let first = self.sent == 0;
        let full_state = first && self.acked.is_empty();
        let pending = std::mem::replace(&mut self.pending, Pending::Nothing);
        #[cfg(test)]
        {
            self.compared = 0;
        }
        let desired = &self.desired;
        let mut resources = Vec::new();
        let mut changes = Vec::new();
        let mut removed = Vec::new();
        if !matches!(pending, Pending::Nothing) {
            self.rejected.retain(|key, version| match version {
                Some(v) => desired.get(key).is_some_and(|r| Version::ours(r) == *v),
                None => !desired.contains_key(key),
            });
        }
        if full_state {
            for (key, resource) in desired.iter() {
                resources.push(resource.encoded.clone());
                changes.push((key.clone(), Some(Version::ours(resource))));
            }
        } else {
            let candidates = match &pending {
                Pending::Nothing => Some(Vec::new()),
                Pending::InPlace(changed) => Some(changed.iter().collect()),
                Pending::Replaced => self
                    .synced
                    .as_ref()
                    .and_then(|s| desired.candidates_since(s)),
            };
            let keys = candidates.unwrap_or_else(|| {
                let mut keys: Vec<&ResourceKey> = self.acked.keys().collect();
                keys.extend(desired.keys());
                keys.sort_unstable();
                keys.dedup();
                keys
            });
            #[cfg(test)]
            {
                self.compared = keys.len();
            }
            for key in keys {
                match desired.get(key) {
                    Some(resource) => {
                        let version = Version::ours(resource);
                        let held = self.acked.get(key) == Some(&version);
                        let refused =
                            matches!(self.rejected.get(key), Some(Some(v)) if *v == version);
                        if !held && !refused {
                            resources.push(resource.encoded.clone());
                            changes.push((key.clone(), Some(version)));
                        }
                    }
                    None => {
                        if self.acked.contains_key(key) && self.rejected.get(key) != Some(&None) {
                            removed.push(RemovedResource {
                                r#type: key.kind.into(),
                                name: key.name.to_string(),
                            });
                            changes.push((key.clone(), None));
                        }
                    }
                }
            }
        }
        // Whether this response is ACKed or NACKed, afterwards every key of `desired` is held
        // or refused at exactly its version, which is what the next incremental diff relies on.
        // After a diff of changes in place there is no copy to keep: the next such diff needs
        // only their keys, and a replaced desired state is compared whole.
        match pending {
            Pending::Replaced => self.synced = Some(desired.clone()),
            Pending::InPlace(_) => self.synced = None,
            Pending::Nothing => {}
        }
        if !first && changes.is_empty() && !always {
            return None;
        }
        self.sent += 1;
        let nonce = self.sent.to_string();
        self.in_flight = Some(InFlight {
            nonce: nonce.clone(),
            full_state,
            changes,
            system_version: desired.system_version(),
        });
        Some(EncodedResponse {
            system_version: desired.system_version(),
            nonce,
            resources,
            removed,
            full_state,
            more: false,
            answered: Vec::new(),
            unknown: Vec::new(),
        })
    }

    /// Whether `response`, just made, is the first of a resumed subscription and finds the
    /// proxy already holding everything it should (nothing sent, nothing removed).
    pub fn resumed_current(&self, response: &EncodedResponse) -> bool {
        self.sent == 1
            && !response.full_state
            && response.resources.is_empty()
            && response.removed.is_empty()
    }

    /// The version the response awaiting an answer brings the proxy to.
    pub fn in_flight_version(&self) -> Option<String> {
        self.in_flight.as_ref().map(|f| f.system_version.clone())
    }

    /// Takes the proxy's ACK (empty `error_detail`) or NACK of the response with `nonce`.
    pub fn answer(&mut self, nonce: &str, error_detail: &str) -> Answer {
        if self.in_flight.as_ref().is_none_or(|f| f.nonce != nonce) {
            return Answer::Stale;
        }
        let done = self.in_flight.take().expect("checked above");
        if !error_detail.is_empty() {
            let changes = done.changes.len();
            self.rejected.extend(done.changes);
            return Answer::Nack { changes };
        }
        if done.full_state {
            self.acked.clear();
        }
        for (key, version) in done.changes {
            self.rejected.remove(&key);
            match version {
                Some(v) => self.acked.insert(key, v),
                None => self.acked.remove(&key),
            };
        }
        Answer::Ack
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ambit_proto::api::discovery::{Resource, ResourceType};

    use crate::push::desired::SharedChanges;
    use prost::Message;

    use super::*;

    /// A version of the controller's form (16 hex digits) from a short one ("1", "bad").
    fn version(short: &str) -> String {
        format!("{short:0>16}")
    }

    fn desired(items: &[(&str, &str)]) -> Desired {
        let own = items
            .iter()
            .map(|(name, short)| {
                let key = ResourceKey::new(ResourceType::Service, *name);
                let version = version(short);
                let resource = Resource {
                    name: name.to_string(),
                    version: version.clone(),
                    kind: None,
                };
                let wire = WireResource {
                    version: u64::from_str_radix(&version, 16).unwrap(),
                    encoded: resource.encode_to_vec().into(),
                };
                (key, Arc::new(wire))
            })
            .collect();
        Desired::own(own)
    }

    /// Each resource sent as `name@version`, the version short again.
    fn names(r: &EncodedResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|bytes| {
                let r = Resource::decode(bytes.clone()).unwrap();
                format!("{}@{}", r.name, r.version.trim_start_matches('0'))
            })
            .collect()
    }

    #[test]
    fn full_state_first_then_only_deltas_after_an_ack() {
        let mut s = Session::new(HashMap::new());
        let first = s
            .next_response(&desired(&[("a", "1"), ("b", "1")]))
            .unwrap();
        assert!(first.full_state);
        assert_eq!(names(&first), ["a@1", "b@1"]);
        assert!(
            s.next_response(&desired(&[("a", "2")])).is_none(),
            "one response in flight"
        );
        assert_eq!(s.answer(&first.nonce, ""), Answer::Ack);
        let delta = s.next_response(&desired(&[("a", "2")])).unwrap();
        assert!(!delta.full_state);
        assert_eq!(names(&delta), ["a@2"]);
        assert_eq!(delta.removed.len(), 1);
        assert_eq!(delta.removed[0].name, "b");
        assert_ne!(delta.nonce, first.nonce);
        assert_eq!(s.answer(&delta.nonce, ""), Answer::Ack);
        assert!(
            s.next_response(&desired(&[("a", "2")])).is_none(),
            "nothing differs"
        );
    }

    #[test]
    fn a_nacked_change_is_not_resent_until_it_changes_again() {
        let mut s = Session::new(HashMap::new());
        let first = s.next_response(&desired(&[("a", "1")])).unwrap();
        s.answer(&first.nonce, "");
        let bad = s.next_response(&desired(&[("a", "bad")])).unwrap();
        assert_eq!(
            s.answer(&bad.nonce, "cannot parse a"),
            Answer::Nack { changes: 1 }
        );
        assert!(s.next_response(&desired(&[("a", "bad")])).is_none());
        let fixed = s.next_response(&desired(&[("a", "3")])).unwrap();
        assert_eq!(names(&fixed), ["a@3"]);
        s.answer(&fixed.nonce, "");
        // Back to the rejected version later: a new change, so it is offered again.
        let again = s.next_response(&desired(&[("a", "bad")])).unwrap();
        assert_eq!(names(&again), ["a@bad"]);
    }

    fn known(items: &[(&str, &str)]) -> HashMap<ResourceKey, String> {
        items
            .iter()
            .map(|(n, v)| (ResourceKey::new(ResourceType::Service, *n), v.to_string()))
            .collect()
    }

    #[test]
    fn known_versions_resume_without_a_full_resend() {
        let mut s = Session::new(known(&[("a", &version("1")), ("gone", &version("1"))]));
        let first = s
            .next_response(&desired(&[("a", "1"), ("b", "1")]))
            .unwrap();
        assert!(!first.full_state);
        assert_eq!(names(&first), ["b@1"]);
        assert_eq!(first.removed[0].name, "gone");
        // Even when nothing differs, the first response tells the proxy it is current.
        let mut s = Session::new(known(&[("a", &version("1"))]));
        let first = s.next_response(&desired(&[("a", "1")])).unwrap();
        assert!(first.resources.is_empty() && first.removed.is_empty() && !first.full_state);
    }

    #[test]
    fn a_claimed_version_not_of_the_controllers_form_is_held_by_nobody() {
        // "1" and "0x1" read as the number 1 but are not of the controller's form, so they are
        // not taken for version 0000000000000001; an unreadable claim matches nothing.
        let mut s = Session::new(known(&[("a", "1"), ("b", "0x1"), ("c", "?"), ("d", "?")]));
        let first = s
            .next_response(&desired(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]))
            .unwrap();
        assert_eq!(names(&first), ["a@1", "b@1", "c@1", "d@1"]);
    }

    fn resolved(items: &[(&str, &str)]) -> crate::push::desired::Resolved {
        desired(items)
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    #[test]
    fn a_shared_part_is_diffed_by_its_changes_with_the_same_result() {
        let shared1 = Arc::new(resolved(&[("a", "1"), ("b", "1")]));
        let d1 = Desired::new(shared1.clone(), 1, None, resolved(&[("x", "1")]));
        let shared2 = resolved(&[("a", "2"), ("c", "1")]);
        let changes = SharedChanges::between(shared1, &shared2);
        let d2 = Desired::new(Arc::new(shared2), 2, Some(changes), resolved(&[("b", "1")]));
        let mut sessions = [Session::new(HashMap::new()), Session::new(HashMap::new())];
        for s in &mut sessions {
            let first = s.next_response(&d1).unwrap();
            assert_eq!(names(&first), ["a@1", "b@1", "x@1"]);
            s.answer(&first.nonce, "");
        }
        // The second session forgets where it was, so it compares everything.
        sessions[1].synced = None;
        let [incremental, full] = sessions.map(|mut s| s.next_response(&d2).unwrap());
        for delta in [&incremental, &full] {
            // b moved from the shared to the own part unchanged: not resent.
            assert_eq!(names(delta), ["a@2", "c@1"]);
            let removed: Vec<_> = delta.removed.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(removed, ["x"]);
        }
        assert_eq!(incremental.system_version, full.system_version);
    }

    fn entry(name: &str, short: &str) -> (ResourceKey, Arc<WireResource>) {
        desired(&[(name, short)])
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .next()
            .unwrap()
    }

    #[test]
    fn changes_in_place_are_diffed_by_their_keys_with_the_same_result() {
        let d = desired(&[("a", "1"), ("b", "1")]);
        let mut sessions = [Session::new(HashMap::new()), Session::new(HashMap::new())];
        for s in &mut sessions {
            let first = s.next_response(&d).unwrap();
            s.answer(&first.nonce, "");
        }
        let (c, c1) = entry("c", "1");
        let a = ResourceKey::new(ResourceType::Service, "a");
        let change = |d: &mut Desired| {
            d.insert_own(c.clone(), c1.clone());
            d.remove_own(&a);
        };
        // The first is told what changed; the second is handed the result as a new state.
        sessions[0].change_in_place(|d| {
            change(d);
            [c.clone(), a.clone()]
        });
        let mut whole = sessions[1].desired().clone();
        change(&mut whole);
        sessions[1].replace(whole);
        let [incremental, full] = sessions
            .each_mut()
            .map(|s| s.next_response_or_empty(false).unwrap());
        assert_eq!(sessions[0].compared, 2, "only the keys told");
        assert_eq!(sessions[1].compared, 3, "everything held or desired");
        for delta in [&incremental, &full] {
            assert_eq!(names(delta), ["c@1"]);
            let removed: Vec<_> = delta.removed.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(removed, ["a"]);
        }
        assert_eq!(incremental.system_version, full.system_version);
        assert_eq!(
            incremental.system_version,
            desired(&[("b", "1"), ("c", "1")]).system_version(),
            "the version kept in place is the one a fresh desired state has"
        );
        let s = &mut sessions[0];
        // A lookup while a response awaits its answer is sent after it.
        let (e, e1) = entry("e", "1");
        s.change_in_place(|d| {
            d.insert_own(e.clone(), e1);
            [e]
        });
        assert!(
            s.next_response_or_empty(false).is_none(),
            "one response in flight"
        );
        s.answer(&incremental.nonce, "");
        let later = s.next_response_or_empty(false).unwrap();
        assert_eq!(names(&later), ["e@1"]);
        s.answer(&later.nonce, "");
        // Only the keys told are looked at: a change in place not told is not seen.
        let (f, f1) = entry("f", "1");
        s.change_in_place(|d| {
            d.insert_own(f, f1);
            []
        });
        assert!(s.next_response_or_empty(false).is_none());
        // A replaced desired state is compared whole again.
        let same = s.desired().clone();
        assert_eq!(names(&s.next_response(&same).unwrap()), ["f@1"]);
    }

    /// A session whose proxy holds `desired`.
    fn synced(desired: &Desired) -> Session {
        let mut s = Session::new(HashMap::new());
        let first = s.next_response(desired).unwrap();
        s.answer(&first.nonce, "");
        s
    }

    /// Adds `name` at version 1 to the session's desired state in place, telling its key.
    fn add_in_place(s: &mut Session, name: &str) {
        let (key, resource) = entry(name, "1");
        s.change_in_place(|d| {
            d.insert_own(key.clone(), resource);
            [key]
        });
    }

    #[test]
    fn the_answer_to_a_change_in_place_is_not_diffed_again() {
        // A ztunnel holding a thousand entries looks one address up: the lookup's response
        // looks at its key, and the ACK of that response at nothing (it looked at all 1,001,
        // and copied them, before).
        let held: Vec<String> = (0..1000).map(|i| format!("held-{i:04}")).collect();
        let items: Vec<(&str, &str)> = held.iter().map(|n| (n.as_str(), "1")).collect();
        let mut s = synced(&desired(&items));
        add_in_place(&mut s, "looked-up");
        let answer = s.next_response_or_empty(true).unwrap();
        assert_eq!(names(&answer), ["looked-up@1"]);
        assert_eq!(s.compared, 1);
        assert_eq!(s.answer(&answer.nonce, ""), Answer::Ack);
        assert!(s.next_response_or_empty(false).is_none());
        assert_eq!(s.compared, 0, "nothing changed since the last diff");
        assert!(s.synced.is_none(), "and nothing was copied");
        // Asked to answer anyway (a lookup of an address it already holds): an empty
        // response at the same version, still without a diff.
        let again = s.next_response_or_empty(true).unwrap();
        assert!(again.resources.is_empty() && again.removed.is_empty());
        assert_eq!(again.system_version, answer.system_version);
        assert_eq!(s.compared, 0);
    }

    #[test]
    fn a_key_added_in_place_and_gone_from_the_next_state_is_removed() {
        let base = desired(&[("a", "1")]);
        let mut s = synced(&base);
        add_in_place(&mut s, "x");
        let added = s.next_response_or_empty(false).unwrap();
        s.answer(&added.nonce, "");
        // A new snapshot without it (its address released meanwhile, say).
        let next = s.next_response(&base).unwrap();
        let removed: Vec<_> = next.removed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(removed, ["x"]);
    }

    #[test]
    fn a_stale_nonce_is_ignored() {
        let mut s = Session::new(HashMap::new());
        let first = s.next_response(&desired(&[("a", "1")])).unwrap();
        assert_eq!(s.answer("999", ""), Answer::Stale);
        assert!(s.in_flight.is_some());
        assert_eq!(s.answer(&first.nonce, ""), Answer::Ack);
        assert_eq!(s.answer(&first.nonce, ""), Answer::Stale);
    }
}
