//! The IVF-PQ index file (`ivfpq.idx`, format version 3: header, centroids, codebooks, list
//! offsets, row ids, codes, and for l2 the per-entry terms, shift and list minima). The first
//! byte picks the metric and the search; the rest is the file's body, given a valid CRC so the
//! bytes reach the section parser rather than stopping at the checksum. Whatever opens must
//! answer searches (NaN and infinite floats included) without panicking, and only with rows
//! the segment has.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_storage::Metric;
use quiver_storage::index::calibrate::{Calibration, Point};
use quiver_storage::index::ivf::IvfPqIndex;

const ROWS: usize = 64;
const DIM: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let metric = match mode % 3 {
        0 => Metric::L2,
        1 => Metric::Cosine,
        _ => Metric::Dot,
    };
    let mut file = body.to_vec();
    file.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(quiver_storage::index::ivf::FILE_NAME), &file).expect("write");
    // The calibration beside it is valid (its own format has its own checks): without it the
    // index is refused before its body is read.
    Calibration {
        queries: 0,
        refine: 4,
        points: vec![Point {
            nprobe: 1,
            recall: 0.9,
            stderr: 0.01,
        }],
    }
    .write(dir.path())
    .expect("calibration");
    let Ok(Some(idx)) = IvfPqIndex::open(dir.path(), DIM, metric, ROWS) else {
        return;
    };
    let queries: [[f32; DIM]; 4] = [
        [0.5, -1.0, 2.0, 0.0, 1.0, 1.0, -3.0, 0.25],
        [0.0; DIM],
        [f32::MAX, f32::MIN, 1e-30, -1e30, 3.0, 2.0, 1.0, 0.0],
        [1.0; DIM],
    ];
    let nprobe = usize::from(mode / 3 % 8) + 1;
    let candidates = usize::from(mode / 24 % 4) * 16 + 1;
    for q in &queries {
        let top = idx.search(q, nprobe, candidates, |r| r % 5 == 0);
        for c in top.into_sorted() {
            assert!((c.key as usize) < ROWS, "a row the segment does not have");
            assert!(c.key % 5 != 0, "a deleted row came back");
        }
    }
    let qs: Vec<&[f32]> = queries.iter().map(|q| &q[..]).collect();
    let many = idx.search_many(&qs, nprobe, &[candidates; 4], |_| false);
    assert_eq!(many.len(), qs.len());
});
