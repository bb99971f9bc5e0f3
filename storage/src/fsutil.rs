//! File-system durability helpers shared by the WAL, segments, indexes and snapshots.
use std::path::Path;

use fs_err as fs;

use crate::error::Result;

/// fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}
