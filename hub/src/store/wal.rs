//! The write-ahead log in front of redb: where a change becomes durable.
//!
//! A batch of changes is one record, written into a preallocated, zero-filled file and made
//! durable with one `fdatasync`. Writing inside the file's existing length keeps that sync to
//! the data alone (an append would also journal the new size, about half as slow again).
//! The same changes go into redb with `Durability::None`; a checkpoint (an `Immediate` redb
//! commit that also records the last log sequence number it covers) makes them durable there,
//! after which the log is reused from its start.
//!
//! Record: `len: u32 | crc32(lsn ‖ payload): u32 | lsn: u64 | payload: len bytes`, little-endian.
//! Replay reads from the start, skips records the checkpoint covers, and applies the rest while
//! their sequence numbers follow one another and their checksums hold. A torn record, the zeroes
//! of never-written space, or an older record left from the previous cycle ends it. Replaying a
//! record twice is harmless: every change writes a whole value under its key.
//!
//! **Architecture Invariant:** only the storage writer thread appends; nothing is acknowledged
//! before the `fdatasync` of the record that holds it has returned.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER_BYTES: usize = 16;

/// Size of the log file. A checkpoint runs when a record would not fit.
pub const DEFAULT_CAPACITY: u64 = 32 * 1024 * 1024;
/// The smallest log the hub makes (on a disk with less room than the default needs).
pub const MIN_CAPACITY: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("a batch of {0} bytes does not fit in the write-ahead log")]
    TooLarge(usize),
    #[error("write-ahead log {path}: record {lsn} is damaged while later records are whole")]
    Damaged { path: PathBuf, lsn: u64 },
}

pub struct Wal {
    file: File,
    path: PathBuf,
    capacity: u64,
    /// Where the next record goes.
    position: u64,
    /// The last sequence number written.
    lsn: u64,
}

/// A record read back at replay.
pub struct Record {
    pub lsn: u64,
    pub payload: Vec<u8>,
}

impl Wal {
    /// Opens the log at `path`, creating and zero-filling it to `capacity` if needed, and returns
    /// it with the records after `checkpoint_lsn` that replay must apply, in order. The log then
    /// continues after the last of them, at the start of the file.
    pub fn open(path: &Path, capacity: u64, checkpoint_lsn: u64) -> Result<(Wal, Vec<Record>), Error> {
        let io = |source| Error::Io { path: path.to_owned(), source };
        let created = !path.exists();
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        if length < capacity {
            // Real zeroes, not a sparse tail: later writes then change no file metadata.
            let zeroes = vec![0u8; 1024 * 1024];
            let mut at = length;
            while at < capacity {
                let n = zeroes.len().min((capacity - at) as usize);
                file.write_all_at(&zeroes[..n], at).map_err(io)?;
                at += n as u64;
            }
            file.sync_all().map_err(io)?;
            if created && let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        let records = match read_records(&file, capacity.max(length), checkpoint_lsn).map_err(io)? {
            Ok(records) => records,
            Err(lsn) => return Err(Error::Damaged { path: path.to_owned(), lsn }),
        };
        let lsn = records.last().map(|r| r.lsn).unwrap_or(checkpoint_lsn);
        // The records will be in redb by the checkpoint that follows replay; writing then starts
        // over at the start, and whatever older records follow are told apart by their numbers.
        Ok((Wal { file, path: path.to_owned(), capacity: capacity.max(length), position: 0, lsn }, records))
    }

    /// The records after `checkpoint_lsn` still in the file, as replay at open would find them:
    /// what a database opened again must be given (see the writer's recovery).
    pub fn records_after(&self, checkpoint_lsn: u64) -> Result<Vec<Record>, Error> {
        let io = |source| Error::Io { path: self.path.clone(), source };
        match read_records(&self.file, self.capacity, checkpoint_lsn).map_err(io)? {
            Ok(records) => Ok(records),
            Err(lsn) => Err(Error::Damaged { path: self.path.clone(), lsn }),
        }
    }

    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Whether a payload of `len` bytes fits before the end of the file.
    pub fn fits(&self, len: usize) -> bool {
        self.position + (HEADER_BYTES + len) as u64 <= self.capacity
    }

    /// Writes a record and makes it durable; returns its sequence number.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, Error> {
        if (HEADER_BYTES + payload.len()) as u64 > self.capacity {
            return Err(Error::TooLarge(payload.len()));
        }
        debug_assert!(self.fits(payload.len()), "a checkpoint must make room first");
        let lsn = self.lsn + 1;
        let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&checksum(lsn, payload).to_le_bytes());
        record.extend_from_slice(&lsn.to_le_bytes());
        record.extend_from_slice(payload);
        let io = |source| Error::Io { path: self.path.clone(), source };
        self.file.write_all_at(&record, self.position).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.position += record.len() as u64;
        self.lsn = lsn;
        Ok(lsn)
    }

    /// After a checkpoint that covers every record written: start over at the beginning.
    pub fn rewind(&mut self) {
        self.position = 0;
    }

    pub fn position(&self) -> u64 {
        self.position
    }
}

fn checksum(lsn: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// What is found at a position of the file.
enum Slot {
    /// Never-written space, or a length that cannot be right: the end of the log.
    End,
    /// A record whose checksum does not hold, with what its header claims.
    Bad {
        lsn: u64,
        next: u64,
    },
    Whole {
        record: Record,
        next: u64,
    },
}

fn read_slot(file: &File, length: u64, position: u64) -> std::io::Result<Slot> {
    if position + HEADER_BYTES as u64 > length {
        return Ok(Slot::End);
    }
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, position)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let lsn = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let next = position + HEADER_BYTES as u64 + len;
    if len == 0 || next > length {
        return Ok(Slot::End);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, position + HEADER_BYTES as u64)?;
    if checksum(lsn, &payload) != crc {
        return Ok(Slot::Bad { lsn, next });
    }
    Ok(Slot::Whole { record: Record { lsn, payload }, next })
}

/// The records to replay, or `Err(lsn)` when record `lsn` is damaged but a whole record follows
/// it: a torn write only ever hits the last record, so that is damage, not a crash.
fn read_records(file: &File, length: u64, checkpoint_lsn: u64) -> std::io::Result<Result<Vec<Record>, u64>> {
    let mut records = Vec::new();
    let mut position = 0u64;
    let mut expected: Option<u64> = None;
    loop {
        let (record, next) = match read_slot(file, length, position)? {
            Slot::End => break,
            Slot::Bad { lsn, next } => {
                let followed = matches!(
                    read_slot(file, length, next)?,
                    Slot::Whole { ref record, .. } if record.lsn == lsn + 1
                );
                if lsn == expected.unwrap_or(checkpoint_lsn + 1) && followed {
                    return Ok(Err(lsn));
                }
                break; // Torn: the last record a crash interrupted.
            }
            Slot::Whole { record, next } => (record, next),
        };
        if expected.is_some_and(|lsn| record.lsn != lsn) {
            break; // An older record from the previous cycle.
        }
        if record.lsn > checkpoint_lsn {
            if expected.is_none() && record.lsn != checkpoint_lsn + 1 {
                break; // A gap after the checkpoint cannot be bridged.
            }
            expected = Some(record.lsn + 1);
            records.push(record);
        }
        position = next;
    }
    Ok(Ok(records))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPACITY: u64 = 4096;

    fn payloads(records: &[Record]) -> Vec<(u64, Vec<u8>)> {
        records.iter().map(|r| (r.lsn, r.payload.clone())).collect()
    }

    #[test]
    fn records_come_back_after_the_checkpoint_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, replay) = Wal::open(&path, CAPACITY, 0).unwrap();
        assert!(replay.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CAPACITY, "preallocated");
        for n in 1..=5u8 {
            assert_eq!(wal.append(&[n; 10]).unwrap(), n as u64);
        }
        drop(wal);
        let (wal, replay) = Wal::open(&path, CAPACITY, 2).unwrap();
        assert_eq!(payloads(&replay), vec![(3, vec![3; 10]), (4, vec![4; 10]), (5, vec![5; 10])]);
        assert_eq!(wal.lsn(), 5);
    }

    #[test]
    fn a_torn_last_record_ends_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, CAPACITY, 0).unwrap();
        wal.append(b"first").unwrap();
        let torn_at = wal.position() + HEADER_BYTES as u64;
        wal.append(b"second").unwrap();
        drop(wal);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", torn_at + 2).unwrap();
        let (_, replay) = Wal::open(&path, CAPACITY, 0).unwrap();
        assert_eq!(payloads(&replay), vec![(1, b"first".to_vec())]);
    }

    #[test]
    fn damage_before_whole_records_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, CAPACITY, 0).unwrap();
        wal.append(b"first").unwrap();
        let damaged_at = wal.position() + HEADER_BYTES as u64;
        wal.append(b"second").unwrap();
        wal.append(b"third").unwrap();
        drop(wal);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", damaged_at + 2).unwrap();
        assert!(matches!(Wal::open(&path, CAPACITY, 0), Err(Error::Damaged { lsn: 2, .. })));
    }

    #[test]
    fn after_a_rewind_older_records_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, CAPACITY, 0).unwrap();
        for n in 1..=4u8 {
            wal.append(&[n; 100]).unwrap();
        }
        // Checkpoint at 4, then the next cycle writes over the start with shorter records.
        wal.rewind();
        wal.append(&[5; 10]).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(&path, CAPACITY, 4).unwrap();
        assert_eq!(payloads(&replay), vec![(5, vec![5; 10])]);
        // A crash right after the checkpoint, before anything new: nothing to replay.
        let (_, replay) = Wal::open(&path, CAPACITY, 5).unwrap();
        assert!(replay.is_empty());
    }

    #[test]
    fn a_full_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(&dir.path().join("wal.log"), CAPACITY, 0).unwrap();
        assert!(wal.fits(1000));
        for _ in 0..4 {
            wal.append(&[1; 1000]).unwrap();
        }
        assert!(!wal.fits(1000));
        assert!(matches!(wal.append(&[0; 5000]), Err(Error::TooLarge(5000))));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Any file, replayed: no panic, and whatever comes back came from whole records.
        #[test]
        fn replaying_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..8192), checkpoint in 0u64..4) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal.log");
            std::fs::write(&path, &bytes).unwrap();
            if let Ok((_, records)) = Wal::open(&path, 8192, checkpoint) {
                for pair in records.windows(2) {
                    prop_assert_eq!(pair[1].lsn, pair[0].lsn + 1, "replay skips a sequence number");
                }
            }
        }

        /// Real records with bytes flipped: replay returns a prefix of what was written, or says
        /// the log is damaged; never a changed record.
        #[test]
        fn damaged_logs_replay_a_prefix_or_refuse(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 1..12),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal.log");
            let (mut wal, _) = Wal::open(&path, 8192, 0).unwrap();
            for payload in &payloads {
                if wal.fits(payload.len()) {
                    wal.append(payload).unwrap();
                }
            }
            let written = wal.position() as usize;
            drop(wal);
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, value) in &flips {
                let at = at.index(written.max(1));
                bytes[at] ^= value | 1;
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok((_, records)) = Wal::open(&path, 8192, 0) {
                for (record, payload) in records.iter().zip(&payloads) {
                    prop_assert_eq!(&record.payload, payload, "a damaged record was replayed as another");
                }
                prop_assert!(records.len() <= payloads.len());
            }
        }
    }
}
