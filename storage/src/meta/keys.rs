//! The key layout of the metadata store, and the codecs that build and parse its keys (and the
//! small binary values of the id map), for the spaces the engine reads: catalog, ids and
//! payloads. The services' spaces (app, audit, raft) have layouts of their own.
//!
//! | space | key | value |
//! |---|---|---|
//! | catalog | `c/{name}` (`catalog_key`) | collection record (JSON) |
//! | catalog | `next_uid` | u64 LE |
//! | catalog | `catalog_seq` | u64 LE: sequence number of the last catalog change |
//! | catalog | `import_pending` | present while an import is unfinished |
//! | ids | collection uid (u64 BE) + [`crate::PointId::encode_into`] (`point_key`) | segment id u64 LE + row u32 LE (`encode_location`) |
//! | payloads | same as ids | payload JSON text |
//!
//! Keys of one collection in the ids and payloads spaces share the prefix of its uid, so
//! `collection_range` covers all of them.
use crate::segment::SegmentId;
use crate::types::PointId;

/// Prefix of every collection's catalog record.
pub(crate) const CATALOG_PREFIX: &[u8] = b"c/";
/// The next collection uid.
pub(crate) const NEXT_UID: &[u8] = b"next_uid";
/// The sequence number (Raft log index) of the last catalog change.
pub(crate) const CATALOG_SEQ: &[u8] = b"catalog_seq";
/// Present while an import is unfinished.
pub(crate) const IMPORT_PENDING: &[u8] = b"import_pending";

/// Catalog key of a collection.
pub(crate) fn catalog_key(name: &str) -> Vec<u8> {
    format!("c/{name}").into_bytes()
}

/// Metadata key of `id` in collection `uid`.
pub(crate) fn point_key(uid: u64, id: &PointId) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&uid.to_be_bytes());
    id.encode_into(&mut k);
    k
}

/// `[from, to)` covering every id-map and payload key of collection `uid`.
pub(crate) fn collection_range(uid: u64) -> (Vec<u8>, Vec<u8>) {
    (uid.to_be_bytes().to_vec(), (uid + 1).to_be_bytes().to_vec())
}

/// The id map's value: where a sealed row lives.
pub(crate) fn encode_location(seg: SegmentId, row: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&seg.to_le_bytes());
    v.extend_from_slice(&row.to_le_bytes());
    v
}

/// Parses an id-map value; `None` when it is malformed.
pub(crate) fn decode_location(v: &[u8]) -> Option<(SegmentId, u32)> {
    let seg = u64::from_le_bytes(v.get(0..8)?.try_into().ok()?);
    let row = u32::from_le_bytes(v.get(8..12)?.try_into().ok()?);
    Some((seg, row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip_and_short_values_are_refused() {
        let v = encode_location(7, 42);
        assert_eq!(decode_location(&v), Some((7, 42)));
        assert_eq!(decode_location(&v[..11]), None);
    }

    #[test]
    fn a_collection_range_holds_its_point_keys_only() {
        let (from, to) = collection_range(5);
        let mine = point_key(5, &PointId::Num(u64::MAX));
        let next = point_key(6, &PointId::Num(0));
        assert!(from <= mine && mine < to);
        assert!(next >= to);
        assert!(catalog_key("x").starts_with(CATALOG_PREFIX));
    }
}
