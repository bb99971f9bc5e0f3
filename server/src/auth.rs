//! API keys and roles.
//!
//! With `[auth] enabled` (or `quiverd --auth`), every RPC except health and reflection needs a
//! key, sent as `authorization: Bearer <key>` or `x-api-key: <key>`. Missing or unknown keys
//! get UNAUTHENTICATED; a key whose role or collection list does not allow the call gets
//! PERMISSION_DENIED.
//!
//! - **Keys** look like `qk_<id>_<secret>`. The id (8 random bytes, hex) finds the record; the
//!   secret (32 random bytes, hex) is stored only as its SHA-256, compared in constant time.
//!   Records are replicated service records (`repl/auth/key/<id>` in the `app` keyspace,
//!   written through the replicated log, carried by snapshots).
//! - **The bootstrap admin key** comes from `QUIVER_ADMIN_KEY` and is never stored.
//! - **Roles:** `read` (queries), `write` (queries, point and document writes, creating
//!   collections and declaring fields), `admin` (everything). A key may be limited to a list of
//!   collections; handlers check that with [`check_collection`].
//! - **The audit trail:** every write and admin call is logged (target `quiver::audit`: key id,
//!   role, method, status) and counted in `quiver_rpc_audited_total`.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quiver_proto::v1 as pb;
use quiver_storage::{AuxSpace, AuxStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::cluster::command::REPLICATED_PREFIX;
use crate::error::ApiError;

/// Environment variable holding the bootstrap admin key.
pub const ADMIN_KEY_ENV: &str = "QUIVER_ADMIN_KEY";
const KEY_PREFIX: &str = "auth/key/";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Queries.
    Read,
    /// Queries and data writes.
    Write,
    /// Everything.
    Admin,
}

impl Role {
    /// From the API enum.
    pub fn from_proto(r: i32) -> Option<Role> {
        match pb::Role::try_from(r).ok()? {
            pb::Role::Read => Some(Role::Read),
            pb::Role::Write => Some(Role::Write),
            pb::Role::Admin => Some(Role::Admin),
        }
    }

    /// To the API enum.
    pub fn proto(self) -> i32 {
        (match self {
            Role::Read => pb::Role::Read,
            Role::Write => pb::Role::Write,
            Role::Admin => pb::Role::Admin,
        }) as i32
    }

    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// A stored key.
/// Where a whole restore keeps the keys in force until its import is done (in the data dir).
pub const PENDING_KEYS: &str = "restore-keys.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// Label.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Collections it may touch (empty: all).
    pub collections: Vec<String>,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Creation time.
    pub created_ms: u64,
    /// Revoked keys are refused.
    pub revoked: bool,
}

impl KeyRecord {
    /// As the API shows it (never the hash).
    pub fn info(&self) -> pb::KeyInfo {
        pb::KeyInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role.proto(),
            collections: self.collections.clone(),
            created_ms: self.created_ms,
            revoked: self.revoked,
        }
    }
}

/// Who is calling (in each request's extensions when auth is on).
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Key id (`bootstrap` for the admin key from the environment).
    pub key_id: String,
    /// Role.
    pub role: Role,
    /// Allowed collections (empty: all).
    pub collections: Vec<String>,
}

impl Principal {
    /// Whether it may touch `collection`.
    pub fn allows(&self, collection: &str) -> bool {
        self.collections.is_empty() || self.collections.iter().any(|c| c == collection)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// A new key: (the secret to show once, its record).
pub fn new_key(name: String, role: Role, collections: Vec<String>) -> (String, KeyRecord) {
    let id = hex(&rand::random::<[u8; 8]>());
    let secret = hex(&rand::random::<[u8; 32]>());
    let record = KeyRecord {
        id: id.clone(),
        name,
        role,
        collections,
        secret_sha256: sha256_hex(&secret),
        created_ms: quiver_rag::now_ms(),
        revoked: false,
    };
    (format!("qk_{id}_{secret}"), record)
}

/// The record's key in the `app` keyspace (after the replicated prefix).
pub fn record_key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Reads key records.
#[derive(Debug, Clone)]
pub struct KeyStore {
    store: AuxStore,
}

impl KeyStore {
    /// Over the engine's `app` keyspace.
    pub fn new(store: AuxStore) -> Self {
        KeyStore { store }
    }

    /// One record.
    pub fn get(&self, id: &str) -> Result<Option<KeyRecord>, quiver_storage::Error> {
        let k = format!("{REPLICATED_PREFIX}{}", record_key(id));
        Ok(self
            .store
            .get(AuxSpace::App, k.as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Saves `records` (the keys in force) in `root` before a whole restore imports, so that a
    /// crash between the import and [`KeyStore::replace_all`] cannot leave the snapshot's keys
    /// in force: [`KeyStore::finish_restore`] applies them at the next start. Written aside,
    /// fsynced and renamed into place.
    pub fn save_for_restore(
        root: &std::path::Path,
        records: &[KeyRecord],
    ) -> Result<(), quiver_storage::Error> {
        use std::io::Write as _;
        let body =
            serde_json::to_vec(records).map_err(|e| quiver_storage::Error::Meta(e.to_string()))?;
        let tmp = root.join(format!("{PENDING_KEYS}.tmp"));
        let mut f = fs_err::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs_err::rename(&tmp, root.join(PENDING_KEYS))?;
        fs_err::File::open(root)?.sync_all()?;
        Ok(())
    }

    /// Whether a whole restore saved keys that are not yet put back.
    pub fn restore_pending(root: &std::path::Path) -> bool {
        root.join(PENDING_KEYS).exists()
    }

    /// Puts back the keys a whole restore saved (see [`KeyStore::save_for_restore`]) and removes
    /// the file; `false` when there is none. Called after the import, and at start-up.
    pub fn finish_restore(&self, root: &std::path::Path) -> Result<bool, quiver_storage::Error> {
        let path = root.join(PENDING_KEYS);
        let body = match fs_err::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let records: Vec<KeyRecord> =
            serde_json::from_slice(&body).map_err(|e| quiver_storage::Error::Corrupt {
                path: path.clone(),
                offset: e.column() as u64,
                detail: format!("the keys saved by a restore: {e}"),
            })?;
        self.replace_all(&records)?;
        fs_err::remove_file(&path)?;
        fs_err::File::open(root)?.sync_all()?;
        Ok(true)
    }

    /// Replaces every stored key record with `records`, in one synced batch. A whole-snapshot
    /// restore puts back the keys as they were before it: keys are not part of the restored
    /// state, so a restore can neither revive a revoked key nor drop a live one.
    pub fn replace_all(&self, records: &[KeyRecord]) -> Result<(), quiver_storage::Error> {
        let prefix = format!("{REPLICATED_PREFIX}{KEY_PREFIX}");
        let mut end = prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut ops = vec![quiver_storage::engine::AuxOp::DeleteRange(
            prefix.into_bytes(),
            end,
        )];
        for r in records {
            let v =
                serde_json::to_vec(r).map_err(|e| quiver_storage::Error::Meta(e.to_string()))?;
            ops.push(quiver_storage::engine::AuxOp::Put(
                format!("{REPLICATED_PREFIX}{}", record_key(&r.id)).into_bytes(),
                v,
            ));
        }
        self.store.batch(AuxSpace::App, ops, true)
    }

    /// Every record.
    pub fn list(&self) -> Result<Vec<KeyRecord>, quiver_storage::Error> {
        let prefix = format!("{REPLICATED_PREFIX}{KEY_PREFIX}");
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(
                AuxSpace::App,
                prefix.as_bytes(),
                after.as_deref(),
                500,
                false,
            )?;
            out.extend(
                page.iter()
                    .filter_map(|(_, v)| serde_json::from_slice::<KeyRecord>(v).ok()),
            );
            match page.last() {
                Some((k, _)) if page.len() == 500 => after = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }
}

/// Authentication state shared by the layer.
#[derive(Debug)]
pub struct Auth {
    admin_key: Option<crate::secret::Secret>,
    keys: std::sync::OnceLock<KeyStore>,
}

impl Auth {
    /// Auth with an optional bootstrap admin key.
    pub fn new(admin_key: Option<crate::secret::Secret>) -> Arc<Auth> {
        Arc::new(Auth {
            admin_key,
            keys: std::sync::OnceLock::new(),
        })
    }

    /// Publishes the key store once storage is open.
    pub fn set_store(&self, keys: KeyStore) {
        let _ = self.keys.set(keys);
    }

    /// Checks a presented key.
    pub fn verify(&self, token: &str) -> Result<Principal, Status> {
        if let Some(admin) = &self.admin_key
            && bool::from(token.as_bytes().ct_eq(admin.expose().as_bytes()))
        {
            return Ok(Principal {
                key_id: "bootstrap".into(),
                role: Role::Admin,
                collections: Vec::new(),
            });
        }
        let bad = || Status::from(ApiError::Unauthenticated("invalid API key".into()));
        let rest = token.strip_prefix("qk_").ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let store = self
            .keys
            .get()
            .ok_or_else(|| ApiError::Unavailable("storage is still opening".into()))?;
        let rec = store
            .get(id)
            .map_err(|e| ApiError::Internal(format!("key store: {e}")))?
            .ok_or_else(bad)?;
        let given = sha256_hex(secret);
        if !bool::from(given.as_bytes().ct_eq(rec.secret_sha256.as_bytes())) {
            return Err(bad());
        }
        if rec.revoked {
            return Err(ApiError::Unauthenticated(format!("API key {id} is revoked")).into());
        }
        Ok(Principal {
            key_id: rec.id,
            role: rec.role,
            collections: rec.collections,
        })
    }
}

/// The role a method needs; `None` = open (health, reflection).
pub fn required_role(path: &str) -> Option<Role> {
    // Anything unparseable needs admin (default deny).
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Some(Role::Admin);
    };
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => None,
        "quiver.v1.Search" => Some(Role::Read),
        "quiver.v1.Collections" => Some(match method {
            "Get" | "List" => Role::Read,
            "Create" | "DeclareFields" | "Flush" | "Compact" => Role::Write,
            _ => Role::Admin,
        }),
        "quiver.v1.Points" => Some(match method {
            "Get" | "Count" | "Scroll" => Role::Read,
            "Upsert" | "UpsertStream" | "Delete" | "UpdatePayload" => Role::Write,
            _ => Role::Admin,
        }),
        "quiver.v1.Rag" => Some(match method {
            "Ask" | "AskStream" | "GetRagConfig" => Role::Read,
            "IngestDocuments" | "DeleteDocument" => Role::Write,
            _ => Role::Admin,
        }),
        "quiver.v1.Cluster" => Some(match method {
            "Status" => Role::Read,
            _ => Role::Admin,
        }),
        // Keys, and anything not listed: admin.
        _ => Some(Role::Admin),
    }
}

fn token<B>(req: &http::Request<B>) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) {
        return v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim);
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Decides one HTTP request: `Ok(Some(p))` authenticated, `Ok(None)` open method.
pub fn authorize<B>(auth: &Auth, req: &http::Request<B>) -> Result<Option<Principal>, Status> {
    let path = req.uri().path();
    let Some(need) = required_role(path) else {
        return Ok(None);
    };
    let tok = token(req).ok_or_else(|| {
        ApiError::Unauthenticated(
            "an API key is required: send `authorization: Bearer <key>` (quiver --api-key or QUIVER_API_KEY)".into(),
        )
    })?;
    let p = auth.verify(tok)?;
    if p.role < need {
        return Err(ApiError::PermissionDenied(format!(
            "API key {} has role {}; {path} needs {}",
            p.key_id,
            p.role.name(),
            need.name()
        ))
        .into());
    }
    Ok(Some(p))
}

/// Refuses a call on `collection` by a key limited to other collections.
pub fn check_collection<T>(req: &Request<T>, collection: &str) -> Result<(), Status> {
    check_principal(req.extensions().get::<Principal>(), collection)
}

/// [`check_collection`] on an extracted principal (streams check every message).
pub fn check_principal(p: Option<&Principal>, collection: &str) -> Result<(), Status> {
    match p {
        Some(p) if !p.allows(collection) => Err(ApiError::PermissionDenied(format!(
            "API key {} may not access collection {collection:?}",
            p.key_id
        ))
        .into()),
        Some(_) | None => Ok(()),
    }
}

/// Refuses a key limited to some collections on an operation that spans the whole server
/// (whole snapshots, listing every key).
pub fn check_unscoped<T>(req: &Request<T>, what: &str) -> Result<(), Status> {
    match req.extensions().get::<Principal>() {
        Some(p) if !p.collections.is_empty() => Err(ApiError::PermissionDenied(format!(
            "API key {} is limited to collections {:?}; {what} needs a key for all collections",
            p.key_id, p.collections
        ))
        .into()),
        Some(_) | None => Ok(()),
    }
}

/// A listing filtered by `collection` (empty = every collection): a key limited to some
/// collections must name one of them.
pub fn check_listing<T>(req: &Request<T>, collection: &str) -> Result<(), Status> {
    match req.extensions().get::<Principal>() {
        Some(p) if !p.collections.is_empty() && collection.is_empty() => {
            Err(ApiError::PermissionDenied(format!(
                "API key {} is limited to collections {:?}: set collection to one of them",
                p.key_id, p.collections
            ))
            .into())
        }
        Some(_) | None => check_collection(req, collection),
    }
}

/// Whether a key limited to `scope` (empty: all) may manage a key for `collections`
/// (empty: all): only keys no wider than itself.
pub fn within_scope(scope: &[String], collections: &[String]) -> bool {
    scope.is_empty() || (!collections.is_empty() && collections.iter().all(|c| scope.contains(c)))
}

/// Per-caller request budgets: a token bucket (rate, burst) and an in-flight cap.
#[derive(Debug)]
pub struct Limiter {
    limits: crate::config::LimitsConfig,
    callers: std::sync::Mutex<std::collections::HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    in_flight: u32,
}

/// Releases an in-flight slot when the call's response is ready.
pub struct Slot {
    limiter: Arc<Limiter>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .limiter
            .callers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(b) = m.get_mut(&self.caller) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

fn exhausted(message: String, retry_after: std::time::Duration) -> Status {
    metrics::counter!("quiver_rate_limited_total").increment(1);
    ApiError::RateLimited {
        message,
        retry_after,
    }
    .into()
}

impl Limiter {
    /// `None` when no limit is configured.
    pub fn new(limits: crate::config::LimitsConfig) -> Option<Arc<Limiter>> {
        (limits.requests_per_second > 0.0 || limits.max_concurrent > 0).then(|| {
            Arc::new(Limiter {
                limits,
                callers: Default::default(),
            })
        })
    }

    /// Takes a token and an in-flight slot for `caller`, or says when to retry.
    pub fn admit(self: &Arc<Self>, caller: &str) -> Result<Slot, Status> {
        let l = self.limits;
        let burst = if l.burst > 0.0 {
            l.burst
        } else {
            l.requests_per_second.max(1.0)
        };
        let mut m = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let b = m.entry(caller.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
            in_flight: 0,
        });
        if l.max_concurrent > 0 && b.in_flight >= l.max_concurrent {
            return Err(exhausted(
                format!(
                    "{caller}: {} requests already in flight (limits.max_concurrent)",
                    b.in_flight
                ),
                std::time::Duration::from_millis(50),
            ));
        }
        if l.requests_per_second > 0.0 {
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * l.requests_per_second)
                .min(burst);
            b.at = now;
            if b.tokens < 1.0 {
                let wait = (1.0 - b.tokens) / l.requests_per_second;
                return Err(exhausted(
                    format!(
                        "{caller}: over {} requests per second (limits.requests_per_second); retry in {} ms",
                        l.requests_per_second,
                        (wait * 1000.0).ceil()
                    ),
                    std::time::Duration::from_secs_f64(wait),
                ));
            }
            b.tokens -= 1.0;
        }
        b.in_flight += 1;
        Ok(Slot {
            limiter: Arc::clone(self),
            caller: caller.to_owned(),
        })
    }
}

/// Failed authentications per peer address: a bucket of [`FailureLimiter::BURST`] failures
/// refilled at [`FailureLimiter::PER_SECOND`]; an address whose bucket is empty is refused
/// (RESOURCE_EXHAUSTED) before its credentials are even looked at, so keys and the cluster
/// secret cannot be guessed at line rate. At most [`FailureLimiter::MAX_PEERS`] addresses are
/// tracked; beyond that the ones in good standing are forgotten first.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    peers: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

impl FailureLimiter {
    /// Failures allowed in a burst.
    pub const BURST: f64 = 20.0;
    /// Failures forgiven per second.
    pub const PER_SECOND: f64 = 1.0;
    /// Addresses tracked at most.
    pub const MAX_PEERS: usize = 65_536;

    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    fn level(entry: &(f64, std::time::Instant), now: std::time::Instant) -> f64 {
        (entry.0 + now.duration_since(entry.1).as_secs_f64() * Self::PER_SECOND).min(Self::BURST)
    }

    /// Refuses an address that failed too often lately (`None`: unknown address, never
    /// refused).
    pub fn check(&self, peer: Option<std::net::IpAddr>) -> Result<(), Status> {
        let Some(ip) = peer else { return Ok(()) };
        let m = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = m.get(&ip) else { return Ok(()) };
        let level = Self::level(e, std::time::Instant::now());
        if level >= 1.0 {
            return Ok(());
        }
        let wait = std::time::Duration::from_secs_f64((1.0 - level) / Self::PER_SECOND);
        metrics::counter!("quiver_auth_failures_throttled_total").increment(1);
        Err(exhausted(
            format!(
                "too many failed authentications from {ip}; retry in {} ms",
                wait.as_millis().max(1)
            ),
            wait,
        ))
    }

    /// Records a failed authentication from `peer`.
    pub fn failed(&self, peer: Option<std::net::IpAddr>) {
        let Some(ip) = peer else { return };
        let now = std::time::Instant::now();
        let mut m = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= Self::MAX_PEERS && !m.contains_key(&ip) {
            m.retain(|_, e| Self::level(e, now) < Self::BURST);
            if m.len() >= Self::MAX_PEERS {
                m.clear();
            }
        }
        let e = m.entry(ip).or_insert((Self::BURST, now));
        *e = ((Self::level(e, now) - 1.0).max(0.0), now);
    }
}

/// The tower layer enforcing [`authorize`] and the [`Limiter`] in front of every service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Auth>>,
    limiter: Option<Arc<Limiter>>,
    failures: Arc<FailureLimiter>,
}

impl AuthLayer {
    /// `auth: None`: auth off (every request passes); `limiter: None`: no budgets.
    pub fn new(auth: Option<Arc<Auth>>, limiter: Option<Arc<Limiter>>) -> Self {
        AuthLayer {
            auth,
            limiter,
            failures: Arc::new(FailureLimiter::new()),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
            limiter: self.limiter.clone(),
            failures: Arc::clone(&self.failures),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Auth>>,
    limiter: Option<Arc<Limiter>>,
    failures: Arc<FailureLimiter>,
}

/// The caller's IP address, from the connection (plain or TLS).
fn peer_ip<B>(req: &http::Request<B>) -> Option<std::net::IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map(|a| a.ip())
}

type BoxFut<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// Every method the server serves, from the API's own descriptors: metric labels take only
/// these values, so random paths cannot mint new series.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message;
        let mut out = std::collections::HashSet::new();
        for set in [
            quiver_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(fds) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for f in &fds.file {
                for svc in &f.service {
                    for m in &svc.method {
                        out.insert(format!("/{}.{}/{}", f.package(), svc.name(), m.name()));
                    }
                }
            }
        }
        for v in ["v1", "v1alpha"] {
            out.insert(format!(
                "/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo"
            ));
        }
        out
    });

/// The metric label of a request path: the path itself for a served method, else `unknown`.
pub fn method_label(path: &str) -> &str {
    if KNOWN_METHODS.contains(path) {
        path
    } else {
        "unknown"
    }
}

/// Counts an answered call by method and status, and its latency by method (for streams:
/// until the response headers).
fn observe(method: &str, code: &str, started: std::time::Instant) {
    let method = method_label(method);
    metrics::counter!("quiver_rpc_requests_total", "method" => method.to_owned(), "code" => code.to_owned()).increment(1);
    metrics::histogram!("quiver_rpc_duration_seconds", "method" => method.to_owned())
        .record(started.elapsed().as_secs_f64());
}

/// A response body that keeps the caller's in-flight slot until the body ends, so a stream
/// (`AskStream`, `UpsertStream`, snapshot downloads) counts against `max_concurrent` for its
/// whole life, not just until its headers.
struct Held {
    inner: tonic::body::Body,
    _slot: Option<Slot>,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn hold(
    resp: http::Response<tonic::body::Body>,
    slot: Option<Slot>,
) -> http::Response<tonic::body::Body> {
    match slot {
        None => resp,
        Some(slot) => resp.map(|inner| {
            tonic::body::Body::new(Held {
                inner,
                _slot: Some(slot),
            })
        }),
    }
}

fn code_of(resp: &http::Response<tonic::body::Body>) -> String {
    match resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        Some(c) => format!("{:?}", tonic::Code::from_bytes(c.as_bytes())),
        None => "Ok".to_owned(),
    }
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFut<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let started = std::time::Instant::now();
        let path = req.uri().path().to_owned();
        let peer = peer_ip(&req);
        let decided = match &self.auth {
            // Addresses that failed too often are refused before their key is looked at.
            Some(auth) if required_role(&path).is_some() => self
                .failures
                .check(peer)
                .and_then(|()| authorize(auth, &req)),
            Some(auth) => authorize(auth, &req),
            None => Ok(None),
        };
        // Budgets, per key (all callers together without auth); health is never limited.
        let slot = match (&self.limiter, &decided) {
            (Some(l), Ok(p)) if required_role(&path).is_some() => {
                let caller = p.as_ref().map_or("anonymous", |p| p.key_id.as_str());
                match l.admit(caller) {
                    Ok(s) => Some(s),
                    Err(status) => {
                        observe(&path, &format!("{:?}", status.code()), started);
                        return Box::pin(std::future::ready(Ok(status.into_http())));
                    }
                }
            }
            _ => None,
        };
        if self.auth.is_none() {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                let r = fut.await;
                if let Ok(resp) = &r {
                    observe(&path, &code_of(resp), started);
                }
                r.map(|resp| hold(resp, slot))
            });
        }
        if let Err(status) = &decided
            && status.code() == tonic::Code::Unauthenticated
        {
            self.failures.failed(peer);
        }
        match decided {
            Err(status) => {
                metrics::counter!("quiver_auth_refused_total", "code" => format!("{:?}", status.code())).increment(1);
                tracing::warn!(target: "quiver::audit", method = %path, code = ?status.code(), reason = %status.message(), "refused");
                observe(&path, &format!("{:?}", status.code()), started);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
            Ok(principal) => {
                let audited = required_role(&path)
                    .is_some_and(|r| r >= Role::Write)
                    .then(|| principal.clone())
                    .flatten();
                if let Some(p) = principal {
                    req.extensions_mut().insert(p);
                }
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let resp = fut.await?;
                    observe(&path, &code_of(&resp), started);
                    if let Some(p) = audited {
                        let status = resp
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("0 (streamed)")
                            .to_owned();
                        metrics::counter!("quiver_rpc_audited_total", "role" => p.role.name())
                            .increment(1);
                        tracing::info!(target: "quiver::audit", key = %p.key_id, role = p.role.name(), method = %path, grpc_status = %status, "call");
                    }
                    Ok(hold(resp, slot))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_method() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(required_role("/quiver.v1.Search/Search"), Some(Role::Read));
        assert_eq!(required_role("/quiver.v1.Points/Upsert"), Some(Role::Write));
        assert_eq!(required_role("/quiver.v1.Points/Count"), Some(Role::Read));
        assert_eq!(
            required_role("/quiver.v1.Collections/Delete"),
            Some(Role::Admin)
        );
        assert_eq!(required_role("/quiver.v1.Keys/Create"), Some(Role::Admin));
        assert_eq!(required_role("/quiver.v1.Unknown/X"), Some(Role::Admin));
        assert_eq!(required_role("garbage"), Some(Role::Admin));
    }

    #[test]
    fn keys_verify_in_constant_time_and_only_when_valid() {
        let dir = tempfile::tempdir().unwrap();
        let engine = quiver_storage::Engine::open(dir.path(), Default::default()).unwrap();
        let (secret, rec) = new_key("ci".into(), Role::Write, vec!["a".into()]);
        engine
            .aux()
            .put(
                AuxSpace::App,
                vec![(
                    format!("{REPLICATED_PREFIX}{}", record_key(&rec.id)).into_bytes(),
                    serde_json::to_vec(&rec).unwrap(),
                )],
                true,
            )
            .unwrap();
        let auth = Auth::new(Some(crate::secret::Secret::new("boot-admin")));
        auth.set_store(KeyStore::new(engine.aux()));
        let p = auth.verify(&secret).unwrap();
        assert_eq!(p.role, Role::Write);
        assert!(p.allows("a") && !p.allows("b"));
        assert_eq!(auth.verify("boot-admin").unwrap().role, Role::Admin);
        let mut wrong = secret.clone();
        let last = wrong.pop();
        wrong.push(if last == Some('0') { '1' } else { '0' });
        assert_eq!(
            auth.verify(&wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.verify("qk_zz_1").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.verify("").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(
            !rec.secret_sha256.contains(&secret[20..40]),
            "only the hash is stored"
        );
    }

    /// The keys saved before a whole restore's import win over the snapshot's, also when the
    /// server stops between the import and putting them back.
    #[test]
    fn keys_saved_for_a_restore_are_put_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let engine = quiver_storage::Engine::open(dir.path(), Default::default()).unwrap();
        let store = KeyStore::new(engine.aux());
        let (_, live) = new_key("live".into(), Role::Read, vec![]);
        let (_, revoked) = new_key("revoked".into(), Role::Admin, vec![]);
        store.replace_all(std::slice::from_ref(&live)).unwrap();
        KeyStore::save_for_restore(dir.path(), &store.list().unwrap()).unwrap();
        // The import brings the snapshot's keys (here: a key revoked since).
        store.replace_all(std::slice::from_ref(&revoked)).unwrap();
        drop(store);
        drop(engine);
        // Start-up after a crash at this point.
        let engine = quiver_storage::Engine::open(dir.path(), Default::default()).unwrap();
        let store = KeyStore::new(engine.aux());
        assert!(store.finish_restore(dir.path()).unwrap());
        assert_eq!(store.list().unwrap(), vec![live]);
        assert!(!dir.path().join(PENDING_KEYS).exists());
        assert!(!store.finish_restore(dir.path()).unwrap(), "only once");
        // A damaged file is reported, not ignored.
        std::fs::write(dir.path().join(PENDING_KEYS), b"[{").unwrap();
        assert!(store.finish_restore(dir.path()).is_err());
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;
    use crate::config::LimitsConfig;

    #[test]
    fn in_flight_cap_and_token_bucket() {
        let l = Limiter::new(LimitsConfig {
            max_concurrent: 1,
            ..LimitsConfig::default()
        })
        .unwrap();
        let a = l.admit("k1").unwrap();
        let e = l.admit("k1").err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(l.admit("k2").is_ok(), "per caller");
        drop(a);
        assert!(l.admit("k1").is_ok(), "released with the response");

        let l = Limiter::new(LimitsConfig {
            requests_per_second: 2.0,
            burst: 3.0,
            ..LimitsConfig::default()
        })
        .unwrap();
        for _ in 0..3 {
            drop(l.admit("k").unwrap());
        }
        let e = l.admit("k").err().unwrap();
        use tonic_types::StatusExt;
        let retry = e.get_details_retry_info().unwrap().retry_delay.unwrap();
        assert!(
            retry > std::time::Duration::ZERO && retry <= std::time::Duration::from_millis(500)
        );
        std::thread::sleep(std::time::Duration::from_millis(550));
        assert!(l.admit("k").is_ok(), "refilled at 2/s");
        assert!(Limiter::new(LimitsConfig::default()).is_none());
    }
}
