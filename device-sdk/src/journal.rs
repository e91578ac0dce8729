//! The device's durable memory: an append-only journal of the reports it
//! accepted, the confirmations it got and the signal positions it finished,
//! so a bot killed at any instant resumes exactly where it was.
//!
//! ```text
//! file   = magic "EAGATEJ1" || record* || zero bytes
//! record = u32 LE body length || u32 LE CRC-32 of body || body (postcard Record)
//! ```
//!
//! The file is extended ahead of its records with zeros written for real,
//! [`EXTEND_BY`] at a time, and records are written over them: an `fsync`
//! after a report then changes no metadata (no size, no block allocation)
//! and writes only the data (here 108 µs a report instead of 139 when
//! appending). A zero length is the end of the records.
//!
//! A report is written and `fsync`ed before it is sent and before the
//! application is told it was accepted, so a report anyone heard of is on
//! disk. Reports written by several callers at once share one `fsync`
//! (a group commit): each append gets a ticket, and one sync makes every
//! ticket written before it durable. A failed `fsync` may have lost any
//! write not yet durable (the kernel drops the dirty pages and marks them
//! clean), so the journal zeroes everything after its last durable point
//! and refuses further writes until it is opened again. Confirmations are
//! written without `fsync`, and not even at once: each rides in front of
//! the next record written (or is written when the journal is closed).
//! Losing one only means the report is sent again, and the gateway stores
//! each (device, sequence number) once; and since it is written before any
//! later report, the file never holds more unconfirmed reports than the
//! outbox. A torn record at the end (the process died mid-write) fails its
//! length or checksum, and the next open zeroes it; nothing in it was ever
//! acknowledged.
//!
//! Compaction rewrites the live state (next sequence number, unconfirmed
//! reports, positions) over the journal, in place, after writing the same
//! bytes to a recovery copy (`<device>.journal.compacted`) that is marked
//! complete only once durable: a crash in the middle of the overwrite
//! leaves a complete copy, which the next open writes over the journal
//! again, so at every instant one complete journal can be had. Nothing is
//! renamed over the open journal: Windows without POSIX rename semantics
//! (older Windows, FAT and network drives, Wine, on which MetaTrader runs
//! on macOS and Linux) refuses to replace a file that is open, and the
//! library keeps the journal open. It runs after a
//! sync that left every append durable, so no caller is waiting on a record
//! the new file holds when it fails halfway.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use eagate_protocol::{DeviceId, MAX_RESUME_POINTS, MAX_WIRE_LEN, Report, ResumePoint};
use serde::{Deserialize, Serialize};

use crate::core::{OUTBOX_CAPACITY, Snapshot};

const MAGIC: &[u8; 8] = b"EAGATEJ1";
/// What a recovery copy starts with until it is complete and durable (and
/// again once the journal holds it): anything but [`MAGIC`].
const UNFINISHED: &[u8; 8] = b"EAGATE--";
const RECORD_HEADER_LEN: usize = 8;
/// How far the file is extended with zeros ahead of its records at a time.
const EXTEND_BY: u64 = 16 * 1024;
/// Records appended since the last compaction after which the journal is
/// rewritten: it never grows past about a thousand small records (tens of
/// KB). Each compaction costs four `fsync`s, so not more often.
const COMPACT_AFTER_RECORDS: usize = 1024;

/// One entry of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Record {
    /// Opens a compacted journal: the next report sequence number.
    Start { next_seq: u64 },
    /// A report accepted into the outbox.
    Accepted(Report),
    /// The gateway stored every report up to this sequence number.
    Confirmed { up_to_seq: u64 },
    /// The application finished every signal of a channel up to here.
    Position(ResumePoint),
}

/// Why the journal could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or syncing the file failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Another process (or another client in this one) holds the journal.
    #[error(
        "journal {0} is in use by another client of the same device; \
         two clients of one device would number reports twice"
    )]
    Locked(PathBuf),
    /// A write failed and could not be undone; the journal refuses further
    /// writes until it is opened again.
    #[error("journal {0} failed earlier and refuses writes until reopened")]
    Broken(PathBuf),
}

/// The live state the journal describes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct JournalState {
    pub(crate) next_seq: u64,
    pub(crate) outbox: VecDeque<Report>,
    pub(crate) positions: Vec<ResumePoint>,
}

impl JournalState {
    fn apply(&mut self, record: &Record) {
        match record {
            Record::Start { next_seq } => {
                *self = Self {
                    next_seq: *next_seq,
                    ..Self::default()
                };
            }
            Record::Accepted(report) => {
                self.next_seq = self.next_seq.max(report.seq + 1);
                self.outbox.push_back(report.clone());
            }
            Record::Confirmed { up_to_seq } => {
                self.outbox.retain(|report| report.seq > *up_to_seq);
            }
            Record::Position(point) => {
                match self
                    .positions
                    .iter_mut()
                    .find(|p| p.channel == point.channel)
                {
                    Some(known) => known.position = known.position.max(point.position),
                    None => self.positions.push(point.clone()),
                }
            }
        }
    }

    /// The state as the session core restores it.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            next_seq: self.next_seq,
            ..Snapshot::default()
        };
        // The core holds at most OUTBOX_CAPACITY reports, and the journal
        // only records what the core accepted, so everything fits; the
        // newest would be the ones left out if it ever did not.
        for report in self.outbox.iter().take(OUTBOX_CAPACITY) {
            let _ = snapshot.outbox.push(report.clone());
        }
        for point in self.positions.iter().take(MAX_RESUME_POINTS) {
            let _ = snapshot.positions.push(point.clone());
        }
        snapshot
    }

    fn records(&self) -> impl Iterator<Item = Record> + '_ {
        std::iter::once(Record::Start {
            next_seq: self.next_seq,
        })
        .chain(self.outbox.iter().cloned().map(Record::Accepted))
        .chain(self.positions.iter().cloned().map(Record::Position))
    }
}

/// An open journal, locked against a second client of the same device.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Where the records end (and the next goes); the file's cursor.
    len: u64,
    /// The file's size: zeros from `len` up to here.
    allocated: u64,
    state: JournalState,
    appended_since_compaction: usize,
    /// A confirmation applied to the state and not yet written: it goes in
    /// front of the next record.
    unwritten_confirmation: Option<u64>,
    /// Appends so far: the ticket of the latest one.
    written: u64,
    /// Every append up to this ticket is durable.
    durable: u64,
    /// The file's length at the last durable point: what a failed sync cuts
    /// back to.
    durable_len: u64,
    /// Compactions so far: a sync started before the last one succeeding
    /// says nothing new (compaction synced everything), though its failure
    /// still counts.
    generation: u64,
    broken: bool,
    /// What was not durable was zeroed (a sync or a write failed): no sync
    /// finishing later makes any of it durable.
    cut: bool,
    // Held for the lifetime of the journal; dropping it releases the lock.
    _lock: File,
}

impl Journal {
    /// The journal file of `device_id` in `dir`.
    pub(crate) fn path_for(dir: &Path, device_id: &DeviceId) -> PathBuf {
        dir.join(format!("{}.journal", file_stem(device_id)))
    }

    /// Opens (or creates) the journal of `device_id` in `dir`, replays it,
    /// and cuts off a torn record at its end.
    pub(crate) fn open(dir: &Path, device_id: &DeviceId) -> Result<Self, JournalError> {
        let path = Self::path_for(dir, device_id);
        let io_error = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        let lock_path = dir.join(format!("{}.lock", file_stem(device_id)));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(path)),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error)?;
        finish_interrupted_compaction(&path, &mut file).map_err(io_error)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error)?;
        let (state, good_len, records) = replay(&bytes);
        // The next record goes where the replay stopped.
        file.seek(SeekFrom::Start(good_len as u64))
            .map_err(io_error)?;
        let mut journal = Self {
            path: path.clone(),
            file,
            len: good_len as u64,
            allocated: bytes.len() as u64,
            state,
            appended_since_compaction: records,
            unwritten_confirmation: None,
            written: 0,
            durable: 0,
            durable_len: good_len as u64,
            generation: 0,
            broken: false,
            cut: false,
            _lock: lock,
        };
        if good_len < MAGIC.len() {
            // New, or not even the magic survived (so nothing in it was ever
            // acknowledged): the clean file is written in place.
            journal.start_afresh_in_place().map_err(io_error)?;
        } else if let Some(last) = bytes[good_len..].iter().rposition(|byte| *byte != 0) {
            // After the last whole record there are only zeros, unless a
            // write was torn (the process died in it, so nothing in it was
            // acknowledged to anyone) or damaged: zeroed in place (no new
            // space needed, on a disk that may be full), so no half record
            // waits behind the next one.
            let file = &mut journal.file;
            file.write_all(&vec![0; last + 1])
                .and_then(|()| file.sync_data())
                .and_then(|()| file.seek(SeekFrom::Start(good_len as u64)).map(drop))
                .map_err(io_error)?;
        }
        Ok(journal)
    }

    /// What the journal holds.
    pub(crate) fn state(&self) -> &JournalState {
        &self.state
    }

    /// Appends `records`, not synced: [`Self::written`] is their ticket,
    /// durable once a sync ([`Self::begin_sync`]) covers it. A failed write
    /// is zeroed again so no half record stays in front of later ones.
    pub(crate) fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        if self.broken {
            return Err(JournalError::Broken(self.path.clone()));
        }
        let mut bytes = Vec::with_capacity(records.len() * 128 + 16);
        if let Some(up_to_seq) = self.unwritten_confirmation {
            encode_record(&Record::Confirmed { up_to_seq }, &mut bytes);
        }
        for record in records {
            encode_record(record, &mut bytes);
        }
        if let Err(source) = self.write_at_end(&bytes) {
            return Err(JournalError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += bytes.len() as u64;
        self.written += 1;
        self.unwritten_confirmation = None;
        for record in records {
            self.state.apply(record);
        }
        self.appended_since_compaction += records.len();
        Ok(())
    }

    /// Compacts once enough records piled up, and only when every append
    /// is durable: a compaction that failed halfway (its directory not
    /// synced) must find no caller waiting to be told about a report the
    /// new file already holds.
    fn compact_if_due(&mut self) {
        if self.appended_since_compaction >= COMPACT_AFTER_RECORDS && self.durable == self.written {
            // A failed compaction leaves a longer but complete journal and
            // is tried again later; it refuses nothing already accepted.
            let _ = self.compact();
        }
    }

    /// Writes `bytes` after the records, extending the file first if they do
    /// not fit in its zeros. A failed write is zeroed again, so no record
    /// its caller was told failed is found on the next open; if even that
    /// fails, the journal is broken.
    fn write_at_end(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.len + bytes.len() as u64;
        if end > self.allocated {
            // Zeros written for real: not a hole, nor an unwritten extent,
            // either of which a later `fsync` would have to allocate.
            let allocated = end.next_multiple_of(EXTEND_BY);
            let extended = self
                .file
                .seek(SeekFrom::Start(self.allocated))
                .and_then(|_| {
                    self.file
                        .write_all(&vec![0; (allocated - self.allocated) as usize])
                });
            let back = self.file.seek(SeekFrom::Start(self.len));
            extended?;
            back?;
            self.allocated = allocated;
        }
        if let Err(error) = self.file.write_all(bytes) {
            let undone = self
                .file
                .seek(SeekFrom::Start(self.len))
                .and_then(|_| self.file.write_all(&vec![0; bytes.len()]))
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)));
            if undone.is_err() {
                // The failed write's bytes may stay behind: everything not
                // durable is cut, as after a failed sync.
                self.len += bytes.len() as u64;
                let _ = self.sync_failed(io::Error::other("undoing a failed write"));
            }
            return Err(error);
        }
        Ok(())
    }

    /// The gateway stored every report up to `up_to_seq`: the state says so
    /// at once, the file with the next record written.
    pub(crate) fn confirm(&mut self, up_to_seq: u64) {
        let record = Record::Confirmed { up_to_seq };
        self.state.apply(&record);
        self.unwritten_confirmation = Some(
            self.unwritten_confirmation
                .map_or(up_to_seq, |known| known.max(up_to_seq)),
        );
        self.appended_since_compaction += 1;
    }

    /// The ticket of the latest append.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Whether the append with `ticket` is durable; an error when it never
    /// will be (a sync failed since, and the journal cut it off).
    pub(crate) fn is_durable(&self, ticket: u64) -> Result<bool, JournalError> {
        if ticket <= self.durable {
            Ok(true)
        } else if self.broken {
            Err(JournalError::Broken(self.path.clone()))
        } else {
            Ok(false)
        }
    }

    /// Starts making every append so far durable: the returned sync runs
    /// without the journal (so appends go on meanwhile) and is handed back
    /// to [`Self::finish_sync`]. One sync at a time: the caller holds the
    /// turn (the client's `syncing` lock). Failing to start is a failed
    /// sync: what is not durable never will be, so no caller told it
    /// failed finds its report sent later by someone else's sync.
    pub(crate) fn begin_sync(&mut self) -> Result<PendingSync, JournalError> {
        if self.broken {
            return Err(JournalError::Broken(self.path.clone()));
        }
        match self.file.try_clone() {
            Ok(file) => Ok(PendingSync {
                file,
                up_to: self.written,
                len: self.len,
                generation: self.generation,
            }),
            Err(source) => Err(self.sync_failed(source)),
        }
    }

    /// Records how a sync from [`Self::begin_sync`] went.
    pub(crate) fn finish_sync(
        &mut self,
        sync: PendingSync,
        synced: io::Result<()>,
    ) -> Result<(), JournalError> {
        if self.cut {
            // Something failed meanwhile and zeroed what was not durable,
            // whatever this sync says.
            return Err(JournalError::Broken(self.path.clone()));
        }
        if sync.generation != self.generation {
            // Compaction rewrote the file meanwhile, and synced everything
            // appended before it; but the sync ran on the same open file,
            // and a write-back error is reported once per open file: if it
            // went to this sync, the compaction's own may have been told
            // nothing. A failure counts whatever the generation.
            return match synced {
                Ok(()) => Ok(()),
                Err(source) => Err(self.sync_failed(source)),
            };
        }
        match synced {
            Ok(()) => {
                self.durable = self.durable.max(sync.up_to);
                self.durable_len = self.durable_len.max(sync.len);
                self.compact_if_due();
                Ok(())
            }
            Err(source) => Err(self.sync_failed(source)),
        }
    }

    /// A sync failed: the kernel may have dropped any write not yet durable
    /// while marking it clean, so a later sync proves nothing. What was
    /// written since the last durable point is zeroed, so what the callers
    /// were told failed is not found on the next open, and the journal
    /// refuses writes until then.
    fn sync_failed(&mut self, source: io::Error) -> JournalError {
        self.broken = true;
        self.cut = true;
        let undurable = self.len.saturating_sub(self.durable_len) as usize;
        let _ = self
            .file
            .seek(SeekFrom::Start(self.durable_len))
            .and_then(|_| self.file.write_all(&vec![0; undurable]))
            .and_then(|()| self.file.sync_data());
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Replaces the journal's reports and next sequence number with the
    /// session core's (after the core renumbered its outbox), durably.
    pub(crate) fn replace_outbox(
        &mut self,
        next_seq: u64,
        outbox: impl IntoIterator<Item = Report>,
    ) -> Result<(), JournalError> {
        let outbox: VecDeque<Report> = outbox.into_iter().collect();
        if self.state.next_seq == next_seq && self.state.outbox == outbox {
            return Ok(());
        }
        let replaced = JournalState {
            next_seq,
            outbox,
            positions: self.state.positions.clone(),
        };
        // Adopted only once on disk: after a failure the next call sees the
        // difference again and writes it again.
        self.write_compacted(&replaced)?;
        self.state = replaced;
        Ok(())
    }

    /// Writes an empty journal (the magic, then zeros for the next
    /// records) over the open file, which holds nothing acknowledged.
    fn start_afresh_in_place(&mut self) -> io::Result<()> {
        let mut bytes = MAGIC.to_vec();
        let len = bytes.len() as u64;
        bytes.resize((len + 1).next_multiple_of(EXTEND_BY) as usize, 0);
        overwrite(&mut self.file, &bytes, len)?;
        sync_dir(&self.path)?;
        self.len = len;
        self.allocated = bytes.len() as u64;
        self.durable_len = len;
        self.appended_since_compaction = 0;
        Ok(())
    }

    /// Rewrites the live state over the journal, through a recovery copy:
    /// at every instant one complete journal can be had.
    pub(crate) fn compact(&mut self) -> Result<(), JournalError> {
        let state = self.state.clone();
        self.write_compacted(&state)
    }

    fn write_compacted(&mut self, state: &JournalState) -> Result<(), JournalError> {
        if self.broken {
            return Err(JournalError::Broken(self.path.clone()));
        }
        let io_error = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut bytes = MAGIC.to_vec();
        for record in state.records() {
            encode_record(&record, &mut bytes);
        }
        let len = bytes.len() as u64;
        // Room for the next records, as zeros.
        bytes.resize((len + 1).next_multiple_of(EXTEND_BY) as usize, 0);
        // Every record the copy holds is made durable first (a compaction
        // replacing the outbox may run with appends not yet synced): a
        // caller told its report failed must never find it in a copy the
        // next open applies.
        if self.durable < self.written {
            if let Err(source) = self.file.sync_data() {
                return Err(self.sync_failed(source));
            }
            self.durable = self.written;
            self.durable_len = self.len;
        }
        let copy = recovery_path(&self.path);
        match write_recovery_copy(&copy, &bytes) {
            Ok(()) => {}
            // Not complete: the journal is untouched and the copy is not
            // applied; compaction is tried again.
            Err(RecoveryCopyError::Unfinished(source)) => {
                let _ = fs::remove_file(&copy);
                return Err(io_error(source));
            }
            // Perhaps complete, so the next open may apply it: no record
            // may go after what it holds.
            Err(RecoveryCopyError::PerhapsComplete(source)) => {
                self.broken = true;
                return Err(io_error(source));
            }
        }
        // From here the copy is the journal's content: a crash is finished
        // by the next open. A failure is too, so the journal takes no more
        // records until it is opened again (they would go after content
        // the next open replaces).
        let overwritten =
            overwrite(&mut self.file, &bytes, len).and_then(|()| retire_recovery_copy(&copy));
        self.generation += 1;
        if let Err(source) = overwritten {
            self.broken = true;
            return Err(io_error(source));
        }
        self.len = len;
        self.allocated = bytes.len() as u64;
        self.appended_since_compaction = 0;
        // The rewritten file has every confirmation applied.
        self.unwritten_confirmation = None;
        // The rewritten file holds every append so far, synced.
        self.durable = self.written;
        self.durable_len = self.len;
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // A clean close keeps its last confirmation, so the next run does
        // not send confirmed reports again. Unsynced, as every confirmation.
        if let Some(up_to_seq) = self.unwritten_confirmation
            && !self.broken
        {
            let mut bytes = Vec::new();
            encode_record(&Record::Confirmed { up_to_seq }, &mut bytes);
            let _ = self.write_at_end(&bytes);
        }
    }
}

/// A sync begun by [`Journal::begin_sync`], run without holding the journal.
#[derive(Debug)]
pub(crate) struct PendingSync {
    file: File,
    up_to: u64,
    len: u64,
    generation: u64,
}

impl PendingSync {
    /// Makes the file durable up to where it was when the sync began (and
    /// perhaps beyond, which the journal does not count on).
    pub(crate) fn run(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Where the recovery copy of the journal at `journal` is written.
fn recovery_path(journal: &Path) -> PathBuf {
    journal.with_extension("journal.compacted")
}

/// How writing a recovery copy failed.
#[derive(Debug)]
enum RecoveryCopyError {
    /// Before its magic said it was complete: never applied.
    Unfinished(io::Error),
    /// After: the next open may find it complete and apply it.
    PerhapsComplete(io::Error),
}

/// Writes `bytes` (a journal starting with [`MAGIC`]) to a recovery copy at
/// `copy` and makes it complete: durable, with its entry in the directory,
/// before its magic says it is complete, and that durable too.
fn write_recovery_copy(copy: &Path, bytes: &[u8]) -> Result<(), RecoveryCopyError> {
    let unfinished = || -> io::Result<File> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(copy)?;
        file.write_all(UNFINISHED)?;
        file.write_all(&bytes[MAGIC.len()..])?;
        file.sync_all()?;
        sync_dir(copy)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    };
    let mut file = unfinished().map_err(RecoveryCopyError::Unfinished)?;
    file.write_all(MAGIC)
        .and_then(|()| file.sync_data())
        .map_err(RecoveryCopyError::PerhapsComplete)
}

/// Writes `bytes` over the start of the open journal `file`, cuts what is
/// left after them, syncs, and leaves the cursor at `len`, where the next
/// record goes. The bytes go over blocks the file already has where it is
/// long enough, so a full disk rarely stops it.
fn overwrite(file: &mut File, bytes: &[u8], len: u64) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()?;
    file.seek(SeekFrom::Start(len))?;
    Ok(())
}

/// Marks the recovery copy at `copy` unfinished again, durably (the journal
/// now holds its content and takes records the copy lacks: applied again
/// it would lose them), then removes it. A copy that cannot be removed is
/// harmless once marked.
fn retire_recovery_copy(copy: &Path) -> io::Result<()> {
    {
        let mut file = OpenOptions::new().write(true).open(copy)?;
        file.write_all(UNFINISHED)?;
        file.sync_data()?;
    }
    let _ = fs::remove_file(copy);
    Ok(())
}

/// Finishes a compaction a crash interrupted, before the journal at `path`
/// (open as `file`) is read: a complete recovery copy is written over it
/// again; an unfinished one is removed (the journal was not touched yet).
/// A `.journal.new` left by an earlier version, which renamed its
/// compactions over the journal, was never the journal: removed too.
fn finish_interrupted_compaction(path: &Path, file: &mut File) -> io::Result<()> {
    let _ = fs::remove_file(path.with_extension("journal.new"));
    let copy = recovery_path(path);
    let bytes = match fs::read(&copy) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if bytes.starts_with(MAGIC) {
        overwrite(file, &bytes, 0)?;
        retire_recovery_copy(&copy)
    } else {
        fs::remove_file(&copy)
    }
}

/// The journal's file name for a device id: ids may hold any printable
/// text, so everything but ASCII letters, digits, `-` and `_` is escaped.
fn file_stem(device_id: &DeviceId) -> String {
    let mut stem = String::with_capacity(device_id.as_str().len() + 8);
    for byte in device_id.as_str().bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            stem.push(byte as char);
        } else {
            stem.push_str(&format!("%{byte:02X}"));
        }
    }
    stem
}

fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let mut body = [0u8; MAX_WIRE_LEN];
    // Every record is one protocol message's worth of fields at most.
    let len = postcard::to_slice(record, &mut body)
        .expect("a journal record fits one wire frame")
        .len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body[..len]).to_le_bytes());
    out.extend_from_slice(&body[..len]);
}

/// Replays a journal file: the state, how many leading bytes are whole
/// records, and how many records there were.
fn replay(bytes: &[u8]) -> (JournalState, usize, usize) {
    let mut state = JournalState::default();
    if !bytes.starts_with(MAGIC) {
        return (state, 0, 0);
    }
    let mut at = MAGIC.len();
    let mut records = 0;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_LEN) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 {
            // The zeros the file was extended with: the end.
            break;
        }
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = at + RECORD_HEADER_LEN;
        let Some(body) = bytes.get(start..start + len) else {
            break;
        };
        if len > MAX_WIRE_LEN || crc32fast::hash(body) != crc {
            break;
        }
        let Ok(record) = postcard::from_bytes::<Record>(body) else {
            break;
        };
        state.apply(&record);
        records += 1;
        at = start + len;
    }
    (state, at, records)
}

#[cfg(unix)]
fn sync_dir(file: &Path) -> io::Result<()> {
    // The rename is durable only once the directory entry is.
    match file.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(not(unix))]
fn sync_dir(_file: &Path) -> io::Result<()> {
    // Windows cannot open a directory as a file; its rename of an open,
    // synced file is as durable as the platform offers.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eagate_protocol::{ChannelName, ReportOutcome, SignalId};

    fn device() -> DeviceId {
        DeviceId::new("dv/test 1").unwrap()
    }

    fn report(seq: u64) -> Report {
        Report {
            seq,
            signal_id: SignalId([seq as u8; 16]),
            at_ms: 1_700_000_000_000 + seq,
            outcome: ReportOutcome::Received,
        }
    }

    /// One sync of everything appended so far, as the client's sync turn
    /// runs it.
    fn sync_all(journal: &mut Journal) {
        let sync = journal.begin_sync().unwrap();
        let synced = sync.run();
        journal.finish_sync(sync, synced).unwrap();
    }

    /// Appends `records` and makes them durable.
    fn append_synced(journal: &mut Journal, records: &[Record]) {
        journal.append(records).unwrap();
        sync_all(journal);
    }

    fn position(channel: &str, position: u64) -> Record {
        Record::Position(ResumePoint {
            channel: ChannelName::new(channel).unwrap(),
            position,
        })
    }

    #[test]
    fn a_reopened_journal_holds_unconfirmed_reports_and_positions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut journal = Journal::open(dir.path(), &device()).unwrap();
            for seq in 1..=3 {
                append_synced(&mut journal, &[Record::Accepted(report(seq))]);
            }
            append_synced(
                &mut journal,
                &[Record::Confirmed { up_to_seq: 2 }, position("gold", 7)],
            );
        }
        let journal = Journal::open(dir.path(), &device()).unwrap();
        let snapshot = journal.state().snapshot();
        assert_eq!(snapshot.next_seq, 4);
        assert_eq!(snapshot.outbox.as_slice(), &[report(3)]);
        assert_eq!(snapshot.positions[0].position, 7);
    }

    /// Where a journal file's whole records end.
    fn records_end(bytes: &[u8]) -> usize {
        replay(bytes).1
    }

    /// A journal holding reports 1 and 2, each in a record of its own; its
    /// path.
    fn with_two_reports(dir: &Path) -> PathBuf {
        let mut journal = Journal::open(dir, &device()).unwrap();
        append_synced(&mut journal, &[Record::Accepted(report(1))]);
        append_synced(&mut journal, &[Record::Accepted(report(2))]);
        Journal::path_for(dir, &device())
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_later_appends_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = with_two_reports(dir.path());
        // The process died in the middle of writing the second record: its
        // last bytes are still the zeros the file was extended with.
        let mut bytes = fs::read(&path).unwrap();
        let end = records_end(&bytes);
        bytes[end - 3..end].fill(0);
        fs::write(&path, &bytes).unwrap();
        {
            let mut journal = Journal::open(dir.path(), &device()).unwrap();
            assert_eq!(journal.state().outbox, [report(1)]);
            assert_eq!(journal.state().next_seq, 2);
            // Zeroed in place, in a file of the same size.
            let bytes = fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, EXTEND_BY);
            assert!(bytes[records_end(&bytes)..].iter().all(|byte| *byte == 0));
            append_synced(&mut journal, &[Record::Accepted(report(2))]);
        }
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(1), report(2)]);
    }

    #[test]
    fn a_flipped_bit_ends_the_replay_at_the_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = with_two_reports(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let last = records_end(&bytes) - 1;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(1)]);
    }

    #[test]
    fn compaction_keeps_the_live_state_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_for(dir.path(), &device());
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        for seq in 1..=200 {
            journal.append(&[Record::Accepted(report(seq))]).unwrap();
            journal
                .append(&[Record::Confirmed { up_to_seq: seq - 1 }])
                .unwrap();
        }
        journal.append(&[position("gold", 9)]).unwrap();
        let before = records_end(&fs::read(&path).unwrap());
        journal.compact().unwrap();
        let after = records_end(&fs::read(&path).unwrap());
        assert!(after < before, "{after} < {before}");
        drop(journal);
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(200)]);
        assert_eq!(journal.state().next_seq, 201);
        assert_eq!(journal.state().positions[0].position, 9);
    }

    /// Windows without POSIX rename semantics (and Wine, where MetaTrader
    /// runs on macOS and Linux) refuses to replace a file that is open: the
    /// journal is rewritten in place, the same file before and after, and
    /// no copy is left beside it.
    #[cfg(unix)]
    #[test]
    fn compaction_rewrites_the_open_journal_in_place_and_leaves_no_copy() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_for(dir.path(), &device());
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        for seq in 1..=50 {
            append_synced(&mut journal, &[Record::Accepted(report(seq))]);
        }
        journal.confirm(49);
        journal.compact().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "the same file");
        assert!(!recovery_path(&path).exists(), "the copy is gone");
        append_synced(&mut journal, &[Record::Accepted(report(51))]);
        drop(journal);
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(50), report(51)]);
        assert_eq!(journal.state().next_seq, 52);
    }

    /// The bytes a compaction of `state` writes.
    fn compacted(state: &JournalState) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for record in state.records() {
            encode_record(&record, &mut bytes);
        }
        bytes.resize(bytes.len().next_multiple_of(EXTEND_BY as usize), 0);
        bytes
    }

    #[test]
    fn a_crash_in_the_middle_of_overwriting_the_journal_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_for(dir.path(), &device());
        let expected = {
            let mut journal = Journal::open(dir.path(), &device()).unwrap();
            for seq in 1..=40 {
                append_synced(&mut journal, &[Record::Accepted(report(seq))]);
            }
            journal.confirm(38);
            append_synced(&mut journal, &[position("gold", 7)]);
            journal.state().clone()
        };
        // The copy was complete; the overwrite got as far as a few bytes
        // of garbage at the start of the journal when the power went.
        write_recovery_copy(&recovery_path(&path), &compacted(&expected)).unwrap();
        let mut torn = fs::read(&path).unwrap();
        torn[..20].copy_from_slice(&[0xAB; 20]);
        fs::write(&path, &torn).unwrap();

        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state(), &expected);
        assert!(!recovery_path(&path).exists(), "finished, the copy retired");
        append_synced(&mut journal, &[Record::Accepted(report(41))]);
        drop(journal);
        // Opened again: the copy is not applied a second time over the
        // record taken since.
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(39), report(40), report(41)]);
    }

    #[test]
    fn an_unfinished_recovery_copy_or_an_old_versions_compaction_file_is_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_for(dir.path(), &device());
        {
            let mut journal = Journal::open(dir.path(), &device()).unwrap();
            for seq in 1..=3 {
                append_synced(&mut journal, &[Record::Accepted(report(seq))]);
            }
        }
        let other = JournalState {
            next_seq: 99,
            outbox: VecDeque::new(),
            positions: Vec::new(),
        };
        // A copy whose write was cut short before it was marked complete.
        let mut unfinished = compacted(&other);
        unfinished[..MAGIC.len()].copy_from_slice(UNFINISHED);
        fs::write(recovery_path(&path), &unfinished).unwrap();
        // What an earlier version left when a crash stopped its rename.
        fs::write(path.with_extension("journal.new"), compacted(&other)).unwrap();

        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(1), report(2), report(3)]);
        assert!(!recovery_path(&path).exists());
        assert!(!path.with_extension("journal.new").exists());
    }

    #[test]
    fn one_sync_makes_every_append_written_before_it_durable_and_none_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        let mut tickets = Vec::new();
        for seq in 1..=3 {
            journal.append(&[Record::Accepted(report(seq))]).unwrap();
            tickets.push(journal.written());
        }
        assert!(!journal.is_durable(tickets[0]).unwrap());
        let sync = journal.begin_sync().unwrap();
        // Written while the sync runs: not covered by it.
        journal.append(&[Record::Accepted(report(4))]).unwrap();
        let late = journal.written();
        let synced = sync.run();
        journal.finish_sync(sync, synced).unwrap();
        for ticket in tickets {
            assert!(journal.is_durable(ticket).unwrap());
        }
        assert!(!journal.is_durable(late).unwrap());
        sync_all(&mut journal);
        assert!(journal.is_durable(late).unwrap());
    }

    #[test]
    fn a_failed_sync_cuts_the_journal_back_to_what_was_durable_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut journal = Journal::open(dir.path(), &device()).unwrap();
            append_synced(&mut journal, &[Record::Accepted(report(1))]);
            journal.append(&[Record::Accepted(report(2))]).unwrap();
            let lost = journal.written();
            let sync = journal.begin_sync().unwrap();
            let failed = journal.finish_sync(sync, Err(io::Error::other("EIO")));
            assert!(matches!(failed, Err(JournalError::Io { .. })));
            assert!(matches!(
                journal.is_durable(lost),
                Err(JournalError::Broken(_))
            ));
            assert!(journal.is_durable(1).unwrap(), "durable before stays so");
            assert!(matches!(
                journal.append(&[Record::Accepted(report(3))]),
                Err(JournalError::Broken(_))
            ));
        }
        // The report whose caller was told it failed is not resent.
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(1)]);
        assert_eq!(journal.state().next_seq, 2);
    }

    #[test]
    fn a_sync_that_succeeds_after_another_failed_is_no_longer_believed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut journal = Journal::open(dir.path(), &device()).unwrap();
            append_synced(&mut journal, &[Record::Accepted(report(1))]);
            journal.append(&[Record::Accepted(report(2))]).unwrap();
            let ticket = journal.written();
            let first = journal.begin_sync().unwrap();
            let second = journal.begin_sync().unwrap();
            // The second fails and zeroes what was not durable, report 2
            // among it; the first then says it synced report 2.
            assert!(
                journal
                    .finish_sync(second, Err(io::Error::other("EIO")))
                    .is_err()
            );
            assert!(matches!(
                journal.finish_sync(first, Ok(())),
                Err(JournalError::Broken(_))
            ));
            assert!(journal.is_durable(ticket).is_err());
        }
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(1)]);
    }

    #[test]
    fn compaction_waits_until_every_append_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        let opened = journal.generation;
        let mut seq = 0;
        while journal.appended_since_compaction < COMPACT_AFTER_RECORDS + 10 {
            seq += 1;
            journal.append(&[Record::Accepted(report(seq))]).unwrap();
            journal.confirm(seq);
        }
        assert_eq!(journal.generation, opened, "nothing was durable yet");
        sync_all(&mut journal);
        assert_eq!(journal.generation, opened + 1, "compacted once all durable");
        assert!(journal.is_durable(journal.written()).unwrap());
        drop(journal);
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert!(journal.state().outbox.is_empty());
        assert_eq!(journal.state().next_seq, seq + 1);
    }

    /// The outbox is replaced (renumbered) while reports are still being
    /// synced: what the new journal holds is made durable first, so no
    /// caller can be told its report failed and find it sent later.
    #[test]
    fn replacing_the_outbox_makes_every_report_it_holds_durable_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        journal.append(&[Record::Accepted(report(1))]).unwrap();
        let ticket = journal.written();
        assert!(!journal.is_durable(ticket).unwrap());
        journal.replace_outbox(5, [report(1)]).unwrap();
        assert!(journal.is_durable(ticket).unwrap());
        drop(journal);
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().next_seq, 5);
        assert_eq!(journal.state().outbox, [report(1)]);
    }

    #[test]
    fn a_sync_begun_before_a_compaction_adds_nothing_but_its_failure_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        journal.append(&[Record::Accepted(report(1))]).unwrap();
        let ticket = journal.written();
        let sync = journal.begin_sync().unwrap();
        journal.compact().unwrap();
        assert!(journal.is_durable(ticket).unwrap(), "compaction syncs");
        // Succeeding, it says nothing compaction did not.
        let synced = sync.run();
        journal.finish_sync(sync, synced).unwrap();
        append_synced(&mut journal, &[Record::Accepted(report(2))]);
        // Failing, it ran on the same open file as the compaction's own
        // sync, which a write-back error is reported to only once: the
        // journal trusts nothing more and refuses writes until reopened.
        let sync = journal.begin_sync().unwrap();
        journal.compact().unwrap();
        assert!(
            journal
                .finish_sync(sync, Err(io::Error::other("EIO")))
                .is_err()
        );
        assert!(journal.append(&[Record::Accepted(report(3))]).is_err());
        drop(journal);
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(1), report(2)]);
    }

    #[test]
    fn a_confirmation_is_written_in_front_of_the_next_record_and_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_for(dir.path(), &device());
        let on_disk = || replay(&fs::read(&path).unwrap()).0.outbox;
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        for seq in 1..=2 {
            append_synced(&mut journal, &[Record::Accepted(report(seq))]);
        }
        journal.confirm(1);
        assert_eq!(journal.state().outbox, [report(2)], "known at once");
        assert_eq!(on_disk(), [report(1), report(2)], "not written yet");
        append_synced(&mut journal, &[Record::Accepted(report(3))]);
        assert_eq!(on_disk(), [report(2), report(3)]);
        journal.confirm(3);
        drop(journal);
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert!(journal.state().outbox.is_empty());
        assert_eq!(journal.state().next_seq, 4);
    }

    #[test]
    fn reports_are_written_over_zeros_so_their_sync_does_not_change_the_file_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_for(dir.path(), &device());
        let mut journal = Journal::open(dir.path(), &device()).unwrap();
        let size = fs::metadata(&path).unwrap().len();
        assert_eq!(size, EXTEND_BY);
        for seq in 1..=10 {
            append_synced(&mut journal, &[Record::Accepted(report(seq))]);
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        // Past the zeros, the file is extended by another stretch of them.
        let mut seq = 10;
        while journal.len < EXTEND_BY + 100 {
            seq += 1;
            journal.append(&[Record::Accepted(report(seq))]).unwrap();
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * EXTEND_BY);
        drop(journal);
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox.len() as u64, seq);
        assert_eq!(journal.state().next_seq, seq + 1);
    }

    #[test]
    fn a_journal_without_zeros_after_its_records_opens_and_extends() {
        // As an earlier version wrote it: the file ends with the last record.
        let dir = tempfile::tempdir().unwrap();
        let path = with_two_reports(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(records_end(&bytes));
        fs::write(&path, &bytes).unwrap();
        {
            let mut journal = Journal::open(dir.path(), &device()).unwrap();
            append_synced(&mut journal, &[Record::Accepted(report(3))]);
        }
        let journal = Journal::open(dir.path(), &device()).unwrap();
        assert_eq!(journal.state().outbox, [report(1), report(2), report(3)]);
    }

    #[test]
    fn a_second_client_of_the_same_device_is_refused_while_the_first_runs() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path(), &device()).unwrap();
        assert!(matches!(
            Journal::open(dir.path(), &device()),
            Err(JournalError::Locked(_))
        ));
        drop(first);
        Journal::open(dir.path(), &device()).unwrap();
    }

    #[test]
    fn device_ids_with_path_characters_make_safe_file_names() {
        assert_eq!(file_stem(&device()), "dv%2Ftest%201");
    }
}
