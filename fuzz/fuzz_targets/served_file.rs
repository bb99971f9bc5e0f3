//! The served-recall record beside an IVF-PQ index (`ivfpq.served`: magic, CRC32, JSON of the
//! nprobe grid and each measured query's recall per nprobe). The first byte picks the index's
//! list count (so the grid the file must match) and whether the CRC is made valid, so most
//! inputs reach the JSON and range checks. Whatever opens must keep at most the window, give
//! only nprobes of the grid, and take new measurements without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_storage::index::calibrate::{SERVED_FILE, SERVED_MAGIC, SERVED_WINDOW, Served};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let nlist = usize::from(mode & 0x7f) + 1;
    let mut file = body.to_vec();
    if mode & 0x80 == 0 {
        file = SERVED_MAGIC.to_vec();
        file.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        file.extend_from_slice(body);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(SERVED_FILE), &file).expect("write");
    let served = Served::open(dir.path(), nlist);
    assert!(served.measured() <= SERVED_WINDOW, "more than the window");
    let check = |s: &Served| {
        for t in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0, 2.0, f64::NAN] {
            if let Some(n) = s.nprobe_for(t) {
                assert!(s.grid().contains(&n), "nprobe {n} is not on the grid");
            }
        }
    };
    check(&served);
    let grid = served.grid().len();
    for i in 0..40 {
        served.record(vec![(i % 3) as f32 / 2.0; grid], dir.path());
    }
    assert!(served.curve().is_some(), "40 measurements make a curve");
    check(&served);
});
