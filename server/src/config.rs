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
    pub rag: crate::rag::settings::RagSection,
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
}

/// `[log]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// An `EnvFilter` directive, e.g. `info` or `quiver=debug`; `RUST_LOG` overrides it.
    pub level: String,
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
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
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
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// The `[rag]` section (validated).
    pub rag: crate::rag::settings::RagSection,
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
        let log_format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError(format!(
                    "log.format = {other:?}: expected text or json"
                )));
            }
        };
        Ok(Settings {
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
            log_format,
            log_level: self.log.level.clone(),
            rag: {
                self.rag.validate()?;
                self.rag.clone()
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

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
