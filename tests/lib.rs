//! Helpers for the end-to-end tests: start a real `quiverd` process on a free 127.0.0.1 port,
//! run the real `quiver` CLI against it, stop it gracefully or with `kill -9`.
#![forbid(unsafe_code)]

pub mod fake_llm;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use quiver_client::Client;

/// Directory holding the binaries: `QUIVER_BIN_DIR`, or the cargo target directory this test
/// binary runs from (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("QUIVER_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("target profile dir").to_path_buf()
}

/// Path of `quiverd` or `quiver`: with `QUIVER_BIN_DIR`, the binary of that name there;
/// otherwise this package's own build of the same entry point (`e2e-quiverd`, `e2e-quiver`),
/// which `cargo test` builds before running the tests.
pub fn bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    let p = if std::env::var_os("QUIVER_BIN_DIR").is_some() {
        dir.join(name)
    } else {
        dir.join(format!("e2e-{name}"))
    };
    assert!(
        p.exists(),
        "{} not found: run the tests with cargo test (which builds it), or set QUIVER_BIN_DIR",
        p.display()
    );
    p
}

/// A running `quiverd` child process.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts `quiverd` on `data_dir` with extra environment variables (e.g.
    /// `QUIVER__SERVER__MAX_MESSAGE_BYTES`), and waits until health says SERVING.
    pub async fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cmd = Command::new(bin("quiverd"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0");
        cmd.env("RUST_LOG", "warn");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn quiverd");
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read quiverd stdout");
        let addr = first
            .trim()
            .strip_prefix("quiverd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"));
        let server = Server {
            child: Some(child),
            addr: format!("http://{addr}"),
            data_dir: data_dir.to_path_buf(),
            env,
        };
        server.wait_serving(Duration::from_secs(60)).await;
        server
    }

    /// Starts with default settings.
    pub async fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[]).await
    }

    /// Polls grpc.health.v1 until SERVING.
    pub async fn wait_serving(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(self.addr.clone())
                .expect("uri")
                .connect()
                .await
            {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                if let Ok(r) = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    && r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "quiverd at {} not SERVING after {limit:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.addr).await.expect("connect")
    }

    /// Runs the `quiver` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("quiver"))
            .arg("--addr")
            .arg(&self.addr)
            .args(args)
            .output()
            .expect("run quiver")
    }

    /// The process's peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let pid = self.child.as_ref().expect("server is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/PID/status")
            / 1024
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a new process on the same data directory and environment.
    pub async fn restart(&mut self) {
        self.stop();
        self.reopen().await;
    }

    /// Starts a new process on the same data directory (after a kill).
    pub async fn reopen(&mut self) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let s = Server::start_with(&self.data_dir.clone(), &env).await;
        *self = s;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Deterministic pseudo-random vector for point `i` (splitmix64-based).
pub fn vector(i: u64, dim: usize) -> Vec<f32> {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..dim)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// The bootstrap admin key of servers started with [`KEYED`].
pub const ADMIN_KEY: &str = "bootstrap-admin-key-0123456789";
/// The environment that turns API keys on, with [`ADMIN_KEY`] as the bootstrap admin.
pub const KEYED: [(&str, &str); 2] = [
    ("QUIVER__AUTH__ENABLED", "true"),
    ("QUIVER_ADMIN_KEY", ADMIN_KEY),
];

impl Server {
    /// A server with API keys on ([`KEYED`]) and `collections` (2-d) created by the admin.
    pub async fn start_keyed(dir: &Path, collections: &[&str]) -> Server {
        let s = Server::start_with(dir, &KEYED).await;
        for c in collections {
            ok(&as_key(
                &s,
                ADMIN_KEY,
                &["collection", "create", c, "--dim", "2"],
            ));
        }
        s
    }
}

/// Mints a key with `role`, limited to `collections` (comma-separated) if given, with the
/// admin key: its secret and its id.
pub fn new_key(s: &Server, role: &str, collections: Option<&str>) -> (String, String) {
    let mut args = vec!["key", "create", "--role", role, "--json"];
    if let Some(c) = collections {
        args.extend(["--collections", c]);
    }
    let v: serde_json::Value = serde_json::from_str(&ok(&as_key(s, ADMIN_KEY, &args))).unwrap();
    (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

/// Asserts the CLI run succeeded; returns its trimmed stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "quiver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Asserts the CLI failed with every one of `needles` in its stderr.
pub fn fails_with(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

/// Parses a successful CLI run's stdout as JSON lines (asserting the run succeeded).
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    ok(out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A plain HTTP GET on loopback (the metrics port); the whole response, headers included.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Runs the `quiver` CLI against `s` with an API key.
pub fn as_key(s: &Server, key: &str, args: &[&str]) -> Output {
    let mut a = vec!["--api-key", key];
    a.extend_from_slice(args);
    s.cli(&a)
}

/// A 127.0.0.1 port free right now (for a second listener of a server, e.g. metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
