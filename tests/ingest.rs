//! `quiver ingest` and `quiver export` end to end: every format round-trips (ingest → count →
//! get → export equals the input), bad rows in both modes (the exact reject report), an
//! interrupted ingest resumed without loss or duplicates, and bounded client memory on a file
//! larger than that bound.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use quiver_tests::{Server, bin, json_lines, ok, vector};
use serde_json::{Value, json};

const DIM: usize = 8;

/// A point's expected JSON: vectors are compared after the f32 round trip.
fn point(i: u64, payload: bool) -> Value {
    let mut p = json!({"id": i, "vector": vector(i, DIM)});
    if payload {
        p["payload"] = json!({"tenant": format!("t{}", i % 3), "n": i});
    }
    p
}

/// Vectors as f32 (how they are stored), printed exactly, so two JSON renderings compare.
fn norm(mut p: Value) -> Value {
    let v: Vec<String> = p["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{:?}", x.as_f64().unwrap() as f32))
        .collect();
    p["vector"] = json!(v);
    p
}

/// Exported JSONL as id → point (sorted keys, so comparable).
fn exported(server: &Server, collection: &str, dir: &Path) -> BTreeMap<String, Value> {
    let out = dir.join(format!("{collection}.export.jsonl"));
    ok(&server.cli(&[
        "export",
        "--collection",
        collection,
        "--output",
        out.to_str().unwrap(),
    ]));
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["id"].to_string(), norm(v))
        })
        .collect()
}

fn expected(n: u64, payload: bool) -> BTreeMap<String, Value> {
    (0..n)
        .map(|i| (json!(i).to_string(), norm(point(i, payload))))
        .collect()
}

fn ingest(server: &Server, args: &[&str]) -> Value {
    let mut a = vec!["ingest", "--json"];
    a.extend_from_slice(args);
    json_lines(&server.cli(&a))[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let d = dir.path();
    let n = 500u64;
    let p = |name: &str| d.join(name).to_str().unwrap().to_owned();
    // JSONL (plain, gzip and zstd).
    let jsonl: String = (0..n).map(|i| point(i, true).to_string() + "\n").collect();
    std::fs::write(p("a.jsonl"), &jsonl).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(jsonl.as_bytes()).unwrap();
    std::fs::write(p("a.jsonl.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        p("a.jsonl.zst"),
        zstd::encode_all(jsonl.as_bytes(), 3).unwrap(),
    )
    .unwrap();
    // CSV with a JSON-array vector column, and with v0..vN columns.
    let mut csv1 = String::from("id,vector,tenant,n\n");
    let mut csv2 = String::from("id,tenant,n,")
        + &(0..DIM)
            .map(|j| format!("v{j}"))
            .collect::<Vec<_>>()
            .join(",")
        + "\n";
    for i in 0..n {
        let v = vector(i, DIM);
        csv1 += &format!(
            "{i},\"{}\",t{},{i}\n",
            serde_json::to_string(&v).unwrap(),
            i % 3
        );
        csv2 += &format!(
            "{i},t{},{i},{}\n",
            i % 3,
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    std::fs::write(p("b.csv"), csv1).unwrap();
    std::fs::write(p("c.csv"), csv2).unwrap();
    // .npy (float32) with a side file of payloads, and .fvecs.
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {DIM}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    let mut fvecs = Vec::new();
    let mut side = String::new();
    for i in 0..n {
        fvecs.extend_from_slice(&(DIM as i32).to_le_bytes());
        for x in vector(i, DIM) {
            npy.extend_from_slice(&x.to_le_bytes());
            fvecs.extend_from_slice(&x.to_le_bytes());
        }
        side += &(json!({"tenant": format!("t{}", i % 3), "n": i}).to_string() + "\n");
    }
    std::fs::write(p("d.npy"), npy).unwrap();
    std::fs::write(p("d.side.jsonl"), side).unwrap();
    std::fs::write(p("e.fvecs"), fvecs).unwrap();
    for (name, file, extra, payload) in [
        ("jl", "a.jsonl", vec![], true),
        ("gz", "a.jsonl.gz", vec![], true),
        ("zst", "a.jsonl.zst", vec![], true),
        ("csvj", "b.csv", vec![], true),
        ("csvv", "c.csv", vec![], true),
        (
            "npy",
            "d.npy",
            vec!["--side".to_owned(), p("d.side.jsonl")],
            true,
        ),
        ("fv", "e.fvecs", vec![], false),
    ] {
        let path = file_path(d, file);
        let mut args = vec!["--collection", name, "--create", "--metric", "l2", &path];
        args.extend(extra.iter().map(String::as_str));
        let s = ingest(&server, &args);
        assert_eq!(s["upserted"], n, "{name}: {s}");
        assert_eq!(s["rejected"], 0, "{name}");
        assert_eq!(
            ok(&server.cli(&["count", "--collection", name])),
            n.to_string(),
            "{name}"
        );
        let got = json_lines(&server.cli(&["get", "--collection", name, "7"]));
        assert_eq!(got[0]["id"], 7, "{name}: get");
        assert_eq!(
            exported(&server, name, d),
            expected(n, payload),
            "{name}: export equals input"
        );
    }
    // Parquet: export one collection to Parquet, ingest that file, export again.
    ok(&server.cli(&["export", "--collection", "jl", "--output", &p("jl.parquet")]));
    let s = ingest(
        &server,
        &[
            "--collection",
            "pq",
            "--create",
            "--metric",
            "l2",
            "--payload-fields",
            "payload",
            &p("jl.parquet"),
        ],
    );
    assert_eq!(s["upserted"], n, "{s}");
    // The Parquet export carries the payload as JSON text in a `payload` column.
    let back = exported(&server, "pq", d);
    let first = &back[&json!(0).to_string()];
    assert_eq!(
        first["vector"],
        expected(1, true)[&json!(0).to_string()]["vector"]
    );
    let text: Value = serde_json::from_str(first["payload"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(text, json!({"tenant": "t0", "n": 0}));
    // A filtered export.
    let out = p("t1.jsonl");
    ok(&server.cli(&[
        "export",
        "--collection",
        "jl",
        "--filter",
        r#"tenant = "t1""#,
        "--output",
        &out,
    ]));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count() as u64,
        (0..n).filter(|i| i % 3 == 1).count() as u64
    );
    // Dry run: validates, writes nothing.
    let s = ingest(
        &server,
        &["--collection", "dry", "--dry-run", &p("a.jsonl")],
    );
    assert_eq!(s["rows_valid"], n);
    assert!(
        !server
            .cli(&["count", "--collection", "dry"])
            .status
            .success(),
        "dry run created nothing"
    );
    // HDF5 is refused with a pointer to the conversion.
    std::fs::write(p("x.hdf5"), b"x").unwrap();
    let out = server.cli(&["ingest", "--collection", "jl", &p("x.hdf5")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HDF5 is not supported"));
}

fn file_path(d: &Path, f: &str) -> String {
    d.join(f).to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_abort_or_go_to_the_reject_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    ok(&server.cli(&["collection", "create", "c", "--dim", "8", "--metric", "l2"]));
    let file = dir.path().join("bad.jsonl");
    let mut text = String::new();
    for i in 0..100u64 {
        text += &match i {
            10 => json!({"id": i, "vector": vector(i, 7)}).to_string(),
            20 => "{not json".to_owned(),
            30 => json!({"vector": vector(i, DIM)}).to_string(),
            40 => r#"{"id": 40, "vector": [1,2,3,4,5,6,7,"x"]}"#.to_owned(),
            50 => r#"{"id": 50, "vector": [1e39,0,0,0,0,0,0,0]}"#.to_owned(),
            _ => point(i, false).to_string(),
        };
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();
    // Abort (default): stops at line 11 and says what was written.
    let out = server.cli(&["ingest", "--collection", "c", "--batch-bytes", "200", f]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{f}:11: wrong dimension: 7 values, the collection has 8"
        )),
        "{err}"
    );
    assert!(err.contains("10 rows are written"), "{err}");
    assert_eq!(ok(&server.cli(&["count", "--collection", "c"])), "10");
    // Skip: every bad row in the reject file, exactly; everything else written.
    let rejects = dir.path().join("rejects.jsonl");
    let s = json_lines(&server.cli(&[
        "ingest",
        "--json",
        "--collection",
        "c",
        "--on-error",
        "skip",
        "--reject-file",
        rejects.to_str().unwrap(),
        f,
    ]))[0]
        .clone();
    assert_eq!(s["upserted"], 95);
    assert_eq!(s["rejected"], 5);
    let got: Vec<Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = got.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![11, 21, 31, 41, 51]);
    assert!(got.iter().all(|r| r["file"] == f));
    assert!(
        got[0]["reason"]
            .as_str()
            .unwrap()
            .contains("wrong dimension")
    );
    assert!(got[1]["reason"].as_str().unwrap().contains("invalid JSON"));
    assert!(got[2]["reason"].as_str().unwrap().contains("missing id"));
    assert!(
        got[3]["reason"]
            .as_str()
            .unwrap()
            .contains("is not a number")
    );
    assert!(
        got[4]["reason"]
            .as_str()
            .unwrap()
            .contains("not a finite number")
    );
    assert_eq!(ok(&server.cli(&["count", "--collection", "c"])), "95");
    // A truncated binary file is an error naming the row.
    let fv = dir.path().join("t.fvecs");
    let mut b = Vec::new();
    for i in 0..3u64 {
        b.extend_from_slice(&(DIM as i32).to_le_bytes());
        for x in vector(i, DIM) {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    b.truncate(b.len() - 5);
    std::fs::write(&fv, b).unwrap();
    let out = server.cli(&["ingest", "--collection", "c", fv.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("row 3: truncated"), "{err}");
}

/// Peak resident memory of a process so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_ingest_resumes_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &[("QUIVER__STORAGE__FSYNC", "never")]).await;
    let dim = 64usize;
    ok(&server.cli(&[
        "collection",
        "create",
        "big",
        "--dim",
        "64",
        "--metric",
        "l2",
    ]));
    // 300k × 64 floats: a 78 MB file, more than the 64 MiB the client may use.
    let rows = 300_000u64;
    let file = dir.path().join("big.fvecs");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..rows {
            w.write_all(&(dim as i32).to_le_bytes()).unwrap();
            for j in 0..dim {
                w.write_all(&(((i * 31 + j as u64) % 1000) as f32).to_le_bytes())
                    .unwrap();
            }
        }
    }
    let cp = dir.path().join("big.checkpoint");
    let args = |resume: bool| {
        let mut a = vec![
            "--addr".to_owned(),
            server.addr.clone(),
            "ingest".into(),
            "--quiet".into(),
            "--collection".into(),
            "big".into(),
            "--checkpoint".into(),
            cp.display().to_string(),
            file.display().to_string(),
        ];
        if resume {
            a.push("--resume".into());
        }
        a
    };
    // Interrupt: kill the CLI once some batches are acknowledged (the checkpoint exists).
    let mut child = Command::new(bin("quiver"))
        .args(args(false))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !cp.exists() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint written");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial: u64 = ok(&server.cli(&["count", "--collection", "big"]))
        .parse()
        .unwrap();
    assert!(partial < rows, "killed before the end ({partial} rows)");
    // Resume, watching the client's peak memory.
    let mut child = Command::new(bin("quiver"))
        .args(args(true))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(p) = peak_rss_kib(pid) {
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "resume failed");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        ok(&server.cli(&["count", "--collection", "big"])),
        rows.to_string(),
        "every row exactly once (ids are row numbers, so a duplicate would not add to the count, and a loss would subtract)"
    );
    let got = json_lines(&server.cli(&["get", "--collection", "big", "0", "299999"]));
    assert_eq!(got.len(), 2);
    assert!(
        !cp.exists(),
        "the checkpoint is removed when the ingest completes"
    );
    assert!(
        peak > 0 && peak < 64 * 1024,
        "client peak RSS {peak} KiB for a 78 MB file"
    );
}
