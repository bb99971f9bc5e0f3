//! Field index files (`fields.idx`, read at open instead of re-indexing payloads): any bytes
//! are decoded or refused, never a panic or an allocation the file cannot back. The fuzzer's
//! bytes are taken as the body and given a valid CRC, so they reach the parser; what decodes
//! answers conditions and encodes back to a file that decodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_storage::filter::{Filter, parse};
use quiver_storage::payload_index::FieldIndexes;

fuzz_target!(|data: &[u8]| {
    let mut file = data.to_vec();
    file.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    let Some(f) = FieldIndexes::from_bytes(&file) else {
        return;
    };
    for text in [
        r#"k = "a""#,
        "n >= 1",
        "n < 5",
        "b = true",
        r#"t any ["x", "y"]"#,
        r#"k except ["a"]"#,
        "k exists",
        "n is null",
    ] {
        if let Ok(Filter::Cond(c)) = parse(text) {
            let _ = f.eval(&c);
        }
    }
    let again = f.to_bytes();
    let g = FieldIndexes::from_bytes(&again).expect("a decoded file re-encodes to a valid one");
    assert_eq!(g.to_bytes(), again, "encoding is deterministic");
});
