//! A delta's changes to the indexes, made in place on the indexes of the state it applies to
//! rather than by indexing every resource again. An on-demand ztunnel applies a small response
//! for each destination its pods first connect to, and the connection waits for it: rebuilding
//! the indexes of everything held made that wait grow with all the ztunnel had learnt before.

use std::sync::Arc;

use imbl::ordmap::Entry;

use super::apply::unique_addresses;
use super::backing::{self, Backing};
use super::{Indexes, ProxyState, Service, StateError, Workload, dense};

/// The workloads and services a delta replaced or removed (as the indexes hold them) and those
/// it put in their place.
#[derive(Default)]
pub(super) struct Touched {
    pub(super) old_workloads: Vec<Workload>,
    pub(super) new_workloads: Vec<Workload>,
    pub(super) old_services: Vec<Arc<Service>>,
    pub(super) new_services: Vec<Arc<Service>>,
}

impl Touched {
    /// Takes the old entries out of `state`'s indexes and puts the new ones in, refusing a new
    /// one that claims another's address or host name (as a full index would).
    pub(super) fn reindex(self, state: &mut ProxyState) -> Result<(), StateError> {
        let ProxyState {
            workloads,
            services,
            indexes,
            ..
        } = state;
        let Indexes {
            by_ip,
            by_vip,
            by_hostname,
            by_endpoint,
        } = indexes;
        // A resource sent twice in one response: only the one the state kept is indexed.
        let current_workloads: Vec<&Workload> = self
            .new_workloads
            .iter()
            .filter(|w| {
                workloads
                    .get(w.uid())
                    .is_some_and(|c| Workload::ptr_eq(&c.0, w))
            })
            .collect();
        let current_services: Vec<&Arc<Service>> = self
            .new_services
            .iter()
            .filter(|s| services.get(&s.key).is_some_and(|c| Arc::ptr_eq(c, s)))
            .collect();

        for old in &self.old_workloads {
            for ip in old.addresses() {
                if by_ip.get(ip).is_some_and(|w| w.uid() == old.uid()) {
                    by_ip.remove(ip);
                }
            }
        }
        for old in &self.old_services {
            for vip in old.vips.iter() {
                if by_vip.get(vip).is_some_and(|s| s.key == old.key) {
                    by_vip.remove(vip);
                }
            }
            if by_hostname
                .get(&*old.hostname)
                .is_some_and(|s| s.key == old.key)
            {
                by_hostname.remove(&*old.hostname);
            }
            backing::remove(by_endpoint, old);
        }

        let addresses: Vec<_> = current_workloads
            .iter()
            .flat_map(|w| w.addresses().iter().map(|ip| (*ip, (*w).clone())))
            .collect();
        // Listed twice among them, or (as every old version was taken out above) still held
        // by another workload: refused either way, as a full state.
        let addresses = unique_addresses(addresses)?;
        if let Some((ip, w)) = addresses.iter().find(|(ip, _)| by_ip.contains_key(ip)) {
            return Err(StateError::DuplicateAddress {
                address: *ip,
                first: by_ip[ip].uid().to_string(),
                second: w.uid().to_string(),
            });
        }
        dense::insert_all(by_ip, addresses, |_| {});
        for s in &current_services {
            for vip in s.vips.iter() {
                by_vip.insert(*vip, (*s).clone());
            }
            if !s.hostname.is_empty() {
                match by_hostname.entry(s.hostname.clone()) {
                    Entry::Occupied(o) if o.get().key != s.key => {
                        return Err(StateError::DuplicateHostname {
                            hostname: s.hostname.to_string(),
                            first: o.get().key.to_string(),
                            second: s.key.to_string(),
                        });
                    }
                    Entry::Occupied(mut o) => {
                        o.insert((*s).clone());
                    }
                    Entry::Vacant(v) => {
                        v.insert((*s).clone());
                    }
                }
            }
            for b in Backing::of(s) {
                by_endpoint.insert(b);
            }
        }
        Ok(())
    }
}
