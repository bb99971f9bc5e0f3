//! The RocksDB implementation of [`MetaStore`]: one column family per [`Space`]. The only file
//! that names `rocksdb`.
use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, Options, WriteBatch,
    WriteOptions,
};

use crate::error::{Error, Result};
use crate::meta::{MetaMemory, MetaOp, MetaStore, Space};

/// RocksDB-backed metadata.
#[derive(Debug)]
pub struct RocksStore {
    db: DB,
}

const SPACES: [Space; 6] = [
    Space::Catalog,
    Space::Ids,
    Space::Payloads,
    Space::App,
    Space::Audit,
    Space::Raft,
];

fn cf_name(space: Space) -> &'static str {
    match space {
        Space::Catalog => "catalog",
        Space::Ids => "ids",
        Space::Payloads => "payloads",
        Space::App => "app",
        Space::Audit => "audit",
        Space::Raft => "raft",
    }
}

fn meta_err(e: rocksdb::Error) -> Error {
    Error::Meta(e.into_string())
}

/// Memtable memory of the whole database.
const MEMTABLE_BUDGET: usize = 64 << 20;

impl RocksStore {
    /// Opens or creates the database in `dir`.
    pub fn open(dir: &Path) -> Result<RocksStore> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // Memtables of all column families together stay under 64 MiB (flushed beyond it):
        // without a cap each of the six may hold 2 x 64 MiB, and a process rewriting id maps
        // (seals, compactions) grows by that much.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cf = |name: &str, compression: DBCompressionType| {
            let mut o = Options::default();
            o.set_write_buffer_size(MEMTABLE_BUDGET / 4);
            o.set_compression_type(compression);
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(name, o)
        };
        let cfs = vec![
            cf("catalog", DBCompressionType::None),
            cf("ids", DBCompressionType::Lz4),
            cf("payloads", DBCompressionType::Zstd),
            cf("app", DBCompressionType::Lz4),
            cf("audit", DBCompressionType::Zstd),
            cf("raft", DBCompressionType::Lz4),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(meta_err)?;
        Ok(RocksStore { db })
    }

    fn cf(&self, space: Space) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(cf_name(space))
            .ok_or_else(|| Error::Meta(format!("column family {} missing", cf_name(space))))
    }
}

impl MetaStore for RocksStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(space)?, key).map_err(meta_err)
    }

    fn multi_get(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(space)?;
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|s| s.to_vec())).map_err(meta_err))
            .collect()
    }

    fn write_each(&self, ops: &mut dyn Iterator<Item = MetaOp>, sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                MetaOp::Put(s, k, v) => batch.put_cf(self.cf(s)?, k, v),
                MetaOp::Delete(s, k) => batch.delete_cf(self.cf(s)?, k),
                MetaOp::DeleteRange(s, from, to) => batch.delete_range_cf(self.cf(s)?, from, to),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(meta_err)
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(space)?,
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(meta_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn scan_page(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use rocksdb::{Direction, IteratorMode};
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // The first key past every key with this prefix (prefix + 0xff.. is not enough when
        // keys are longer): increment the last byte that is not 0xff.
        let upper = {
            let mut u = prefix.to_vec();
            while u.last() == Some(&0xff) {
                u.pop();
            }
            if let Some(b) = u.last_mut() {
                *b += 1;
            }
            u
        };
        let start: Vec<u8> = match (after, reverse) {
            (Some(a), _) => a.to_vec(),
            (None, false) => prefix.to_vec(),
            (None, true) => upper.clone(),
        };
        let mode = if reverse {
            IteratorMode::From(&start, Direction::Reverse)
        } else {
            IteratorMode::From(&start, Direction::Forward)
        };
        for item in self.db.iterator_cf(self.cf(space)?, mode) {
            let (k, v) = item.map_err(meta_err)?;
            if after.is_some_and(|a| &*k == a) || (reverse && after.is_none() && *k == *upper) {
                continue;
            }
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(meta_err)
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(meta_err)
    }

    fn flush(&self) -> Result<()> {
        for s in SPACES {
            self.db.flush_cf(self.cf(s)?).map_err(meta_err)?;
        }
        Ok(())
    }

    fn memory(&self) -> MetaMemory {
        let mut m = MetaMemory::default();
        for s in SPACES {
            let Ok(cf) = self.cf(s) else { continue };
            let prop = |name: &str| {
                self.db
                    .property_int_value_cf(cf, name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            m.memtables += prop("rocksdb.cur-size-all-mem-tables");
            // Each column family has its own block cache (its own table factory).
            m.block_cache += prop("rocksdb.block-cache-usage");
            m.table_readers += prop("rocksdb.estimate-table-readers-mem");
        }
        m
    }
}
