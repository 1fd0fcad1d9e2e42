//! The ledger export file (`keyreg-node export`, read by `keyreg audit
//! --file`) and the record framing it is built on.
//!
//! Framing ([`FramedWriter`] / [`FramedReader`]), shared with other keyreg
//! files (the auditor's checkpoints):
//!
//! ```text
//! magic        8 bytes (names the kind of file)
//! version      1 byte  (of that kind of file)
//! record*      u32 LE length (1..=max) || bytes
//! end marker   u32 LE 0 || u64 LE record count || 32-byte BLAKE3 of every byte before the marker
//! ```
//!
//! The end marker makes truncation at a record boundary as detectable as
//! truncation inside a record, and the checksum catches corruption before
//! anything is decoded. Every length is checked against the file kind's
//! bound before anything is allocated.
//!
//! A ledger export is framing with magic [`EXPORT_MAGIC`] whose first record
//! is a canonical [`ExportHeader`] (chain id, genesis hash, the head the
//! exporter had) followed by one canonical [`CommittedBlock`] per height,
//! from 1 to the head, in order.

use std::io::{self, Read, Write};

use bincode::{Decode, Encode};
use keyreg_consensus::certificate::MAX_CHAIN_ID_LEN;
use keyreg_consensus::codec::{try_encode, Canonical, CodecError};
use keyreg_consensus::crypto::Hash;
use keyreg_consensus::validators::MAX_VALIDATORS;
use thiserror::Error;

use crate::block::{CommittedBlock, MAX_BLOCK_BYTES};

/// Magic of a ledger export file.
pub const EXPORT_MAGIC: [u8; 8] = *b"KRLEDGER";
/// The export format this build reads and writes.
pub const EXPORT_FORMAT_VERSION: u8 = 1;
/// Largest record of an export: a largest block plus a largest certificate
/// (a bitmap and one signature per validator) with room to spare.
pub const MAX_EXPORT_RECORD_BYTES: usize = MAX_BLOCK_BYTES + 64 * 1024;
const _: () = assert!(MAX_VALIDATORS * 64 + 1024 <= 64 * 1024);

/// Length prefix of the end marker.
const END_MARKER: u32 = 0;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("not a {expected} file (magic {found:02x?})")]
    BadMagic { expected: String, found: [u8; 8] },
    #[error("unsupported file format version {found} (this build reads {expected})")]
    Version { expected: u8, found: u8 },
    #[error("file is truncated: it ends inside {what} after {records} complete records")]
    Truncated { what: &'static str, records: u64 },
    #[error("record {index} claims {len} bytes, above the {max}-byte limit")]
    RecordTooLarge { index: u64, len: u64, max: usize },
    #[error("the end marker counts {claimed} records, the file holds {found}")]
    CountMismatch { claimed: u64, found: u64 },
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("bytes follow the end marker")]
    TrailingData,
}

/// Hashes every byte written through it (the end marker's checksum).
struct Checksummed<T> {
    inner: T,
    hasher: blake3::Hasher,
}

/// Writes framed records. Call [`finish`](Self::finish): a file without
/// its end marker reads as truncated.
pub struct FramedWriter<W: Write> {
    out: Checksummed<W>,
    max_record: usize,
    records: u64,
}

impl<W: Write> FramedWriter<W> {
    pub fn new(
        inner: W,
        magic: &[u8; 8],
        version: u8,
        max_record: usize,
    ) -> Result<Self, FrameError> {
        let mut writer = FramedWriter {
            out: Checksummed {
                inner,
                hasher: blake3::Hasher::new(),
            },
            max_record,
            records: 0,
        };
        writer.put(magic)?;
        writer.put(&[version])?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.out.hasher.update(bytes);
        self.out.inner.write_all(bytes)?;
        Ok(())
    }

    /// Appends one record (1..=max_record bytes).
    pub fn record(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let too_large = FrameError::RecordTooLarge {
            index: self.records,
            len: bytes.len() as u64,
            max: self.max_record,
        };
        if bytes.len() > self.max_record {
            return Err(too_large);
        }
        let len = u32::try_from(bytes.len()).map_err(|_| too_large)?;
        // An empty record would read as the end marker.
        assert!(len != END_MARKER, "framed records are never empty");
        self.put(&len.to_le_bytes())?;
        self.put(bytes)?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Writes the end marker and flushes; returns the inner writer.
    pub fn finish(mut self) -> Result<W, FrameError> {
        self.put(&END_MARKER.to_le_bytes())?;
        self.put(&self.records.to_le_bytes())?;
        let checksum = *self.out.hasher.finalize().as_bytes();
        self.out.inner.write_all(&checksum)?;
        self.out.inner.flush()?;
        Ok(self.out.inner)
    }
}

/// Reads framed records as a stream, holding one record at a time.
pub struct FramedReader<R: Read> {
    input: Checksummed<R>,
    max_record: usize,
    records: u64,
    finished: bool,
}

impl<R: Read> FramedReader<R> {
    /// Checks the magic (`kind` names the file kind in errors) and version.
    pub fn open(
        inner: R,
        magic: &[u8; 8],
        kind: &str,
        version: u8,
        max_record: usize,
    ) -> Result<Self, FrameError> {
        let mut reader = FramedReader {
            input: Checksummed {
                inner,
                hasher: blake3::Hasher::new(),
            },
            max_record,
            records: 0,
            finished: false,
        };
        let mut found = [0u8; 8];
        reader.take(&mut found, "the magic")?;
        if &found != magic {
            return Err(FrameError::BadMagic {
                expected: kind.to_string(),
                found,
            });
        }
        let mut v = [0u8; 1];
        reader.take(&mut v, "the version")?;
        if v[0] != version {
            return Err(FrameError::Version {
                expected: version,
                found: v[0],
            });
        }
        Ok(reader)
    }

    fn take_unhashed(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), FrameError> {
        self.input.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                FrameError::Truncated {
                    what,
                    records: self.records,
                }
            } else {
                FrameError::Io(e)
            }
        })
    }

    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), FrameError> {
        self.take_unhashed(buf, what)?;
        self.input.hasher.update(buf);
        Ok(())
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The next record, or `None` after a verified end marker (count,
    /// checksum, nothing after it).
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.finished {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.take(&mut len, "a record length")?;
        let len = u32::from_le_bytes(len);
        if len == END_MARKER {
            self.read_end_marker()?;
            return Ok(None);
        }
        if len as usize > self.max_record {
            return Err(FrameError::RecordTooLarge {
                index: self.records,
                len: u64::from(len),
                max: self.max_record,
            });
        }
        let mut record = vec![0u8; len as usize];
        self.take(&mut record, "a record")?;
        self.records += 1;
        Ok(Some(record))
    }

    fn read_end_marker(&mut self) -> Result<(), FrameError> {
        let mut count = [0u8; 8];
        self.take(&mut count, "the end marker")?;
        let claimed = u64::from_le_bytes(count);
        let expected = *self.input.hasher.finalize().as_bytes();
        let mut checksum = [0u8; 32];
        self.take_unhashed(&mut checksum, "the checksum")?;
        if checksum != expected {
            return Err(FrameError::Checksum);
        }
        if claimed != self.records {
            return Err(FrameError::CountMismatch {
                claimed,
                found: self.records,
            });
        }
        let mut extra = [0u8; 1];
        if self.input.inner.read(&mut extra)? != 0 {
            return Err(FrameError::TrailingData);
        }
        self.finished = true;
        Ok(())
    }
}

/// The first record of a ledger export.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ExportHeader {
    pub version: u8,
    pub chain_id: String,
    pub genesis_hash: Hash,
    /// The exporter's head: the file holds blocks 1..=head_height.
    pub head_height: u64,
    /// Hash of the head's header (the genesis header's for head 0).
    pub head_hash: Hash,
}

impl Canonical for ExportHeader {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("export header does not decode: {0}")]
    Header(CodecError),
    #[error("export header names an invalid chain id")]
    ChainId,
    #[error("block {height} does not encode: {source}")]
    Encode { height: u64, source: CodecError },
    #[error("block for height {found} written where height {expected} belongs")]
    OutOfOrder { expected: u64, found: u64 },
    #[error("block {height} hashes to {found}, the header promised head {expected}")]
    HeadMismatch {
        height: u64,
        expected: Hash,
        found: Hash,
    },
    #[error("the export ends at height {written}, before its head {head}")]
    Incomplete { written: u64, head: u64 },
    #[error("the file holds more blocks than its head {head}")]
    BeyondHead { head: u64 },
    #[error("cannot skip back to height {requested}: the stream is at {next}")]
    Rewind { requested: u64, next: u64 },
}

/// Streams committed blocks into an export file.
pub struct ExportWriter<W: Write> {
    frames: FramedWriter<W>,
    header: ExportHeader,
    next_height: u64,
}

impl<W: Write> ExportWriter<W> {
    /// Starts a file that will hold blocks 1..=`header.head_height`.
    pub fn new(out: W, header: ExportHeader) -> Result<Self, ExportError> {
        if header.chain_id.is_empty() || header.chain_id.len() > MAX_CHAIN_ID_LEN {
            return Err(ExportError::ChainId);
        }
        let mut frames = FramedWriter::new(
            out,
            &EXPORT_MAGIC,
            EXPORT_FORMAT_VERSION,
            MAX_EXPORT_RECORD_BYTES,
        )?;
        frames.record(&header.to_bytes())?;
        Ok(ExportWriter {
            frames,
            header,
            next_height: 1,
        })
    }

    /// Appends the next block (heights 1, 2, ... up to the head).
    pub fn write(&mut self, block: &CommittedBlock) -> Result<(), ExportError> {
        let height = block.block.header.height;
        if height != self.next_height {
            return Err(ExportError::OutOfOrder {
                expected: self.next_height,
                found: height,
            });
        }
        if height > self.header.head_height {
            return Err(ExportError::BeyondHead {
                head: self.header.head_height,
            });
        }
        if height == self.header.head_height && block.block.hash() != self.header.head_hash {
            return Err(ExportError::HeadMismatch {
                height,
                expected: self.header.head_hash,
                found: block.block.hash(),
            });
        }
        let bytes = try_encode(block).map_err(|source| ExportError::Encode { height, source })?;
        self.frames.record(&bytes)?;
        self.next_height += 1;
        Ok(())
    }

    /// Ends the file; every block up to the head must have been written.
    pub fn finish(self) -> Result<W, ExportError> {
        let written = self.next_height - 1;
        if written != self.header.head_height {
            return Err(ExportError::Incomplete {
                written,
                head: self.header.head_height,
            });
        }
        Ok(self.frames.finish()?)
    }
}

/// Reads an export file as a stream of encoded blocks.
///
/// Records are returned undecoded: a reader of untrusted files decides what
/// an undecodable block means (the auditor reports it at its height).
pub struct ExportReader<R: Read> {
    frames: FramedReader<R>,
    header: ExportHeader,
    /// Height of the next record.
    next_height: u64,
}

impl<R: Read> ExportReader<R> {
    pub fn open(input: R) -> Result<Self, ExportError> {
        let mut frames = FramedReader::open(
            input,
            &EXPORT_MAGIC,
            "keyreg ledger export",
            EXPORT_FORMAT_VERSION,
            MAX_EXPORT_RECORD_BYTES,
        )?;
        let bytes = frames.next_record()?.ok_or(FrameError::Truncated {
            what: "the export header",
            records: 0,
        })?;
        let header = ExportHeader::from_bytes(&bytes).map_err(ExportError::Header)?;
        if header.chain_id.is_empty() || header.chain_id.len() > MAX_CHAIN_ID_LEN {
            return Err(ExportError::ChainId);
        }
        Ok(ExportReader {
            frames,
            header,
            next_height: 1,
        })
    }

    pub fn header(&self) -> &ExportHeader {
        &self.header
    }

    /// Height of the block the next call returns.
    pub fn next_height(&self) -> u64 {
        self.next_height
    }

    /// The next block's canonical bytes, or `None` once past the head and a
    /// verified end marker. A file that ends early is an error.
    pub fn next_block_bytes(&mut self) -> Result<Option<Vec<u8>>, ExportError> {
        let record = self.frames.next_record()?;
        let past_head = self.next_height > self.header.head_height;
        match record {
            Some(_) if past_head => Err(ExportError::BeyondHead {
                head: self.header.head_height,
            }),
            Some(bytes) => {
                self.next_height += 1;
                Ok(Some(bytes))
            }
            None if past_head => Ok(None),
            None => Err(ExportError::Incomplete {
                written: self.next_height - 1,
                head: self.header.head_height,
            }),
        }
    }

    /// The next block, decoded.
    pub fn next_block(
        &mut self,
    ) -> Result<Option<Result<CommittedBlock, CodecError>>, ExportError> {
        Ok(self
            .next_block_bytes()?
            .map(|bytes| CommittedBlock::from_bytes(&bytes)))
    }

    /// Reads past blocks below `height` (to resume from a checkpoint).
    pub fn skip_to(&mut self, height: u64) -> Result<(), ExportError> {
        if height < self.next_height {
            return Err(ExportError::Rewind {
                requested: height,
                next: self.next_height,
            });
        }
        while self.next_height < height {
            if self.next_block_bytes()?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use crate::store::MemLedgerStore;
    use crate::testkit::{commit_next, TestNet};

    fn ledger_blocks(n: usize) -> (ExportHeader, Vec<CommittedBlock>) {
        let net = TestNet::new("export-test", 4, &["acme"], 1);
        let mut ledger = Ledger::open(MemLedgerStore::new(), &net.genesis).unwrap();
        let blocks: Vec<CommittedBlock> = (0..n)
            .map(|_| {
                commit_next(&mut ledger, &net.validator_keys, vec![])
                    .unwrap()
                    .0
            })
            .collect();
        let header = ExportHeader {
            version: ExportHeader::VERSION,
            chain_id: "export-test".into(),
            genesis_hash: net.genesis.hash(),
            head_height: ledger.height(),
            head_hash: ledger.head().hash(),
        };
        (header, blocks)
    }

    fn export(header: &ExportHeader, blocks: &[CommittedBlock]) -> Vec<u8> {
        let mut w = ExportWriter::new(Vec::new(), header.clone()).unwrap();
        for b in blocks {
            w.write(b).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<CommittedBlock>, ExportError> {
        let mut r = ExportReader::open(bytes)?;
        let mut out = Vec::new();
        while let Some(b) = r.next_block()? {
            out.push(b.unwrap());
        }
        Ok(out)
    }

    #[test]
    fn export_round_trips() {
        let (header, blocks) = ledger_blocks(5);
        let bytes = export(&header, &blocks);
        let r = ExportReader::open(bytes.as_slice()).unwrap();
        assert_eq!(r.header(), &header);
        assert_eq!(read_all(&bytes).unwrap(), blocks);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (header, blocks) = ledger_blocks(3);
        let bytes = export(&header, &blocks);
        for cut in 0..bytes.len() {
            let err = read_all(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ExportError::Frame(FrameError::Truncated { .. })
                        | ExportError::Incomplete { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn oversize_record_is_rejected_before_allocation() {
        let (header, blocks) = ledger_blocks(1);
        let bytes = export(&header, &blocks);
        let header_len = u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize;
        let first_block = 9 + 4 + header_len;
        let mut bad = bytes[..first_block].to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_all(&bad),
            Err(ExportError::Frame(FrameError::RecordTooLarge {
                index: 1,
                ..
            }))
        ));
    }

    #[test]
    fn corruption_trailing_bytes_and_bad_magic_are_rejected() {
        let (header, blocks) = ledger_blocks(2);
        let bytes = export(&header, &blocks);
        let mut flipped = bytes.clone();
        let middle = bytes.len() / 2;
        flipped[middle] ^= 0x01;
        assert!(read_all(&flipped).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            read_all(&trailing),
            Err(ExportError::Frame(FrameError::TrailingData))
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(
            read_all(&magic),
            Err(ExportError::Frame(FrameError::BadMagic { .. }))
        ));
    }

    #[test]
    fn writer_enforces_order_and_head() {
        let (header, blocks) = ledger_blocks(3);
        let mut w = ExportWriter::new(Vec::new(), header.clone()).unwrap();
        assert!(matches!(
            w.write(&blocks[1]),
            Err(ExportError::OutOfOrder {
                expected: 1,
                found: 2
            })
        ));
        w.write(&blocks[0]).unwrap();
        assert!(matches!(
            w.finish(),
            Err(ExportError::Incomplete {
                written: 1,
                head: 3
            })
        ));
        let wrong_head = ExportHeader {
            head_hash: Hash([7; 32]),
            ..header
        };
        let mut w = ExportWriter::new(Vec::new(), wrong_head).unwrap();
        w.write(&blocks[0]).unwrap();
        w.write(&blocks[1]).unwrap();
        assert!(matches!(
            w.write(&blocks[2]),
            Err(ExportError::HeadMismatch { height: 3, .. })
        ));
    }

    #[test]
    fn skip_to_resumes_mid_stream() {
        let (header, blocks) = ledger_blocks(4);
        let bytes = export(&header, &blocks);
        let mut r = ExportReader::open(bytes.as_slice()).unwrap();
        r.skip_to(3).unwrap();
        assert_eq!(r.next_block().unwrap().unwrap().unwrap(), blocks[2]);
        assert!(matches!(r.skip_to(1), Err(ExportError::Rewind { .. })));
    }
}
