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
//! Record layout (little endian): `len: u32` (payload bytes), `crc: u32` (CRC-32C of the length, the seq
//! and the payload), `seq: u64`, then the payload (the operation as JSON). A segment is named
//! by the seq of its first record (`00000000000000000001.journal`). A segment is deleted once
//! SQLite holds all its records durably (the commit at each rotation fsyncs the WAL).
//!
//! Damage: a record cut short or failing its checksum at the very end of the last segment, with
//! nothing whole after it, is a write the crash interrupted; it was never acknowledged (the
//! answer waits for the fsync), so it is dropped and the file truncated there. Damaged records
//! SQLite already holds are skipped with a warning. Anything else — a damaged record with whole
//! records after it that SQLite lacks, a segment missing, overlapping or emptied, a journal
//! that ends before the database's watermark — means the disk or a person changed acknowledged
//! records: opening refuses and changes nothing, naming the segment, the offset and how many
//! acknowledged pushes are at stake, unless told to cut the journal there (`kefu serve
//! --truncate-journal`).

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
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(len, seq, payload).to_le_bytes());
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

/// One record as the scan found it.
struct Found {
    offset: usize,
    seq: u64,
    end: usize,
}

/// Reads the record at `at` if it is whole and its checksum holds.
fn record_at(bytes: &[u8], at: usize) -> Result<Found, String> {
    let rest = &bytes[at..];
    if rest.len() < HEADER_BYTES {
        return Err("a record header cut short".into());
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
    let seq = u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
    if len > MAX_RECORD {
        return Err(format!("a length of {len} bytes"));
    }
    if rest.len() < HEADER_BYTES + len {
        return Err("a record cut short".into());
    }
    if checksum(len as u32, seq, &rest[HEADER_BYTES..HEADER_BYTES + len]) != crc {
        return Err("a checksum mismatch".into());
    }
    Ok(Found { offset: at, seq, end: at + HEADER_BYTES + len })
}

/// The CRC-32C a record carries: over its length, its seq and its payload.
fn checksum(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// The first whole record after a damaged one at `from` whose seq could follow `want` (a
/// record that is not damage): what tells damage in the middle from a write cut short.
fn resync(bytes: &[u8], from: usize, want: u64) -> Option<Found> {
    (from + 1..bytes.len().saturating_sub(HEADER_BYTES - 1)).find_map(|at| {
        let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().ok()?);
        if seq < want || seq > want.saturating_add(1 << 32) {
            return None;
        }
        record_at(bytes, at).ok()
    })
}

/// Damage found while reading the journal.
struct Damage {
    path: PathBuf,
    offset: u64,
    why: String,
    /// The first record lost if the journal is cut here.
    from_seq: u64,
    /// Whole records after the damage, up to this seq (None: nothing readable follows).
    intact_to: Option<u64>,
}

impl Damage {
    /// A whole segment out of place (missing, overlapping, emptied): damage at its start.
    fn segment(path: &Path, why: String, from_seq: u64) -> Self {
        Damage { path: path.to_path_buf(), offset: 0, why, from_seq, intact_to: None }
    }
}

impl Journal {
    /// Opens the journal under `state_dir`, creating it if needed, and reads back the records
    /// after `watermark` (the last seq SQLite holds). Every segment is read and every record
    /// checked: its checksum, its seq (each segment starts at the seq in its name and follows
    /// the one before). A record cut short at the very end of the last segment, with nothing
    /// whole after it, is a write a crash interrupted: it is dropped. Damaged records that
    /// SQLite already holds are skipped with a warning. Any other damage — a damaged record
    /// SQLite lacks, a segment missing, overlapping or emptied, a journal that ends before
    /// the database — is an error naming the file and the offset and changes nothing, unless
    /// `truncate` says to cut the journal at the damage.
    pub fn open(state_dir: &Path, watermark: u64, truncate: bool) -> StoreResult<Opened> {
        let dir = state_dir.join(JOURNAL_DIR);
        create_private_dir(&dir)?;
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
        // An empty file holds no record: only the last segment may be empty (just started);
        // any other empty one (a stray file, a start interrupted) is set aside and deleted
        // once the journal opens. Records start at 1, so a file named 0 is never a segment.
        let (mut strays, mut kept) = (Vec::new(), Vec::new());
        let count = segments.len();
        for (i, (first, path)) in segments.into_iter().enumerate() {
            let empty = std::fs::metadata(&path).map(|m| m.len() == 0).unwrap_or(false);
            if first == 0 || (empty && i + 1 < count) {
                strays.push((first, path));
            } else {
                kept.push((first, path));
            }
        }
        let mut segments = kept;

        let mut tail = Vec::new();
        let mut damage: Option<Damage> = None;
        if let Some((first, path)) = segments.first()
            && *first > watermark + 1
        {
            let why = format!(
                "it starts at record {first}, but the database holds records up to {watermark} \
                 only: records {} to {} are missing (a segment deleted, or a database restored \
                 from an older copy)",
                watermark + 1,
                first.saturating_sub(1)
            );
            damage = Some(Damage::segment(path, why, watermark + 1));
        }
        // The seq the next record must have; None before the first record.
        let mut expect: Option<u64> = None;
        // A write cut short at the end: (segment, offset, bytes), cut once nothing refuses.
        let mut torn: Option<(PathBuf, u64, u64)> = None;
        // Segments whose records SQLite holds all of (deleted once nothing refuses).
        // The first seq of the first segment still needed (earlier ones hold only records the
        // database has).
        let mut keep_from_seq = 0;
        'segments: for (i, (first, path)) in segments.iter().enumerate() {
            if damage.is_some() {
                break;
            }
            let last = i + 1 == segments.len();
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io_err(path, "read", e))?;
            let want = expect.unwrap_or(*first);
            if bytes.is_empty() && *first < want {
                // An empty file inside the records already read holds nothing: a stray.
                strays.push((*first, path.clone()));
                continue;
            }
            if *first != want {
                let why = if *first > want {
                    format!(
                        "records {want} to {} are missing: a segment was deleted",
                        first.saturating_sub(1)
                    )
                } else {
                    format!(
                        "it starts at record {first}, but the segment before it runs to record \
                         {}: the segments overlap (a stray or copied file?)",
                        want.saturating_sub(1)
                    )
                };
                damage = Some(Damage::segment(path, why, want));
                break;
            }
            let mut at = 0;
            let mut want = want;
            while at < bytes.len() {
                let found = record_at(&bytes, at).and_then(|r| {
                    if r.seq == want {
                        Ok(r)
                    } else {
                        Err(format!("sequence number {} where {want} was expected", r.seq))
                    }
                });
                match found {
                    Ok(r) => {
                        if r.seq > watermark {
                            let payload = bytes[r.offset + HEADER_BYTES..r.end].to_vec();
                            tail.push(Record { seq: r.seq, payload });
                        }
                        want = r.seq + 1;
                        at = r.end;
                    }
                    Err(why) => match resync(&bytes, at, want) {
                        None if last => {
                            torn = Some((path.clone(), at as u64, (bytes.len() - at) as u64));
                            break;
                        }
                        // Only records SQLite already holds were lost: skip them.
                        Some(next) if next.seq <= watermark + 1 => {
                            tracing::warn!(
                                segment = %path.display(), offset = at, why, records = next.seq - want,
                                "journal: skipped damaged records that the database already holds"
                            );
                            want = next.seq;
                            at = next.offset;
                        }
                        next => {
                            let intact_to = next.map(|_| {
                                let mut s = want;
                                let mut a = at;
                                while let Some(r) = resync(&bytes, a, s) {
                                    s = r.seq + 1;
                                    a = r.end - 1;
                                }
                                s - 1
                            });
                            damage = Some(Damage {
                                path: path.clone(),
                                offset: at as u64,
                                why,
                                from_seq: want,
                                intact_to,
                            });
                            break 'segments;
                        }
                    },
                }
            }
            expect = Some(want);
            if !last && want <= watermark + 1 {
                keep_from_seq = segments.get(i + 1).map_or(0, |(f, _)| *f);
            }
        }
        segments.retain(|seg| !strays.contains(seg));
        // The last record the journal holds (a new, empty segment holds up to its name - 1).
        let mut journal_end = match (&damage, &torn, expect) {
            (Some(d), _, _) => d.from_seq.saturating_sub(1),
            (None, _, Some(next)) => next.saturating_sub(1),
            (None, _, None) => segments.last().map_or(0, |(first, _)| first.saturating_sub(1)),
        };
        if damage.is_none() && journal_end < watermark {
            let (path, offset) = match &torn {
                Some((p, o, _)) => (p.clone(), *o),
                None => segments.last().map_or_else(
                    || (dir.clone(), 0),
                    |(_, p)| (p.clone(), std::fs::metadata(p).map_or(0, |m| m.len())),
                ),
            };
            let why = format!(
                "the journal ends at record {journal_end}, but the database holds records up to \
                 {watermark}: the journal was cut short or removed, and the acknowledged pushes \
                 it held after record {watermark} (if any) are gone. With state.sync = \"normal\" \
                 a power cut can do this"
            );
            damage = Some(Damage { path, offset, why, from_seq: journal_end + 1, intact_to: None });
        }
        if let Some(d) = damage {
            // Acknowledged pushes at stake: the damaged record and the whole ones after it that
            // the database lacks.
            let lacking = d
                .intact_to
                .map_or(0, |to| to.saturating_sub(watermark.max(d.from_seq.saturating_sub(1))));
            if !truncate {
                let after = match d.intact_to {
                    Some(to) if to >= d.from_seq => format!(
                        " The damaged record is number {}; records {} to {to} after it are \
                         intact; {lacking} acknowledged pushes the database does not hold yet \
                         are at stake (the damaged one included).",
                        d.from_seq,
                        d.from_seq + 1
                    ),
                    _ => String::new(),
                };
                let lost = if lacking > 0 {
                    format!(" ({lacking} acknowledged pushes are then lost)")
                } else {
                    String::new()
                };
                let what = if d.path == dir { "journal directory" } else { "journal segment" };
                return Err(StoreError::Journal(format!(
                    "{what} {} is damaged at byte offset {} ({}).{after} Nothing was \
                     changed. Restore the file from a backup, or start once with `kefu serve \
                     --truncate-journal`, which drops the journal from there on{lost} and \
                     starts from what the database holds",
                    d.path.display(),
                    d.offset,
                    d.why
                )));
            }
            tracing::warn!(
                segment = %d.path.display(), offset = d.offset, why = d.why, lost = lacking,
                "journal: cut at the damage as told (--truncate-journal)"
            );
            // The intact records before the damage stay (and run again if SQLite lacks them).
            tail.retain(|r| r.seq < d.from_seq);
            let damaged = segments.iter().position(|(_, p)| *p == d.path);
            match damaged {
                // Every record left is in SQLite: start over after the database's last one.
                _ if d.from_seq.saturating_sub(1) < watermark => {
                    drop_all(&segments);
                    segments.clear();
                }
                None => {
                    drop_all(&segments);
                    segments.clear();
                }
                Some(i) if d.offset == 0 => {
                    drop_all(&segments[i..]);
                    segments.truncate(i);
                }
                Some(i) => {
                    truncate_file(&d.path, d.offset)?;
                    drop_all(&segments[i + 1..]);
                    segments.truncate(i + 1);
                }
            }
            journal_end = d.from_seq.saturating_sub(1);
        } else {
            if let Some((path, offset, bytes)) = &torn {
                tracing::warn!(
                    segment = %path.display(), offset, bytes,
                    "journal: dropped a record cut short by a crash (never acknowledged)"
                );
                truncate_file(path, *offset)?;
            }
            let old = segments.iter().take_while(|(f, _)| *f < keep_from_seq).count();
            drop_all(&segments[..old]);
            segments.drain(..old);
            drop_all(&strays);
        }
        let next_seq = journal_end.max(watermark) + 1;
        if segments.is_empty() {
            segments.push((next_seq, dir.join(segment_name(next_seq))));
        }
        let (_, path) = segments.last().cloned().unwrap_or_default();
        let current = open_segment(&path)?;
        let current_len = current.metadata().map(|m| m.len()).unwrap_or(0);
        sync_dir(&dir);
        let torn_bytes = torn.map_or(0, |(_, _, b)| b);
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

    /// Whether the current segment is full and the next append should start a new one.
    pub fn wants_rotation(&self) -> bool {
        self.current_len >= SEGMENT_BYTES
    }

    /// Starts a new segment and deletes every older one. Call only once SQLite holds every
    /// record so far durably (its WAL fsynced after the commit that recorded the watermark).
    pub fn rotate(&mut self) -> StoreResult<()> {
        let first = self.next_seq;
        let path = self.dir.join(segment_name(first));
        let file = open_segment(&path)?;
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
}

/// Opens (creating) a segment for appending, readable by its owner only: it holds OpenIDs and
/// what followers wrote.
fn open_segment(path: &Path) -> StoreResult<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map_err(|e| io_err(path, "open", e))
}

/// Creates the journal directory, accessible by its owner only.
fn create_private_dir(dir: &Path) -> StoreResult<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| io_err(dir, "create", e))
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
        let Err(StoreError::Journal(msg)) = Journal::open(dir.path(), 0, false) else {
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
        // A database at record 10 with no journal: told to, the journal starts after it.
        let mut j = Journal::open(dir.path(), 10, true).unwrap().journal;
        j.append(&payloads(2), true).unwrap(); // 11, 12
        drop(j);
        // A database restored from a copy that holds records up to 5 only.
        let Err(StoreError::Journal(msg)) = Journal::open(dir.path(), 5, false) else {
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
        let Err(StoreError::Journal(msg)) = Journal::open(dir.path(), 0, false) else {
            panic!("a jump must refuse")
        };
        assert!(msg.contains("sequence number 5 where 2 was expected"), "{msg}");
    }

    /// The offset of record `seq` (1-based) in a segment written by `written`.
    fn offset_of(seq: u64) -> usize {
        payloads(seq as usize - 1).iter().map(|p| p.len() + HEADER_BYTES).sum()
    }

    fn refusal(dir: &Path, watermark: u64) -> String {
        match Journal::open(dir, watermark, false) {
            Err(StoreError::Journal(msg)) => msg,
            Err(e) => panic!("refused with the wrong error: {e}"),
            Ok(o) => panic!("opened, with {:?}", seqs(&o.tail)),
        }
    }

    /// A snapshot of the journal's files, to show a refusal changed nothing.
    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join(JOURNAL_DIR))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_damaged_length_field_in_the_middle_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let seg = written(dir.path(), 6);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[offset_of(3) + 2] ^= 0x40; // the length now runs past the end of the file
        std::fs::write(&seg, &bytes).unwrap();
        let before = files(dir.path());
        let msg = refusal(dir.path(), 1);
        assert!(msg.contains(&format!("byte offset {}", offset_of(3))), "{msg}");
        assert!(msg.contains("records 4 to 6 after it are intact; 4 acknowledged"), "{msg}");
        assert_eq!(files(dir.path()), before);
    }

    #[test]
    fn damage_in_records_the_database_holds_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let seg = written(dir.path(), 6);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[offset_of(2) + HEADER_BYTES + 1] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        let opened = Journal::open(dir.path(), 4, false).unwrap();
        assert_eq!(seqs(&opened.tail), [5, 6]);
        assert_eq!(opened.journal.next_seq(), 7);
    }

    #[test]
    fn a_journal_cut_short_before_the_database_refuses_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let seg = written(dir.path(), 6);
        let bytes = std::fs::read(&seg).unwrap();
        std::fs::write(&seg, &bytes[..offset_of(3) + 5]).unwrap();
        let before = files(dir.path());
        let msg = refusal(dir.path(), 4);
        assert!(msg.contains("ends at record 2") && msg.contains("up to 4"), "{msg}");
        assert_eq!(files(dir.path()), before, "the cut record was not truncated away");
        // Told to truncate: a new segment after the database's last record.
        let opened = Journal::open(dir.path(), 4, true).unwrap();
        assert!(opened.tail.is_empty());
        assert_eq!(opened.journal.next_seq(), 5);
        assert!(opened.journal.current_path().ends_with("00000000000000000005.journal"));
        // And the next start is clean.
        assert!(Journal::open(dir.path(), 4, false).is_ok());
    }

    #[test]
    fn a_missing_journal_refuses_when_the_database_has_journaled_records() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path(), 3);
        std::fs::remove_dir_all(dir.path().join(JOURNAL_DIR)).unwrap();
        assert!(refusal(dir.path(), 3).contains("ends at record 0"));
        // A database that never had a journal (watermark 0) starts one.
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(Journal::open(fresh.path(), 0, false).unwrap().journal.next_seq(), 1);
    }

    #[test]
    fn stray_empty_segments_are_set_aside_and_an_overlapping_one_refuses() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path(), 6);
        let journal = dir.path().join(JOURNAL_DIR);
        // Empty files below the real segment (and one named 0) hold nothing: opened past.
        std::fs::write(journal.join(segment_name(0)), b"").unwrap();
        std::fs::write(journal.join(segment_name(3)), b"").unwrap();
        let opened = Journal::open(dir.path(), 2, false).unwrap();
        assert_eq!(seqs(&opened.tail), [3, 4, 5, 6]);
        assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 1, "the strays are deleted");
        // A stray that holds records overlapping the real segment: refused, nothing deleted.
        let other = tempfile::tempdir().unwrap();
        written(other.path(), 3);
        let stray = std::fs::read(other.path().join(JOURNAL_DIR).join(segment_name(1))).unwrap();
        std::fs::write(journal.join(segment_name(5)), stray).unwrap();
        let before = files(dir.path());
        let msg = refusal(dir.path(), 2);
        assert!(msg.contains("overlap"), "{msg}");
        assert_eq!(files(dir.path()), before);
        // An empty last segment numbered past the end: records are missing.
        let dir = tempfile::tempdir().unwrap();
        written(dir.path(), 2);
        std::fs::write(dir.path().join(JOURNAL_DIR).join(segment_name(9)), b"").unwrap();
        assert!(refusal(dir.path(), 0).contains("missing"));
    }

    #[test]
    fn segments_are_private_to_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let seg = written(dir.path(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&seg), 0o600);
            assert_eq!(mode(&dir.path().join(JOURNAL_DIR)), 0o700);
        }
    }
}
