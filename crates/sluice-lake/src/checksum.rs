//! Whole-file checksums of the Parquet files the sinks write, recorded in their Delta `add`
//! actions' `tags`: `"sluice.crc32c"` (8 lowercase hex digits) and `"sluice.length"` (bytes).
//!
//! The parquet crate in use writes no page checksums, so a flipped byte inside a data file can
//! decode into different values. The tags give that protection one level up: [`crate::verify`]
//! reads a file back and compares. CRC32C rather than SHA-256: the threat is accidental damage
//! (bit rot, a torn or misdirected write), not tampering, and CRC32C detects every burst of up
//! to 32 bits (so every flipped byte) at memory speed with the CPU's instruction, on the
//! delivery path; the journal already uses it for its records.
//!
//! The sum is computed from the bytes as they are written, not by reading the file back: the
//! delta-rs writer is handed a table whose object store ([`ChecksumStore`]) passes every write
//! through and folds the bytes into a running CRC per object (a single `put`, or the parts of a
//! multipart upload in the order they are handed over, which is the object's order). When the
//! writer flushes, each `add` gets the sum of the object at its path.
//!
//! Readers that do not know the tags (Spark, DuckDB, delta-rs) ignore them; they are kept in
//! checkpoints (the `add.tags` map column). Files written by delta-rs operations (compaction,
//! and the files a person's deletion rewrites) carry no tags: [`crate::verify`] checks those by
//! length and decoding only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use deltalake::DeltaTable;
use deltalake::kernel::Add;
use deltalake::logstore::default_logstore;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use futures::stream::BoxStream;

/// The `add` tag holding the file's CRC32C (Castagnoli), 8 lowercase hex digits.
pub const CRC32C_TAG: &str = "sluice.crc32c";
/// The `add` tag holding the file's length in bytes.
pub const LENGTH_TAG: &str = "sluice.length";

/// A file's checksum and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSum {
    /// CRC32C of the whole file.
    pub crc32c: u32,
    /// Length in bytes.
    pub length: u64,
}

impl FileSum {
    /// The sum of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            crc32c: crc32c::crc32c(bytes),
            length: bytes.len() as u64,
        }
    }

    /// The sum recorded in an `add` action's tags, if both tags are there and parse.
    pub fn from_tags(tags: Option<&HashMap<String, Option<String>>>) -> Option<Self> {
        let tags = tags?;
        let tag = |k: &str| tags.get(k).and_then(Option::as_deref);
        Some(Self {
            crc32c: u32::from_str_radix(tag(CRC32C_TAG)?, 16).ok()?,
            length: tag(LENGTH_TAG)?.parse().ok()?,
        })
    }

    /// Records the sum in `add`'s tags.
    pub fn tag(&self, add: &mut Add) {
        let tags = add.tags.get_or_insert_with(HashMap::new);
        tags.insert(CRC32C_TAG.into(), Some(format!("{:08x}", self.crc32c)));
        tags.insert(LENGTH_TAG.into(), Some(self.length.to_string()));
    }
}

impl std::fmt::Display for FileSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "crc32c {:08x}, {} bytes", self.crc32c, self.length)
    }
}

/// The sums of the objects written through a [`ChecksumStore`], by path.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sums(Arc<Mutex<HashMap<String, FileSum>>>);

impl Sums {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, FileSum>> {
        // Plain data, always consistent: a panic elsewhere cannot tear it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, path: &Path, sum: FileSum) {
        self.lock().insert(path.to_string(), sum);
    }

    /// Tags every `add` with the sum of the object written at its path. An `add` whose object
    /// was not seen (which the delta-rs writer does not produce) is left untagged and logged:
    /// verification then checks it by decoding only.
    pub(crate) fn tag_all(&self, adds: &mut [Add]) {
        let mut sums = self.lock();
        for add in adds {
            match sums.remove(&add.path) {
                Some(sum) if i64::try_from(sum.length).is_ok_and(|l| l == add.size) => {
                    sum.tag(add);
                }
                Some(sum) => {
                    tracing::warn!(path = %add.path, size = add.size, written = sum.length, "lake data file size differs from the bytes written; left without a checksum");
                }
                None => {
                    tracing::warn!(path = %add.path, "lake data file written without a checksum");
                }
            }
        }
    }
}

/// A copy of `table` (same state) whose data-file writes go through a [`ChecksumStore`] that
/// records into `sums`. Only for the delta-rs writer: commits go through the original table.
pub(crate) fn summing_table(table: &DeltaTable, sums: &Sums) -> DeltaTable {
    let log_store = table.log_store();
    let store: Arc<dyn ObjectStore> = Arc::new(ChecksumStore {
        inner: log_store.object_store(None),
        sums: sums.clone(),
    });
    let config = log_store.config();
    let mut copy = DeltaTable::new(default_logstore(
        store,
        log_store.root_object_store(None),
        config.location(),
        config.options(),
    ));
    copy.state = table.state.clone();
    copy
}

/// Passes everything through to `inner` and records the CRC32C and length of every object it
/// writes.
#[derive(Debug)]
struct ChecksumStore {
    inner: Arc<dyn ObjectStore>,
    sums: Sums,
}

impl std::fmt::Display for ChecksumStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChecksumStore({})", self.inner)
    }
}

/// A running sum over the chunks of an object, in order.
#[derive(Clone, Copy, Debug, Default)]
struct Running {
    crc: u32,
    length: u64,
}

impl Running {
    fn add(&mut self, payload: &PutPayload) {
        for chunk in payload {
            self.crc = crc32c::crc32c_append(self.crc, chunk);
            self.length += chunk.len() as u64;
        }
    }

    fn sum(self) -> FileSum {
        FileSum {
            crc32c: self.crc,
            length: self.length,
        }
    }
}

#[async_trait]
impl ObjectStore for ChecksumStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let mut running = Running::default();
        running.add(&payload);
        let done = self.inner.put_opts(location, payload, opts).await?;
        self.sums.record(location, running.sum());
        Ok(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(ChecksumUpload {
            inner,
            location: location.clone(),
            running: Running::default(),
            sums: self.sums.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// An upload that folds each part into the object's sum as it is handed over (parts make up
/// the object in the order `put_part` is called), and records the sum once it completes.
#[derive(Debug)]
struct ChecksumUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    running: Running,
    sums: Sums,
}

#[async_trait]
impl MultipartUpload for ChecksumUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.running.add(&data);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let done = self.inner.complete().await?;
        self.sums.record(&self.location, self.running.sum());
        Ok(done)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_through_tags_and_chunks_sum_like_the_whole() {
        let bytes = b"PAR1 some parquet-ish bytes PAR1";
        let whole = FileSum::of(bytes);
        let mut running = Running::default();
        let payload: PutPayload = vec![
            bytes::Bytes::from_static(&bytes[..5]),
            bytes::Bytes::from_static(&bytes[5..]),
        ]
        .into_iter()
        .collect();
        running.add(&payload);
        assert_eq!(running.sum(), whole);

        let mut add = Add::default();
        whole.tag(&mut add);
        assert_eq!(FileSum::from_tags(add.tags.as_ref()), Some(whole));
        let tags = add.tags.as_ref().unwrap();
        assert_eq!(
            tags[CRC32C_TAG].as_deref().map(str::len),
            Some(8),
            "8 hex digits"
        );
        assert_eq!(FileSum::from_tags(None), None);
    }
}
