//! The WAL record decoder: any bytes decode or fail; what decodes re-encodes to bytes that
//! decode and re-encode to themselves (compared as bytes: a NaN component is its own bits).
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_storage::wal::WalRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok((seq, rec)) = WalRecord::decode_sequenced(data) {
        let mut again = Vec::new();
        rec.encode_sequenced(seq, &mut again);
        let (seq2, rec2) =
            WalRecord::decode_sequenced(&again).expect("a re-encoded record decodes");
        let mut third = Vec::new();
        rec2.encode_sequenced(seq2, &mut third);
        assert_eq!(seq, seq2);
        assert_eq!(again, third);
    }
});
