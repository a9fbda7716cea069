//! Request path normalisation, done once when a request arrives so that routing, authorization
//! and the upstream all read the same path: an attacker must not be able to write a path one
//! of them reads as `/admin` and another as something else (CVE-2021-29492, -31920, -39156).
//!
//! - escapes of unreserved characters (ALPHA DIGIT `-` `.` `_` `~`) are decoded (`/%61dmin` is
//!   `/admin`), the hex of every other escape is uppercased (`%2a` is `%2A`);
//! - an escaped slash or backslash (`%2F`, `%5C`, any case) and a literal backslash are refused
//!   by default ([`EscapedSlashes::Reject`]): the application may decode them into a separator
//!   the policy never saw. [`EscapedSlashes::Decode`] makes each of them a `/` instead;
//! - `%00` and malformed escapes (`%4`, `%zz`) are refused;
//! - slashes are merged, `.` and `..` segments resolved (never above the root); a trailing
//!   slash stays (`/admin/` is not `/admin`);
//! - the fragment is dropped, the query is kept as it is and never part of the path;
//! - case is kept: `/ADMIN` is not `/admin`.
//!
//! A path already in normal form is returned borrowed: the common request allocates nothing.

use std::borrow::Cow;
use std::fmt::Write;

use http::Uri;
use http::uri::PathAndQuery;

/// What an escaped slash or backslash in a path does (Istio's `pathNormalization` choice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EscapedSlashes {
    /// The request is refused with 400.
    #[default]
    Reject,
    /// `%2F`, `%5C` and `\` become `/`, then the path is normalised as any other.
    Decode,
}

/// Why a path cannot be normalised (the request gets 400 with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "the path contains an escaped slash or backslash ({escape}), which the waypoint refuses so that no application reads a separator its policies did not see: send the character unescaped, or run the waypoint with --path-escaped-slashes=decode"
    )]
    EscapedSlash { escape: String },
    #[error(
        "the path contains a backslash, which the waypoint refuses so that no application reads a separator its policies did not see: use /, or run the waypoint with --path-escaped-slashes=decode"
    )]
    Backslash,
    #[error("the path has a malformed percent-escape at byte {at}: write % as %25")]
    BadEscape { at: usize },
    #[error("the path contains an escaped NUL (%00)")]
    Nul,
    #[error("the path does not start with /")]
    NotAbsolute,
    /// Cannot happen for a path that parsed (normalising only removes or decodes what was
    /// there); kept an error rather than a panic on the request path.
    #[error("the normalised path {path:?} is not a valid URI path")]
    Unrepresentable { path: String },
}

/// The normal form of `path_and_query` (a request target's path, `?query` and `#fragment`):
/// the normalised path, then the query unchanged; no fragment.
pub fn normalise(path_and_query: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    let without_fragment = match path_and_query.find('#') {
        Some(i) => &path_and_query[..i],
        None => path_and_query,
    };
    let (path, query) = match without_fragment.find('?') {
        Some(i) => without_fragment.split_at(i),
        None => (without_fragment, ""),
    };
    // `*` (OPTIONS *) and no path at all (CONNECT's authority form) have nothing to normalise.
    if path.is_empty() || path == "*" {
        return Ok(Cow::Borrowed(without_fragment));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(without_fragment));
    }
    let decoded = decode(path, slashes)?;
    let mut out = resolve(&decoded);
    out.push_str(query);
    Ok(Cow::Owned(out))
}

/// Normalises `uri`'s path in place (its query kept, scheme and authority untouched); a URI
/// already normal is left as it is, without copying.
pub fn normalise_uri(uri: &mut Uri, slashes: EscapedSlashes) -> Result<(), PathError> {
    let Some(pq) = uri.path_and_query() else {
        return Ok(());
    };
    let normal = match normalise(pq.as_str(), slashes)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(normal) => normal,
    };
    let unrepresentable = || PathError::Unrepresentable {
        path: normal.clone(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(normal.as_str()).map_err(|_| unrepresentable())?);
    *uri = Uri::from_parts(parts).map_err(|_| unrepresentable())?;
    Ok(())
}

/// No escape, backslash, empty, `.` or `..` segment: the common case, checked without copying.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.iter().any(|&b| b == b'%' || b == b'\\') {
        return false;
    }
    // Segments after the leading slash; the last may be empty (a trailing slash).
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Escapes decoded or uppercased, slashes and backslashes as `slashes` says.
fn decode(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape { at: i });
                };
                let value = (hi << 4) | lo;
                match value {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => match slashes {
                        EscapedSlashes::Reject => {
                            return Err(PathError::EscapedSlash {
                                escape: path[i..i + 3].to_string(),
                            });
                        }
                        EscapedSlashes::Decode => out.push('/'),
                    },
                    v if unreserved(v) => out.push(char::from(v)),
                    v => {
                        let _ = write!(out, "%{v:02X}");
                    }
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EscapedSlashes::Reject => return Err(PathError::Backslash),
                    EscapedSlashes::Decode => out.push('/'),
                }
                i += 1;
            }
            _ => {
                // Copy up to the next byte that needs a look (keeps multi-byte characters whole).
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || b == b'\\')
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// Merges slashes and resolves `.` and `..`; `path` starts with `/`.
fn resolve(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.split('/') {
        trailing = false;
        match segment {
            "" => trailing = true,
            "." => trailing = true,
            ".." => {
                kept.pop();
                trailing = true;
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(p: &str) -> Result<String, PathError> {
        normalise(p, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    fn decode(p: &str) -> Result<String, PathError> {
        normalise(p, EscapedSlashes::Decode).map(Cow::into_owned)
    }

    #[test]
    fn the_bypass_table() {
        use PathError::*;
        let slash = |e: &str| {
            Err(EscapedSlash {
                escape: e.to_string(),
            })
        };
        type Want = Result<&'static str, PathError>;
        // (raw, with the default (reject), with decode)
        let table: &[(&str, Want, Want)] = &[
            ("/admin", Ok("/admin"), Ok("/admin")),
            ("/admin/", Ok("/admin/"), Ok("/admin/")),
            ("//admin", Ok("/admin"), Ok("/admin")),
            ("///admin//x", Ok("/admin/x"), Ok("/admin/x")),
            ("/./admin", Ok("/admin"), Ok("/admin")),
            ("/admin/.", Ok("/admin/"), Ok("/admin/")),
            ("/admin%2F..", slash("%2F"), Ok("/")),
            ("/admin%2f..", slash("%2f"), Ok("/")),
            ("/public%2F..%2Fadmin", slash("%2F"), Ok("/admin")),
            ("/%61dmin", Ok("/admin"), Ok("/admin")),
            ("/%2e%2e/admin", Ok("/admin"), Ok("/admin")),
            ("/x/%2E%2E/admin", Ok("/admin"), Ok("/admin")),
            ("/admin#x", Ok("/admin"), Ok("/admin")),
            ("/admin?x", Ok("/admin?x"), Ok("/admin?x")),
            ("/a/../admin", Ok("/admin"), Ok("/admin")),
            ("/../../admin", Ok("/admin"), Ok("/admin")),
            ("/a/..", Ok("/"), Ok("/")),
            ("/..", Ok("/"), Ok("/")),
            ("/admin%5C..", slash("%5C"), Ok("/")),
            ("/admin%5c", slash("%5c"), Ok("/admin/")),
            ("/public\\..\\admin", Err(Backslash), Ok("/admin")),
            ("/ADMIN", Ok("/ADMIN"), Ok("/ADMIN")),
            ("/%41DMIN", Ok("/ADMIN"), Ok("/ADMIN")),
            ("/a%2a%7e%20b", Ok("/a%2A~%20b"), Ok("/a%2A~%20b")),
            ("/a%zz", Err(BadEscape { at: 2 }), Err(BadEscape { at: 2 })),
            ("/a%4", Err(BadEscape { at: 2 }), Err(BadEscape { at: 2 })),
            ("/a%00b", Err(Nul), Err(Nul)),
            ("admin", Err(NotAbsolute), Err(NotAbsolute)),
            (
                "/a/./b/../c?q=/../x#f",
                Ok("/a/c?q=/../x"),
                Ok("/a/c?q=/../x"),
            ),
            ("/caf%C3%A9/./", Ok("/caf%C3%A9/"), Ok("/caf%C3%A9/")),
            ("*", Ok("*"), Ok("*")),
            ("/", Ok("/"), Ok("/")),
        ];
        for (raw, want_reject, want_decode) in table {
            let want_reject = want_reject.clone().map(str::to_string);
            let want_decode = want_decode.clone().map(str::to_string);
            assert_eq!(reject(raw), want_reject, "{raw} (reject)");
            assert_eq!(decode(raw), want_decode, "{raw} (decode)");
        }
    }

    #[test]
    fn normal_paths_are_not_copied() {
        for p in ["/", "/admin", "/admin/", "/a/b.c/d?x=%2F..#f", "/reviews/1"] {
            assert!(
                matches!(normalise(p, EscapedSlashes::Reject), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
        assert!(matches!(
            normalise("//admin", EscapedSlashes::Reject),
            Ok(Cow::Owned(_))
        ));
    }

    #[test]
    fn uris_keep_their_scheme_authority_and_query() {
        let mut uri: Uri = "http://reviews:9080//a/./b/%2e%2e/c?x=1".parse().unwrap();
        normalise_uri(&mut uri, EscapedSlashes::Reject).unwrap();
        assert_eq!(uri.to_string(), "http://reviews:9080/a/c?x=1");
        let mut origin: Uri = "/%61dmin".parse().unwrap();
        normalise_uri(&mut origin, EscapedSlashes::Reject).unwrap();
        assert_eq!(origin, "/admin");
        let mut bad: Uri = "/admin%2F..".parse().unwrap();
        assert!(normalise_uri(&mut bad, EscapedSlashes::Reject).is_err());
        assert_eq!(bad, "/admin%2F..", "left as it was");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/%61/%2e/./b//c/..", "/x%2a/../y/", "/a\\b", "/%2F%2f/x"] {
            let once = decode(p).unwrap();
            assert_eq!(decode(&once).unwrap(), once, "{p}");
            assert_eq!(reject(&once).unwrap(), once, "{p}");
        }
    }
}
