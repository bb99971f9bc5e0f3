//! Sealed segment files: a valid segment with one of its files replaced by the fuzzer's bytes
//! opens or is refused (checksums, sizes, JSON); it never panics or maps past a file's end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_storage::PointId;
use quiver_storage::segment::sealed::{SealedSegment, write_segment};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ids: Vec<PointId> = (0..8).map(PointId::Num).collect();
    let vectors: Vec<f32> = (0..24).map(|i| i as f32).collect();
    write_segment(
        dir.path(),
        1,
        3,
        &vectors,
        &ids,
        &roaring::RoaringBitmap::new(),
    )
    .expect("a valid segment");
    let seg = dir.path().join("1");
    let mut files: Vec<_> = std::fs::read_dir(&seg)
        .expect("segment dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let target = &files[usize::from(which) % files.len()];
    std::fs::write(target, bytes).expect("write");
    if let Ok(s) = SealedSegment::open(dir.path(), 1, 3, None) {
        for row in 0..s.rows() {
            let _ = s.id(row);
            let _ = s.vector(row);
        }
    }
});
