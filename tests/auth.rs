//! API keys: every role against every kind of RPC and collection, through the real CLI.

use quiver_tests::{ADMIN_KEY as ADMIN, Server, as_key, fails_with, new_key, ok};

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            files_contain(&p, needle)
        } else {
            std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

/// A server with auth on, collections `a` and `b`, and three keys: `read` (everywhere),
/// `write_a` (write on `a`) and `admin_b` (admin on `b`).
struct Keyed {
    dir: tempfile::TempDir,
    s: Server,
    read: String,
    write_a: String,
    write_a_id: String,
    admin_b: String,
    /// A one-point JSONL file for upserts.
    pts: String,
}

impl Keyed {
    async fn start() -> Keyed {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_keyed(dir.path(), &["a", "b"]).await;
        let (read, _) = new_key(&s, "read", None);
        let (write_a, write_a_id) = new_key(&s, "write", Some("a"));
        let (admin_b, _) = new_key(&s, "admin", Some("b"));
        let pts = dir.path().join("p.jsonl");
        std::fs::write(&pts, "{\"id\":1,\"vector\":[1,2]}\n").unwrap();
        let pts = pts.to_str().unwrap().to_owned();
        Keyed {
            dir,
            s,
            read,
            write_a,
            write_a_id,
            admin_b,
            pts,
        }
    }

    /// Runs each command with `key`: `None` must succeed, `Some(code)` must fail with it. A
    /// failure names the command.
    fn expect(&self, key: &str, cases: &[(&[&str], Option<&str>)]) {
        for (args, want) in cases {
            let out = as_key(&self.s, key, args);
            let err = String::from_utf8_lossy(&out.stderr);
            match want {
                None => assert!(out.status.success(), "{args:?} refused: {err}"),
                Some(code) => assert!(
                    !out.status.success() && err.contains(code),
                    "{args:?}: expected {code}, got: {err}"
                ),
            }
        }
    }
}

const DENIED: Option<&str> = Some("PERMISSION_DENIED");

#[tokio::test]
async fn missing_malformed_and_forged_keys_are_unauthenticated() {
    let k = Keyed::start().await;
    let s = &k.s;
    fails_with(
        &s.cli(&["collection", "list"]),
        &["UNAUTHENTICATED", "API key is required"],
    );
    fails_with(
        &as_key(s, "nonsense", &["collection", "list"]),
        &["UNAUTHENTICATED", "invalid API key"],
    );
    // The read key with its last secret digit changed.
    let last = if k.read.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &k.read[..k.read.len() - 1]);
    fails_with(
        &as_key(s, &forged, &["count", "--collection", "a"]),
        &["UNAUTHENTICATED"],
    );
    // Health needs no key (probes).
    s.wait_serving(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn read_keys_query_every_collection_and_change_nothing() {
    let k = Keyed::start().await;
    let pts = k.pts.as_str();
    k.expect(
        &k.read,
        &[
            (&["count", "--collection", "a"], None),
            (&["search", "--collection", "b", "--vector", "[1,2]"], None),
            (&["collection", "info", "a"], None),
            (&["cluster", "status"], None),
            (&["upsert", "--collection", "a", pts], DENIED),
            (&["delete", "--collection", "a", "1"], DENIED),
            (&["collection", "create", "c", "--dim", "2"], DENIED),
            (&["collection", "drop", "a"], DENIED),
            (&["key", "list"], DENIED),
        ],
    );
}

#[tokio::test]
async fn a_scoped_write_key_reaches_only_its_collections() {
    let k = Keyed::start().await;
    let pts = k.pts.as_str();
    k.expect(
        &k.write_a,
        &[
            (&["upsert", "--collection", "a", pts], None),
            (
                &[
                    "set-payload",
                    "--collection",
                    "a",
                    "1",
                    "--set",
                    "{\"x\":1}",
                ],
                None,
            ),
            (&["count", "--collection", "a"], None),
            (&["upsert", "--collection", "b", pts], DENIED),
            (&["count", "--collection", "b"], DENIED),
            (
                &["search", "--collection", "b", "--vector", "[1,2]"],
                DENIED,
            ),
            (&["collection", "drop", "a"], DENIED),
            (&["key", "create", "--role", "admin"], DENIED),
        ],
    );
    let listed = ok(&as_key(&k.s, &k.write_a, &["collection", "list", "--json"]));
    assert!(
        listed.contains("\"a\"") && !listed.contains("\"b\""),
        "a scoped key lists only its collections: {listed}"
    );
}

#[tokio::test]
async fn a_scoped_admin_key_administers_only_its_collections() {
    let k = Keyed::start().await;
    let pts = k.pts.as_str();
    k.expect(
        &k.admin_b,
        &[
            (&["upsert", "--collection", "b", pts], None),
            (&["collection", "flush", "b"], None),
            (&["count", "--collection", "a"], DENIED),
            (&["collection", "drop", "a"], DENIED),
        ],
    );
}

#[tokio::test]
async fn key_secrets_are_never_listed_or_stored() {
    let k = Keyed::start().await;
    let keys = ok(&as_key(&k.s, ADMIN, &["key", "list", "--json"]));
    assert_eq!(keys.lines().count(), 3);
    for key in [&k.read, &k.write_a, &k.admin_b] {
        let secret = key.rsplit('_').next().unwrap();
        assert!(!keys.contains(secret), "{keys}");
        assert!(
            !files_contain(k.dir.path(), secret.as_bytes()),
            "a key secret is on disk"
        );
    }
    fails_with(
        &as_key(
            &k.s,
            ADMIN,
            &["key", "create", "--role", "read", "--collections", "../etc"],
        ),
        &["INVALID_ARGUMENT", "collections[0]"],
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_from_the_next_call_and_keys_survive_a_restart() {
    let mut k = Keyed::start().await;
    ok(&as_key(&k.s, ADMIN, &["key", "revoke", &k.write_a_id]));
    fails_with(
        &as_key(&k.s, &k.write_a, &["count", "--collection", "a"]),
        &["UNAUTHENTICATED", "revoked"],
    );
    fails_with(
        &as_key(&k.s, ADMIN, &["key", "revoke", "0000000000000000"]),
        &["NOT_FOUND"],
    );
    k.s.restart().await;
    ok(&as_key(&k.s, &k.read, &["count", "--collection", "a"]));
    fails_with(
        &as_key(&k.s, &k.write_a, &["count", "--collection", "a"]),
        &["UNAUTHENTICATED", "revoked"],
    );
}
