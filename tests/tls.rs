//! TLS on the gRPC port: a roundtrip through the CLI, hot reload of swapped certificates, and
//! mutual TLS.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_tests::{bin, fails_with, ok};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// (certificate PEM, key PEM) signed by `ca`.
fn leaf(ca: &Ca, client: bool) -> (String, String) {
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes via a temporary file and a rename, as a certificate manager would.
fn install(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Tls {
    child: Child,
    addr: String,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, env: &[(&str, String)]) -> Tls {
    let mut cmd = Command::new(bin("quiverd"));
    cmd.args([
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("quiverd listening on ").unwrap();
    Tls {
        child,
        addr: format!("https://{addr}"),
    }
}

fn cli(t: &Tls, extra: &[&str], args: &[&str]) -> std::process::Output {
    Command::new(bin("quiver"))
        .arg("--addr")
        .arg(&t.addr)
        .args(extra)
        .args(args)
        .output()
        .unwrap()
}

/// Retries `f` until it succeeds (storage opening, a reload tick).
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn tls_roundtrip_hot_reload_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca1, ca2) = (ca(), ca());
    std::fs::write(d.join("ca1.pem"), ca1.cert.pem()).unwrap();
    std::fs::write(d.join("ca2.pem"), ca2.cert.pem()).unwrap();
    let (cert, key) = leaf(&ca1, false);
    install(&d.join("cert.pem"), &cert);
    install(&d.join("key.pem"), &key);
    let env = vec![
        (
            "QUIVER__TLS__CERT",
            d.join("cert.pem").display().to_string(),
        ),
        ("QUIVER__TLS__KEY", d.join("key.pem").display().to_string()),
        ("QUIVER__TLS__RELOAD_SECS", "1".to_owned()),
    ];
    let ca1_flag = ["--tls-ca", d.join("ca1.pem").to_str().unwrap()].map(str::to_owned);
    let ca1_flag: Vec<&str> = ca1_flag.iter().map(String::as_str).collect();
    let ca2_flag = ["--tls-ca", d.join("ca2.pem").to_str().unwrap()].map(str::to_owned);
    let ca2_flag: Vec<&str> = ca2_flag.iter().map(String::as_str).collect();

    let t = start(&d.join("data"), &env);
    assert!(
        eventually(Duration::from_secs(30), || cli(
            &t,
            &ca1_flag,
            &["collection", "list"]
        )
        .status
        .success()),
        "TLS server never answered"
    );
    ok(&cli(
        &t,
        &ca1_flag,
        &["collection", "create", "t", "--dim", "2"],
    ));
    // Plaintext and an untrusted CA are refused.
    let plain = Command::new(bin("quiver"))
        .args([
            "--addr",
            &t.addr.replace("https://", "http://"),
            "collection",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    fails_with(
        &cli(&t, &ca2_flag, &["collection", "list"]),
        &["cannot connect"],
    );

    // Swap in a certificate from another CA: new connections get it, without a restart.
    let (cert2, key2) = leaf(&ca2, false);
    install(&d.join("key.pem"), &key2);
    install(&d.join("cert.pem"), &cert2);
    assert!(
        eventually(Duration::from_secs(15), || cli(
            &t,
            &ca2_flag,
            &["collection", "list"]
        )
        .status
        .success()),
        "the reloaded certificate was never served"
    );
    assert_eq!(
        ok(&cli(&t, &ca2_flag, &["count", "--collection", "t"])),
        "0"
    );
    fails_with(
        &cli(&t, &ca1_flag, &["collection", "list"]),
        &["cannot connect"],
    );
    // A broken file keeps the working certificate.
    install(&d.join("cert.pem"), "not a certificate");
    std::thread::sleep(Duration::from_millis(2500));
    ok(&cli(&t, &ca2_flag, &["collection", "list"]));
    install(&d.join("cert.pem"), &cert2);
    drop(t);

    // Mutual TLS: client certificates must chain to the configured CA.
    let mut env = env;
    env.push((
        "QUIVER__TLS__CLIENT_CA",
        d.join("ca1.pem").display().to_string(),
    ));
    let (ccert, ckey) = leaf(&ca1, true);
    std::fs::write(d.join("client.pem"), ccert).unwrap();
    std::fs::write(d.join("client.key"), ckey).unwrap();
    let (bcert, bkey) = leaf(&ca2, true);
    std::fs::write(d.join("bad.pem"), bcert).unwrap();
    std::fs::write(d.join("bad.key"), bkey).unwrap();
    let t = start(&d.join("data"), &env);
    let client = |cert: &str, key: &str| {
        let mut v: Vec<String> = ca2_flag.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--tls-cert".into(),
            d.join(cert).display().to_string(),
            "--tls-key".into(),
            d.join(key).display().to_string(),
        ]);
        v
    };
    let good = client("client.pem", "client.key");
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    assert!(
        eventually(Duration::from_secs(30), || cli(
            &t,
            &good,
            &["collection", "list"]
        )
        .status
        .success()),
        "mutual TLS with a good client certificate failed"
    );
    assert!(
        !cli(&t, &ca2_flag, &["collection", "list"]).status.success(),
        "no client certificate"
    );
    let bad = client("bad.pem", "bad.key");
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    assert!(
        !cli(&t, &bad, &["collection", "list"]).status.success(),
        "an untrusted client certificate"
    );
}
