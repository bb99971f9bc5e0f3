//! proto → engine request conversion: any bytes a client can send, decoded as the API's
//! request messages and converted, give a value or a field-naming error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_proto::v1 as pb;
use quiver_server::convert;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pb::UpsertRequest::decode(data) {
        let _ = convert::points(r.points, 1 << 20);
    }
    if let Ok(r) = pb::CountRequest::decode(data) {
        let _ = convert::filter(r.filter.as_ref());
    }
    if let Ok(r) = pb::SearchRequest::decode(data) {
        let _ = convert::filter(r.filter.as_ref());
        let _ = convert::k(r.k, 10_000);
    }
    if let Ok(r) = pb::GetPointsRequest::decode(data) {
        let _ = convert::unique_point_ids(&r.ids, "ids");
    }
    if let Ok(r) = pb::CreateCollectionRequest::decode(data) {
        let _ = convert::metric(r.metric);
        let _ = convert::schema(&r.schema);
    }
    if let Ok(r) = pb::ScrollRequest::decode(data) {
        let _ = convert::cursor(&r.cursor);
    }
    if let Ok(r) = pb::UpdatePayloadRequest::decode(data) {
        let _ = convert::payload(Some(r.set_json.as_str()), "set_json", 1 << 20);
    }
});
