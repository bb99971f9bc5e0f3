//! The only place that memory-maps files.
//!
//! Contract (write-once, read-many): a file is mapped only after it was completely written,
//! fsynced and renamed into place, and Quiver never truncates, rewrites or appends to a mapped
//! file afterwards; files are removed only after every mapping of them is dropped (readers hold
//! an `Arc` to the segment that owns the map). Another process modifying the data directory
//! underneath a running server is outside this contract.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A read-only memory map of a write-once file.
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
    path: PathBuf,
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = fs_err::File::open(path)?;
        // SAFETY: the file is one of Quiver's write-once segment files (see the module
        // contract): it is complete and is never modified or truncated while this map lives,
        // so the mapped bytes cannot change under the `&[u8]` this type hands out.
        let map = unsafe { memmap2::Mmap::map(file.file()) }.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("mmap {}: {e}", path.display()),
            ))
        })?;
        Ok(MappedFile {
            map,
            path: path.to_path_buf(),
        })
    }

    /// Tells the kernel that this map is read at random places (`MADV_RANDOM`): a page fault
    /// reads that page, not the read-ahead window around it. For the vectors and ids of an
    /// indexed segment, read a few rows per query: with read-ahead, a cold page cache under a
    /// memory budget smaller than the file turned each re-ranked row into 128 KiB or more of
    /// disk reads that evicted the hot index pages (benches/README.md, "Serving under a memory
    /// budget"). Pages already cached are unaffected. Best effort: on failure, or where the
    /// advice does not exist, reads stay correct, only read-ahead stays on.
    pub fn advise_random(&self) {
        #[cfg(unix)]
        if let Err(e) = self.map.advise(memmap2::Advice::Random) {
            tracing::debug!(path = %self.path.display(), error = %e, "madvise(MADV_RANDOM) failed");
        }
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
