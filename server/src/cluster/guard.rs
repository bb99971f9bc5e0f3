//! Authentication of the cluster port with a shared secret: every internal request carries an
//! HMAC-SHA256 over its method, a timestamp and its body, and every answer an HMAC bound to the
//! request's tag, so neither can be forged, altered, replayed later or answered by an impostor.
//! Mutual TLS with pinned peer names ([`crate::tls`]) is the other protection; both can be on.
//!
//! Header `x-quiver-cluster-mac: v1.<unix ms>.<hex tag>`, where
//!
//! | part | request | response |
//! |---|---|---|
//! | MAC input | `quiver-cluster-v1 \0 req \0 path \0 ms \0 body` | `quiver-cluster-v1 \0 resp \0 path \0 ms \0 request tag \0 body` |
//!
//! A request is accepted when its timestamp is within [`WINDOW`] of this node's clock and its
//! tag was not seen before in that window (a bounded replay cache). Failed checks are counted
//! per peer address by the caller's [`crate::auth::FailureLimiter`].
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use quiver_proto::internal::RaftBytes;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

/// The metadata key.
pub const HEADER: &str = "x-quiver-cluster-mac";
/// How far a request's timestamp may be from this node's clock.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Shortest secret accepted (bytes).
pub const MIN_SECRET: usize = 32;
/// Replay-cache entries kept at most (a node's honest peers send far fewer per window).
const MAX_SEEN: usize = 1 << 20;

type Tag = [u8; 32];

/// The shared cluster secret, with the replay cache of requests it accepted.
pub struct ClusterKey {
    key: Vec<u8>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    order: VecDeque<(Instant, Tag)>,
    tags: HashSet<Tag>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Tag> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unauthenticated(why: &str) -> Status {
    crate::error::ApiError::Unauthenticated(format!("cluster port: {why}")).into()
}

impl ClusterKey {
    /// A key from the secret's bytes (surrounding whitespace is ignored, so a file written
    /// with a trailing newline works).
    pub fn new(secret: &[u8]) -> Result<ClusterKey, String> {
        let trimmed = secret.trim_ascii();
        if trimmed.len() < MIN_SECRET {
            return Err(format!(
                "the cluster secret is {} bytes; at least {MIN_SECRET} are required (e.g. `openssl rand -hex 32`)",
                trimmed.len()
            ));
        }
        Ok(ClusterKey {
            key: trimmed.to_vec(),
            seen: Mutex::new(Seen::default()),
        })
    }

    fn mac(&self, parts: &[&[u8]]) -> Tag {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("invariant: HMAC takes a key of any length");
        m.update(b"quiver-cluster-v1");
        for p in parts {
            m.update(b"\0");
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    fn header(ms: u64, tag: &Tag) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        format!("v1.{ms}.{}", hex(tag))
            .parse()
            .expect("invariant: hex is valid metadata")
    }

    fn parse(meta: &tonic::metadata::MetadataMap) -> Result<(u64, Tag), Status> {
        let v = meta
            .get(HEADER)
            .ok_or_else(|| {
                unauthenticated("no cluster MAC (set the same [cluster] secret on every node)")
            })?
            .to_str()
            .map_err(|_| unauthenticated("malformed cluster MAC"))?;
        let mut it = v.splitn(3, '.');
        let (Some("v1"), Some(ms), Some(tag)) = (it.next(), it.next(), it.next()) else {
            return Err(unauthenticated("malformed cluster MAC"));
        };
        let ms = ms
            .parse::<u64>()
            .map_err(|_| unauthenticated("malformed cluster MAC timestamp"))?;
        let tag = unhex(tag).ok_or_else(|| unauthenticated("malformed cluster MAC"))?;
        Ok((ms, tag))
    }

    /// Signs an outgoing request; returns its tag (to check the answer with).
    pub fn sign_request(&self, path: &str, req: &mut Request<RaftBytes>) -> Tag {
        let ms = now_ms();
        let tag = self.mac(&[
            b"req",
            path.as_bytes(),
            ms.to_string().as_bytes(),
            &req.get_ref().data,
        ]);
        req.metadata_mut().insert(HEADER, Self::header(ms, &tag));
        tag
    }

    /// Checks an incoming request: the tag, the clock window, and that it was never seen.
    pub fn verify_request(&self, path: &str, req: &Request<RaftBytes>) -> Result<Tag, Status> {
        let (ms, tag) = Self::parse(req.metadata())?;
        let want = self.mac(&[
            b"req",
            path.as_bytes(),
            ms.to_string().as_bytes(),
            &req.get_ref().data,
        ]);
        if !bool::from(want.ct_eq(&tag)) {
            return Err(unauthenticated("wrong cluster MAC (a different secret?)"));
        }
        let skew = now_ms().abs_diff(ms);
        if skew > WINDOW.as_millis() as u64 {
            return Err(unauthenticated(&format!(
                "request timestamp is {skew} ms from this node's clock (limit {} s)",
                WINDOW.as_secs()
            )));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some((at, t)) = seen.order.front().copied() {
            if now.duration_since(at) <= WINDOW * 2 && seen.order.len() < MAX_SEEN {
                break;
            }
            seen.order.pop_front();
            seen.tags.remove(&t);
        }
        if !seen.tags.insert(tag) {
            return Err(unauthenticated("replayed request"));
        }
        seen.order.push_back((now, tag));
        Ok(tag)
    }

    /// Signs an answer to the request whose tag is `request`.
    pub fn sign_response(&self, path: &str, request: &Tag, resp: &mut Response<RaftBytes>) {
        let ms = now_ms();
        let tag = self.mac(&[
            b"resp",
            path.as_bytes(),
            ms.to_string().as_bytes(),
            request,
            &resp.get_ref().data,
        ]);
        resp.metadata_mut().insert(HEADER, Self::header(ms, &tag));
    }

    /// Checks the answer to our request `request`.
    pub fn verify_response(
        &self,
        path: &str,
        request: &Tag,
        resp: &Response<RaftBytes>,
    ) -> Result<(), Status> {
        let (ms, tag) = Self::parse(resp.metadata())?;
        let want = self.mac(&[
            b"resp",
            path.as_bytes(),
            ms.to_string().as_bytes(),
            request,
            &resp.get_ref().data,
        ]);
        if bool::from(want.ct_eq(&tag)) {
            Ok(())
        } else {
            Err(unauthenticated("the peer's answer has a wrong cluster MAC"))
        }
    }
}

/// Reads the secret: `QUIVER_CLUSTER_SECRET` if set, else the file (if a path is given).
pub fn load(file: &std::path::Path) -> Result<Option<ClusterKey>, String> {
    if let Ok(s) = std::env::var(SECRET_ENV)
        && !s.is_empty()
    {
        return ClusterKey::new(s.as_bytes())
            .map(Some)
            .map_err(|e| format!("{SECRET_ENV}: {e}"));
    }
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    ClusterKey::new(&bytes)
        .map(Some)
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// Environment variable holding the cluster secret (wins over `cluster.secret_file`).
pub const SECRET_ENV: &str = "QUIVER_CLUSTER_SECRET";

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/quiver.internal.v1.Raft/Vote";

    fn key(s: &str) -> ClusterKey {
        ClusterKey::new(s.repeat(40).as_bytes()).unwrap()
    }

    fn signed(k: &ClusterKey, body: &[u8]) -> (Request<RaftBytes>, Tag) {
        let mut r = Request::new(RaftBytes {
            data: body.to_vec(),
        });
        let t = k.sign_request(PATH, &mut r);
        (r, t)
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(ClusterKey::new(b"short\n").is_err());
        assert!(ClusterKey::new(&[b'x'; 32]).is_ok());
    }

    #[test]
    fn a_signed_request_passes_once() {
        let k = key("a");
        let (r, _) = signed(&k, b"hello");
        assert!(k.verify_request(PATH, &r).is_ok());
        let again = k.verify_request(PATH, &r).unwrap_err();
        assert!(again.message().contains("replayed"), "{again}");
    }

    #[test]
    fn forgeries_fail() {
        let k = key("a");
        // No header.
        let bare = Request::new(RaftBytes { data: vec![1] });
        assert_eq!(
            k.verify_request(PATH, &bare).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Another secret.
        let (r, _) = signed(&key("b"), b"x");
        assert!(k.verify_request(PATH, &r).is_err());
        // Altered body.
        let (mut r, _) = signed(&k, b"x");
        r.get_mut().data = b"y".to_vec();
        assert!(k.verify_request(PATH, &r).is_err());
        // Another method.
        let (r, _) = signed(&k, b"x");
        assert!(
            k.verify_request("/quiver.internal.v1.Raft/Forward", &r)
                .is_err()
        );
        // An old timestamp, correctly signed.
        let ms = now_ms() - 3 * WINDOW.as_millis() as u64;
        let tag = k.mac(&[b"req", PATH.as_bytes(), ms.to_string().as_bytes(), b"x"]);
        let mut r = Request::new(RaftBytes {
            data: b"x".to_vec(),
        });
        r.metadata_mut()
            .insert(HEADER, ClusterKey::header(ms, &tag));
        let e = k.verify_request(PATH, &r).unwrap_err();
        assert!(e.message().contains("clock"), "{e}");
    }

    #[test]
    fn answers_are_bound_to_their_request() {
        let k = key("a");
        let (_, t1) = signed(&k, b"one");
        let (_, t2) = signed(&k, b"two");
        let mut resp = Response::new(RaftBytes {
            data: b"ok".to_vec(),
        });
        k.sign_response(PATH, &t1, &mut resp);
        assert!(k.verify_response(PATH, &t1, &resp).is_ok());
        assert!(k.verify_response(PATH, &t2, &resp).is_err());
        assert!(key("b").verify_response(PATH, &t1, &resp).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", key("secret")).contains("secret"));
    }
}
