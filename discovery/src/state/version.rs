//! The versions a proxy holds, kept small: one entry per resource held (50k and more on a node
//! sent everything), where a key and a version as strings of their own were two allocations
//! of ~130 B between them for every resource.

use std::sync::Arc;

use ambit_proto::api::discovery as api;

/// A held resource's key: its type and its name, the name sharing the allocation the resource
/// itself is held under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct VersionKey {
    kind: i32,
    name: Arc<str>,
}

impl VersionKey {
    pub(super) fn new(kind: i32, name: Arc<str>) -> Self {
        VersionKey { kind, name }
    }

    pub(super) fn is_workload(&self) -> bool {
        self.kind == api::ResourceType::Workload as i32
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Reads `<type>/<name>`, as `known_versions` writes it; `None` for a type not known here.
    pub(super) fn parse(key: &str) -> Option<Self> {
        let (kind, name) = key.split_once('/')?;
        let kind = api::ResourceType::from_key_name(kind)?;
        Some(VersionKey::new(kind as i32, name.into()))
    }
}

impl std::fmt::Display for VersionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = api::ResourceType::try_from(self.kind).map_or("unknown", |t| t.key_name());
        write!(f, "{kind}/{}", self.name)
    }
}

/// A version as the controller sent it. Ambit's controller sends 16 lowercase hex digits
/// (a content hash), kept as their number; anything else is kept as sent, and either way
/// `known_versions` gives back the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Version {
    Hash(u64),
    /// Behind one pointer, so a version is 16 B wherever it is held.
    Text(Arc<String>),
}

impl Version {
    pub(super) fn of(text: &str) -> Self {
        let hash = text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match u64::from_str_radix(text, 16) {
            Ok(n) if hash => Version::Hash(n),
            _ => Version::Text(Arc::new(text.to_string())),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::Hash(n) => write!(f, "{n:016x}"),
            Version::Text(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_reads_back_as_it_was_sent() {
        for text in [
            "00000000000000ff",
            "0123456789abcdef",
            "1",
            "v2",
            "0123456789ABCDEF",
            "",
        ] {
            assert_eq!(Version::of(text).to_string(), text);
        }
        assert_eq!(Version::of("00000000000000ff"), Version::Hash(255));
        assert!(matches!(Version::of("0123456789ABCDEF"), Version::Text(_)));
    }

    #[test]
    fn a_key_reads_back_as_it_was_written() {
        let key = VersionKey::parse("workload/local//Pod/demo/a").unwrap();
        assert_eq!(key.to_string(), "workload/local//Pod/demo/a");
        assert_eq!(
            key,
            VersionKey::new(
                api::ResourceType::Workload as i32,
                "local//Pod/demo/a".into()
            )
        );
        assert!(VersionKey::parse("gadget/demo/a").is_none());
        assert!(VersionKey::parse("workload").is_none());
    }
}
