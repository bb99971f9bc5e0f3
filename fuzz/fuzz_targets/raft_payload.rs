//! Raft payloads from peers: any bytes, decoded as the internal messages and log commands,
//! give a value or an error within the byte limit, never a panic or a runaway allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quiver_proto::internal::RaftBytes;
use quiver_server::cluster::TypeConfig;
use quiver_server::cluster::command::{Command, Mutation};
use quiver_server::cluster::net::decode;

fuzz_target!(|data: &[u8]| {
    let b = RaftBytes {
        data: data.to_vec(),
    };
    if let Ok(c) = decode::<Command>(&b) {
        let _ = Mutation::decode(&c);
    }
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&b);
    let _ = decode::<openraft::raft::VoteRequest<u64>>(&b);
    if let Ok(r) = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&b) {
        let _ = quiver_server::cluster::sm::check_snapshot_id(&r.meta.snapshot_id);
    }
    // A log command's small part is JSON (nesting capped by serde_json).
    if let Ok(w) = Mutation::decode(&Command {
        op: data.to_vec(),
        data: Vec::new(),
    }) {
        let _ = w.encode();
    }
});
