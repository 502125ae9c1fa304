//! The push journal: the durable record of every write on the push and send paths, as
//! length-prefixed, checksummed records appended to segment files under `state.dir/journal/`.
//!
//! Why a journal in front of SQLite (issue "push path at the limit"): a push used to be durable
//! only when its SQLite transaction was committed, and each commit wrote the B-tree pages the
//! push dirtied (its follower's grant, its dedupe record, its log lines: ~9–10 KB per push)
//! into the WAL and fsynced them. Now the writer thread runs the push's statements in a
//! transaction that stays open across batches, appends the push's operation (a few hundred
//! bytes) to the journal and fsyncs that (`state.sync`), and answers; SQLite commits the open
//! transaction every 100 ms (`COMMIT_EVERY` in the engine) or when idle, without an fsync, so each
//! page is written once per commit however many pushes dirtied it. SQLite records in the same
//! transaction the sequence number of the last operation it holds (the watermark); after a
//! crash it has rolled back to its last commit and the records after the watermark are run
//! again, in order, with the inputs they were recorded with (see `ops`).
//!
//! Record layout (little endian): `len: u32` (payload bytes), `crc: u32` (CRC-32C of the seq
//! and the payload), `seq: u64`, then the payload (the operation as JSON). A segment is named
//! by the seq of its first record (`00000000000000000001.journal`). A segment is deleted once
//! SQLite holds all its records durably (the commit at each rotation fsyncs the WAL).
//!
//! Damage: a record cut short or failing its checksum at the very end of the last segment is a
//! write the crash interrupted; it was never acknowledged (the answer waits for the fsync), so
//! it is dropped and the file truncated there. Damage anywhere else means the disk or a person
//! changed acknowledged records: opening refuses, naming the segment and the offset, unless
//! told to truncate there (`kefu serve --truncate-journal`), which drops that record and every
//! later one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{StoreError, StoreResult};

/// The directory inside `state.dir`.
pub const JOURNAL_DIR: &str = "journal";
/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes before each record's payload.
pub const HEADER_BYTES: usize = 16;
/// No payload is larger (a push's operation is a few hundred bytes to a few KB); a longer
/// length field is damage.
const MAX_RECORD: usize = 64 * 1024 * 1024;
const SUFFIX: &str = ".journal";

/// One record read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// Appends `payload` as one record to `buf` (a batch is written with one `write`).
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The journal's files: the segments on disk and the one being appended to.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// (first seq, path) of every segment, oldest first; the last is `current`.
    segments: Vec<(u64, PathBuf)>,
    current: File,
    current_len: u64,
    /// The seq the next record gets.
    next_seq: u64,
}

/// What opening found: the journal, ready to append, and the records after the watermark.
pub struct Opened {
    pub journal: Journal,
    pub tail: Vec<Record>,
    /// Bytes of a torn last record that were dropped (0: none).
    pub torn_bytes: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("journal: cannot {what} {}: {e}", path.display()))
}

/// fsyncs a directory, so a created or deleted segment survives a power cut.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// How one segment scan ended.
enum ScanEnd {
    Clean,
    /// A record at `offset` is damaged; `torn` when nothing acknowledged can follow it (it is
    /// the last thing in the file).
    Damaged {
        offset: u64,
        torn: bool,
        why: String,
    },
}

/// Reads every record of one segment file, checking each checksum, keeping those after
/// `after_seq`.
fn scan_segment(
    path: &Path,
    after_seq: u64,
    expect_seq: &mut Option<u64>,
    out: &mut Vec<Record>,
) -> StoreResult<(ScanEnd, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err(path, "read", e))?;
    let total = bytes.len() as u64;
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let damaged = |why: String, end: usize| {
            // Torn: the record runs to (or past) the end of the file, or only zeros follow
            // (a file extended but not written before a power cut).
            let torn = end >= bytes.len() || bytes[at..].iter().all(|b| *b == 0);
            Ok((ScanEnd::Damaged { offset: at as u64, torn, why }, total))
        };
        if rest.len() < HEADER_BYTES {
            return damaged("a record header cut short".into(), bytes.len());
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
        if len > MAX_RECORD {
            return damaged(format!("a length of {len} bytes"), bytes.len());
        }
        let end = HEADER_BYTES + len;
        if rest.len() < end {
            return damaged("a record cut short".into(), bytes.len());
        }
        let payload = &rest[HEADER_BYTES..end];
        let mut sum = crc32c::crc32c(&seq.to_le_bytes());
        sum = crc32c::crc32c_append(sum, payload);
        if sum != crc {
            return damaged("a checksum mismatch".into(), at + end);
        }
        if let Some(want) = *expect_seq
            && seq != want
        {
            return damaged(format!("sequence number {seq} where {want} was expected"), at + end);
        }
        *expect_seq = Some(seq + 1);
        if seq > after_seq {
            out.push(Record { seq, payload: payload.to_vec() });
        }
        at += end;
    }
    Ok((ScanEnd::Clean, total))
}

impl Journal {
    /// Opens the journal under `state_dir`, creating it if needed, and reads back the records
    /// after `watermark` (the last seq SQLite holds), checking every record it reads. A torn
    /// last record is dropped; other damage is an error naming the segment and the offset,
    /// unless `truncate` says to cut the journal there.
    pub fn open(state_dir: &Path, watermark: u64, truncate: bool) -> StoreResult<Opened> {
        let dir = state_dir.join(JOURNAL_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, "create", e))?;
        let mut segments: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, "list", e))? {
            let entry = entry.map_err(|e| io_err(&dir, "list", e))?;
            let name = entry.file_name();
            let Some(first) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            let Ok(first) = first.parse::<u64>() else { continue };
            segments.push((first, entry.path()));
        }
        segments.sort();
        // Segments wholly at or below the watermark are already in SQLite (a crash came
        // between the durable commit and their deletion): only the last of them can hold
        // records after it.
        let keep_from =
            segments.iter().rposition(|(first, _)| *first <= watermark + 1).unwrap_or(0);
        for (_, path) in segments.drain(..keep_from) {
            let _ = std::fs::remove_file(&path);
        }
        if let Some((first, path)) = segments.first().cloned()
            && first > watermark + 1
        {
            // The records between the database and this segment are gone.
            if !truncate {
                return Err(StoreError::Corrupt(format!(
                    "journal segment {} starts at record {first}, but the database holds \
                     records up to {watermark} only: the records in between are missing (a \
                     segment deleted or a database restored from an older copy). Restore them, \
                     or run `kefu serve --truncate-journal` to start from the database as it is",
                    path.display()
                )));
            }
            tracing::warn!(
                segment = %path.display(), watermark,
                "journal: records are missing between the database and the journal; dropped \
                 the journal as told (--truncate-journal)"
            );
            drop_all(&segments);
            segments.clear();
        }
        let mut tail = Vec::new();
        let mut torn_bytes = 0;
        let mut expect_seq = None;
        let mut i = 0;
        while i < segments.len() {
            let (first, path) = segments[i].clone();
            if let Some(want) = expect_seq.filter(|s| *s != first) {
                if !truncate {
                    return Err(StoreError::Corrupt(format!(
                        "journal segment {} starts at record {first}, but the segment before \
                         it ends before record {want}: a segment is missing. Restore it, or run \
                         `kefu serve --truncate-journal` to drop this segment and every later one",
                        path.display()
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    "journal: a segment is missing before this one; dropped it and every later \
                     one as told (--truncate-journal)"
                );
                drop_all(&segments[i..]);
                segments.truncate(i);
                break;
            }
            let (end, total) = scan_segment(&path, watermark, &mut expect_seq, &mut tail)?;
            if let ScanEnd::Damaged { offset, torn, why } = end {
                let last = i + 1 == segments.len();
                let repairable = torn && last;
                if !repairable && !truncate {
                    let later =
                        if last { String::new() } else { " and every later segment".into() };
                    return Err(StoreError::Corrupt(format!(
                        "journal segment {} is damaged at byte offset {offset} ({why}), with \
                         acknowledged records after it. Restore the file from a backup, or run \
                         `kefu serve --truncate-journal` to drop the record at that offset, \
                         everything after it in the segment{later} ({} bytes in this segment)",
                        path.display(),
                        total - offset
                    )));
                }
                if torn && last {
                    torn_bytes = total - offset;
                    tracing::warn!(
                        segment = %path.display(), offset, bytes = torn_bytes,
                        "journal: dropped a record cut short by a crash (never acknowledged)"
                    );
                } else {
                    tracing::warn!(
                        segment = %path.display(), offset, bytes = total - offset, why,
                        "journal: truncated as told (--truncate-journal): the damaged record \
                         and everything after it are dropped"
                    );
                }
                truncate_file(&path, offset)?;
                drop_all(&segments[i + 1..]);
                segments.truncate(i + 1);
                // A damaged record may have been counted before its damage was seen.
                tail.retain(|r| expect_seq.is_none_or(|s| r.seq < s));
            }
            i += 1;
        }
        let last_seq = expect_seq.map(|s| s - 1).unwrap_or(0).max(watermark);
        let next_seq = last_seq + 1;
        if segments.is_empty() {
            segments.push((next_seq, dir.join(segment_name(next_seq))));
        }
        let (_, path) = segments.last().cloned().unwrap_or_default();
        let current = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, "open", e))?;
        let current_len = current.metadata().map(|m| m.len()).unwrap_or(0);
        sync_dir(&dir);
        Ok(Opened {
            journal: Journal { dir, segments, current, current_len, next_seq },
            tail,
            torn_bytes,
        })
    }

    /// The seq the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The segment being appended to (the sync thread fsyncs it by path).
    pub fn current_path(&self) -> PathBuf {
        self.segments.last().map(|(_, p)| p.clone()).unwrap_or_default()
    }

    /// Appends one record per payload with one `write`, fsyncing when `sync`; returns the seq
    /// of the last one. On an error nothing may be taken as written.
    pub fn append(&mut self, payloads: &[Vec<u8>], sync: bool) -> StoreResult<u64> {
        let size: usize = payloads.iter().map(|p| p.len() + HEADER_BYTES).sum();
        let mut buf = Vec::with_capacity(size);
        let first = self.next_seq;
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, first + i as u64, p);
        }
        let path = self.current_path();
        let written = self
            .current
            .write_all(&buf)
            .and_then(|()| if sync { self.current.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Cut off whatever part of the batch reached the file, so the next append does
            // not follow a partial record.
            let _ = self.current.set_len(self.current_len);
            return Err(io_err(&path, "append to", e));
        }
        self.current_len += buf.len() as u64;
        self.next_seq += payloads.len() as u64;
        Ok(self.next_seq - 1)
    }

    /// fsyncs the current segment (`state.sync = "normal"`: once a second).
    pub fn sync(&self) -> std::io::Result<()> {
        self.current.sync_data()
    }

    /// Whether the current segment is full and the next append should start a new one.
    pub fn wants_rotation(&self) -> bool {
        self.current_len >= SEGMENT_BYTES
    }

    /// Starts a new segment and deletes every older one. Call only once SQLite holds every
    /// record so far durably (its WAL fsynced after the commit that recorded the watermark).
    pub fn rotate(&mut self) -> StoreResult<()> {
        let first = self.next_seq;
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, "create", e))?;
        let old = std::mem::replace(&mut self.segments, vec![(first, path)]);
        self.current = file;
        self.current_len = 0;
        sync_dir(&self.dir);
        for (_, p) in old {
            let _ = std::fs::remove_file(p);
        }
        sync_dir(&self.dir);
        Ok(())
    }

    /// Bytes in every segment on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }
}

fn truncate_file(path: &Path, len: u64) -> StoreResult<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| io_err(path, "open", e))?;
    f.set_len(len).map_err(|e| io_err(path, "truncate", e))?;
    f.sync_all().map_err(|e| io_err(path, "fsync", e))
}

fn drop_all(segments: &[(u64, PathBuf)]) {
    for (_, p) in segments {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("{{\"op\":\"test\",\"i\":{i}}}").into_bytes()).collect()
    }

    fn seqs(tail: &[Record]) -> Vec<u64> {
        tail.iter().map(|r| r.seq).collect()
    }

    /// A journal with records 1..=n in one segment; returns the segment's path.
    fn written(dir: &Path, n: usize) -> PathBuf {
        let mut j = Journal::open(dir, 0, false).unwrap().journal;
        assert_eq!(j.append(&payloads(n), true).unwrap(), n as u64);
        j.current_path()
    }

    #[test]
    fn records_come_back_after_the_watermark_and_appends_continue_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path(), 5);
        let opened = Journal::open(dir.path(), 2, false).unwrap();
        assert_eq!(seqs(&opened.tail), [3, 4, 5]);
        assert_eq!(opened.tail[0].payload, payloads(5)[2]);
        assert_eq!(opened.torn_bytes, 0);
        let mut j = opened.journal;
        assert_eq!(j.next_seq(), 6);
        assert_eq!(j.append(&payloads(1), false).unwrap(), 6);
        // A rotation starts a segment named by its first record and deletes the rest.
        j.rotate().unwrap();
        assert!(j.current_path().ends_with("00000000000000000007.journal"));
        let opened = Journal::open(dir.path(), 6, false).unwrap();
        assert!(opened.tail.is_empty());
        assert_eq!(opened.journal.next_seq(), 7);
        assert_eq!(std::fs::read_dir(dir.path().join(JOURNAL_DIR)).unwrap().count(), 1);
    }

    #[test]
    fn a_torn_tail_is_dropped_whether_cut_in_the_header_the_payload_or_zero_filled() {
        for torn in [
            vec![7u8, 0, 0],
            vec![200, 0, 0, 0, 1, 2, 3, 4, 9, 0, 0, 0, 0, 0, 0, 0, 1],
            vec![0; 64],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let seg = written(dir.path(), 3);
            let whole = std::fs::metadata(&seg).unwrap().len();
            let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
            f.write_all(&torn).unwrap();
            drop(f);
            let opened = Journal::open(dir.path(), 0, false).unwrap();
            assert_eq!(seqs(&opened.tail), [1, 2, 3]);
            assert_eq!(opened.torn_bytes, torn.len() as u64);
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole, "truncated at the tear");
        }
    }

    #[test]
    fn damage_before_the_end_refuses_naming_segment_and_offset_until_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let seg = written(dir.path(), 4);
        let mut bytes = std::fs::read(&seg).unwrap();
        let second = HEADER_BYTES + payloads(4)[0].len();
        bytes[second + HEADER_BYTES] ^= 0x20;
        std::fs::write(&seg, &bytes).unwrap();
        let Err(StoreError::Corrupt(msg)) = Journal::open(dir.path(), 0, false) else {
            panic!("a damaged middle record must refuse")
        };
        let name = seg.file_name().unwrap().to_string_lossy().to_string();
        assert!(msg.contains(&name) && msg.contains(&format!("byte offset {second}")), "{msg}");
        assert!(msg.contains("--truncate-journal"), "{msg}");
        assert_eq!(std::fs::read(&seg).unwrap(), bytes, "refusing changes nothing");
        let opened = Journal::open(dir.path(), 0, true).unwrap();
        assert_eq!(seqs(&opened.tail), [1]);
        assert_eq!(opened.journal.next_seq(), 2);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), second as u64);
    }

    #[test]
    fn records_missing_between_the_database_and_the_journal_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 10, false).unwrap().journal;
        j.append(&payloads(2), true).unwrap(); // 11, 12
        drop(j);
        // A database restored from a copy that holds records up to 5 only.
        let Err(StoreError::Corrupt(msg)) = Journal::open(dir.path(), 5, false) else {
            panic!("a gap must refuse")
        };
        assert!(msg.contains("missing") && msg.contains("00000000000000000011.journal"), "{msg}");
        let opened = Journal::open(dir.path(), 5, true).unwrap();
        assert!(opened.tail.is_empty());
        assert_eq!(opened.journal.next_seq(), 6);
    }

    #[test]
    fn a_sequence_that_jumps_inside_a_segment_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let seg = written(dir.path(), 1);
        let mut buf = Vec::new();
        encode_record(&mut buf, 5, b"{}");
        encode_record(&mut buf, 6, b"{}");
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&buf).unwrap();
        drop(f);
        let Err(StoreError::Corrupt(msg)) = Journal::open(dir.path(), 0, false) else {
            panic!("a jump must refuse")
        };
        assert!(msg.contains("sequence number 5 where 2 was expected"), "{msg}");
    }
}
