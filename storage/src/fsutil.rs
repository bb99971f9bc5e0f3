//! File-system durability helpers shared by the WAL, segments, indexes and snapshots.
use std::path::Path;

use fs_err as fs;

use crate::error::Result;

/// fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Removes a directory tree, retrying when a file appears in it while it is being removed.
///
/// Background work that is already running on a segment (the served-recall audit saving
/// its record, say) can create a file in a directory between `remove_dir_all` listing it
/// and removing it, which fails with "directory not empty". The directory is already
/// unreachable by then, so removing it again is correct; a few tries bound the work.
pub fn remove_dir_all(dir: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 4 && dir.exists() => {
                tries += 1;
                tracing::debug!(dir = %dir.display(), error = %e, tries, "retrying directory removal");
                std::thread::sleep(std::time::Duration::from_millis(10 * tries));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
