//! Snapshots through the CLI: create online, list, download, restore after a wipe of the
//! data, incremental reuse of sealed files, damage detected before live data is touched.
use std::os::unix::fs::MetadataExt;

use quiver_tests::{Server, fails_with, json_lines, ok, vector};

fn points_file(dir: &std::path::Path, from: u64, n: u64) -> String {
    let p = dir.join(format!("p{from}.jsonl"));
    let body: String = (from..from + n)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"vector\":{:?},\"payload\":{{\"i\":{i}}}}}\n",
                vector(i, 4)
            )
        })
        .collect();
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn inodes(dir: &std::path::Path, out: &mut Vec<(String, u64)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            inodes(&p, out);
        } else if p.to_string_lossy().contains("/segments/") {
            out.push((
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::metadata(&p).unwrap().ino(),
            ));
        }
    }
}

#[tokio::test]
async fn snapshot_wipe_restore_equals_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &[("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "100")]).await;
    ok(&s.cli(&["collection", "create", "s", "--dim", "4", "--metric", "l2"]));
    ok(&s.cli(&[
        "upsert",
        "--collection",
        "s",
        &points_file(dir.path(), 0, 350),
    ]));
    ok(&s.cli(&["delete", "--collection", "s", "5", "6"]));
    let scroll = |s: &Server| ok(&s.cli(&["scroll", "--collection", "s", "--with-vectors"]));
    let original = scroll(&s);
    let created: serde_json::Value =
        serde_json::from_str(&ok(&s.cli(&["snapshot", "create", "s1", "--json"]))).unwrap();
    assert_eq!(created["collections"], serde_json::json!(["s"]));
    // Writes after the snapshot, then a second snapshot: unchanged sealed files are shared.
    ok(&s.cli(&[
        "upsert",
        "--collection",
        "s",
        &points_file(dir.path(), 1000, 10),
    ]));
    ok(&s.cli(&["snapshot", "create", "s2"]));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    inodes(&dir.path().join("snapshots/s1"), &mut a);
    inodes(&dir.path().join("snapshots/s2"), &mut b);
    let shared = a.iter().filter(|x| b.contains(x)).count();
    assert!(
        shared >= 3,
        "incremental: {shared} segment files shared of {}",
        a.len()
    );
    let listed = json_lines(&s.cli(&["snapshot", "list", "--json"]));
    assert_eq!(listed.len(), 2);
    // Download: one archive.
    let out = dir.path().join("s1.qsnap");
    ok(&s.cli(&[
        "snapshot",
        "download",
        "s1",
        "--output",
        out.to_str().unwrap(),
    ]));
    assert!(std::fs::read(&out).unwrap().starts_with(b"QSNAPv1\n"));
    // Wipe the data (drop the collection), restore: equal to the original.
    ok(&s.cli(&["collection", "drop", "s"]));
    ok(&s.cli(&["snapshot", "restore", "s1"]));
    assert_eq!(scroll(&s), original);
    assert_eq!(ok(&s.cli(&["count", "--collection", "s"])), "348");
    // It survives a restart and takes writes.
    let mut s = s;
    s.restart().await;
    assert_eq!(scroll(&s), original);
    ok(&s.cli(&[
        "upsert",
        "--collection",
        "s",
        &points_file(dir.path(), 2000, 5),
    ]));
    assert_eq!(ok(&s.cli(&["count", "--collection", "s"])), "353");
    // A damaged snapshot is refused before anything live changes.
    let victim = walk_first_segment_file(&dir.path().join("snapshots/s2"));
    let mut bytes = std::fs::read(&victim).unwrap();
    // Replace the file (not in place: it is hard-linked to live data).
    std::fs::remove_file(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    fails_with(
        &s.cli(&["snapshot", "restore", "s2"]),
        &["DATA_LOSS", "checksum"],
    );
    assert_eq!(ok(&s.cli(&["count", "--collection", "s"])), "353");
    // Names cannot leave the snapshots directory.
    fails_with(
        &s.cli(&["snapshot", "create", "../evil"]),
        &["INVALID_ARGUMENT", "name"],
    );
    fails_with(&s.cli(&["snapshot", "restore", "nope"]), &["NOT_FOUND"]);
    ok(&s.cli(&["snapshot", "delete", "s2"]));
    assert_eq!(json_lines(&s.cli(&["snapshot", "list", "--json"])).len(), 1);
}

fn walk_first_segment_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains("/segments/")
                && p.to_string_lossy().ends_with(".bin")
            {
                return p;
            }
        }
    }
    panic!("no segment file in {}", dir.display());
}

/// One collection restored from a snapshot, under a new name and in place, leaving the other
/// collections as they are now; its declared fields and settings come back with it.
#[tokio::test]
async fn one_collection_restores_under_a_new_name_or_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &[("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "100")]).await;
    for c in ["a", "b"] {
        ok(&s.cli(&[
            "collection",
            "create",
            c,
            "--dim",
            "4",
            "--metric",
            "l2",
            "--field",
            "i:int",
        ]));
        ok(&s.cli(&[
            "upsert",
            "--collection",
            c,
            &points_file(dir.path(), 0, 250),
        ]));
    }
    let scroll = |c: &str| ok(&s.cli(&["scroll", "--collection", c, "--with-vectors"]));
    let a_then = scroll("a");
    ok(&s.cli(&["snapshot", "create", "snap"]));
    // After the snapshot: a loses points, b gains some.
    ok(&s.cli(&["delete", "--collection", "a", "1", "2", "3"]));
    ok(&s.cli(&[
        "upsert",
        "--collection",
        "b",
        &points_file(dir.path(), 500, 20),
    ]));
    let b_now = scroll("b");

    ok(&s.cli(&[
        "snapshot",
        "restore",
        "snap",
        "--collection",
        "a",
        "--as",
        "a2",
    ]));
    assert_eq!(scroll("a2"), a_then);
    assert_eq!(
        ok(&s.cli(&["count", "--collection", "a"])),
        "247",
        "a untouched"
    );
    // The declared field came back: filters on it are answered from the field index.
    let info: serde_json::Value =
        serde_json::from_str(&ok(&s.cli(&["collection", "info", "a2", "--json"]))).unwrap();
    assert!(info["schema"]["i"] == "integer", "{info}");
    assert_eq!(
        ok(&s.cli(&["count", "--collection", "a2", "--filter", "i < 10"])),
        "10"
    );

    ok(&s.cli(&["snapshot", "restore", "snap", "--collection", "a"]));
    assert_eq!(scroll("a"), a_then);
    assert_eq!(scroll("b"), b_now, "b keeps its writes after the snapshot");

    // Another existing collection is never overwritten; unknown and unsafe names are refused.
    let restore_as = |name: &str| {
        s.cli(&[
            "snapshot",
            "restore",
            "snap",
            "--collection",
            "a",
            "--as",
            name,
        ])
    };
    fails_with(&restore_as("b"), &["FAILED_PRECONDITION", "b exists"]);
    assert_eq!(scroll("b"), b_now);
    fails_with(&restore_as("../x"), &["INVALID_ARGUMENT"]);
    fails_with(
        &s.cli(&["snapshot", "restore", "snap", "--collection", "zz"]),
        &["NOT_FOUND", "zz"],
    );
}

/// An in-place restore builds its copy aside and swaps it in at once: readers see the old
/// collection whole until the swap, then the restored one, never a missing or half-filled
/// collection; the copy is hidden from users; a `kill -9` midway leaves the live collection
/// as it was, and the next restore completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_restore_swaps_a_complete_copy() {
    use quiver_client::pb;
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        Server::start_with(dir.path(), &[("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "2000")]).await;
    ok(&s.cli(&[
        "collection",
        "create",
        "big",
        "--dim",
        "4",
        "--metric",
        "l2",
    ]));
    ok(&s.cli(&[
        "upsert",
        "--collection",
        "big",
        &points_file(dir.path(), 0, 30_000),
    ]));
    ok(&s.cli(&["snapshot", "create", "full"]));
    let ids: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
    let mut args = vec!["delete", "--collection", "big"];
    args.extend(ids.iter().map(String::as_str));
    ok(&s.cli(&args));
    let count = |c: &mut quiver_client::Client| {
        let mut c = c.points.clone();
        async move {
            c.count(pb::CountRequest {
                collection: "big".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().count)
        }
    };
    let restore = |s: &Server| {
        let addr = s.addr.clone();
        tokio::spawn(async move {
            let mut c = quiver_client::Client::connect(&addr)
                .await
                .expect("connect");
            c.snapshots
                .restore(pb::RestoreSnapshotRequest {
                    name: "full".into(),
                    collection: "big".into(),
                    ..Default::default()
                })
                .await
        })
    };

    // Readers during the restore.
    let mut c = s.client().await;
    let job = restore(&s);
    let mut seen = std::collections::BTreeSet::new();
    while !job.is_finished() {
        let n = count(&mut c).await.expect("the collection stays readable");
        seen.insert(n);
        let names = ok(&s.cli(&["collection", "list"]));
        assert!(!names.contains("_restore"), "the copy is listed: {names}");
    }
    job.await.unwrap().expect("restore");
    assert_eq!(count(&mut c).await.unwrap(), 30_000);
    assert!(
        seen.iter().all(|n| *n == 25_000 || *n == 30_000),
        "a reader saw a partial collection: {seen:?}"
    );
    // A copy's name is not a user's: not found, not writable, not creatable.
    let copy = "_restore-big-0000000000000001";
    let hidden = c
        .points
        .count(pb::CountRequest {
            collection: copy.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden}");
    let write = c
        .points
        .upsert(pb::UpsertRequest {
            collection: copy.into(),
            points: vec![pb::Point {
                id: Some(quiver_client::num_id(1)),
                vector: vec![0.0; 4],
                payload_json: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(write.code(), tonic::Code::NotFound, "{write}");
    fails_with(
        &s.cli(&["collection", "create", "_restore-x", "--dim", "4"]),
        &["INVALID_ARGUMENT", "name"],
    );

    // A crash midway: the live collection is as it was; the next restore completes.
    ok(&s.cli(&args));
    assert_eq!(count(&mut c).await.unwrap(), 25_000);
    let job = restore(&s);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.kill9();
    let _ = job.await;
    s.restart().await;
    let mut c = s.client().await;
    let n = count(&mut c).await.expect("readable after the crash");
    assert!(n == 25_000 || n == 30_000, "after a crash midway: {n}");
    let names = ok(&s.cli(&["collection", "list"]));
    assert!(!names.contains("_restore"), "the copy is listed: {names}");
    ok(&s.cli(&["snapshot", "restore", "full", "--collection", "big"]));
    assert_eq!(count(&mut c).await.unwrap(), 30_000);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&s.cli(&["collection", "info", "big", "--json"]))).unwrap();
    assert_eq!(info["points"], 30_000, "{info}");
}
