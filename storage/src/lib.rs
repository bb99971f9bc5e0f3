//! Quiver's storage engine: synchronous, no async runtime, no protobuf, no network.
//!
//! [`Engine`] owns the data directory; a [`Collection`] owns a WAL, a mutable in-memory
//! segment, sealed memory-mapped segments and its entries in the metadata store (RocksDB).
//! Every search here is exact: it is the reference later indexes are tested against.
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod background;
pub mod collection;
mod cpu;
pub mod distance;
pub mod engine;
pub mod error;
pub mod filter;
pub mod fsutil;
pub mod index;
pub mod meta;
pub mod mmap;
pub mod mutation;
pub mod payload_index;
pub mod rng;
pub mod segment;
pub mod text;
pub mod types;
pub mod wal;

pub use collection::{Collection, CollectionStats};
pub use engine::{AuxOp, AuxSpace, AuxStore, Engine, EngineOptions};
pub use error::{Error, Result};
pub use mutation::{Applied, Encoded, Mutation};
pub use segment::RowKey;
pub use types::{
    CollectionConfig, DEFAULT_PQ_BITS, DEFAULT_SEGMENT_MAX_ROWS, Hit, IndexConfig, IndexKind,
    Metric, PointId, PointRecord, PointWrite, ReadOptions, SearchParams,
};
pub use wal::{FsyncPolicy, Lsn};
