//! Fuzz targets, proptest-driven (stable Rust, offline): the decoders and parsers that read
//! bytes from disk or text from users must return an error, never panic or write outside
//! their target, on any input. CI runs `QUIVER_FUZZ_CASES` cases each (default 2000, a few
//! seconds); longer runs raise it (see the README).
use std::path::Path;

use proptest::prelude::*;
use quiver_storage::PointId;
use quiver_storage::filter;
use quiver_storage::segment::sealed::{SealedSegment, write_segment};
use quiver_storage::wal::WalRecord;
use roaring::RoaringBitmap;

fn cases() -> u32 {
    std::env::var("QUIVER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Mutations of a valid byte string: flips, truncation, splices of random bytes.
fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    (
        prop::collection::vec((0..len, any::<u8>()), 0..8),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut b = base.clone();
            for (i, x) in flips {
                if i < b.len() {
                    b[i] ^= x;
                }
            }
            b.truncate(cut);
            b.extend(tail);
            b
        })
}

fn valid_wal_body() -> Vec<u8> {
    let mut out = Vec::new();
    WalRecord::Upsert(vec![quiver_storage::PointWrite {
        id: PointId::Str("doc-1".into()),
        vector: vec![0.5, -1.0, 2.0],
        payload: Some(br#"{"a":[1,2,3]}"#.to_vec()),
    }])
    .encode_sequenced(42, &mut out);
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wal_decoder_never_panics(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        mutate(valid_wal_body()),
    ]) {
        if let Ok((seq, rec)) = WalRecord::decode_sequenced(&bytes) {
            // Whatever decodes re-encodes to something that decodes the same.
            let mut again = Vec::new();
            rec.encode_sequenced(seq, &mut again);
            prop_assert_eq!(WalRecord::decode_sequenced(&again).unwrap(), (seq, rec));
        }
    }

    #[test]
    fn filter_parser_never_panics(text in prop_oneof![
        ".{0,80}",
        "[a-z_. ]{0,10}(=|!=|<|<=|>|>=| any | except | exists| is null| and | or |not |\\(|\\)|\\[|\\]|\"|,|[0-9.e+-]{1,6}|true|false){0,24}",
    ]) {
        if let Err(e) = filter::parse(&text) {
            // Errors point into the text.
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn segment_open_rejects_damage_without_panicking(
        which in 0usize..3,
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<PointId> = (0..20).map(PointId::Num).collect();
        let vectors: Vec<f32> = (0..60).map(|i| i as f32).collect();
        write_segment(dir.path(), 1, 3, &vectors, &ids, &RoaringBitmap::new()).unwrap();
        let seg = dir.path().join("1");
        let mut files: Vec<_> = std::fs::read_dir(&seg).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        let target = &files[which % files.len()];
        let mut b = std::fs::read(target).unwrap();
        if !b.is_empty() {
            for (i, x) in flips {
                let i = i.index(b.len());
                b[i] ^= x;
            }
            if truncate {
                b.truncate(cut.index(b.len()));
            }
        }
        std::fs::write(target, &b).unwrap();
        // Damage is detected (checksums, sizes, JSON) or, if the flip hit nothing checked
        // (e.g. manifest whitespace), the segment still opens: never a panic.
        let _ = SealedSegment::open(dir.path(), 1, 3, None);
    }

    #[test]
    fn snapshot_unpack_never_escapes_or_panics(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        mutate(sample_archive()),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.snap");
        std::fs::write(&archive, &bytes).unwrap();
        let target = dir.path().join("inner").join("out");
        let _ = quiver_storage::engine::unpack(&archive, &target);
        // Nothing appeared beside the target.
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = e.file_name();
            prop_assert!(name == "a.snap" || name == "inner", "{:?} escaped", name);
        }
        if let Ok(rd) = std::fs::read_dir(dir.path().join("inner")) {
            for e in rd.flatten() {
                prop_assert_eq!(e.file_name(), "out");
            }
        }
    }
}

fn sample_archive() -> Vec<u8> {
    use std::sync::OnceLock;
    static ARCHIVE: OnceLock<Vec<u8>> = OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let e =
                quiver_storage::Engine::open(&dir.path().join("db"), Default::default()).unwrap();
            e.create_collection(quiver_storage::CollectionConfig {
                name: "c".into(),
                dim: 2,
                metric: quiver_storage::Metric::L2,
                index: quiver_storage::types::IndexConfig::flat(),
                segment_max_rows: 100,
                schema: Default::default(),
                labels: Default::default(),
            })
            .unwrap();
            e.collection("c")
                .unwrap()
                .upsert(
                    (0..5)
                        .map(|i| quiver_storage::PointWrite {
                            id: PointId::Num(i),
                            vector: vec![i as f32, 1.0],
                            payload: None,
                        })
                        .collect(),
                )
                .unwrap();
            e.export(&dir.path().join("x")).unwrap();
            let out = dir.path().join("s.snap");
            quiver_storage::engine::pack(&dir.path().join("x"), &out).unwrap();
            std::fs::read(Path::new(&out)).unwrap()
        })
        .clone()
}
