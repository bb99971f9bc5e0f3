//! The one mutation type: every change to an engine's state, whoever asked for it.
//!
//! A single node applies a [`Mutation`] directly ([`Engine::apply`] with `seq` 0). A cluster
//! orders mutations in its replicated log and every node applies each one with its log index
//! as `seq`; [`Engine::already_applied`] tells a node replaying its log after a crash which
//! entries it holds already. Replication only transports and orders [`Encoded`] mutations.
//!
//! Encoding ([`Encoded`]): the operation and its small arguments as JSON, points and ids in the
//! WAL's binary record layout ([`crate::wal::WalRecord`]), so a batch of vectors costs its raw
//! bytes in the log.
//!
//! Besides collections, mutations write *records*: small values in the `app` keyspace under
//! [`REPLICATED_PREFIX`], carried by snapshots. A record can be put blind ([`Mutation::PutRecord`],
//! e.g. an API key), compared and set ([`Mutation::CasRecord`], e.g. a review decision) or be
//! a counter with a ceiling ([`Mutation::AddCounter`], e.g. a token budget). Record mutations
//! are serialised, and each writes the `seq` it was applied at in the same atomic batch, so a
//! replay after a crash never counts twice.
use serde::{Deserialize, Serialize};

use crate::collection::{PayloadLimits, PayloadUpdate};
use crate::engine::{AuxOp, AuxSpace, Engine, REPLICATED_PREFIX};
use crate::error::{Error, Result};
use crate::filter::{Filter, Schema};
use crate::types::{CollectionConfig, PointId, PointWrite};
use crate::wal::WalRecord;

/// A change to the engine, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
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
    /// Set (or with `None` remove) a record, whatever it held.
    PutRecord {
        /// Key (without the prefix).
        key: String,
        /// Value.
        value: Option<Vec<u8>>,
    },
    /// Set (or with `None` remove) a record only if it now holds `expect` (`None`: absent);
    /// otherwise fails with [`Error::Conflict`] and changes nothing.
    CasRecord {
        /// Key (without the prefix).
        key: String,
        /// The value it must hold now.
        expect: Option<Vec<u8>>,
        /// Its new value.
        value: Option<Vec<u8>>,
    },
    /// Adds `delta` to a counter record (absent = 0, floored at 0). With a `ceiling`, a
    /// positive delta that would take the counter past it fails with [`Error::TooLarge`] and
    /// changes nothing: check and take in one step, in log order.
    AddCounter {
        /// Key (without the prefix).
        key: String,
        /// Amount.
        delta: i64,
        /// The most the counter may reach through this addition.
        ceiling: Option<u64>,
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
        /// The hidden copy ([`crate::types::staging_name`]).
        staging: String,
        /// The collection it becomes.
        target: String,
    },
}

/// What a mutation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Points written, deleted or updated; a counter's new value.
    pub count: u64,
    /// The collection's LSN after the write (0 for catalog changes and records).
    pub lsn: u64,
    /// The sequence number (log index) it was applied at (0 on a single node).
    pub index: u64,
}

/// The small part of an [`Encoded`] mutation.
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
    /// `data`: the expected value's length (u32 LE, `u32::MAX` = absent), then it, then the
    /// new value (absent when `present` is false).
    CasRecord {
        key: String,
        present: bool,
    },
    AddCounter {
        key: String,
        delta: i64,
        ceiling: Option<u64>,
    },
}

/// A [`Mutation`] encoded for a log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Encoded {
    /// The operation as JSON.
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// Points, ids or record bytes (empty when the op has none).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The most a record's value may hold (bytes): records are small state, not documents.
pub const MAX_RECORD_BYTES: usize = 4 << 20;

const ABSENT: u32 = u32::MAX;

/// The `app` key holding the sequence number of the last record mutation applied (node-local:
/// not under [`REPLICATED_PREFIX`], so no snapshot carries it).
const RECORDS_SEQ: &[u8] = b"seq/records";

impl Mutation {
    /// The collection a mutation targets (the created/dropped one for catalog changes; empty
    /// for records).
    pub fn collection(&self) -> &str {
        match self {
            Mutation::CreateCollection(c) => &c.name,
            Mutation::DropCollection(n) => n,
            Mutation::DeclareFields { collection, .. }
            | Mutation::Upsert { collection, .. }
            | Mutation::Delete { collection, .. }
            | Mutation::DeleteByFilter { collection, .. }
            | Mutation::SetLabel { collection, .. }
            | Mutation::UpdatePayload { collection, .. } => collection,
            Mutation::PutRecord { .. }
            | Mutation::CasRecord { .. }
            | Mutation::AddCounter { .. } => "",
            Mutation::ReplaceCollection { target, .. } => target,
        }
    }

    /// Whether it writes a record (not a collection or the catalog).
    pub fn is_record(&self) -> bool {
        matches!(
            self,
            Mutation::PutRecord { .. } | Mutation::CasRecord { .. } | Mutation::AddCounter { .. }
        )
    }

    /// Encodes for a log.
    pub fn encode(&self) -> Encoded {
        let mut data = Vec::new();
        let op = match self {
            Mutation::CreateCollection(config) => Op::CreateCollection {
                config: config.clone(),
            },
            Mutation::DropCollection(name) => Op::DropCollection { name: name.clone() },
            Mutation::DeclareFields { collection, fields } => Op::DeclareFields {
                collection: collection.clone(),
                fields: fields.clone(),
            },
            Mutation::Upsert { collection, points } => {
                WalRecord::encode_points(points, &mut data);
                Op::Upsert {
                    collection: collection.clone(),
                }
            }
            Mutation::Delete { collection, ids } => {
                WalRecord::encode_ids(ids, &mut data);
                Op::Delete {
                    collection: collection.clone(),
                }
            }
            Mutation::DeleteByFilter { collection, filter } => Op::DeleteByFilter {
                collection: collection.clone(),
                filter: filter.clone(),
            },
            Mutation::SetLabel {
                collection,
                key,
                value,
            } => Op::SetLabel {
                collection: collection.clone(),
                key: key.clone(),
                value: value.clone(),
            },
            Mutation::PutRecord { key, value } => {
                if let Some(v) = value {
                    data.extend_from_slice(v);
                }
                Op::PutRecord {
                    key: key.clone(),
                    present: value.is_some(),
                }
            }
            Mutation::CasRecord { key, expect, value } => {
                match expect {
                    Some(e) => {
                        let n = u32::try_from(e.len()).unwrap_or(ABSENT - 1);
                        data.extend_from_slice(&n.to_le_bytes());
                        data.extend_from_slice(e);
                    }
                    None => data.extend_from_slice(&ABSENT.to_le_bytes()),
                }
                if let Some(v) = value {
                    data.extend_from_slice(v);
                }
                Op::CasRecord {
                    key: key.clone(),
                    present: value.is_some(),
                }
            }
            Mutation::AddCounter {
                key,
                delta,
                ceiling,
            } => Op::AddCounter {
                key: key.clone(),
                delta: *delta,
                ceiling: *ceiling,
            },
            Mutation::UpdatePayload {
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
            Mutation::ReplaceCollection { staging, target } => Op::ReplaceCollection {
                staging: staging.clone(),
                target: target.clone(),
            },
        };
        Encoded {
            // Serialising plain data (strings, numbers, maps with string keys) cannot fail.
            op: serde_json::to_vec(&op).unwrap_or_default(),
            data,
        }
    }

    /// Decodes an encoded mutation (bytes from a peer: any input gives a value or an error).
    pub fn decode(c: &Encoded) -> std::result::Result<Mutation, String> {
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
            Op::CreateCollection { config } => Mutation::CreateCollection(config),
            Op::DropCollection { name } => Mutation::DropCollection(name),
            Op::DeclareFields { collection, fields } => {
                Mutation::DeclareFields { collection, fields }
            }
            Op::Upsert { collection } => Mutation::Upsert {
                collection,
                points: points()?,
            },
            Op::Delete { collection } => Mutation::Delete {
                collection,
                ids: ids()?,
            },
            Op::DeleteByFilter { collection, filter } => {
                Mutation::DeleteByFilter { collection, filter }
            }
            Op::SetLabel {
                collection,
                key,
                value,
            } => Mutation::SetLabel {
                collection,
                key,
                value,
            },
            Op::ReplaceCollection { staging, target } => {
                Mutation::ReplaceCollection { staging, target }
            }
            Op::PutRecord { key, present } => Mutation::PutRecord {
                key,
                value: present.then(|| c.data.clone()),
            },
            Op::CasRecord { key, present } => {
                let (expect, value) = split_cas(&c.data)?;
                if !present && !value.is_empty() {
                    return Err("command: a removal carries no value".into());
                }
                Mutation::CasRecord {
                    key,
                    expect,
                    value: present.then(|| value.to_vec()),
                }
            }
            Op::AddCounter {
                key,
                delta,
                ceiling,
            } => Mutation::AddCounter {
                key,
                delta,
                ceiling,
            },
            Op::UpdatePayload {
                collection,
                set,
                unset,
                overwrite,
                limits,
            } => Mutation::UpdatePayload {
                collection,
                ids: ids()?,
                set,
                unset,
                limits,
                overwrite,
            },
        })
    }
}

/// `(expected value, new value bytes)` of a CAS record's data.
fn split_cas(data: &[u8]) -> std::result::Result<(Option<Vec<u8>>, &[u8]), String> {
    let (len, rest) = data
        .split_first_chunk::<4>()
        .ok_or("command: compare-and-set data is truncated")?;
    let len = u32::from_le_bytes(*len);
    if len == ABSENT {
        return Ok((None, rest));
    }
    let len = len as usize;
    if len > rest.len() {
        return Err(format!(
            "command: compare-and-set expects {len} bytes, {} remain",
            rest.len()
        ));
    }
    let (e, v) = rest.split_at(len);
    Ok((Some(e.to_vec()), v))
}

fn record_key(key: &str) -> Result<Vec<u8>> {
    if key.is_empty() || key.len() > 512 {
        return Err(Error::invalid("key", "a record key has 1 to 512 bytes"));
    }
    Ok(format!("{REPLICATED_PREFIX}{key}").into_bytes())
}

fn check_value(v: &Option<Vec<u8>>) -> Result<()> {
    match v {
        Some(v) if v.len() > MAX_RECORD_BYTES => Err(Error::TooLarge {
            field: "value".into(),
            detail: format!(
                "a record holds at most {MAX_RECORD_BYTES} bytes, this one {}",
                v.len()
            ),
        }),
        _ => Ok(()),
    }
}

fn decode_counter(v: &[u8]) -> Result<u64> {
    Ok(u64::from_le_bytes(v.try_into().map_err(|_| {
        Error::invalid("key", format!("holds {} bytes, not a counter", v.len()))
    })?))
}

impl Engine {
    /// Whether the engine already holds the effect of `m` applied at sequence number `seq` (it
    /// was applied before a crash and is being replayed). Always false for `seq` 0.
    pub fn already_applied(&self, m: &Mutation, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        match m {
            Mutation::PutRecord { .. }
            | Mutation::CasRecord { .. }
            | Mutation::AddCounter { .. } => seq <= self.records_seq().unwrap_or(0),
            Mutation::CreateCollection(_)
            | Mutation::DropCollection(_)
            | Mutation::ReplaceCollection { .. } => seq <= self.catalog_seq(),
            Mutation::DeclareFields { .. }
            | Mutation::Upsert { .. }
            | Mutation::Delete { .. }
            | Mutation::DeleteByFilter { .. }
            | Mutation::SetLabel { .. }
            | Mutation::UpdatePayload { .. } => self
                .collection_or_staging(m.collection())
                .is_ok_and(|c| seq <= c.applied_seq()),
        }
    }

    /// Applies `m`, stamped with sequence number `seq` (0 on a single node). Blocking.
    pub fn apply(&self, m: Mutation, seq: u64) -> Result<Applied> {
        let done = |count: u64, lsn: u64| Applied {
            count,
            lsn,
            index: seq,
        };
        match m {
            Mutation::CreateCollection(config) => {
                self.create_collection_seq(config, seq)?;
                Ok(done(0, 0))
            }
            Mutation::DropCollection(name) => {
                self.drop_collection_seq(&name, seq)?;
                Ok(done(0, 0))
            }
            Mutation::ReplaceCollection { staging, target } => {
                let c = self.replace_collection_seq(&staging, &target, seq)?;
                Ok(done(c.count(), 0))
            }
            Mutation::DeclareFields { collection, fields } => {
                let c = self.collection_or_staging(&collection)?;
                c.declare_fields_seq(&fields, seq)?;
                Ok(done(0, c.last_lsn()))
            }
            Mutation::Upsert { collection, points } => {
                let n = points.len() as u64;
                let lsn = self
                    .collection_or_staging(&collection)?
                    .upsert_seq(points, seq)?;
                Ok(done(n, lsn))
            }
            Mutation::Delete { collection, ids } => {
                let (n, lsn) = self
                    .collection_or_staging(&collection)?
                    .delete_seq(ids, seq)?;
                Ok(done(n, lsn))
            }
            Mutation::DeleteByFilter { collection, filter } => {
                let (n, lsn) = self
                    .collection_or_staging(&collection)?
                    .delete_by_filter_seq(&filter, seq)?;
                Ok(done(n, lsn))
            }
            Mutation::SetLabel {
                collection,
                key,
                value,
            } => {
                let c = self.collection_or_staging(&collection)?;
                c.set_label_seq(&key, value.as_deref(), seq)?;
                Ok(done(0, c.last_lsn()))
            }
            Mutation::UpdatePayload {
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
                let (n, lsn) = self
                    .collection_or_staging(&collection)?
                    .update_payload_seq(&ids, &set, &unset, mode, limits, seq)?;
                Ok(done(n, lsn))
            }
            Mutation::PutRecord { key, value } => {
                let k = record_key(&key)?;
                check_value(&value)?;
                let _g = self.records_lock();
                self.write_record(k, value, seq)?;
                Ok(done(0, 0))
            }
            Mutation::CasRecord { key, expect, value } => {
                let k = record_key(&key)?;
                check_value(&value)?;
                let _g = self.records_lock();
                let now = self.aux().get(AuxSpace::App, &k)?;
                if now != expect {
                    return Err(Error::Conflict {
                        key,
                        detail: match (now.is_some(), expect.is_some()) {
                            (true, false) => "it exists already".into(),
                            (false, _) => "it does not exist".into(),
                            (true, true) => "it was changed by another write".into(),
                        },
                    });
                }
                self.write_record(k, value, seq)?;
                Ok(done(0, 0))
            }
            Mutation::AddCounter {
                key,
                delta,
                ceiling,
            } => {
                let k = record_key(&key)?;
                let _g = self.records_lock();
                let now = match self.aux().get(AuxSpace::App, &k)? {
                    Some(v) => decode_counter(&v)?,
                    None => 0,
                };
                let next = if delta >= 0 {
                    now.saturating_add(delta.unsigned_abs())
                } else {
                    now.saturating_sub(delta.unsigned_abs())
                };
                if let Some(most) = ceiling
                    && delta > 0
                    && next > most
                {
                    return Err(Error::TooLarge {
                        field: key,
                        detail: format!(
                            "the counter is at {now}; adding {delta} would pass its ceiling {most}"
                        ),
                    });
                }
                self.write_record(k, Some(next.to_le_bytes().to_vec()), seq)?;
                Ok(done(next, 0))
            }
        }
    }

    /// A record's value.
    pub fn record(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.aux().get(AuxSpace::App, &record_key(key)?)
    }

    /// A counter record's value (0 when absent).
    pub fn counter(&self, key: &str) -> Result<u64> {
        match self.record(key)? {
            Some(v) => decode_counter(&v),
            None => Ok(0),
        }
    }

    /// A page of records whose key (without the prefix) starts with `prefix`, after the key
    /// `after`, in key order: `(key, value)` with the key as given to the mutations.
    pub fn records(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let p = format!("{REPLICATED_PREFIX}{prefix}");
        let after = after.map(|a| format!("{REPLICATED_PREFIX}{a}"));
        let page = self.aux().scan(
            AuxSpace::App,
            p.as_bytes(),
            after.as_deref().map(str::as_bytes),
            limit,
            false,
        )?;
        Ok(page
            .into_iter()
            .map(|(k, v)| {
                let k = String::from_utf8_lossy(&k[REPLICATED_PREFIX.len()..]).into_owned();
                (k, v)
            })
            .collect())
    }

    fn write_record(&self, k: Vec<u8>, value: Option<Vec<u8>>, seq: u64) -> Result<()> {
        let mut ops = vec![match value {
            Some(v) => AuxOp::Put(k, v),
            None => AuxOp::Delete(k),
        }];
        if seq > 0 {
            ops.push(AuxOp::Put(RECORDS_SEQ.to_vec(), seq.to_le_bytes().to_vec()));
        }
        self.aux().batch(AuxSpace::App, ops, true)
    }

    /// Serialises record mutations on this engine (their read-modify-write).
    fn records_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn records_seq(&self) -> Result<u64> {
        match self.aux().get(AuxSpace::App, RECORDS_SEQ)? {
            Some(v) => decode_counter(&v),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Engine::open(dir.path(), Default::default()).expect("open");
        (dir, e)
    }

    #[test]
    fn mutations_roundtrip_through_their_encoding() {
        let ms = vec![
            Mutation::Upsert {
                collection: "c".into(),
                points: vec![PointWrite {
                    id: PointId::Num(7),
                    vector: vec![1.0, -2.5],
                    payload: Some(br#"{"a":1}"#.to_vec()),
                }],
            },
            Mutation::Delete {
                collection: "c".into(),
                ids: vec![PointId::Num(1)],
            },
            Mutation::DropCollection("c".into()),
            Mutation::UpdatePayload {
                collection: "c".into(),
                ids: vec![PointId::Num(2)],
                set: serde_json::from_str(r#"{"k":"v"}"#).expect("json"),
                unset: vec!["x".into()],
                overwrite: true,
                limits: PayloadLimits {
                    per_point: 10,
                    total: 20,
                },
            },
            Mutation::PutRecord {
                key: "k".into(),
                value: Some(vec![1, 2]),
            },
            Mutation::PutRecord {
                key: "k".into(),
                value: None,
            },
            Mutation::CasRecord {
                key: "r".into(),
                expect: None,
                value: Some(b"new".to_vec()),
            },
            Mutation::CasRecord {
                key: "r".into(),
                expect: Some(b"old".to_vec()),
                value: Some(Vec::new()),
            },
            Mutation::CasRecord {
                key: "r".into(),
                expect: Some(Vec::new()),
                value: None,
            },
            Mutation::AddCounter {
                key: "n".into(),
                delta: -3,
                ceiling: Some(9),
            },
        ];
        for m in ms {
            assert_eq!(Mutation::decode(&m.encode()).expect("decodes"), m, "{m:?}");
        }
    }

    #[test]
    fn truncated_compare_and_set_data_is_an_error() {
        let mut e = Mutation::CasRecord {
            key: "r".into(),
            expect: Some(b"abcdef".to_vec()),
            value: None,
        }
        .encode();
        e.data.truncate(6);
        let err = Mutation::decode(&e).expect_err("truncated");
        assert!(err.contains("expects 6 bytes, 2 remain"), "{err}");
    }

    #[test]
    fn compare_and_set_applies_only_over_the_expected_value() {
        let (_d, e) = engine();
        let put = |expect: Option<&[u8]>, value: Option<&[u8]>| {
            e.apply(
                Mutation::CasRecord {
                    key: "review/1".into(),
                    expect: expect.map(<[u8]>::to_vec),
                    value: value.map(<[u8]>::to_vec),
                },
                0,
            )
        };
        put(None, Some(b"pending")).expect("create");
        let again = put(None, Some(b"pending")).expect_err("exists");
        assert!(matches!(again, Error::Conflict { .. }), "{again}");
        put(Some(b"pending"), Some(b"approved")).expect("decide");
        let late = put(Some(b"pending"), Some(b"rejected")).expect_err("decided");
        assert!(
            late.to_string().contains("changed by another write"),
            "{late}"
        );
        assert_eq!(
            e.record("review/1").expect("read"),
            Some(b"approved".to_vec())
        );
        put(Some(b"approved"), None).expect("remove");
        assert_eq!(e.record("review/1").expect("read"), None);
    }

    #[test]
    fn a_counter_stops_at_its_ceiling_and_floors_at_zero() {
        let (_d, e) = engine();
        let add = |delta: i64, ceiling: Option<u64>| {
            e.apply(
                Mutation::AddCounter {
                    key: "usage/t/1".into(),
                    delta,
                    ceiling,
                },
                0,
            )
        };
        assert_eq!(add(60, Some(100)).expect("fits").count, 60);
        let over = add(60, Some(100)).expect_err("over");
        assert!(
            over.to_string()
                .contains("at 60; adding 60 would pass its ceiling 100"),
            "{over}"
        );
        assert_eq!(e.counter("usage/t/1").expect("read"), 60);
        // A settlement (no ceiling) may go past it, and a refund floors at zero.
        assert_eq!(add(50, None).expect("settle").count, 110);
        assert_eq!(add(-500, Some(100)).expect("refund").count, 0);
    }

    #[test]
    fn replayed_record_mutations_are_recognised_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Mutation::AddCounter {
            key: "n".into(),
            delta: 5,
            ceiling: None,
        };
        {
            let e = Engine::open(dir.path(), Default::default()).expect("open");
            assert!(!e.already_applied(&m, 7));
            e.apply(m.clone(), 7).expect("apply");
            e.close().expect("close");
        }
        let e = Engine::open(dir.path(), Default::default()).expect("reopen");
        assert!(e.already_applied(&m, 7), "a replay of index 7 is skipped");
        assert!(!e.already_applied(&m, 8));
        assert!(!e.already_applied(&m, 0), "unsequenced writes always apply");
        assert_eq!(e.counter("n").expect("read"), 5);
        let page = e.records("", None, 10).expect("scan");
        assert_eq!(page, vec![("n".to_owned(), 5u64.to_le_bytes().to_vec())]);
    }

    #[test]
    fn oversized_and_malformed_records_are_refused() {
        let (_d, e) = engine();
        let big = e.apply(
            Mutation::PutRecord {
                key: "k".into(),
                value: Some(vec![0; MAX_RECORD_BYTES + 1]),
            },
            0,
        );
        assert!(matches!(big, Err(Error::TooLarge { .. })), "{big:?}");
        let empty = e.apply(
            Mutation::PutRecord {
                key: String::new(),
                value: None,
            },
            0,
        );
        assert!(
            matches!(empty, Err(Error::InvalidArgument { .. })),
            "{empty:?}"
        );
        e.apply(
            Mutation::PutRecord {
                key: "k".into(),
                value: Some(b"abc".to_vec()),
            },
            0,
        )
        .expect("put");
        let not_counter = e.apply(
            Mutation::AddCounter {
                key: "k".into(),
                delta: 1,
                ceiling: None,
            },
            0,
        );
        assert!(not_counter.is_err(), "a 3-byte record is not a counter");
    }
}
