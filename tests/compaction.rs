//! Compaction through the real server: the background compactor reclaims overwritten rows on
//! its own, a manual `collection compact --force` reclaims deletes, and every point reads the
//! same before, after, and after a `kill -9` and restart.
use quiver_tests::{Server, free_port, http_get, ok, vector};

/// Points `ids` with vectors of `version`, as a JSONL file.
fn points_file(dir: &std::path::Path, ids: std::ops::Range<u64>, version: u64) -> String {
    let p = dir.join(format!("p{}-{version}.jsonl", ids.start));
    let body: String = ids
        .map(|i| {
            format!(
                "{{\"id\":{i},\"vector\":{:?},\"payload\":{{\"v\":{version}}}}}\n",
                vector(i * 10 + version, 8)
            )
        })
        .collect();
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn stats(s: &Server) -> serde_json::Value {
    serde_json::from_str(&ok(&s.cli(&["collection", "info", "c", "--json"]))).unwrap()
}

/// Every point as (id, payload version, vector), sorted by id.
fn contents(s: &Server) -> Vec<(u64, u64, Vec<f32>)> {
    let out = ok(&s.cli(&[
        "scroll",
        "--collection",
        "c",
        "--with-vectors",
        "--page",
        "97",
    ]));
    let mut rows: Vec<(u64, u64, Vec<f32>)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_u64().unwrap(),
                v["payload"]["v"].as_u64().unwrap(),
                serde_json::from_value(v["vector"].clone()).unwrap(),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    rows
}

type Row = (u64, u64, Vec<f32>);

/// Asserts `got == want`, naming the ids that are missing, extra or different.
fn assert_same(got: &[Row], want: &[Row], what: &str) {
    if got == want {
        return;
    }
    let by_id = |rows: &[Row]| -> std::collections::BTreeMap<u64, Row> {
        rows.iter().map(|r| (r.0, r.clone())).collect()
    };
    let (g, w) = (by_id(got), by_id(want));
    let missing: Vec<u64> = w.keys().filter(|k| !g.contains_key(k)).copied().collect();
    let extra: Vec<u64> = g.keys().filter(|k| !w.contains_key(k)).copied().collect();
    let changed: Vec<(u64, u64, u64)> = w
        .iter()
        .filter_map(|(k, r)| g.get(k).filter(|x| *x != r).map(|x| (*k, r.1, x.1)))
        .collect();
    panic!(
        "{what}: {} rows, want {}; missing {missing:?}; extra {extra:?}; changed (id, want version, got version) {changed:?}; duplicates {}",
        got.len(),
        want.len(),
        got.len() - g.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_and_manual_compaction_keep_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut s = Server::start_with(
        dir.path(),
        &[
            ("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "200"),
            ("QUIVER__COMPACTION__INTERVAL_SECS", "1"),
            ("QUIVER__SERVER__METRICS_LISTEN", &metrics_addr),
        ],
    )
    .await;
    ok(&s.cli(&["collection", "create", "c", "--dim", "8", "--metric", "l2"]));
    let upsert = |s: &Server, file: &str| {
        ok(&s.cli(&["upsert", "--collection", "c", "--batch-size", "100", file]));
    };
    upsert(&s, &points_file(dir.path(), 0..1000, 1));
    // Overwrite the first 600 points: their old rows die in the sealed segments.
    upsert(&s, &points_file(dir.path(), 0..600, 2));
    ok(&s.cli(&["collection", "flush", "c"]));
    let before = contents(&s);
    assert_eq!(before.len(), 1000);
    assert!(before.iter().all(|r| r.1 == if r.0 < 600 { 2 } else { 1 }));

    // The background compactor (every second here) reclaims the dead rows by itself.
    let started = std::time::Instant::now();
    let mut st = stats(&s);
    while st["dead_points"].as_u64().unwrap() > 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "dead rows not reclaimed: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        st = stats(&s);
    }
    assert_eq!(st["points"], 1000);
    assert_same(&contents(&s), &before, "after background compaction");
    let metrics = http_get(&metrics_addr, "/metrics").await;
    let reclaimed = metrics
        .lines()
        .find(|l| l.starts_with("quiver_compaction_rows_reclaimed_total{collection=\"c\"}"))
        .unwrap_or_else(|| panic!("no reclaim counter in:\n{metrics}"));
    let n: u64 = reclaimed.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, 600, "the 600 overwritten rows, counted once");

    // Deletes in one sealed segment, under the 20% threshold: only a forced run takes them.
    let ids: Vec<String> = (600..620).map(|i| i.to_string()).collect();
    let mut args = vec!["delete", "--collection", "c"];
    args.extend(ids.iter().map(String::as_str));
    ok(&s.cli(&args));
    ok(&s.cli(&["collection", "flush", "c"]));
    assert_eq!(stats(&s)["dead_points"], 20);
    let r: serde_json::Value = serde_json::from_str(&ok(&s.cli(&[
        "collection",
        "compact",
        "c",
        "--force",
        "--json",
    ])))
    .unwrap();
    assert_eq!(r["rows_reclaimed"], 20, "{r}");
    assert!(r["bytes_reclaimed"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(stats(&s)["dead_points"], 0);
    let want: Vec<_> = before
        .iter()
        .filter(|r| !(600..620).contains(&r.0))
        .cloned()
        .collect();
    assert_same(&contents(&s), &want, "after forced compaction");
    // The nearest neighbour of a moved point is itself.
    let q = format!("{:?}", vector(700 * 10 + 1, 8));
    let hits = ok(&s.cli(&["search", "--collection", "c", "--k", "1", "--vector", &q]));
    let top = hits
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(top, Some("700"), "{hits}");

    // Writes after compaction, then a crash: replay over the compacted segments.
    upsert(&s, &points_file(dir.path(), 650..700, 3));
    s.kill9();
    s.restart().await;
    let want: Vec<_> = want
        .into_iter()
        .map(|r| {
            if (650..700).contains(&r.0) {
                (r.0, 3, vector(r.0 * 10 + 3, 8))
            } else {
                r
            }
        })
        .collect();
    assert_same(&contents(&s), &want, "after kill -9 and restart");
}

/// A `kill -9` in the middle of a tiered merge leaves the old segments or the merged one,
/// never neither and never a mix: every point reads back the same after each restart, and
/// the merge completes once the server is left alone. The merge is slowed to a few seconds by
/// the disk budget, and killed at different points of it (deterministic delays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_merge_leaves_the_old_segments_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(
        dir.path(),
        &[
            ("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "1500"),
            ("QUIVER__COMPACTION__INTERVAL_SECS", "1"),
            // 4 × 1,500 rows × 32 bytes, read and written: about 4 s at 0.1 MiB/s.
            ("QUIVER__COMPACTION__IO_MB_PER_SEC", "0.1"),
        ],
    )
    .await;
    ok(&s.cli(&["collection", "create", "c", "--dim", "8", "--metric", "l2"]));
    ok(&s.cli(&[
        "upsert",
        "--collection",
        "c",
        "--batch-size",
        "500",
        &points_file(dir.path(), 0..6000, 1),
    ]));
    ok(&s.cli(&["collection", "flush", "c"]));
    let want = contents(&s);
    assert_eq!(want.len(), 6000);
    assert_eq!(stats(&s)["sealed_segments"], 4);
    let mut saw_merging = false;
    for delay_ms in [1500u64, 2600, 3700] {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        saw_merging |= stats(&s)["index"]
            .as_str()
            .unwrap()
            .contains("compacting 4 sealed segments");
        s.kill9();
        s.reopen().await;
        let sealed = stats(&s)["sealed_segments"].as_u64().unwrap();
        assert!(
            sealed == 4 || sealed == 1,
            "after a kill at {delay_ms} ms: {sealed} sealed segments"
        );
        assert_same(
            &contents(&s),
            &want,
            &format!("after a kill at {delay_ms} ms"),
        );
    }
    assert!(saw_merging, "no kill landed while the merge was running");
    // Left alone, the merge completes and the points are still all there.
    let started = std::time::Instant::now();
    while stats(&s)["sealed_segments"] != 1 {
        assert!(
            started.elapsed().as_secs() < 60,
            "not merged: {}",
            stats(&s)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_same(&contents(&s), &want, "after the merge");
}
