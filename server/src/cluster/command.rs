//! Mutating operations as log entries: what a client asked for, validated and converted by
//! the node that received it, then applied by every node in log order through [`Write::apply`]
//! (a single node applies it directly, unsequenced).
//!
//! Encoding ([`Command`]): the operation and its small arguments as JSON, points and ids in the
//! WAL's binary record layout (`quiver_storage::wal::WalRecord`), so a batch of vectors costs
//! its raw bytes in the Raft log.
use quiver_storage::collection::{PayloadLimits, PayloadUpdate};
use quiver_storage::filter::{Filter, Schema};
use quiver_storage::wal::WalRecord;
use quiver_storage::{CollectionConfig, Engine, PointId, PointWrite};
use serde::{Deserialize, Serialize};

/// A write, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create a collection.
    CreateCollection(CollectionConfig),
    /// Drop a collection.
    DropCollection(String),
    /// Declare payload fields.
    DeclareFields {
        /// Collection.
        collection: String,
        /// New fields.
        fields: Schema,
    },
    /// Insert or overwrite points.
    Upsert {
        /// Collection.
        collection: String,
        /// Points.
        points: Vec<PointWrite>,
    },
    /// Delete points by id.
    Delete {
        /// Collection.
        collection: String,
        /// Ids.
        ids: Vec<PointId>,
    },
    /// Delete the points passing a filter (evaluated by each node on the same state).
    DeleteByFilter {
        /// Collection.
        collection: String,
        /// Filter.
        filter: Filter,
    },
    /// Set or remove a collection label (service settings kept with the collection).
    SetLabel {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Value (`None` removes it).
        value: Option<String>,
    },
    /// Set (or with `None` remove) a replicated service record, e.g. an API key: stored in the
    /// engine's `app` keyspace under [`REPLICATED_PREFIX`] and carried by snapshots.
    PutRecord {
        /// Key (without the prefix).
        key: String,
        /// Value.
        value: Option<Vec<u8>>,
    },
    /// Update payloads.
    UpdatePayload {
        /// Collection.
        collection: String,
        /// Ids.
        ids: Vec<PointId>,
        /// Keys to set.
        set: serde_json::Map<String, serde_json::Value>,
        /// Keys to remove.
        unset: Vec<String>,
        /// Replace the payload instead of merging into it.
        overwrite: bool,
        /// What the update may write, decided by the node that took the request.
        limits: PayloadLimits,
    },
    /// Swap a restore's complete hidden copy in as `target` (dropping `target`'s old data) in
    /// one catalog commit.
    ReplaceCollection {
        /// The hidden copy ([`quiver_storage::types::staging_name`]).
        staging: String,
        /// The collection it becomes.
        target: String,
    },
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Points written, deleted or updated.
    pub count: u64,
    /// The collection's LSN after the write (0 for catalog changes).
    pub lsn: u64,
    /// The Raft log index of the write (0 on a single node).
    pub index: u64,
}

/// A failed write, as a gRPC status code and message (deterministic: every node gets the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `tonic::Code` as i32.
    pub code: i32,
    /// Message.
    pub message: String,
}

/// The state machine's answer to one log entry.
pub type Reply = Result<Outcome, Failure>;

/// The small part of a [`Command`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    CreateCollection {
        config: CollectionConfig,
    },
    DropCollection {
        name: String,
    },
    DeclareFields {
        collection: String,
        fields: Schema,
    },
    Upsert {
        collection: String,
    },
    Delete {
        collection: String,
    },
    DeleteByFilter {
        collection: String,
        filter: Filter,
    },
    UpdatePayload {
        collection: String,
        set: serde_json::Map<String, serde_json::Value>,
        unset: Vec<String>,
        overwrite: bool,
        #[serde(default)]
        limits: PayloadLimits,
    },
    SetLabel {
        collection: String,
        key: String,
        value: Option<String>,
    },
    PutRecord {
        key: String,
        present: bool,
    },
    ReplaceCollection {
        staging: String,
        target: String,
    },
}

/// Where replicated service records live in the `app` keyspace.
pub const REPLICATED_PREFIX: &str = quiver_storage::engine::REPLICATED_PREFIX;

/// A [`Write`] encoded for the Raft log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Command {
    /// `Op` as JSON.
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// Points or ids as a WAL record body (empty when the op has none).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Write {
    /// The collection a write targets (the created/dropped one for catalog changes).
    pub fn collection(&self) -> &str {
        match self {
            Write::CreateCollection(c) => &c.name,
            Write::DropCollection(n) => n,
            Write::DeclareFields { collection, .. }
            | Write::Upsert { collection, .. }
            | Write::Delete { collection, .. }
            | Write::DeleteByFilter { collection, .. }
            | Write::SetLabel { collection, .. }
            | Write::UpdatePayload { collection, .. } => collection,
            Write::PutRecord { .. } => "",
            Write::ReplaceCollection { target, .. } => target,
        }
    }

    /// Encodes for the log.
    pub fn encode(&self) -> Command {
        let mut data = Vec::new();
        let op = match self {
            Write::CreateCollection(config) => Op::CreateCollection {
                config: config.clone(),
            },
            Write::DropCollection(name) => Op::DropCollection { name: name.clone() },
            Write::DeclareFields { collection, fields } => Op::DeclareFields {
                collection: collection.clone(),
                fields: fields.clone(),
            },
            Write::Upsert { collection, points } => {
                // Encoding borrows the points: clone-free through a temporary record.
                WalRecord::encode_points(points, &mut data);
                Op::Upsert {
                    collection: collection.clone(),
                }
            }
            Write::Delete { collection, ids } => {
                WalRecord::encode_ids(ids, &mut data);
                Op::Delete {
                    collection: collection.clone(),
                }
            }
            Write::DeleteByFilter { collection, filter } => Op::DeleteByFilter {
                collection: collection.clone(),
                filter: filter.clone(),
            },
            Write::SetLabel {
                collection,
                key,
                value,
            } => Op::SetLabel {
                collection: collection.clone(),
                key: key.clone(),
                value: value.clone(),
            },
            Write::PutRecord { key, value } => {
                if let Some(v) = value {
                    data.extend_from_slice(v);
                }
                Op::PutRecord {
                    key: key.clone(),
                    present: value.is_some(),
                }
            }
            Write::UpdatePayload {
                collection,
                ids,
                set,
                unset,
                overwrite,
                limits,
            } => {
                WalRecord::encode_ids(ids, &mut data);
                Op::UpdatePayload {
                    collection: collection.clone(),
                    set: set.clone(),
                    unset: unset.clone(),
                    overwrite: *overwrite,
                    limits: *limits,
                }
            }
            Write::ReplaceCollection { staging, target } => Op::ReplaceCollection {
                staging: staging.clone(),
                target: target.clone(),
            },
        };
        Command {
            op: serde_json::to_vec(&op).expect("invariant: ops serialise"),
            data,
        }
    }

    /// Decodes a log entry.
    pub fn decode(c: &Command) -> Result<Write, String> {
        let op: Op = serde_json::from_slice(&c.op).map_err(|e| format!("command: {e}"))?;
        let points = || match WalRecord::decode(&c.data)? {
            WalRecord::Upsert(p) => Ok(p),
            WalRecord::Delete(_) => Err("command: expected points".to_owned()),
        };
        let ids = || match WalRecord::decode(&c.data)? {
            WalRecord::Delete(ids) => Ok(ids),
            WalRecord::Upsert(_) => Err("command: expected ids".to_owned()),
        };
        Ok(match op {
            Op::CreateCollection { config } => Write::CreateCollection(config),
            Op::DropCollection { name } => Write::DropCollection(name),
            Op::DeclareFields { collection, fields } => Write::DeclareFields { collection, fields },
            Op::Upsert { collection } => Write::Upsert {
                collection,
                points: points()?,
            },
            Op::Delete { collection } => Write::Delete {
                collection,
                ids: ids()?,
            },
            Op::DeleteByFilter { collection, filter } => {
                Write::DeleteByFilter { collection, filter }
            }
            Op::SetLabel {
                collection,
                key,
                value,
            } => Write::SetLabel {
                collection,
                key,
                value,
            },
            Op::ReplaceCollection { staging, target } => {
                Write::ReplaceCollection { staging, target }
            }
            Op::PutRecord { key, present } => Write::PutRecord {
                key,
                value: present.then(|| c.data.clone()),
            },
            Op::UpdatePayload {
                collection,
                set,
                unset,
                overwrite,
                limits,
            } => Write::UpdatePayload {
                collection,
                ids: ids()?,
                set,
                unset,
                limits,
                overwrite,
            },
        })
    }

    /// Whether the engine already holds the effect of this write at log index `seq` (it was
    /// applied before a crash and is being re-applied from the log).
    pub fn already_applied(&self, engine: &Engine, seq: u64) -> bool {
        match self {
            // A blind put: applying it again leaves the same state.
            Write::PutRecord { .. } => false,
            Write::CreateCollection(_)
            | Write::DropCollection(_)
            | Write::ReplaceCollection { .. } => seq <= engine.catalog_seq(),
            Write::DeclareFields { .. }
            | Write::Upsert { .. }
            | Write::Delete { .. }
            | Write::DeleteByFilter { .. }
            | Write::SetLabel { .. }
            | Write::UpdatePayload { .. } => engine
                .collection_or_staging(self.collection())
                .is_ok_and(|c| seq <= c.applied_seq()),
        }
    }

    /// Applies the write, stamped with log index `seq` (0 on a single node). Blocking.
    pub fn apply(self, engine: &Engine, seq: u64) -> Result<Outcome, quiver_storage::Error> {
        let done = |count: u64, lsn: u64| Outcome {
            count,
            lsn,
            index: seq,
        };
        match self {
            Write::CreateCollection(config) => {
                engine.create_collection_seq(config, seq)?;
                Ok(done(0, 0))
            }
            Write::DropCollection(name) => {
                engine.drop_collection_seq(&name, seq)?;
                Ok(done(0, 0))
            }
            Write::ReplaceCollection { staging, target } => {
                let c = engine.replace_collection_seq(&staging, &target, seq)?;
                Ok(done(c.count(), 0))
            }
            Write::DeclareFields { collection, fields } => {
                let c = engine.collection_or_staging(&collection)?;
                c.declare_fields_seq(&fields, seq)?;
                Ok(done(0, c.last_lsn()))
            }
            Write::Upsert { collection, points } => {
                let n = points.len() as u64;
                let lsn = engine
                    .collection_or_staging(&collection)?
                    .upsert_seq(points, seq)?;
                Ok(done(n, lsn))
            }
            Write::Delete { collection, ids } => {
                let (n, lsn) = engine
                    .collection_or_staging(&collection)?
                    .delete_seq(ids, seq)?;
                Ok(done(n, lsn))
            }
            Write::DeleteByFilter { collection, filter } => {
                let (n, lsn) = engine
                    .collection_or_staging(&collection)?
                    .delete_by_filter_seq(&filter, seq)?;
                Ok(done(n, lsn))
            }
            Write::PutRecord { key, value } => {
                let k = format!("{REPLICATED_PREFIX}{key}").into_bytes();
                let op = match value {
                    Some(v) => quiver_storage::AuxOp::Put(k, v),
                    None => quiver_storage::AuxOp::Delete(k),
                };
                engine
                    .aux()
                    .batch(quiver_storage::AuxSpace::App, vec![op], true)?;
                Ok(done(0, 0))
            }
            Write::SetLabel {
                collection,
                key,
                value,
            } => {
                let c = engine.collection_or_staging(&collection)?;
                c.set_label_seq(&key, value.as_deref(), seq)?;
                Ok(done(0, c.last_lsn()))
            }
            Write::UpdatePayload {
                collection,
                ids,
                set,
                unset,
                overwrite,
                limits,
            } => {
                let mode = if overwrite {
                    PayloadUpdate::Overwrite
                } else {
                    PayloadUpdate::Merge
                };
                let (n, lsn) = engine
                    .collection_or_staging(&collection)?
                    .update_payload_seq(&ids, &set, &unset, mode, limits, seq)?;
                Ok(done(n, lsn))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_roundtrip_through_bincode() {
        let writes = vec![
            Write::Upsert {
                collection: "c".into(),
                points: vec![PointWrite {
                    id: PointId::Num(7),
                    vector: vec![1.0, -2.5],
                    payload: Some(br#"{"a":1}"#.to_vec()),
                }],
            },
            Write::Delete {
                collection: "c".into(),
                ids: vec![PointId::Num(1)],
            },
            Write::DropCollection("c".into()),
            Write::UpdatePayload {
                collection: "c".into(),
                ids: vec![PointId::Num(2)],
                set: serde_json::from_str(r#"{"k":"v"}"#).unwrap(),
                unset: vec!["x".into()],
                overwrite: true,
                limits: PayloadLimits {
                    per_point: 10,
                    total: 20,
                },
            },
        ];
        for w in writes {
            let bytes = bincode::serialize(&w.encode()).unwrap();
            let back: Command = bincode::deserialize(&bytes).unwrap();
            assert_eq!(Write::decode(&back).unwrap(), w);
        }
    }
}
