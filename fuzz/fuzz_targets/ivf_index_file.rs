//! The IVF-PQ index file: the fuzzer's bytes as `ivfpq.idx` open or are refused, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_storage::Metric;
use quiver_storage::index::ivf::IvfPqIndex;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(quiver_storage::index::ivf::FILE_NAME), data).expect("write");
    let _ = IvfPqIndex::open(dir.path(), 8, Metric::L2, 64);
});
