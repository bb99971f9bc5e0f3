//! Configuration: embedded defaults → TOML file → environment (`QUIVER__SECTION__KEY`) → CLI
//! flags, validated into [`Settings`] before anything is opened.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use quiver_storage::FsyncPolicy;
use serde::{Deserialize, Serialize};

/// The configuration file's shape (every field has a default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[rag]`
    pub rag: quiver_rag::Settings,
    /// `[cluster]`
    pub cluster: ClusterConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[tls]`
    pub tls: TlsConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[compaction]`
    pub compaction: CompactionConfig,
}

/// `[compaction]` section: the background compactor and the budget of background work.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Run the compactor (manual `Compact` calls work either way).
    pub enabled: bool,
    /// Seconds between checks of every collection.
    pub interval_secs: u64,
    /// A sealed segment whose deleted or overwritten rows reach this fraction is rewritten.
    pub min_dead_fraction: f64,
    /// Disk traffic of a compaction (read and written), MiB per second; 0 = unlimited.
    pub io_mb_per_sec: f64,
    /// Threads for background work (compaction and index builds); 0 = half the cores.
    pub threads: u32,
    /// Tiered merging: sealed segments are merged, `merge_factor` of one size tier at a time,
    /// into segments of up to this many live rows, each with its own IVF-PQ index, so that a
    /// search probes a few large indexes rather than one per sealed segment. 0 = off.
    pub merge_max_rows: u64,
    /// Tiered merging: segments of one tier merged into one (at least 2).
    pub merge_factor: u32,
    /// Seconds without a write after which a collection's segments that the tiers leave
    /// under half of `merge_max_rows` are merged together, whatever their tier, so a
    /// collection that stops growing is searched through as few indexes as its size allows.
    /// 0 = never.
    pub merge_when_idle_secs: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        use quiver_storage::collection::{
            DEFAULT_MERGE_FACTOR, DEFAULT_MERGE_MAX_ROWS, DEFAULT_MERGE_WHEN_IDLE,
        };
        CompactionConfig {
            enabled: true,
            interval_secs: 10,
            min_dead_fraction: 0.2,
            io_mb_per_sec: 64.0,
            threads: 0,
            merge_max_rows: DEFAULT_MERGE_MAX_ROWS,
            merge_factor: DEFAULT_MERGE_FACTOR,
            merge_when_idle_secs: DEFAULT_MERGE_WHEN_IDLE.as_secs(),
        }
    }
}

/// The most rows a merged segment may be configured to hold (row numbers are 32-bit).
const MAX_MERGE_ROWS: u64 = 1 << 30;

impl CompactionConfig {
    fn validate(self) -> Result<CompactionConfig, ConfigError> {
        if !(self.min_dead_fraction > 0.0 && self.min_dead_fraction <= 1.0) {
            return Err(ConfigError(
                "compaction.min_dead_fraction must be in (0, 1]".into(),
            ));
        }
        if !(self.io_mb_per_sec.is_finite() && self.io_mb_per_sec >= 0.0) {
            return Err(ConfigError(
                "compaction.io_mb_per_sec must be finite and >= 0".into(),
            ));
        }
        if self.interval_secs == 0 {
            return Err(ConfigError("compaction.interval_secs must be >= 1".into()));
        }
        if self.merge_max_rows > MAX_MERGE_ROWS {
            return Err(ConfigError(format!(
                "compaction.merge_max_rows must be at most {MAX_MERGE_ROWS}, got {}",
                self.merge_max_rows
            )));
        }
        if self.merge_factor < 2 {
            return Err(ConfigError(format!(
                "compaction.merge_factor must be at least 2, got {}",
                self.merge_factor
            )));
        }
        Ok(self)
    }

    /// The storage options of a compaction run.
    pub fn options(&self, force: bool) -> quiver_storage::collection::CompactionOptions {
        quiver_storage::collection::CompactionOptions {
            min_dead_fraction: self.min_dead_fraction,
            io_bytes_per_sec: (self.io_mb_per_sec * 1024.0 * 1024.0) as u64,
            force,
            merge_max_rows: self.merge_max_rows,
            merge_factor: self.merge_factor,
            merge_when_idle: (self.merge_when_idle_secs > 0)
                .then(|| std::time::Duration::from_secs(self.merge_when_idle_secs)),
        }
    }
}

/// `[limits]` section: per-caller request budgets (per API key; all callers together when
/// auth is off). 0 = unlimited.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sustained requests per second per key.
    pub requests_per_second: f64,
    /// Requests a key may make at once above the sustained rate (default: one second's worth).
    pub burst: f64,
    /// Requests in flight per key.
    pub max_concurrent: u32,
    /// Rows (points, ids, documents, queries) in one request.
    pub max_batch_rows: u32,
    /// Collections the server holds at most (each holds files, maps and threads' work).
    pub max_collections: u32,
    /// Sealed segments one collection may hold before writes that add rows are refused (each
    /// segment holds two or three memory maps; the kernel allows 65,530 per process by
    /// default). 0 = no limit.
    pub max_segments_per_collection: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_second: 0.0,
            burst: 0.0,
            max_concurrent: 0,
            max_batch_rows: 100_000,
            max_collections: 1000,
            max_segments_per_collection: 4096,
        }
    }
}

/// `[tls]` section: TLS on the gRPC port (off unless `cert` is set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// CA bundle for client certificates (mutual TLS); empty = none required.
    pub client_ca: PathBuf,
    /// Seconds between checks of the files for changes (hot reload).
    pub reload_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            reload_secs: 5,
        }
    }
}

/// `[auth]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require an API key on every RPC except health (the bootstrap admin key comes from
    /// `QUIVER_ADMIN_KEY`).
    pub enabled: bool,
}

/// `[cluster]` section: replication (off unless `listen` is set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id: a positive integer, or `auto` = StatefulSet pod ordinal + 1 from the
    /// hostname (`quiver-2` → 3).
    #[serde(deserialize_with = "string_or_int")]
    pub node_id: String,
    /// Node-to-node gRPC listen address (`HOST:PORT`); empty = a single node, no replication.
    pub listen: String,
    /// Every voter at bootstrap, by cluster address: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`.
    pub peers: String,
    /// `SERVICE:REPLICAS`: derive `peers` from a StatefulSet's headless service instead:
    /// `{id} = {pod}-{ordinal}.{SERVICE}:{listen port}` for every ordinal below REPLICAS.
    pub statefulset: String,
    /// Leader heartbeat, milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout, milliseconds: a follower that hears no leader for this long (plus a
    /// random part up to half of it) stands for election. A leader's lease lasts 1.5× this, so
    /// a dead leader is replaced after about 2.5–3× this.
    pub election_timeout_ms: u64,
    /// Build a snapshot (and compact the log behind it) after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (so slightly lagging followers need no snapshot).
    pub keep_logs: u64,
    /// How long a write may wait for a leader and a quorum before UNAVAILABLE, milliseconds.
    pub write_timeout_ms: u64,
    /// Timeout of one node-to-node call, milliseconds.
    pub rpc_timeout_ms: u64,
    /// Readiness: a follower is ready when it is at most this many entries behind the leader.
    pub max_ready_lag: u64,
    /// Applied state is made durable (WALs synced, applied index recorded) at least this
    /// often, milliseconds; acknowledged writes are durable at once in the Raft log.
    pub durable_every_ms: u64,
    /// Node-to-node TLS: this node's certificate chain (PEM). With `tls_key` and `tls_ca`, the
    /// cluster port speaks mutual TLS: every node presents its certificate and verifies the
    /// other's against `tls_ca`. Reloaded when the files change (for new connections).
    pub tls_cert: PathBuf,
    /// This node's private key (PEM).
    pub tls_key: PathBuf,
    /// CA bundle the other nodes' certificates must chain to (PEM).
    pub tls_ca: PathBuf,
    /// Names (DNS or IP SANs) a peer's client certificate must carry to be a cluster member,
    /// beyond the hosts in `peers`/`statefulset`, which are always allowed. A certificate
    /// from the same CA without one of these names is refused, so API client certificates
    /// never make anyone a Raft peer.
    pub tls_peer_names: Vec<String>,
    /// File holding the shared cluster secret (at least 32 bytes); every internal request
    /// and answer is then authenticated with an HMAC over it. `QUIVER_CLUSTER_SECRET` wins.
    pub secret_file: PathBuf,
    /// Run with neither a secret nor TLS on the cluster port even though `[auth]` is on
    /// (anyone who reaches the port can then write anything). Refused at start otherwise.
    pub insecure: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            listen: String::new(),
            peers: String::new(),
            statefulset: String::new(),
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_every: 20_000,
            keep_logs: 1000,
            write_timeout_ms: 10_000,
            rpc_timeout_ms: 3000,
            max_ready_lag: 1000,
            durable_every_ms: 1000,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_ca: PathBuf::new(),
            tls_peer_names: Vec::new(),
            secret_file: PathBuf::new(),
            insecure: false,
        }
    }
}

/// Validated `[cluster]` settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node.
    pub node_id: u64,
    /// Node-to-node listen address.
    pub listen: SocketAddr,
    /// Bootstrap voters: id → cluster address.
    pub peers: std::collections::BTreeMap<u64, String>,
    /// The section as given.
    pub raw: ClusterConfig,
    /// Mutual TLS between nodes (`None`: plaintext).
    pub tls: Option<crate::tls::TlsFiles>,
    /// The shared secret authenticating every internal call (`None`: not set).
    pub key: Option<std::sync::Arc<crate::cluster::guard::ClusterKey>>,
}

impl ClusterSettings {
    /// Whether anything authenticates the cluster port.
    pub fn protected(&self) -> bool {
        self.tls.is_some() || self.key.is_some()
    }
}

/// Accepts `node_id = 2` and `node_id = "auto"` alike (environment values arrive typed).
fn string_or_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
}

/// `quiver-2` → (`quiver`, 2).
fn pod_ordinal(host: &str) -> Option<(&str, u64)> {
    let short = host.split('.').next()?;
    let (prefix, ord) = short.rsplit_once('-')?;
    Some((prefix, ord.parse().ok()?))
}

impl ClusterConfig {
    fn validate(&self) -> Result<Option<ClusterSettings>, ConfigError> {
        if self.listen.is_empty() {
            if !self.peers.is_empty() || !self.statefulset.is_empty() {
                return Err(ConfigError(
                    "cluster.peers/cluster.statefulset need cluster.listen (--cluster-listen)"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            ConfigError(format!(
                "cluster.listen = {:?}: {e} (expected HOST:PORT with an IP address)",
                self.listen
            ))
        })?;
        let node_id = match self.node_id.as_str() {
            "auto" => {
                let host = hostname().ok_or_else(|| {
                    ConfigError("cluster.node_id = \"auto\" but the hostname is unknown".into())
                })?;
                let (_, ord) = pod_ordinal(&host).ok_or_else(|| {
                    ConfigError(format!(
                        "cluster.node_id = \"auto\": hostname {host:?} does not end in -ORDINAL"
                    ))
                })?;
                ord + 1
            }
            "" => {
                return Err(ConfigError(
                    "cluster.node_id is required with cluster.listen (--node-id N or auto)".into(),
                ));
            }
            n => match n.parse::<u64>() {
                Ok(v) if v > 0 => v,
                _ => {
                    return Err(ConfigError(format!(
                        "cluster.node_id = {n:?}: expected a positive integer or auto"
                    )));
                }
            },
        };
        let mut peers = std::collections::BTreeMap::new();
        match (self.peers.is_empty(), self.statefulset.is_empty()) {
            (false, false) => {
                return Err(ConfigError(
                    "set cluster.peers or cluster.statefulset, not both".into(),
                ));
            }
            (false, true) => {
                for part in self
                    .peers
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                {
                    let (id, addr) = part.split_once('=').ok_or_else(|| {
                        ConfigError(format!("cluster.peers: {part:?} is not ID=HOST:PORT"))
                    })?;
                    let id: u64 = id.trim().parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                        ConfigError(format!("cluster.peers: {id:?} is not a positive node id"))
                    })?;
                    let addr = addr.trim();
                    if addr
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .is_none()
                    {
                        return Err(ConfigError(format!(
                            "cluster.peers: {addr:?} is not HOST:PORT"
                        )));
                    }
                    if peers.insert(id, addr.to_owned()).is_some() {
                        return Err(ConfigError(format!(
                            "cluster.peers: node {id} appears twice"
                        )));
                    }
                }
            }
            (true, false) => {
                let (service, replicas) = self.statefulset.split_once(':').ok_or_else(|| {
                    ConfigError("cluster.statefulset: expected SERVICE:REPLICAS".into())
                })?;
                let replicas: u64 = replicas.parse().ok().filter(|r| *r > 0).ok_or_else(|| {
                    ConfigError(format!(
                        "cluster.statefulset: {replicas:?} is not a replica count"
                    ))
                })?;
                let host = hostname().unwrap_or_default();
                let (prefix, _) = pod_ordinal(&host).ok_or_else(|| {
                    ConfigError(format!(
                        "cluster.statefulset: hostname {host:?} does not end in -ORDINAL"
                    ))
                })?;
                for ord in 0..replicas {
                    peers.insert(
                        ord + 1,
                        format!("{prefix}-{ord}.{service}:{}", listen.port()),
                    );
                }
            }
            (true, true) => {}
        }
        if !peers.is_empty() && !peers.contains_key(&node_id) {
            return Err(ConfigError(format!(
                "cluster.peers does not list this node ({node_id})"
            )));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms {
            return Err(ConfigError(
                "cluster.election_timeout_ms must be above cluster.heartbeat_ms (> 0)".into(),
            ));
        }
        if self.write_timeout_ms == 0 || self.rpc_timeout_ms == 0 || self.snapshot_every == 0 {
            return Err(ConfigError(
                "cluster.write_timeout_ms, rpc_timeout_ms and snapshot_every must be > 0".into(),
            ));
        }
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        let tls = match (set(&self.tls_cert), set(&self.tls_key), set(&self.tls_ca)) {
            (false, false, false) => None,
            (true, true, true) => Some(crate::tls::TlsFiles {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                client_ca: Some(self.tls_ca.clone()),
                reload: Duration::from_secs(5),
                peer_names: Some(
                    peers
                        .values()
                        .filter_map(|a| {
                            a.rsplit_once(':')
                                .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                        })
                        .chain(self.tls_peer_names.iter().cloned())
                        .collect(),
                ),
            }),
            _ => {
                return Err(ConfigError(
                    "cluster.tls_cert, cluster.tls_key and cluster.tls_ca are set together".into(),
                ));
            }
        };
        let key = crate::cluster::guard::load(&self.secret_file)
            .map_err(|e| ConfigError(format!("cluster.secret_file: {e}")))?
            .map(std::sync::Arc::new);
        Ok(Some(ClusterSettings {
            node_id,
            listen,
            peers,
            raw: self.clone(),
            tls,
            key,
        }))
    }
}

/// `[server]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address; port 0 picks a free port (printed on stdout).
    pub listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Largest gRPC message accepted, bytes (larger: RESOURCE_EXHAUSTED).
    pub max_message_bytes: usize,
    /// Largest payload of one point, bytes.
    pub max_payload_bytes: usize,
    /// Most results one search may ask for.
    pub max_k: u32,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_grace_secs: u64,
    /// Keep one CPU polling (at idle priority) for this many microseconds after each request,
    /// so a VM's vCPU is awake for the next one (see `idle_poll.rs`); 0 = off. Costs CPU time:
    /// not for pods with a CPU limit.
    pub idle_poll_us: u64,
    /// HTTP address for Prometheus `/metrics`, `/healthz` and `/readyz` (empty = off).
    pub metrics_listen: String,
}

/// `[storage]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `per_batch` (default), `interval` or `never`.
    pub fsync: String,
    /// Interval for `fsync = "interval"`, milliseconds.
    pub fsync_interval_ms: u64,
    /// Default rows in the in-memory segment before sealing (per collection overridable).
    pub segment_max_rows: u32,
    /// Share of one core the recall audit may use: sampled searches are measured exactly in
    /// the background so that `target_recall` follows the queries actually served (0 = off,
    /// at most 0.5).
    pub recall_audit_share: f64,
}

/// `[log]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// An `EnvFilter` directive, e.g. `info` or `quiver=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// OTLP/gRPC collector for trace export, e.g. `http://otel-collector:4317`; empty = off.
    pub otlp_endpoint: String,
    /// Fraction of traces exported (the caller's sampling decision wins when it sends one).
    pub otlp_sample_ratio: f64,
    /// `service.name` of the exported traces.
    pub service_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:6334".into(),
            data_dir: PathBuf::from("./quiver-data"),
            max_message_bytes: 64 << 20,
            max_payload_bytes: 1 << 20,
            max_k: 10_000,
            shutdown_grace_secs: 20,
            idle_poll_us: 0,
            metrics_listen: String::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: "per_batch".into(),
            fsync_interval_ms: 100,
            segment_max_rows: quiver_storage::DEFAULT_SEGMENT_MAX_ROWS,
            recall_audit_share: quiver_storage::index::audit::DEFAULT_SHARE,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
            otlp_endpoint: String::new(),
            otlp_sample_ratio: 1.0,
            service_name: "quiverd".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated settings: every value checked and parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Largest gRPC message.
    pub max_message_bytes: usize,
    /// Largest payload.
    pub max_payload_bytes: usize,
    /// Largest k.
    pub max_k: u32,
    /// Shutdown drain limit.
    pub shutdown_grace: Duration,
    /// Metrics/health HTTP address (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Idle-polling window (`None`: off).
    pub idle_poll: Option<Duration>,
    /// WAL fsync policy.
    pub fsync: FsyncPolicy,
    /// Default seal threshold.
    pub segment_max_rows: u32,
    /// Share of one core for the recall audit.
    pub recall_audit_share: f64,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// OTLP trace export (`None`: off).
    pub otlp: Option<OtlpSettings>,
    /// The `[rag]` section (validated).
    pub rag: quiver_rag::Settings,
    /// Replication (`None`: a single node).
    pub cluster: Option<ClusterSettings>,
    /// API keys required (`Some(bootstrap admin key, if set)`), or `None`: auth off.
    pub auth: Option<Option<crate::secret::Secret>>,
    /// TLS on the gRPC port (`None`: plaintext).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Request budgets.
    pub limits: LimitsConfig,
    /// The compactor and the background-work budget.
    pub compaction: CompactionConfig,
}

/// Where and how traces are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// Collector endpoint (OTLP/gRPC).
    pub endpoint: String,
    /// Fraction of root traces sampled.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service_name: String,
}

/// CLI values that override everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--metrics-listen`
    pub metrics_listen: Option<String>,
    /// `--node-id`
    pub node_id: Option<String>,
    /// `--cluster-listen`
    pub cluster_listen: Option<String>,
    /// `--peers`
    pub peers: Option<String>,
    /// `--statefulset`
    pub statefulset: Option<String>,
    /// `--auth`
    pub auth: bool,
}

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads defaults → `file` → environment → overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("QUIVER__").split("__"));
        let mut cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        if let Some(d) = &overrides.data_dir {
            cfg.server.data_dir = d.clone();
        }
        if let Some(l) = &overrides.listen {
            cfg.server.listen = l.clone();
        }
        if let Some(l) = &overrides.metrics_listen {
            cfg.server.metrics_listen = l.clone();
        }
        if overrides.auth {
            cfg.auth.enabled = true;
        }
        let c = &mut cfg.cluster;
        for (flag, field) in [
            (&overrides.node_id, &mut c.node_id),
            (&overrides.cluster_listen, &mut c.listen),
            (&overrides.peers, &mut c.peers),
            (&overrides.statefulset, &mut c.statefulset),
        ] {
            if let Some(v) = flag {
                field.clone_from(v);
            }
        }
        Ok(cfg)
    }

    /// Checks every value and parses it into [`Settings`].
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let listen = self.server.listen.parse().map_err(|e| {
            ConfigError(format!(
                "server.listen = {:?}: {e} (expected HOST:PORT with an IP address)",
                self.server.listen
            ))
        })?;
        let metrics_listen = match self.server.metrics_listen.as_str() {
            "" => None,
            a => Some(a.parse().map_err(|e| {
                ConfigError(format!(
                    "server.metrics_listen = {a:?}: {e} (expected HOST:PORT with an IP address)"
                ))
            })?),
        };
        if self.server.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("server.data_dir is empty".into()));
        }
        if self.server.max_message_bytes < 1024 {
            return Err(ConfigError(
                "server.max_message_bytes must be at least 1024".into(),
            ));
        }
        if self.server.idle_poll_us > 1_000_000 {
            return Err(ConfigError(
                "server.idle_poll_us must be at most 1000000 (one second)".into(),
            ));
        }
        if self.server.max_k == 0 {
            return Err(ConfigError("server.max_k must be at least 1".into()));
        }
        let fsync = match self.storage.fsync.as_str() {
            "per_batch" => FsyncPolicy::PerBatch,
            "never" => FsyncPolicy::Never,
            "interval" if self.storage.fsync_interval_ms > 0 => {
                FsyncPolicy::Interval(Duration::from_millis(self.storage.fsync_interval_ms))
            }
            "interval" => return Err(ConfigError("storage.fsync_interval_ms must be > 0".into())),
            other => {
                return Err(ConfigError(format!(
                    "storage.fsync = {other:?}: expected per_batch, interval or never"
                )));
            }
        };
        if !(16..=10_000_000).contains(&self.storage.segment_max_rows) {
            return Err(ConfigError(
                "storage.segment_max_rows must be between 16 and 10000000".into(),
            ));
        }
        let share = self.storage.recall_audit_share;
        if !(0.0..=quiver_storage::index::audit::MAX_SHARE).contains(&share) {
            return Err(ConfigError(format!(
                "storage.recall_audit_share must be in [0, {}], got {share}",
                quiver_storage::index::audit::MAX_SHARE
            )));
        }
        let log_format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError(format!(
                    "log.format = {other:?}: expected text or json"
                )));
            }
        };
        let settings = Settings {
            listen,
            data_dir: self.server.data_dir.clone(),
            max_message_bytes: self.server.max_message_bytes,
            max_payload_bytes: self.server.max_payload_bytes,
            max_k: self.server.max_k,
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_secs),
            metrics_listen,
            idle_poll: (self.server.idle_poll_us > 0)
                .then(|| Duration::from_micros(self.server.idle_poll_us)),
            fsync,
            segment_max_rows: self.storage.segment_max_rows,
            recall_audit_share: share,
            log_format,
            log_level: self.log.level.clone(),
            otlp: if self.log.otlp_endpoint.is_empty() {
                None
            } else {
                let e = &self.log.otlp_endpoint;
                if !(e.starts_with("http://") || e.starts_with("https://"))
                    || e.parse::<http::Uri>().is_err()
                {
                    return Err(ConfigError(format!(
                        "log.otlp_endpoint = {e:?}: expected a URL such as http://collector:4317"
                    )));
                }
                let r = self.log.otlp_sample_ratio;
                if !(0.0..=1.0).contains(&r) {
                    return Err(ConfigError(
                        "log.otlp_sample_ratio must be in [0, 1]".into(),
                    ));
                }
                Some(OtlpSettings {
                    endpoint: e.clone(),
                    sample_ratio: r,
                    service_name: if self.log.service_name.is_empty() {
                        "quiverd".into()
                    } else {
                        self.log.service_name.clone()
                    },
                })
            },
            rag: {
                self.rag.validate().map_err(|e| ConfigError(e.0))?;
                self.rag.clone()
            },
            cluster: self.cluster.validate()?,
            compaction: self.compaction.validate()?,
            limits: {
                let l = self.limits;
                let valid = |v: f64| v.is_finite() && v >= 0.0;
                if !valid(l.requests_per_second) || !valid(l.burst) {
                    return Err(ConfigError(
                        "limits.requests_per_second and limits.burst must be finite and >= 0"
                            .into(),
                    ));
                }
                l
            },
            tls: match (
                self.tls.cert.as_os_str().is_empty(),
                self.tls.key.as_os_str().is_empty(),
            ) {
                (true, true) if self.tls.client_ca.as_os_str().is_empty() => None,
                (false, false) => Some(crate::tls::TlsFiles {
                    cert: self.tls.cert.clone(),
                    key: self.tls.key.clone(),
                    client_ca: (!self.tls.client_ca.as_os_str().is_empty())
                        .then(|| self.tls.client_ca.clone()),
                    reload: Duration::from_secs(self.tls.reload_secs.max(1)),
                    peer_names: None,
                }),
                _ => {
                    return Err(ConfigError(
                        "tls.cert and tls.key are set together (and tls.client_ca needs them)"
                            .into(),
                    ));
                }
            },
            auth: if self.auth.enabled {
                let key = std::env::var(crate::auth::ADMIN_KEY_ENV)
                    .ok()
                    .filter(|k| !k.is_empty());
                if let Some(k) = &key
                    && k.len() < 16
                {
                    return Err(ConfigError(format!(
                        "{} must be at least 16 characters",
                        crate::auth::ADMIN_KEY_ENV
                    )));
                }
                Some(key.map(crate::secret::Secret::new))
            } else {
                None
            },
        };
        if let Some(c) = &settings.cluster
            && settings.auth.is_some()
            && !c.protected()
            && !c.raw.insecure
        {
            return Err(ConfigError(format!(
                "[auth] is on but the cluster port {} is unauthenticated: anyone who reaches it could write anything. \
                 Set cluster.secret_file (or {}) on every node, or cluster.tls_cert/tls_key/tls_ca, \
                 or cluster.insecure = true to run this way anyway",
                c.listen,
                crate::cluster::guard::SECRET_ENV
            )));
        }
        Ok(settings)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn tiered_merge_settings_are_bounded() {
        let ok = CompactionConfig::default();
        assert!(ok.validate().is_ok());
        for (bad, field) in [
            (
                CompactionConfig {
                    merge_factor: 1,
                    ..ok
                },
                "compaction.merge_factor",
            ),
            (
                CompactionConfig {
                    merge_max_rows: MAX_MERGE_ROWS + 1,
                    ..ok
                },
                "compaction.merge_max_rows",
            ),
        ] {
            let e = bad.validate().unwrap_err().0;
            assert!(e.starts_with(field), "{e}");
        }
        let off = CompactionConfig {
            merge_max_rows: 0,
            ..ok
        };
        assert_eq!(off.options(false).merge_max_rows, 0, "0 turns merging off");
    }

    #[test]
    fn defaults_validate() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.listen.port(), 6334);
        assert_eq!(s.fsync, FsyncPolicy::PerBatch);
        assert_eq!(s.idle_poll, None, "idle polling is opt-in");
        let mut c = Config::default();
        c.server.idle_poll_us = 200;
        assert_eq!(
            c.validate().unwrap().idle_poll,
            Some(Duration::from_micros(200))
        );
        c.server.idle_poll_us = 2_000_000;
        assert!(c.validate().unwrap_err().0.contains("server.idle_poll_us"));
    }

    #[test]
    fn cluster_flags() {
        let mut c = Config::default();
        c.cluster.listen = "127.0.0.1:7100".into();
        assert!(c.validate().unwrap_err().0.contains("node_id"));
        c.cluster.node_id = "2".into();
        c.cluster.peers = "1=a:1,2=127.0.0.1:7100,3=c:3".into();
        let s = c.validate().unwrap().cluster.unwrap();
        assert_eq!(s.node_id, 2);
        assert_eq!(s.peers.len(), 3);
        c.cluster.peers = "1=a:1,3=c:3".into();
        assert!(
            c.validate()
                .unwrap_err()
                .0
                .contains("does not list this node")
        );
        c.cluster.peers = "1=a".into();
        assert!(c.validate().unwrap_err().0.contains("HOST:PORT"));
        assert_eq!(
            pod_ordinal("quiver-12.quiver-headless"),
            Some(("quiver", 12))
        );
        assert_eq!(pod_ordinal("my-db-0"), Some(("my-db", 0)));
        assert_eq!(pod_ordinal("laptop"), None);
    }

    #[test]
    fn file_then_env_then_cli() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("q.toml", "[server]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/a\"\n[storage]\nfsync = \"never\"\n")?;
            jail.set_env("QUIVER__SERVER__DATA_DIR", "/tmp/b");
            let o = Overrides {
                listen: Some("127.0.0.1:0".into()),
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("q.toml")), &o).unwrap();
            assert_eq!(c.server.listen, "127.0.0.1:0");
            assert_eq!(c.server.data_dir, PathBuf::from("/tmp/b"));
            assert_eq!(c.storage.fsync, "never");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[server]\nlisen = \"x\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(e.0.contains("lisen"), "{e}");
            Ok(())
        });
        let mut c = Config::default();
        c.storage.fsync = "sometimes".into();
        assert!(c.validate().unwrap_err().0.contains("storage.fsync"));
        c = Config::default();
        c.server.listen = "localhost".into();
        assert!(c.validate().unwrap_err().0.contains("server.listen"));
    }
}
