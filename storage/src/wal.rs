//! The write-ahead log: a directory of append-only files of framed, checksummed records.
//!
//! File layout: a 16-byte header, then records back to back.
//!
//! | field | type | notes |
//! |---|---|---|
//! | magic | `b"QWAL"` | |
//! | version | u32 LE | 1 |
//! | first_lsn | u64 LE | LSN of the file's first record; also the file name (`{first_lsn:020}.wal`) |
//!
//! Record framing:
//!
//! | field | type | notes |
//! |---|---|---|
//! | len | u32 LE | bytes of `lsn + body` |
//! | crc | u32 LE | CRC32 (IEEE) of `lsn + body` |
//! | lsn | u64 LE | consecutive: each record's LSN is the previous one's plus one |
//! | body | `len − 8` bytes | [`WalRecord`] encoding |
//!
//! Replay checks every CRC and the LSN sequence. A damaged record at the very end of the last
//! file is a torn tail (the process died mid-write, so it was never acknowledged): it is
//! truncated away and logged. Damage anywhere else is corruption and fails the open with
//! [`Error::Corrupt`] — never skipped silently.
pub mod record;

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs_err as fs;

pub use self::record::WalRecord;
use crate::error::{Error, Result};
/// Moved to [`crate::fsutil`]; kept here for callers of `wal::sync_dir`.
pub use crate::fsutil::sync_dir;

/// A log sequence number: the position of a write in a collection's history (starts at 1).
pub type Lsn = u64;

const MAGIC: &[u8; 4] = b"QWAL";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const FRAME_LEN: usize = 8;
/// Largest record accepted on replay (a guard against reading a garbage length).
pub const MAX_RECORD_BYTES: usize = 1 << 30;

/// When the WAL is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every appended batch, before it is acknowledged (the default; survives power loss).
    PerBatch,
    /// At most once per interval (plus on close); a crash of the machine may lose the last
    /// interval of acknowledged writes, a crash of the process loses nothing.
    Interval(Duration),
    /// Never explicitly (the OS decides); for bulk loads that can be redone.
    Never,
}

/// An open WAL, positioned for appending.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    policy: FsyncPolicy,
    /// First LSN of each file, ascending; the last one is open for append.
    files: Vec<Lsn>,
    active: fs::File,
    active_len: u64,
    next_lsn: Lsn,
    last_sync: Instant,
    dirty: bool,
    scratch: Vec<u8>,
    /// Set by the first failed write or fsync: the kernel may have dropped the dirty pages
    /// and cleared the error (PostgreSQL's "fsyncgate"), so a later fsync that succeeds
    /// proves nothing. Every later append is refused until the process restarts and replays.
    failed: Option<String>,
}

fn file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.wal")
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, replaying every record with an LSN above
    /// `checkpoint` through `apply`, in order. Files wholly at or below the checkpoint are removed.
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
        checkpoint: Lsn,
        mut apply: impl FnMut(Lsn, u64, WalRecord) -> Result<()>,
    ) -> Result<Wal> {
        fs::create_dir_all(dir)?;
        let mut files = list_files(dir)?;
        // Drop files whose records are all covered by the checkpoint: a file is covered when
        // the next file starts at or below checkpoint + 1.
        while files.len() >= 2 && files[1] <= checkpoint + 1 {
            fs::remove_file(dir.join(file_name(files[0])))?;
            files.remove(0);
        }
        let mut expected: Option<Lsn> = None;
        let mut last_end = 0u64;
        let n = files.len();
        for (i, &first) in files.iter().enumerate() {
            let path = dir.join(file_name(first));
            let is_last = i + 1 == n;
            if let Some(e) = expected
                && e != first
            {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!("WAL gap: expected LSN {e}, file starts at {first}"),
                ));
            }
            let end = replay_file(&path, first, is_last, checkpoint, &mut apply)?;
            expected = Some(end.next_lsn);
            last_end = end.valid_len;
        }
        let next_lsn = expected.unwrap_or(checkpoint + 1).max(checkpoint + 1);
        if let Some(&first) = files.first()
            && first > checkpoint + 1
        {
            let path = dir.join(file_name(first));
            return Err(Error::corrupt(
                &path,
                0,
                format!(
                    "WAL starts at LSN {first} but the checkpoint is at {checkpoint}: records are missing"
                ),
            ));
        }
        let (active, active_len) = match files.last() {
            Some(&first) => {
                let path = dir.join(file_name(first));
                let f = fs::OpenOptions::new().append(true).open(&path)?;
                (f, last_end)
            }
            None => {
                files.push(next_lsn);
                (create_file(dir, next_lsn)?, HEADER_LEN)
            }
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            policy,
            files,
            active,
            active_len,
            next_lsn,
            last_sync: Instant::now(),
            dirty: false,
            scratch: Vec::new(),
            failed: None,
        })
    }

    /// The LSN the next append will get.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Appends one record and syncs it per the policy; returns its LSN. When this returns under
    /// [`FsyncPolicy::PerBatch`], the record is on stable storage.
    pub fn append(&mut self, rec: &WalRecord) -> Result<Lsn> {
        self.append_sequenced(rec, 0)
    }

    /// [`Wal::append`] with the record stamped with an external sequence number (`seq`, a Raft
    /// log index; 0 = none), which replay hands back.
    pub fn append_sequenced(&mut self, rec: &WalRecord, seq: u64) -> Result<Lsn> {
        self.check_healthy()?;
        let lsn = self.next_lsn;
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(&[0u8; FRAME_LEN]);
        buf.extend_from_slice(&lsn.to_le_bytes());
        rec.encode_sequenced(seq, buf);
        let len = buf.len() - FRAME_LEN;
        if len > MAX_RECORD_BYTES {
            return Err(Error::invalid(
                "request",
                format!("batch encodes to {len} bytes; the WAL limit is {MAX_RECORD_BYTES}"),
            ));
        }
        let crc = crc32fast::hash(&buf[FRAME_LEN..]);
        buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = self.active.write_all(buf) {
            // A partial write would leave a torn record that later appends would bury: cut it.
            let _ = self.active.set_len(self.active_len);
            return Err(self.poison("write", e));
        }
        self.active_len += buf.len() as u64;
        self.next_lsn += 1;
        self.dirty = true;
        match self.policy {
            FsyncPolicy::PerBatch => self.sync()?,
            FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync()?,
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {}
        }
        Ok(lsn)
    }

    /// fsyncs the active file if anything was written since the last sync.
    pub fn sync(&mut self) -> Result<()> {
        self.check_healthy()?;
        if self.dirty {
            if let Err(e) = self.active.sync_data() {
                return Err(self.poison("fsync", e));
            }
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Records a failed write or fsync: this WAL acknowledges nothing more.
    pub fn poison(&mut self, what: &str, e: std::io::Error) -> Error {
        let msg = format!(
            "{what} of the WAL in {} failed ({e}); writes to this collection are refused until quiverd restarts and replays its log",
            self.dir.display()
        );
        tracing::error!(error = %e, dir = %self.dir.display(), "WAL {what} failed: refusing further writes");
        self.failed = Some(msg.clone());
        Error::Io(std::io::Error::new(e.kind(), msg))
    }

    fn check_healthy(&self) -> Result<()> {
        match &self.failed {
            Some(msg) => Err(Error::Io(std::io::Error::other(msg.clone()))),
            None => Ok(()),
        }
    }

    /// A second handle on the active file, to fsync it without holding the WAL (`None` when
    /// nothing was written since the last sync). Older files were synced when they were
    /// rotated out.
    pub fn sync_handle(&self) -> Result<Option<std::fs::File>> {
        self.check_healthy()?;
        if !self.dirty {
            return Ok(None);
        }
        Ok(Some(self.active.file().try_clone()?))
    }

    /// Closes the active file (synced) and starts a new one at the next LSN, so that a later
    /// checkpoint at `next_lsn − 1` can delete every older file.
    pub fn rotate(&mut self) -> Result<()> {
        if self.active_len == HEADER_LEN {
            return Ok(());
        }
        self.sync()?;
        let first = self.next_lsn;
        self.active = create_file(&self.dir, first)?;
        self.active_len = HEADER_LEN;
        self.files.push(first);
        Ok(())
    }

    /// Removes every file all of whose records are at or below `checkpoint`.
    pub fn truncate_through(&mut self, checkpoint: Lsn) -> Result<()> {
        while self.files.len() >= 2 && self.files[1] <= checkpoint + 1 {
            fs::remove_file(self.dir.join(file_name(self.files[0])))?;
            self.files.remove(0);
        }
        Ok(())
    }

    /// Bytes of all WAL files on disk.
    pub fn bytes_on_disk(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.join(file_name(*f))).ok())
            .map(|m| m.len())
            .sum()
    }
}

pub(crate) fn list_files(dir: &Path) -> Result<Vec<Lsn>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(lsn) = stem.parse::<Lsn>()
        {
            files.push(lsn);
        } else if name.ends_with(".tmp") {
            fs::remove_file(dir.join(&*name))?;
        }
    }
    files.sort_unstable();
    Ok(files)
}

/// Writes a new file with its header via temp + fsync + rename, so a file either has a full
/// header or does not exist.
fn create_file(dir: &Path, first_lsn: Lsn) -> Result<fs::File> {
    let path = dir.join(file_name(first_lsn));
    let tmp = dir.join(format!("{}.tmp", file_name(first_lsn)));
    {
        let mut f = fs::File::create(&tmp)?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&first_lsn.to_le_bytes());
        f.write_all(&header)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(fs::OpenOptions::new().append(true).open(&path)?)
}

struct FileEnd {
    next_lsn: Lsn,
    valid_len: u64,
}

fn replay_file(
    path: &Path,
    first: Lsn,
    is_last: bool,
    checkpoint: Lsn,
    apply: &mut impl FnMut(Lsn, u64, WalRecord) -> Result<()>,
) -> Result<FileEnd> {
    let file = fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut header)
        .map_err(|_| Error::corrupt(path, 0, "WAL header is truncated"))?;
    if &header[0..4] != MAGIC {
        return Err(Error::corrupt(path, 0, "bad WAL magic"));
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if version != VERSION {
        return Err(Error::corrupt(
            path,
            4,
            format!("unsupported WAL version {version}"),
        ));
    }
    let header_lsn = u64::from_le_bytes(header[8..16].try_into().expect("invariant: 8 bytes"));
    if header_lsn != first {
        return Err(Error::corrupt(
            path,
            8,
            format!("header says first LSN {header_lsn}, name says {first}"),
        ));
    }
    let mut pos = HEADER_LEN;
    let mut next = first;
    let mut body = Vec::new();
    loop {
        if pos == file_len {
            break;
        }
        let torn = |detail: String| -> Result<FileEnd> {
            if is_last {
                tracing::warn!(path = %path.display(), offset = pos, dropped_bytes = file_len - pos, %detail, "truncating torn WAL tail");
                let f = fs::OpenOptions::new().write(true).open(path)?;
                f.set_len(pos)?;
                f.sync_all()?;
                Ok(FileEnd {
                    next_lsn: next,
                    valid_len: pos,
                })
            } else {
                Err(Error::corrupt(path, pos, detail))
            }
        };
        if file_len - pos < FRAME_LEN as u64 {
            return torn(format!("{} bytes of an incomplete frame", file_len - pos));
        }
        let mut frame = [0u8; FRAME_LEN];
        r.read_exact(&mut frame)?;
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let record_end = pos + FRAME_LEN as u64 + len as u64;
        if !(8..=MAX_RECORD_BYTES).contains(&len) {
            // A zeroed or garbage length: torn if nothing but this could follow.
            return torn(format!("invalid record length {len}"));
        }
        if record_end > file_len {
            return torn(format!(
                "record of {len} bytes runs past the end of the file"
            ));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            if record_end == file_len {
                return torn("CRC mismatch in the last record".to_owned());
            }
            return Err(Error::corrupt(
                path,
                pos,
                "CRC mismatch in a WAL record followed by more data",
            ));
        }
        let lsn = u64::from_le_bytes(body[0..8].try_into().expect("invariant: 8 bytes"));
        if lsn != next {
            return Err(Error::corrupt(
                path,
                pos,
                format!("expected LSN {next}, found {lsn}"),
            ));
        }
        if lsn > checkpoint {
            let (seq, rec) = WalRecord::decode_sequenced(&body[8..])
                .map_err(|d| Error::corrupt(path, pos, d))?;
            apply(lsn, seq, rec)?;
        }
        next += 1;
        pos = record_end;
    }
    Ok(FileEnd {
        next_lsn: next,
        valid_len: pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PointId, PointWrite};

    fn rec(i: u64) -> WalRecord {
        WalRecord::Upsert(vec![PointWrite {
            id: PointId::Num(i),
            vector: vec![i as f32, 1.0],
            payload: Some(format!("{{\"i\":{i}}}").into_bytes()),
        }])
    }

    fn replay(dir: &Path, checkpoint: Lsn) -> Result<(Wal, Vec<(Lsn, WalRecord)>)> {
        let mut got = Vec::new();
        let wal = Wal::open(dir, FsyncPolicy::PerBatch, checkpoint, |lsn, _, r| {
            got.push((lsn, r));
            Ok(())
        })?;
        Ok((wal, got))
    }

    #[test]
    fn after_a_failed_fsync_nothing_more_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = replay(dir.path(), 0).unwrap();
        w.append(&rec(1)).unwrap();
        let e = w.poison("fsync", std::io::Error::other("EIO"));
        assert!(
            e.to_string().contains("refused until quiverd restarts"),
            "{e}"
        );
        // Neither a retried fsync nor a new append pretends the data is safe.
        assert!(w.sync().is_err());
        assert!(w.append(&rec(2)).is_err());
        assert!(w.sync_handle().is_err());
        drop(w);
        // What was written before is replayed after the restart.
        let (_, got) = replay(dir.path(), 0).unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn sequence_numbers_survive_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay(dir.path(), 0).unwrap();
        wal.append_sequenced(&rec(1), 41).unwrap();
        wal.append(&rec(2)).unwrap();
        wal.append_sequenced(&rec(3), 43).unwrap();
        drop(wal);
        let mut got = Vec::new();
        Wal::open(dir.path(), FsyncPolicy::PerBatch, 0, |lsn, seq, r| {
            got.push((lsn, seq, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(1, 41, rec(1)), (2, 0, rec(2)), (3, 43, rec(3))]);
    }

    #[test]
    fn roundtrip_rotate_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, got) = replay(dir.path(), 0).unwrap();
        assert!(got.is_empty());
        for i in 1..=5 {
            assert_eq!(wal.append(&rec(i)).unwrap(), i);
        }
        wal.rotate().unwrap();
        for i in 6..=8 {
            wal.append(&rec(i)).unwrap();
        }
        drop(wal);
        let (_, got) = replay(dir.path(), 0).unwrap();
        assert_eq!(got, (1..=8).map(|i| (i, rec(i))).collect::<Vec<_>>());
        // A checkpoint at 5 skips the first file's records and removes it.
        let (mut wal, got) = replay(dir.path(), 5).unwrap();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![6, 7, 8]);
        assert_eq!(wal.files, vec![6]);
        assert_eq!(wal.append(&rec(9)).unwrap(), 9);
    }

    #[test]
    fn torn_tail_is_truncated_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay(dir.path(), 0).unwrap();
        for i in 1..=3 {
            wal.append(&rec(i)).unwrap();
        }
        drop(wal);
        let path = dir.path().join(file_name(1));
        let full = std::fs::read(&path).unwrap();
        let rec_len = (full.len() - HEADER_LEN as usize) / 3;
        let two = HEADER_LEN as usize + 2 * rec_len;
        for cut in two + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut wal, got) = replay(dir.path(), 0).unwrap();
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, two);
            // Appends continue at LSN 3 after the truncation.
            assert_eq!(wal.append(&rec(3)).unwrap(), 3);
            drop(wal);
            assert_eq!(replay(dir.path(), 0).unwrap().1.len(), 3);
        }
        // A zero-filled tail (as some filesystems leave after a crash) is torn too.
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &zeros).unwrap();
        assert_eq!(replay(dir.path(), 0).unwrap().1.len(), 3);
    }

    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay(dir.path(), 0).unwrap();
        for i in 1..=3 {
            wal.append(&rec(i)).unwrap();
        }
        drop(wal);
        let path = dir.path().join(file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN as usize + 20] ^= 0xff; // inside record 1's body
        std::fs::write(&path, &bytes).unwrap();
        match replay(dir.path(), 0) {
            Err(Error::Corrupt { offset, detail, .. }) => {
                assert_eq!(offset, HEADER_LEN);
                assert!(detail.contains("CRC"), "{detail}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn corruption_in_a_sealed_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay(dir.path(), 0).unwrap();
        wal.append(&rec(1)).unwrap();
        wal.append(&rec(2)).unwrap();
        wal.rotate().unwrap();
        wal.append(&rec(3)).unwrap();
        drop(wal);
        let path = dir.path().join(file_name(1));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(replay(dir.path(), 0), Err(Error::Corrupt { .. })));
    }
}
