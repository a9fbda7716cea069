//! Kubernetes service-account tokens, checked by the API server (TokenReview), as Istio's CA
//! does: the controller never needs the cluster's token signing keys.
//!
//! Successful reviews are kept for a short while (at most [`DEFAULT_CACHE_FOR`], never past the
//! token's own expiry) keyed by the token itself, so a ztunnel asking for the certificates of
//! every pod on its node at start costs one review, not one per pod. A token the API server
//! refused is refused again without asking for [`REFUSED_FOR`], and at most
//! [`MAX_REVIEWS_IN_FLIGHT`] reviews run at once: anyone who can reach the controller's port can
//! send tokens, and must not be able to turn that into unbounded load on the API server. An API
//! server that could not answer is not remembered: the next request asks again.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;

use super::Refusal;

/// How long a successful review is reused.
pub const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(60);
/// How long the API server gets to answer a review before the request is refused as unavailable.
pub const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a token the API server refused is refused without asking again.
pub const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Reviews waiting for the API server at once; more callers wait their turn.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 16;
/// Refused tokens remembered at most (garbage tokens are all different; beyond this they are
/// only rate-limited by [`MAX_REVIEWS_IN_FLIGHT`]).
const MAX_REFUSED: usize = 4096;

/// Where the API server puts the node of a pod-bound service-account token (Kubernetes ≥ 1.30).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What the API server said a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reviewed {
    /// `system:serviceaccount:<ns>:<sa>` for a service account.
    pub user: String,
    /// The node of the pod the token is bound to, if it is bound to one.
    pub node: Option<String>,
}

/// Reviews tokens through one Kubernetes client, requiring one audience.
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    timeout: Duration,
    cache_for: Duration,
    /// Keyed by the token itself, not a hash of it: a collision must never hand one caller
    /// another's identity.
    cache: Mutex<HashMap<String, (Reviewed, Instant)>>,
    /// Why the API server refused a token (the reason of a `NotAuthenticated`).
    refused: Mutex<HashMap<String, (String, Instant)>>,
    in_flight: tokio::sync::Semaphore,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        TokenReviewer {
            client,
            audience: audience.into(),
            timeout: DEFAULT_REVIEW_TIMEOUT,
            cache_for: DEFAULT_CACHE_FOR,
            cache: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        }
    }

    /// Reuse successful reviews for at most `cache_for` (zero: review every request).
    pub fn cache_for(mut self, cache_for: Duration) -> Self {
        self.cache_for = cache_for;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub(super) async fn review(&self, token: &str) -> Result<Reviewed, Refusal> {
        if let Some(known) = self.known(token) {
            return known;
        }
        let _turn = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Refusal::ReviewUnavailable {
                reason: "the controller is shutting down".into(),
            })?;
        // Another caller with the same token may have been answered while this one waited.
        if let Some(known) = self.known(token) {
            return known;
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &request))
                .await
                .map_err(|_| Refusal::ReviewUnavailable {
                    reason: format!("no answer within {:?}", self.timeout),
                })?
                .map_err(|e| Refusal::ReviewUnavailable {
                    reason: e.to_string(),
                })?;
        match self.accept(answer.status.unwrap_or_default()) {
            Ok(reviewed) => {
                self.remember(token, &reviewed);
                Ok(reviewed)
            }
            Err(refusal) => {
                self.remember_refusal(token, &refusal);
                Err(refusal)
            }
        }
    }

    /// The review's verdict. An authenticated token must also be confirmed for our audience: an
    /// API server that ignores audiences answers with none, which means "valid for the API
    /// server itself" and would let any pod's ordinary API token through.
    fn accept(&self, status: TokenReviewStatus) -> Result<Reviewed, Refusal> {
        let refuse = |reason: String| Refusal::NotAuthenticated {
            audience: self.audience.clone(),
            reason,
        };
        if status.authenticated != Some(true) {
            return Err(refuse(match status.error {
                Some(error) if !error.is_empty() => format!("the API server said: {error}"),
                _ => "the API server gave no reason (expired, wrong audience, or unknown)".into(),
            }));
        }
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(refuse(format!(
                "the review confirmed the audiences {audiences:?}, not ours"
            )));
        }
        let user = status.user.unwrap_or_default();
        let Some(name) = user.username.filter(|u| !u.is_empty()) else {
            return Err(refuse("the review named no user".into()));
        };
        let node = user
            .extra
            .unwrap_or_default()
            .remove(NODE_NAME_EXTRA)
            .and_then(|nodes| nodes.into_iter().next())
            .filter(|n| !n.is_empty());
        Ok(Reviewed { user: name, node })
    }

    /// A verdict still in force for `token`, if any.
    fn known(&self, token: &str) -> Option<Result<Reviewed, Refusal>> {
        let now = Instant::now();
        if let Some((reviewed, until)) = self.cache.lock().get(token)
            && now < *until
        {
            return Some(Ok(reviewed.clone()));
        }
        let refused = self.refused.lock();
        let (reason, until) = refused.get(token)?;
        (now < *until).then(|| {
            Err(Refusal::NotAuthenticated {
                audience: self.audience.clone(),
                reason: reason.clone(),
            })
        })
    }

    fn remember_refusal(&self, token: &str, refusal: &Refusal) {
        let Refusal::NotAuthenticated { reason, .. } = refusal else {
            return;
        };
        let now = Instant::now();
        let mut refused = self.refused.lock();
        if refused.len() >= MAX_REFUSED {
            refused.retain(|_, (_, until)| *until > now);
        }
        if refused.len() < MAX_REFUSED {
            refused.insert(token.into(), (reason.clone(), now + REFUSED_FOR));
        }
    }

    fn remember(&self, token: &str, reviewed: &Reviewed) {
        let now = Instant::now();
        // A token whose expiry cannot be read is not cached: it might expire any moment.
        let Some(left) =
            token_expiry(token).and_then(|exp| exp.duration_since(SystemTime::now()).ok())
        else {
            return;
        };
        let keep = left.min(self.cache_for);
        if keep.is_zero() {
            return;
        }
        let mut cache = self.cache.lock();
        // Only tokens that passed a review get here, so the map is bounded by the cluster's live
        // tokens; dropping the stale ones on each insert keeps it at those of the last minute.
        cache.retain(|_, (_, until)| *until > now);
        cache.insert(token.into(), (reviewed.clone(), now + keep));
    }
}

/// The `exp` claim of a JWT, read without checking anything (the API server did that).
fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// Unpadded base64url (RFC 4648 §5), as in JWTs.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(base64url_decode("aGk").unwrap(), b"hi");
        assert_eq!(base64url_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
        assert_eq!(base64url_decode("a+b"), None);
    }

    #[test]
    fn the_expiry_is_read_from_the_payload() {
        // {"exp":2000000000,"sub":"x"}
        let token = "e30.eyJleHAiOjIwMDAwMDAwMDAsInN1YiI6IngifQ.sig";
        assert_eq!(
            token_expiry(token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(token_expiry("opaque-token"), None);
        assert_eq!(token_expiry("a.!!!.c"), None);
    }
}
