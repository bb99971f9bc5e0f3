//! API keys: every role against every kind of RPC and collection, through the real CLI.

use quiver_tests::{Server, as_key, fails_with, ok};
use serde_json::Value;

const ADMIN: &str = "bootstrap-admin-key-0123456789";

fn new_key(s: &Server, role: &str, collections: Option<&str>) -> (String, String) {
    let mut args = vec!["key", "create", "--role", role, "--json"];
    if let Some(c) = collections {
        args.extend(["--collections", c]);
    }
    let v: Value = serde_json::from_str(&ok(&as_key(s, ADMIN, &args))).unwrap();
    (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

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

#[tokio::test]
async fn roles_and_collections_are_enforced_on_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &[
            ("QUIVER__AUTH__ENABLED", "true"),
            ("QUIVER_ADMIN_KEY", ADMIN),
        ],
    )
    .await;
    // No key, a malformed key, a wrong secret: UNAUTHENTICATED, naming how to send one.
    fails_with(
        &s.cli(&["collection", "list"]),
        &["UNAUTHENTICATED", "API key is required"],
    );
    fails_with(
        &as_key(&s, "nonsense", &["collection", "list"]),
        &["UNAUTHENTICATED", "invalid API key"],
    );
    // Health needs no key (probes).
    s.wait_serving(std::time::Duration::from_secs(5)).await;

    for c in ["a", "b"] {
        ok(&as_key(
            &s,
            ADMIN,
            &["collection", "create", c, "--dim", "2"],
        ));
    }
    let (read, _) = new_key(&s, "read", None);
    let (write_a, write_a_id) = new_key(&s, "write", Some("a"));
    let (admin_b, _) = new_key(&s, "admin", Some("b"));
    // The same key with its last secret digit changed.
    let last = if read.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &read[..read.len() - 1]);
    fails_with(
        &as_key(&s, &forged, &["count", "--collection", "a"]),
        &["UNAUTHENTICATED"],
    );

    let pts = dir.path().join("p.jsonl");
    std::fs::write(&pts, "{\"id\":1,\"vector\":[1,2]}\n").unwrap();
    let pts = pts.to_str().unwrap();
    // (key, args, expected: None = allowed, Some(code))
    let matrix: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        // read: queries anywhere, nothing else
        (&read, vec!["count", "--collection", "a"], None),
        (
            &read,
            vec!["search", "--collection", "b", "--vector", "[1,2]"],
            None,
        ),
        (&read, vec!["collection", "info", "a"], None),
        (&read, vec!["cluster", "status"], None),
        (
            &read,
            vec!["upsert", "--collection", "a", pts],
            Some("PERMISSION_DENIED"),
        ),
        (
            &read,
            vec!["delete", "--collection", "a", "1"],
            Some("PERMISSION_DENIED"),
        ),
        (
            &read,
            vec!["collection", "create", "c", "--dim", "2"],
            Some("PERMISSION_DENIED"),
        ),
        (
            &read,
            vec!["collection", "drop", "a"],
            Some("PERMISSION_DENIED"),
        ),
        (&read, vec!["key", "list"], Some("PERMISSION_DENIED")),
        // write limited to a: reads and writes on a only; no admin
        (&write_a, vec!["upsert", "--collection", "a", pts], None),
        (
            &write_a,
            vec![
                "set-payload",
                "--collection",
                "a",
                "1",
                "--set",
                "{\"x\":1}",
            ],
            None,
        ),
        (&write_a, vec!["count", "--collection", "a"], None),
        (
            &write_a,
            vec!["upsert", "--collection", "b", pts],
            Some("PERMISSION_DENIED"),
        ),
        (
            &write_a,
            vec!["count", "--collection", "b"],
            Some("PERMISSION_DENIED"),
        ),
        (
            &write_a,
            vec!["search", "--collection", "b", "--vector", "[1,2]"],
            Some("PERMISSION_DENIED"),
        ),
        (
            &write_a,
            vec!["collection", "drop", "a"],
            Some("PERMISSION_DENIED"),
        ),
        (
            &write_a,
            vec!["key", "create", "--role", "admin"],
            Some("PERMISSION_DENIED"),
        ),
        // admin limited to b: everything on b, nothing on a
        (&admin_b, vec!["upsert", "--collection", "b", pts], None),
        (&admin_b, vec!["collection", "flush", "b"], None),
        (
            &admin_b,
            vec!["count", "--collection", "a"],
            Some("PERMISSION_DENIED"),
        ),
        (
            &admin_b,
            vec!["collection", "drop", "a"],
            Some("PERMISSION_DENIED"),
        ),
    ];
    for (key, args, want) in &matrix {
        let out = as_key(&s, key, args);
        match want {
            None => {
                ok(&out);
            }
            Some(code) => fails_with(&out, &[code]),
        }
    }
    // A scoped key lists only its collections.
    let listed = ok(&as_key(&s, &write_a, &["collection", "list", "--json"]));
    assert!(
        listed.contains("\"a\"") && !listed.contains("\"b\""),
        "{listed}"
    );
    // Keys are listed without secrets, and no secret is stored anywhere on disk.
    let keys = ok(&as_key(&s, ADMIN, &["key", "list", "--json"]));
    assert_eq!(keys.lines().count(), 3);
    for k in [&read, &write_a, &admin_b] {
        let secret = k.rsplit('_').next().unwrap();
        assert!(!keys.contains(secret));
        assert!(
            !files_contain(dir.path(), secret.as_bytes()),
            "a key secret is on disk"
        );
    }
    // Revoked: refused from the next call on.
    ok(&as_key(&s, ADMIN, &["key", "revoke", &write_a_id]));
    fails_with(
        &as_key(&s, &write_a, &["count", "--collection", "a"]),
        &["UNAUTHENTICATED", "revoked"],
    );
    fails_with(
        &as_key(&s, ADMIN, &["key", "revoke", "0000000000000000"]),
        &["NOT_FOUND"],
    );
    fails_with(
        &as_key(
            &s,
            ADMIN,
            &["key", "create", "--role", "read", "--collections", "../etc"],
        ),
        &["INVALID_ARGUMENT", "collections[0]"],
    );
    // Keys survive a restart.
    let mut s = s;
    s.restart().await;
    ok(&as_key(&s, &read, &["count", "--collection", "a"]));
}
