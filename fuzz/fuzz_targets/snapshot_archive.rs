//! The snapshot archive reader: any bytes unpack or fail, and nothing is ever written outside
//! the target directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("a.snap");
    std::fs::write(&archive, data).expect("write");
    let target = dir.path().join("inner").join("out");
    let _ = quiver_storage::engine::unpack(&archive, &target);
    for e in std::fs::read_dir(dir.path()).expect("dir").flatten() {
        let name = e.file_name();
        assert!(name == "a.snap" || name == "inner", "{name:?} escaped");
    }
    if let Ok(rd) = std::fs::read_dir(dir.path().join("inner")) {
        for e in rd.flatten() {
            assert_eq!(e.file_name(), "out");
        }
    }
});
