//! The archive service: the one way into and out of a node's fabric.

use crate::error::{ArchiveError, StoreError};
use crate::grid_link::{GridControl, RemoteFetch};
use crate::header;
use crate::incoming::{Incoming, IncomingMeta, StoreOutcome};
use crate::part10;
use crate::transcode;
use pacsgrid_dicom::{uid, Query};
use pacsgrid_store::{
    AttrValues, AuditMark, BlobBackend, BlobChunks, BlobError, BlobReader, BlobStore, Change,
    DeleteTarget, Durability, FolderBlobStore, Index, IndexBackend, IndexStats, InsertOutcome,
    PendingAudit, PostgresIndex, Provenance, QuarantineEntry, Space, SqliteIndex, StagedBlob,
    StoredInstance,
};
use serde::Serialize;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

/// How an archive is set up.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The data directory: staging area, partial copies, and (by default) index and blobs.
    pub data_dir: PathBuf,
    /// This node's site name, recorded as origin and holder of what it receives.
    pub site: String,
    /// The issuer recorded for patients whose sender gave no IssuerOfPatientID.
    pub default_issuer: String,
    /// Where blob bytes rest: the data directory's folder, or an S3 bucket (checked at open,
    /// so a node that could not keep what it acknowledges does not start).
    pub blobs: BlobBackend,
    /// Which engine keeps the index: SQLite in the data directory, or a PostgreSQL schema
    /// (connected at open, so a node that could not record what it acknowledges does not start).
    pub index: IndexBackend,
}

/// What a consistency check found (see [`Archive::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsistencyReport {
    /// Instances in the index.
    pub instances: u64,
    /// Objects in the blob store.
    pub blobs: u64,
    /// Blobs no index row references.
    pub orphan_blobs: u64,
    /// Index rows whose blob is missing.
    pub missing_blobs: u64,
    /// Blobs whose content no longer matches their hash (only when re-hashing).
    pub corrupt_blobs: u64,
}

impl ConsistencyReport {
    /// Whether the index and the blob store agree.
    pub fn is_clean(&self) -> bool {
        self.orphan_blobs == 0 && self.missing_blobs == 0 && self.corrupt_blobs == 0
    }
}

/// What [`Archive::delete`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeleteReport {
    /// Patients removed (left without studies).
    pub patients: u64,
    /// Studies removed.
    pub studies: u64,
    /// Series removed.
    pub series: u64,
    /// Instances removed.
    pub instances: u64,
    /// Sum of the removed instances' sizes.
    pub bytes: u64,
    /// Blobs removed from this node's blob store.
    pub blobs_removed: u64,
    /// The tombstones written to the change feed, one per instance.
    pub tombstones: Vec<Change>,
}

/// A node's archive: stores, queries and opens instances.
pub struct Archive {
    pub(crate) cfg: ArchiveConfig,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) index: Arc<dyn Index>,
    next_staging: AtomicU64,
    /// Set when the node is part of a grid: where missing bytes come from.
    pub(crate) remote: OnceLock<Arc<dyn RemoteFetch>>,
    /// Set when the node is part of a grid: what the REST API may ask of it.
    pub(crate) control: OnceLock<Arc<dyn GridControl>>,
    /// Bytes being fetched from other sites ahead of a retrieve that will ask for them.
    pub(crate) ahead: crate::grid_ops::ReadAhead,
    /// Stores hold it shared from putting a blob to indexing it; a deletion holds it
    /// exclusively while it removes blobs, so it never removes a blob that a store has just
    /// found already present (content addressing) and is about to index.
    pub(crate) blob_gc: tokio::sync::RwLock<()>,
    /// Held for the archive's lifetime so that two processes never share a data directory.
    _lock: Option<File>,
}

const RUNNING_MARKER: &str = "RUNNING";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Archive {
    /// Opens the archive in `cfg.data_dir` with the index and blob store `cfg` names (by
    /// default the embedded ones: SQLite, a folder), creating it if needed. After an unclean
    /// stop (a crash, `kill -9`) it first re-indexes or removes blobs the index does not
    /// know, so the two agree again.
    pub async fn open(cfg: ArchiveConfig) -> Result<Arc<Archive>, ArchiveError> {
        Archive::open_with(cfg, true).await
    }

    /// Opens the archive for inspection: no reconciliation, and the run marker is
    /// left as found (so `pacsgrid check` reports what a crash left, without repairing it).
    pub async fn open_for_check(cfg: ArchiveConfig) -> Result<Arc<Archive>, ArchiveError> {
        Archive::open_with(cfg, false).await
    }

    async fn open_with(cfg: ArchiveConfig, serve: bool) -> Result<Arc<Archive>, ArchiveError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let lock = File::create(cfg.data_dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(ArchiveError::Io(std::io::Error::other(format!(
                "data directory {} is in use by another pacsgrid process",
                cfg.data_dir.display()
            ))));
        }
        let blobs: Arc<dyn BlobStore> = match &cfg.blobs {
            BlobBackend::Folder => Arc::new(FolderBlobStore::open(&cfg.data_dir)?),
            BlobBackend::S3(s3) => Arc::new(
                pacsgrid_store::S3BlobStore::open(s3, &cfg.data_dir.join("staging")).await?,
            ),
        };
        let index: Arc<dyn Index> = match &cfg.index {
            IndexBackend::Sqlite => {
                let path = cfg.data_dir.join("index.sqlite");
                tracing::info!(index = "sqlite", path = %path.display(), "opening the index");
                // The index need not wait for the disk on each commit: the blob is fsynced
                // before the row is written, and after an unclean stop (power loss included,
                // since the run marker is then still there) every blob without a row is
                // re-indexed. This saves one fsync per stored instance without risking an
                // acknowledged one.
                Arc::new(SqliteIndex::open_with(&path, Durability::Rebuildable)?)
            }
            IndexBackend::Postgres(pg) => {
                // only the redacted URL may reach a log: operators paste logs into tickets
                tracing::info!(
                    index = "postgres",
                    url = %pacsgrid_store::postgres::redact(&pg.url),
                    schema = %pg.schema,
                    "opening the index"
                );
                Arc::new(PostgresIndex::open(pg).await?)
            }
        };
        let mut archive = Archive::with_backends(cfg, blobs, index);
        archive._lock = Some(lock);
        let marker = archive.cfg.data_dir.join(RUNNING_MARKER);
        if !serve {
            return Ok(Arc::new(archive));
        }
        if marker.exists() {
            tracing::warn!("previous run did not stop cleanly; reconciling index and blob store");
            let repaired = archive.recover().await?;
            tracing::info!(
                reindexed = repaired.0,
                removed = repaired.1,
                "reconciliation done"
            );
        }
        let partial = crate::replica::prepare_partials(&archive.cfg.data_dir)?;
        if partial > 0 {
            tracing::info!(
                partial,
                "copies from other sites cut off by the last stop will be continued"
            );
        }
        File::create(&marker)?.sync_all()?;
        // the marker's directory entry must be durable too, or a power loss could hide it
        File::open(&archive.cfg.data_dir)?.sync_all()?;
        Ok(Arc::new(archive))
    }

    /// Builds an archive over given backends (tests, and later PostgreSQL / S3).
    pub fn with_backends(
        cfg: ArchiveConfig,
        blobs: Arc<dyn BlobStore>,
        index: Arc<dyn Index>,
    ) -> Archive {
        Archive {
            cfg,
            blobs,
            index,
            next_staging: AtomicU64::new(0),
            remote: OnceLock::new(),
            control: OnceLock::new(),
            ahead: Default::default(),
            blob_gc: tokio::sync::RwLock::new(()),
            _lock: None,
        }
    }

    /// Marks a clean stop, so the next start skips reconciliation.
    pub fn close(&self) {
        let _ = std::fs::remove_file(self.cfg.data_dir.join(RUNNING_MARKER));
    }

    /// The archive's configuration.
    pub fn config(&self) -> &ArchiveConfig {
        &self.cfg
    }

    pub(crate) fn staging_file(&self) -> PathBuf {
        let n = self.next_staging.fetch_add(1, Ordering::Relaxed);
        self.blobs
            .staging_dir()
            .join(format!("{}-{}-{n}.part", std::process::id(), now_ms()))
    }

    pub(crate) async fn new_staging(
        &self,
        declared: Option<IncomingMeta>,
    ) -> Result<Staging, StoreError> {
        let path = self.staging_file();
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(Staging {
            guard: StagedPath(Some(path)),
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: blake3::Hasher::new(),
            size: 0,
            declared,
            source: String::new(),
            expect_study: None,
            mark: None,
        })
    }

    /// Starts receiving an object whose data set will follow (C-STORE, STOW-RS). Refuses at
    /// once what can be refused from the declaration alone: a non-storage SOP class, an
    /// invalid UID, an unknown transfer syntax.
    pub async fn begin_store(self: &Arc<Self>, meta: IncomingMeta) -> Result<Incoming, StoreError> {
        let sop_class = uid::trim_uid(&meta.sop_class_uid).to_string();
        let sop_instance = uid::trim_uid(&meta.sop_instance_uid).to_string();
        let ts = uid::trim_uid(&meta.transfer_syntax).to_string();
        if !uid::is_storage_sop_class(&sop_class) {
            return Err(StoreError::NotStorage(sop_class));
        }
        if !uid::is_valid_uid(&sop_instance) {
            return Err(StoreError::Mismatch(format!(
                "SOP Instance UID {sop_instance:?} is not a valid UID"
            )));
        }
        if uid::transfer_syntax(&ts).is_none() {
            return Err(StoreError::CannotUnderstand(format!(
                "unknown transfer syntax {ts}"
            )));
        }
        let header =
            part10::meta_header(&sop_class, &sop_instance, &ts).map_err(StoreError::Internal)?;
        let meta = IncomingMeta {
            sop_class_uid: sop_class,
            sop_instance_uid: sop_instance,
            transfer_syntax: ts,
            source: meta.source,
        };
        let mut staging = self.new_staging(Some(meta)).await?;
        staging.write(&header).await?;
        Ok(Incoming {
            archive: Arc::clone(self),
            inner: staging,
        })
    }

    /// Starts receiving a whole Part 10 object (preamble, meta group, data set) as a stream,
    /// as STOW-RS delivers it. With `expect_study`, an object of another study is refused
    /// (the request URL named the study) and nothing is stored.
    pub async fn begin_file(
        self: &Arc<Self>,
        source: &str,
        expect_study: Option<String>,
    ) -> Result<Incoming, StoreError> {
        let mut staging = self.new_staging(None).await?;
        staging.source_hint(source);
        staging.expect_study = expect_study;
        Ok(Incoming {
            archive: Arc::clone(self),
            inner: staging,
        })
    }

    /// Stores a DICOM Part 10 file as it is (import). The bytes kept are the file's bytes.
    pub async fn store_file(
        self: &Arc<Self>,
        path: &Path,
        source: &str,
    ) -> Result<StoreOutcome, StoreError> {
        let mut file = tokio::fs::File::open(path).await?;
        let mut staging = self.new_staging(None).await?;
        staging.source_hint(source);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            staging.write(&buf[..n]).await?;
        }
        self.commit(staging).await
    }

    /// Makes a fully received object durable and recorded, in the order that makes an
    /// acknowledgement safe: fsync, parse and check, move into the blob store, index + feed.
    pub(crate) async fn commit(&self, mut staging: Staging) -> Result<StoreOutcome, StoreError> {
        staging.flush_and_sync().await?;
        let path = staging.path().to_path_buf();
        let issuer = self.cfg.default_issuer.clone();
        let parsed = tokio::task::spawn_blocking(move || header::parse_staged(&path, &issuer))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??;
        let mut record = parsed.record;
        let (declared_class, declared_instance, source) = match &staging.declared {
            Some(d) => (
                d.sop_class_uid.clone(),
                d.sop_instance_uid.clone(),
                d.source.clone(),
            ),
            None => (
                parsed.meta_sop_class_uid.clone(),
                parsed.meta_sop_instance_uid.clone(),
                staging.source.clone(),
            ),
        };
        let origin = if staging.declared.is_some() {
            "command"
        } else {
            "file meta group"
        };
        if record.instance.sop_instance_uid != declared_instance {
            return Err(StoreError::Mismatch(format!(
                "data set SOPInstanceUID {} differs from the {origin}'s {}",
                record.instance.sop_instance_uid, declared_instance
            )));
        }
        if record.instance.sop_class_uid != declared_class {
            return Err(StoreError::Mismatch(format!(
                "data set SOPClassUID {} differs from the {origin}'s {}",
                record.instance.sop_class_uid, declared_class
            )));
        }
        if !uid::is_storage_sop_class(&record.instance.sop_class_uid) {
            return Err(StoreError::NotStorage(record.instance.sop_class_uid));
        }
        if let Some(study) = &staging.expect_study {
            if &record.study.study_uid != study {
                return Err(StoreError::Mismatch(format!(
                    "StudyInstanceUID {} is not the study {study} named in the request",
                    record.study.study_uid
                )));
            }
        }
        let hash = staging.hash();
        record.hash = hash.clone();
        record.size = staging.size;
        record.origin_site = self.cfg.site.clone();
        record.source = source.clone();
        record.received_at_ms = now_ms();
        let staged = StagedBlob {
            path: staging.path().to_path_buf(),
            hash: hash.clone(),
            size: staging.size,
        };
        let _gc = self.blob_gc.read().await;
        self.blobs.put(staged).await?;
        staging.guard.disarm();
        self.record(record, &source, staging.mark.as_ref()).await
    }

    /// Records an object whose blob is already in the store, applying the duplicate and
    /// quarantine rules.
    async fn record(
        &self,
        record: pacsgrid_store::InstanceRecord,
        source: &str,
        mark: Option<&AuditMark>,
    ) -> Result<StoreOutcome, StoreError> {
        let sop = record.instance.sop_instance_uid.clone();
        let subject = crate::incoming::Subject {
            patient_id: record.patient.patient_id.clone(),
            issuer: record.patient.issuer.clone(),
            study_uid: record.study.study_uid.clone(),
            sop_class_uid: record.instance.sop_class_uid.clone(),
        };
        let inserted = match mark {
            Some(m) => self.index.insert_marked(&record, &self.cfg.site, m).await?,
            None => self.index.insert(&record, &self.cfg.site).await?,
        };
        match inserted {
            InsertOutcome::Inserted { seq } => Ok(StoreOutcome::Stored {
                sop_instance_uid: sop,
                study_uid: record.study.study_uid,
                hash: record.hash,
                seq,
                subject,
            }),
            InsertOutcome::Duplicate => Ok(StoreOutcome::Duplicate {
                sop_instance_uid: sop,
                hash: record.hash,
                subject,
            }),
            InsertOutcome::Conflict { existing_hash } => {
                let entry = QuarantineEntry {
                    id: 0,
                    sop_instance_uid: sop.clone(),
                    kept_hash: existing_hash.clone(),
                    quarantined_hash: record.hash.clone(),
                    reason: "SOP Instance UID already stored with different content".into(),
                    source: source.to_string(),
                    at_ms: now_ms(),
                };
                self.index.quarantine(&entry).await?;
                tracing::warn!(
                    sop_instance_uid = %sop,
                    kept = %existing_hash,
                    quarantined = %record.hash,
                    source,
                    "conflicting object for an already stored SOP Instance UID: kept the first, quarantined the new one"
                );
                Ok(StoreOutcome::Quarantined {
                    sop_instance_uid: sop,
                    kept_hash: existing_hash,
                    quarantined_hash: record.hash,
                    subject,
                })
            }
        }
    }

    /// Drops the audit marks of `session` once its audit records are on disk.
    pub async fn clear_audit_marks(&self, session: &str) -> Result<u64, ArchiveError> {
        Ok(self.index.clear_audit_marks(session).await?)
    }

    /// The oldest stores (at most `limit`) whose session never wrote its audit record.
    pub async fn pending_audits(&self, limit: u32) -> Result<Vec<PendingAudit>, ArchiveError> {
        Ok(self.index.pending_audits(limit).await?)
    }

    /// Drops every audit mark up to and including `id`, once their records are written.
    pub async fn clear_audit_marks_through(&self, id: i64) -> Result<u64, ArchiveError> {
        Ok(self.index.clear_audit_marks_through(id).await?)
    }

    /// Answers a query from the index.
    pub async fn find(
        &self,
        query: &Query,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<AttrValues>, ArchiveError> {
        Ok(self.index.find(query, limit, offset).await?)
    }

    /// Every stored instance under what the query matches, for retrieval.
    pub async fn locate(&self, query: &Query) -> Result<Vec<StoredInstance>, ArchiveError> {
        Ok(self.index.locate(query).await?)
    }

    /// One instance by SOP Instance UID.
    pub async fn instance(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<StoredInstance>, ArchiveError> {
        Ok(self.index.instance(sop_instance_uid).await?)
    }

    /// Opens a stored instance's data set (the bytes after its file meta group).
    pub async fn open_dataset(&self, inst: &StoredInstance) -> Result<BlobReader, ArchiveError> {
        self.open_at(inst, inst.dataset_offset).await
    }

    /// A stored instance's whole Part 10 bytes as chunks of up to `chunk` bytes, for sending
    /// on as they are read (WADO-RS).
    pub async fn stream_file(
        &self,
        inst: &StoredInstance,
        chunk: usize,
    ) -> Result<BlobChunks, ArchiveError> {
        // A backend may report a missing blob only at the first chunk: ask first in a grid.
        if self.remote.get().is_some() && !self.blobs.exists(&inst.hash).await? {
            return Ok(self
                .fetch_remote(inst)
                .await?
                .into_chunks(chunk, &inst.hash));
        }
        Ok(self.blobs.chunks(&inst.hash, 0, chunk).await?)
    }

    /// Opens a stored instance's whole Part 10 bytes.
    pub async fn open_file(&self, inst: &StoredInstance) -> Result<BlobReader, ArchiveError> {
        self.open_at(inst, 0).await
    }

    /// A stored instance's whole Part 10 bytes in memory, wherever they are held: only for the
    /// one instance being converted, decoded, rendered or cut into frames.
    pub async fn read_file(&self, inst: &StoredInstance) -> Result<Vec<u8>, ArchiveError> {
        let mut file = Vec::with_capacity(usize::try_from(inst.size).unwrap_or(0).min(1 << 30));
        self.open_file(inst).await?.read_to_end(&mut file).await?;
        Ok(file)
    }

    /// Opens local bytes, or, in a grid, fetches them from a site that holds them.
    async fn open_at(
        &self,
        inst: &StoredInstance,
        offset: u64,
    ) -> Result<BlobReader, ArchiveError> {
        // Bytes a retrieve's read-ahead fetched are taken first: no blocking hop to learn that
        // the local open fails, on every instance a C-GET at a site without the bytes sends.
        // A read-ahead that found the bytes held here failed, and its entry goes with it, so
        // that entries of local instances do not fill the read-ahead table.
        if self.remote.get().is_some() {
            if let Some(fetched) = self.take_read_ahead(inst).await {
                return fetched.into_reader(offset).await;
            }
        }
        match self.blobs.open(&inst.hash, offset).await {
            Err(BlobError::NotFound(_)) if self.remote.get().is_some() => {
                self.fetch_remote(inst).await?.into_reader(offset).await
            }
            other => Ok(other?),
        }
    }

    /// A stored instance's data set in another, uncompressed transfer syntax, for a receiver
    /// that does not accept the stored one: re-encoded, and its pixel data decoded first when
    /// they are stored compressed. Whole in memory: one instance at a time.
    pub async fn transcode_dataset(
        &self,
        inst: &StoredInstance,
        to_ts: &str,
    ) -> Result<Vec<u8>, ArchiveError> {
        let err = |why: String| ArchiveError::Transcode {
            sop_instance_uid: inst.sop_instance_uid.clone(),
            from: inst.transfer_syntax.clone(),
            to: to_ts.to_string(),
            why,
        };
        // Read through the archive, not the blob's path: the bytes may sit in an object
        // store or at another site.
        let file = self.read_file(inst).await?;
        let to = to_ts.to_string();
        tokio::task::spawn_blocking(move || transcode::to_uncompressed(&file, &to))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(err)
    }

    /// Change-feed entries after `since`.
    pub async fn changes(&self, since: i64, limit: u32) -> Result<Vec<Change>, ArchiveError> {
        Ok(self.index.changes(since, limit).await?)
    }

    /// Quarantined objects, newest first.
    pub async fn quarantined(&self, limit: u32) -> Result<Vec<QuarantineEntry>, ArchiveError> {
        Ok(self.index.quarantined(limit).await?)
    }

    /// Room left on the blob store's file system, when the backend can tell.
    pub async fn storage_space(&self) -> Result<Option<Space>, ArchiveError> {
        Ok(self.blobs.space().await?)
    }

    /// Counts for status and metrics.
    pub async fn stats(&self) -> Result<IndexStats, ArchiveError> {
        Ok(self.index.stats().await?)
    }

    /// Origin site, source, arrival time and holders of one instance.
    pub async fn provenance(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<Provenance>, ArchiveError> {
        Ok(self.index.provenance(sop_instance_uid).await?)
    }

    /// The newest change-feed sequence number (0 when nothing happened yet).
    pub async fn feed_head(&self) -> Result<i64, ArchiveError> {
        Ok(self.index.feed_head().await?)
    }

    /// Deletes a study and everything in it (see [`Archive::delete`]).
    pub async fn delete_study(&self, study_uid: &str) -> Result<DeleteReport, ArchiveError> {
        self.delete(DeleteTarget::Study(study_uid.to_string()))
            .await
    }

    /// Deletes a series and its instances (see [`Archive::delete`]).
    pub async fn delete_series(&self, series_uid: &str) -> Result<DeleteReport, ArchiveError> {
        self.delete(DeleteTarget::Series(series_uid.to_string()))
            .await
    }

    /// Deletes one instance (see [`Archive::delete`]).
    pub async fn delete_instance(
        &self,
        sop_instance_uid: &str,
    ) -> Result<DeleteReport, ArchiveError> {
        self.delete(DeleteTarget::Instance(sop_instance_uid.to_string()))
            .await
    }

    /// Deletes a patient (PatientID under one issuer) and all their studies.
    pub async fn delete_patient(
        &self,
        patient_id: &str,
        issuer: &str,
    ) -> Result<DeleteReport, ArchiveError> {
        self.delete(DeleteTarget::Patient {
            patient_id: patient_id.to_string(),
            issuer: issuer.to_string(),
        })
        .await
    }

    /// Deletes `target` and everything under it: the index drops the rows and writes one
    /// tombstone per instance to the change feed in one transaction, then the blobs nothing
    /// references any more are removed. Entities left empty disappear. An unknown target
    /// deletes nothing (all counts zero).
    pub async fn delete(&self, target: DeleteTarget) -> Result<DeleteReport, ArchiveError> {
        // Exclusive from before the index change to the last blob removal: no store can sit
        // between "blob already present" and "row inserted" for a hash removed here.
        let _gc = self.blob_gc.write().await;
        let deletion = self.index.delete(&target, now_ms()).await?;
        for t in &deletion.tombstones {
            tracing::info!(
                sop_instance_uid = %t.sop_instance_uid,
                study_uid = %t.study_uid,
                series_uid = %t.series_uid,
                hash = %t.hash,
                seq = t.seq,
                "instance deleted (tombstone written)"
            );
        }
        let mut report = DeleteReport {
            patients: deletion.patients,
            studies: deletion.studies,
            series: deletion.series,
            instances: deletion.instances,
            bytes: deletion.bytes,
            blobs_removed: 0,
            tombstones: deletion.tombstones,
        };
        // Physical removal. Today this node is the only holder of what it stores, so the
        // bytes go as soon as the tombstone is committed. In the grid, other sites hold
        // copies and pull this node's feed: removal must then wait until every holder has
        // seen the tombstone (the grid layer will defer this step, not the index change).
        // A crash before this loop leaves blobs that recovery removes (they are tombstoned).
        // In a grid the bytes stay until every peer has read the tombstone (the grid's
        // collector removes them then).
        let in_grid = self.remote.get().is_some();
        for hash in deletion.unreferenced_hashes.iter().filter(|_| !in_grid) {
            match self.blobs.delete(hash).await {
                Ok(()) => report.blobs_removed += 1,
                Err(e) => {
                    // The index no longer references it: it is an orphan `check` reports,
                    // not a failed deletion.
                    tracing::error!(%hash, error = %e, "could not remove the blob of a deleted instance");
                }
            }
        }
        tracing::info!(
            target = ?target,
            patients = report.patients,
            studies = report.studies,
            series = report.series,
            instances = report.instances,
            bytes = report.bytes,
            blobs_removed = report.blobs_removed,
            "deletion done"
        );
        Ok(report)
    }

    /// Compares the index with the blob store; with `rehash`, also re-reads every blob and
    /// compares it with its hash.
    pub async fn check(&self, rehash: bool) -> Result<ConsistencyReport, ArchiveError> {
        let indexed: HashSet<String> = self.index.all_hashes().await?.into_iter().collect();
        let stored: HashSet<String> = self.blobs.list().await?.into_iter().collect();
        let stats = self.index.stats().await?;
        let mut report = ConsistencyReport {
            instances: stats.instances,
            blobs: stored.len() as u64,
            orphan_blobs: stored.difference(&indexed).count() as u64,
            missing_blobs: indexed.difference(&stored).count() as u64,
            corrupt_blobs: 0,
        };
        if rehash {
            for h in indexed.intersection(&stored) {
                if self.hash_blob(h).await? != *h {
                    tracing::error!(hash = %h, "blob content does not match its hash");
                    report.corrupt_blobs += 1;
                }
            }
        }
        Ok(report)
    }

    pub(crate) async fn hash_blob(&self, hash: &str) -> Result<String, ArchiveError> {
        let mut r = self.blobs.open(hash, 0).await?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Brings the index and the blob store back into agreement after a crash: a blob the
    /// index does not know was never acknowledged, but it is a complete, fsynced object, so
    /// it is indexed (or quarantined) if it parses, and removed otherwise. Returns
    /// (re-indexed, removed).
    pub async fn recover(&self) -> Result<(u64, u64), ArchiveError> {
        let indexed: HashSet<String> = self.index.all_hashes().await?.into_iter().collect();
        let mut reindexed = 0;
        let mut removed = 0;
        for hash in self.blobs.list().await? {
            if indexed.contains(&hash) {
                continue;
            }
            if self.index.tombstoned(&hash).await? {
                // Deleted, then the node stopped before the blob was removed: finish the
                // deletion rather than bring the instance back. (A store of the same bytes
                // after the deletion that had no index row yet was never acknowledged.)
                tracing::info!(%hash, "removing the blob of a deleted instance");
                self.blobs.delete(&hash).await?;
                removed += 1;
                continue;
            }
            // A remote blob (S3) is downloaded to a staging file to be parsed; the guard
            // removes that copy, the object itself stays where it is.
            let (path, _download) = match self.blobs.local_path(&hash) {
                Some(path) => (path, StagedPath(None)),
                None => {
                    let path = self.staging_file();
                    let guard = StagedPath(Some(path.clone()));
                    self.download(&hash, &path).await?;
                    (path, guard)
                }
            };
            let issuer = self.cfg.default_issuer.clone();
            let size = self.blobs.size(&hash).await?;
            let parsed = tokio::task::spawn_blocking(move || header::parse_staged(&path, &issuer))
                .await
                .map_err(|e| ArchiveError::Io(std::io::Error::other(e.to_string())))?;
            match parsed {
                Ok(p) => {
                    let mut record = p.record;
                    record.hash = hash.clone();
                    record.size = size;
                    record.origin_site = self.cfg.site.clone();
                    record.source = "recovery".into();
                    record.received_at_ms = now_ms();
                    match self.record(record, "recovery", None).await {
                        Ok(_) => reindexed += 1,
                        Err(e) => tracing::error!(%hash, error = %e, "could not re-index blob"),
                    }
                }
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "removing unreadable unindexed blob");
                    self.blobs.delete(&hash).await?;
                    removed += 1;
                }
            }
        }
        Ok((reindexed, removed))
    }

    /// Copies a blob into a local file (streamed, bounded memory), for parsing what only a
    /// remote store holds.
    async fn download(&self, hash: &str, to: &Path) -> Result<(), ArchiveError> {
        let mut reader = self.blobs.open(hash, 0).await?;
        let mut file = tokio::fs::File::create(to).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.flush().await?;
        Ok(())
    }
}

/// Removes a staged file unless it was handed over to the blob store.
pub(crate) struct StagedPath(Option<PathBuf>);

impl StagedPath {
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for StagedPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// An object being written to the staging area, hashed as it goes.
pub(crate) struct Staging {
    pub(crate) guard: StagedPath,
    writer: Option<BufWriter<tokio::fs::File>>,
    hasher: blake3::Hasher,
    pub(crate) size: u64,
    declared: Option<IncomingMeta>,
    source: String,
    expect_study: Option<String>,
    /// Committed with the index row when the store still needs an audit record.
    pub(crate) mark: Option<AuditMark>,
}

impl Staging {
    pub(crate) fn path(&self) -> &Path {
        self.guard.0.as_deref().unwrap_or_else(|| Path::new(""))
    }

    fn source_hint(&mut self, source: &str) {
        self.source = source.to_string();
    }

    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| StoreError::Internal("write after finish".into()))?;
        w.write_all(data).await?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    pub(crate) async fn flush_and_sync(&mut self) -> Result<(), StoreError> {
        if let Some(mut w) = self.writer.take() {
            w.flush().await?;
            let f = w.into_inner();
            f.sync_all().await?;
        }
        Ok(())
    }

    pub(crate) fn hash(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}
