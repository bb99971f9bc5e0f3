//! Filters end to end through the real server and CLI: declared fields at creation and later,
//! `--filter` on search (indexed and exact), count, scroll and delete, payload updates, and
//! bad filters reported with the field or column at fault.
use std::io::Write;

use quiver_tests::{Server, fails_with, json_lines, ok, vector};

const DIM: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_through_server_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    ok(&server.cli(&[
        "collection",
        "create",
        "f",
        "--dim",
        "8",
        "--metric",
        "l2",
        "--index",
        "ivf-pq",
        "--segment-max-rows",
        "2000",
        "--field",
        "tenant:keyword",
        "--field",
        "year:integer",
        "--field",
        "tags:keyword[]",
    ]));
    let file = dir.path().join("p.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let tenant = |i: u64| format!("t{}", i % 10);
    let year = |i: u64| 2000 + (i % 25) as i64;
    for i in 0..5000u64 {
        let payload = serde_json::json!({
            "tenant": tenant(i), "year": year(i), "tags": [format!("g{}", i % 3)], "note": format!("n{}", i % 4)
        });
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": i, "vector": vector(i, DIM), "payload": payload})
        )
        .unwrap();
    }
    drop(f);
    ok(&server.cli(&["upsert", "--collection", "f", file.to_str().unwrap()]));
    let pass = |i: u64| tenant(i) == "t3" && year(i) >= 2010 && i % 3 != 1;
    let text = r#"tenant = "t3" and year >= 2010 and not tags any ["g1"]"#;
    let want = (0..5000).filter(|&i| pass(i)).count();
    assert_eq!(
        ok(&server.cli(&["count", "--collection", "f", "--filter", text])),
        want.to_string()
    );
    // Search: every hit passes; the indexed answer agrees with the exact filtered one.
    let q = serde_json::to_string(&vector(77_777, DIM)).unwrap();
    let search = |extra: &[&str]| -> Vec<u64> {
        let mut args = vec![
            "search",
            "--collection",
            "f",
            "--vector",
            &q,
            "--json",
            "--filter",
            text,
        ];
        args.extend_from_slice(extra);
        json_lines(&server.cli(&args))[0]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_u64().unwrap())
            .collect()
    };
    let exact = search(&["--exact"]);
    assert_eq!(exact.len(), 10);
    assert!(exact.iter().all(|&i| pass(i)));
    let approx = search(&[]);
    assert!(approx.iter().all(|&i| pass(i)));
    let common = approx.iter().filter(|i| exact.contains(i)).count();
    assert!(
        common >= 9,
        "filtered search found {common}/10 of the exact answer"
    );
    // An undeclared key works too (read from payloads), and scroll yields exactly the passing set.
    assert_eq!(
        ok(&server.cli(&["count", "--collection", "f", "--filter", r#"note = "n2""#])),
        "1250"
    );
    let rows = json_lines(&server.cli(&["scroll", "--collection", "f", "--filter", text]));
    assert_eq!(rows.len(), want);
    // Bad filters: the column of a syntax error, the field of a type mismatch.
    fails_with(
        &server.cli(&[
            "count",
            "--collection",
            "f",
            "--filter",
            r#"tenant = "t3" and"#,
        ]),
        &["filter.text", "column 18"],
    );
    fails_with(
        &server.cli(&[
            "search",
            "--collection",
            "f",
            "--vector",
            &q,
            "--filter",
            r#"year = "2020""#,
        ]),
        &["filter.year", "integer field compared with string"],
    );
    // Payload updates keep the indexes consistent; declaring a field later works.
    ok(&server.cli(&[
        "set-payload",
        "--collection",
        "f",
        "3",
        "13",
        "--set",
        r#"{"tenant":"moved"}"#,
    ]));
    assert_eq!(
        ok(&server.cli(&[
            "count",
            "--collection",
            "f",
            "--filter",
            r#"tenant = "moved""#
        ])),
        "2"
    );
    ok(&server.cli(&["collection", "declare", "f", "--field", "note:keyword"]));
    assert_eq!(
        ok(&server.cli(&["count", "--collection", "f", "--filter", r#"note = "n2""#])),
        "1250"
    );
    // Delete by filter.
    ok(&server.cli(&[
        "delete",
        "--collection",
        "f",
        "--filter",
        r#"tenant = "t0""#,
    ]));
    assert_eq!(
        ok(&server.cli(&["count", "--collection", "f", "--filter", r#"tenant = "t0""#])),
        "0"
    );
    assert_eq!(ok(&server.cli(&["count", "--collection", "f"])), "4500");
}
