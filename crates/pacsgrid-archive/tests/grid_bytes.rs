//! Bytes from another site through the archive: a replica counts only with the right hash,
//! and a retrieve of bytes held elsewhere returns them whole, from memory or from a file.

use async_trait::async_trait;
use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use futures::StreamExt;
use pacsgrid_archive::{
    Archive, ArchiveConfig, ArchiveError, GridControl, RemoteFetch, StoreOutcome,
};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const ELE: &str = "1.2.840.10008.1.2.1";
const SOP: &str = "1.2.9.1.1.1";

async fn archive(dir: &Path, site: &str) -> Arc<Archive> {
    Archive::open(ArchiveConfig {
        data_dir: dir.to_path_buf(),
        site: site.into(),
        default_issuer: "HOSP".into(),
        blobs: Default::default(),
        index: Default::default(),
    })
    .await
    .unwrap()
}

/// Site `a` holding one instance, site `b` knowing its record only; returns both and the
/// instance's bytes.
async fn two_sites(
    a_dir: &Path,
    b_dir: &Path,
    files: &Path,
) -> (Arc<Archive>, Arc<Archive>, Vec<u8>) {
    two_sites_sized(a_dir, b_dir, files, 300_000).await
}

/// [`two_sites`] with `pixels` bytes of pixel data.
async fn two_sites_sized(
    a_dir: &Path,
    b_dir: &Path,
    files: &Path,
    pixels: u32,
) -> (Arc<Archive>, Arc<Archive>, Vec<u8>) {
    let mut o = InMemDicomObject::new_empty();
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, CT));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, SOP));
    o.put(s(tags::MODALITY, VR::CS, "CT"));
    o.put(s(tags::PATIENT_ID, VR::LO, "P1"));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.9.1"));
    o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.9.1.1"));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(
            (0..pixels)
                .map(|i| (i * 7 + i / 251) as u8)
                .collect::<Vec<u8>>(),
        ),
    ));
    let obj = o
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(CT)
                .media_storage_sop_instance_uid(SOP)
                .transfer_syntax(ELE),
        )
        .unwrap();
    let path = files.join("one.dcm");
    obj.write_to_file(&path).unwrap();
    let a = archive(a_dir, "a").await;
    assert!(matches!(
        a.store_file(&path, "TEST").await.unwrap(),
        StoreOutcome::Stored { .. }
    ));
    let b = archive(b_dir, "b").await;
    let (record, _) = a.grid_record(SOP).await.unwrap().unwrap();
    b.apply_remote_record(&record, "a").await.unwrap();
    let inst = a.instance(SOP).await.unwrap().unwrap();
    let mut bytes = Vec::new();
    a.open_file(&inst)
        .await
        .unwrap()
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    (a, b, bytes)
}

/// Data directories for sites a and b, and a folder for the files stored at a.
fn three_dirs() -> (tempfile::TempDir, tempfile::TempDir, tempfile::TempDir) {
    (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    )
}

fn staging_files(dir: &Path) -> usize {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .count()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_replica_counts_only_with_the_right_hash() {
    let (ad, bd, fd) = three_dirs();
    let (_a, b, bytes) = two_sites(ad.path(), bd.path(), fd.path()).await;
    let inst = b.instance(SOP).await.unwrap().unwrap();
    assert!(!b.has_blob(&inst.hash).await.unwrap());

    // Wrong bytes: refused, nothing left behind, nothing announced.
    let mut bad = b.begin_replica(&inst.hash, inst.size).await.unwrap();
    let mut wrong = bytes.clone();
    wrong[1000] ^= 1;
    for c in wrong.chunks(16 << 10) {
        bad.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert!(matches!(
        bad.finish(SOP).await,
        Err(ArchiveError::HashMismatch { .. })
    ));
    assert!(!b.has_blob(&inst.hash).await.unwrap());
    assert_eq!(staging_files(bd.path()), 0);
    let (_, holders) = b.grid_record(SOP).await.unwrap().unwrap();
    assert!(holders.iter().all(|h| h.site != "b"));

    // The right bytes, in more than one batch: held and announced.
    let mut good = b.begin_replica(&inst.hash, inst.size).await.unwrap();
    let big = Bytes::from(bytes.clone());
    for at in (0..big.len()).step_by(100_000) {
        good.write(big.slice(at..(at + 100_000).min(big.len())))
            .await
            .unwrap();
    }
    good.finish(SOP).await.unwrap();
    assert!(b.has_blob(&inst.hash).await.unwrap());
    assert!(b.verify_blob(&inst.hash).await.unwrap());
    let (_, holders) = b.grid_record(SOP).await.unwrap().unwrap();
    assert!(holders.iter().any(|h| h.site == "b"));
    assert_eq!(staging_files(bd.path()), 0);

    // An abandoned replica leaves no staging file.
    let mut dropped = b.begin_replica(&inst.hash, inst.size).await.unwrap();
    dropped.write(big.slice(0..10)).await.unwrap();
    drop(dropped);
    assert_eq!(staging_files(bd.path()), 0);
}

fn partial_files(dir: &Path) -> Vec<std::path::PathBuf> {
    walk(&dir.join("partial"))
}

#[tokio::test]
async fn a_cut_off_replica_goes_on_from_its_partial_copy() {
    let (ad, bd, fd) = three_dirs();
    let (_a, b, bytes) = two_sites_sized(ad.path(), bd.path(), fd.path(), 5_000_000).await;
    let inst = b.instance(SOP).await.unwrap().unwrap();
    let all = Bytes::from(bytes);

    // Cut off after 3 MB: what reached the file stays as a partial copy.
    let mut first = b.begin_replica(&inst.hash, inst.size).await.unwrap();
    assert_eq!(first.offset(), 0);
    for at in (0..3_000_000).step_by(100_000) {
        first.write(all.slice(at..at + 100_000)).await.unwrap();
    }
    drop(first);
    let partial = partial_files(bd.path());
    assert_eq!(partial.len(), 1);
    let kept = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(kept >= 1 << 20, "{kept} bytes kept");
    assert_eq!(std::fs::read(&partial[0]).unwrap(), &all[..kept as usize]);

    // The next replica goes on from there and the whole verifies.
    let mut second = b.begin_replica(&inst.hash, inst.size).await.unwrap();
    assert_eq!(second.offset(), kept);
    second.write(all.slice(kept as usize..)).await.unwrap();
    second.finish(SOP).await.unwrap();
    assert!(b.verify_blob(&inst.hash).await.unwrap());
    assert!(partial_files(bd.path()).is_empty());
    assert_eq!(staging_files(bd.path()), 0);
}

#[tokio::test]
async fn a_partial_copy_with_wrong_bytes_is_dropped_and_a_restart_starts_clean() {
    let (ad, bd, fd) = three_dirs();
    let (_a, b, bytes) = two_sites_sized(ad.path(), bd.path(), fd.path(), 3_000_000).await;
    let inst = b.instance(SOP).await.unwrap().unwrap();
    let dir = bd.path().join("partial");
    std::fs::create_dir_all(&dir).unwrap();
    let mut wrong = bytes[..2_000_000].to_vec();
    wrong[10] ^= 1;
    std::fs::write(dir.join(&inst.hash), &wrong).unwrap();

    let mut r = b.begin_replica(&inst.hash, inst.size).await.unwrap();
    // kept: the whole blocks of it (so that the copy goes on with direct writes)
    let kept = pacsgrid_store::direct::aligned_down(2_000_000);
    assert_eq!(r.offset(), kept);
    r.write(Bytes::copy_from_slice(&bytes[kept as usize..]))
        .await
        .unwrap();
    assert!(matches!(
        r.finish(SOP).await,
        Err(ArchiveError::HashMismatch { .. })
    ));
    // bytes that failed their check are not continued from
    assert!(partial_files(bd.path()).is_empty());

    // a sender that sends everything again: the replica starts over
    std::fs::write(dir.join(&inst.hash), &wrong).unwrap();
    let mut r = b.begin_replica(&inst.hash, inst.size).await.unwrap();
    r.restart().await.unwrap();
    assert_eq!(r.offset(), 0);
    r.write(Bytes::from(bytes)).await.unwrap();
    r.finish(SOP).await.unwrap();
    assert!(b.verify_blob(&inst.hash).await.unwrap());
}

/// Serves site a's bytes; into memory only when `memory` is set.
struct FromA {
    a: Arc<Archive>,
    memory: bool,
    calls: AtomicUsize,
}

impl FromA {
    async fn bytes(&self, sop: &str) -> Vec<u8> {
        let inst = self.a.instance(sop).await.unwrap().unwrap();
        let mut out = Vec::new();
        self.a
            .open_file(&inst)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }
}

#[async_trait]
impl RemoteFetch for FromA {
    async fn fetch(&self, sop: &str, _hash: &str, _size: u64, dest: &Path) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::fs::write(dest, self.bytes(sop).await)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fetch_to_memory(
        &self,
        sop: &str,
        _hash: &str,
        _size: u64,
    ) -> Option<Result<Vec<Bytes>, String>> {
        if !self.memory {
            return None;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        // In uneven pieces, an empty one among them, as a network delivers them: readers
        // from an offset and chunked reads must put them back together.
        let all = Bytes::from(self.bytes(sop).await);
        let cuts = [0, 1, 1, 7, all.len() / 3, all.len() / 3 + 4096, all.len()];
        let mut cuts: Vec<usize> = cuts.iter().map(|c| (*c).min(all.len())).collect();
        cuts.sort_unstable();
        Some(Ok(cuts.windows(2).map(|w| all.slice(w[0]..w[1])).collect()))
    }
}

struct NoControl;

#[async_trait]
impl GridControl for NoControl {
    async fn status(&self) -> Result<serde_json::Value, String> {
        Err("none".into())
    }
    async fn prefetch(
        &self,
        _patient_id: &str,
        _issuer: Option<&str>,
    ) -> Result<serde_json::Value, String> {
        Err("none".into())
    }
    async fn scrub(&self) -> Result<serde_json::Value, String> {
        Err("none".into())
    }
}

#[tokio::test]
async fn bytes_held_elsewhere_come_back_whole_from_memory_or_file() {
    for memory in [true, false] {
        let (ad, bd, fd) = three_dirs();
        let (a, b, bytes) = two_sites(ad.path(), bd.path(), fd.path()).await;
        let remote = Arc::new(FromA {
            a,
            memory,
            calls: AtomicUsize::new(0),
        });
        b.attach_grid(remote.clone(), Arc::new(NoControl));
        let inst = b.instance(SOP).await.unwrap().unwrap();

        // Asked for directly: the whole file, the data set from its offset, and as chunks.
        let mut got = Vec::new();
        b.open_file(&inst)
            .await
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert_eq!(got, bytes, "memory = {memory}");
        let mut ds = Vec::new();
        b.open_dataset(&inst)
            .await
            .unwrap()
            .read_to_end(&mut ds)
            .await
            .unwrap();
        assert_eq!(ds, bytes[inst.dataset_offset as usize..]);
        let mut chunks = b.stream_file(&inst, 64 << 10).await.unwrap();
        let mut streamed = Vec::new();
        while let Some(c) = chunks.next().await {
            let c = c.unwrap();
            assert!(c.len() <= 64 << 10);
            streamed.extend_from_slice(&c);
        }
        assert_eq!(streamed, bytes);

        // Read ahead: fetched once, taken by the next open.
        let before = remote.calls.load(Ordering::SeqCst);
        b.read_ahead(std::slice::from_ref(&inst));
        b.read_ahead(std::slice::from_ref(&inst));
        let mut again = Vec::new();
        b.open_file(&inst)
            .await
            .unwrap()
            .read_to_end(&mut again)
            .await
            .unwrap();
        assert_eq!(again, bytes);
        assert_eq!(remote.calls.load(Ordering::SeqCst), before + 1);

        // Nothing kept: no blob, no staging file.
        assert!(!b.has_blob(&inst.hash).await.unwrap());
        assert_eq!(staging_files(bd.path()), 0);
    }
}

#[tokio::test]
async fn a_read_ahead_of_bytes_held_here_leaves_them_read_here() {
    let (ad, bd, fd) = three_dirs();
    let (a, _b, bytes) = two_sites(ad.path(), bd.path(), fd.path()).await;
    // Site a in a grid, asked to read ahead an instance it holds itself (a retrieve does so
    // for every instance it is about to send): the read-ahead finds the bytes here, and the
    // open that follows reads them here, fetching nothing.
    let remote = Arc::new(FromA {
        a: Arc::clone(&a),
        memory: true,
        calls: AtomicUsize::new(0),
    });
    a.attach_grid(remote.clone(), Arc::new(NoControl));
    let inst = a.instance(SOP).await.unwrap().unwrap();
    for _ in 0..3 {
        a.read_ahead(std::slice::from_ref(&inst));
        let mut got = Vec::new();
        a.open_file(&inst)
            .await
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert_eq!(got, bytes);
    }
    assert_eq!(remote.calls.load(Ordering::SeqCst), 0);
}

/// [`FromA`] for a site that keeps what it fetches for a retrieve as a cached copy.
struct KeepingFromA(FromA);

#[async_trait]
impl RemoteFetch for KeepingFromA {
    async fn fetch(&self, sop: &str, hash: &str, size: u64, dest: &Path) -> Result<(), String> {
        self.0.fetch(sop, hash, size, dest).await
    }

    fn keep_fetched(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_kept_copy_is_served_by_the_retrieve_that_fetched_it_and_the_next_one() {
    let (ad, bd, fd) = three_dirs();
    let (a, b, bytes) = two_sites(ad.path(), bd.path(), fd.path()).await;
    let remote = Arc::new(KeepingFromA(FromA {
        a,
        memory: false,
        calls: AtomicUsize::new(0),
    }));
    b.attach_grid(remote.clone(), Arc::new(NoControl));
    let inst = b.instance(SOP).await.unwrap().unwrap();
    for round in 0..2 {
        assert_eq!(read_whole(&b, &inst).await, bytes, "round {round}");
    }
    assert_eq!(
        remote.0.calls.load(Ordering::SeqCst),
        1,
        "fetched once, then cached"
    );
    assert!(b.verify_blob(&inst.hash).await.unwrap());
    assert_eq!(staging_files(bd.path()), 0);
}

/// A retrieve's read-ahead at a site that keeps what it fetches: the bytes fetched ahead are
/// kept too, not only those of the instance the retrieve opened first (a C-GET of a study
/// reads ahead every instance after the first).
#[tokio::test]
async fn bytes_read_ahead_are_kept_like_those_fetched_on_demand() {
    let (ad, bd, fd) = three_dirs();
    let (a, b, bytes) = two_sites(ad.path(), bd.path(), fd.path()).await;
    let remote = Arc::new(KeepingFromA(FromA {
        a,
        memory: true,
        calls: AtomicUsize::new(0),
    }));
    b.attach_grid(remote.clone(), Arc::new(NoControl));
    let inst = b.instance(SOP).await.unwrap().unwrap();
    b.read_ahead(std::slice::from_ref(&inst));
    for round in 0..2 {
        assert_eq!(read_whole(&b, &inst).await, bytes, "round {round}");
    }
    assert_eq!(
        remote.0.calls.load(Ordering::SeqCst),
        1,
        "fetched once, ahead, then read from the kept copy"
    );
    assert!(b.has_blob(&inst.hash).await.unwrap());
    assert!(b.verify_blob(&inst.hash).await.unwrap());
    assert_eq!(staging_files(bd.path()), 0);
}

/// An instance's whole Part 10 bytes as a retrieve opens them.
async fn read_whole(archive: &Archive, inst: &pacsgrid_store::StoredInstance) -> Vec<u8> {
    let mut got = Vec::new();
    archive
        .open_file(inst)
        .await
        .unwrap()
        .read_to_end(&mut got)
        .await
        .unwrap();
    got
}
