//! The value matchers a compiled policy is made of, and how a condition on an attribute that a
//! request may carry several times (a header, the host) is judged without giving an attacker
//! a way around it.

use std::net::IpAddr;

/// One pattern of a policy's string list: `x` exactly, `x*` a prefix, `*x` a suffix, `*` any.
#[derive(Debug, Clone)]
pub(super) enum StringMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Any,
}

impl StringMatch {
    pub(super) fn parse(s: &str) -> Self {
        if s == "*" {
            StringMatch::Any
        } else if let Some(p) = s.strip_suffix('*') {
            StringMatch::Prefix(p.into())
        } else if let Some(p) = s.strip_prefix('*') {
            StringMatch::Suffix(p.into())
        } else {
            StringMatch::Exact(s.into())
        }
    }

    /// The same pattern, lowercased: for values compared case-insensitively (hosts).
    pub(super) fn lowercase(s: &str) -> Self {
        Self::parse(&s.to_ascii_lowercase())
    }

    pub(super) fn matches(&self, v: &str) -> bool {
        self.matches_bytes(v.as_bytes())
    }

    /// On bytes, so that header values that are not visible ASCII are matched as they are
    /// rather than skipped (a value that cannot be read must not escape a DENY).
    pub(super) fn matches_bytes(&self, v: &[u8]) -> bool {
        match self {
            StringMatch::Exact(e) => e.as_bytes() == v,
            StringMatch::Prefix(p) => v.starts_with(p.as_bytes()),
            StringMatch::Suffix(s) => v.ends_with(s.as_bytes()),
            StringMatch::Any => true,
        }
    }

    /// ASCII case-insensitive; the pattern is already lowercase ([`StringMatch::lowercase`]).
    pub(super) fn matches_ignore_case(&self, v: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| a.eq_ignore_ascii_case(b);
        match self {
            StringMatch::Exact(e) => eq(e.as_bytes(), v),
            StringMatch::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p.as_bytes()),
            StringMatch::Suffix(s) => {
                v.len() >= s.len() && eq(&v[v.len() - s.len()..], s.as_bytes())
            }
            StringMatch::Any => true,
        }
    }
}

/// Does any pattern of `list` match `v`?
pub(super) fn any(list: &[StringMatch], v: &str) -> bool {
    list.iter().any(|m| m.matches(v))
}

/// A `values`/`not_values` pair on one attribute: the value must match one of `values` (when
/// there are any) and none of `not_values`.
#[derive(Debug, Default)]
pub(super) struct Values {
    pub(super) values: Vec<StringMatch>,
    pub(super) not_values: Vec<StringMatch>,
}

impl Values {
    pub(super) fn new(
        values: &[String],
        not_values: &[String],
        parse: fn(&str) -> StringMatch,
    ) -> Self {
        Values {
            values: values.iter().map(|v| parse(v)).collect(),
            not_values: not_values.iter().map(|v| parse(v)).collect(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// An attribute with one value, or none (no identity, say): an absent value meets only a
    /// condition made of `not_values` (it is none of them).
    pub(super) fn single(&self, v: Option<&str>, matches: fn(&StringMatch, &[u8]) -> bool) -> bool {
        match v {
            Some(v) => self.one(v.as_bytes(), matches),
            None => self.values.is_empty(),
        }
    }

    fn one(&self, v: &[u8], matches: fn(&StringMatch, &[u8]) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(|m| matches(m, v)))
            && !self.not_values.iter().any(|m| matches(m, v))
    }

    /// An attribute a request may carry several times (a repeated header; the host, from both
    /// the URI and the `Host` header). Which value the application will act on is not known,
    /// so a match that refuses (DENY, AUDIT) needs one value to meet the condition, and a match
    /// that grants (ALLOW) needs every value to: duplicating a header or disagreeing hosts
    /// never turns a deny into an allow. No value at all is judged as for [`Values::single`].
    pub(super) fn multi<'v>(
        &self,
        mode: Mode,
        mut values: impl Iterator<Item = &'v [u8]>,
        matches: fn(&StringMatch, &[u8]) -> bool,
    ) -> bool {
        let Some(first) = values.next() else {
            return self.values.is_empty();
        };
        let mut all = std::iter::once(first).chain(values);
        match mode {
            Mode::Refuse => all.any(|v| self.one(v, matches)),
            Mode::Grant => all.all(|v| self.one(v, matches)),
        }
    }
}

/// What a match does: grants (ALLOW) or refuses/reports (DENY, AUDIT). See [`Values::multi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Grant,
    Refuse,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(super) fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let a: IpAddr = s.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        // Clients are matched by their canonical address (IPv4 for ::ffff:a.b.c.d), so a block
        // written in the mapped form is the IPv4 block it names.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Some(Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Some(Cidr { addr, prefix })
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client of a dual-stack socket is ::ffff:a.b.c.d; it must meet the IPv4 rules.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}
