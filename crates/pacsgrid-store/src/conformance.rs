//! One conformance suite for every backend.
//!
//! The tests are generic async functions over [`BlobStore`] and [`Index`]; the macros
//! [`blob_store_suite!`] and [`index_suite!`] instantiate all of them for one backend from a
//! fixture function. Adding a backend (S3, PostgreSQL) is one line at the bottom of this file.
//!
//! Query matching is checked against an in-memory model of the inserted data evaluated with
//! `pacsgrid_dicom::query::matches`, the reference semantics, over queries generated from
//! the data (every matcher kind, every matchable attribute, every level, and pairs of keys),
//! plus hand-written expectations that keep the model honest.

use crate::*;
use pacsgrid_dicom::attrs::{self, AttrKind, IndexedAttr, Level, Origin};
use pacsgrid_dicom::query::{self as reference, Matcher};
use pacsgrid_dicom::{Query, QueryModel, Tag};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod grid;

/// Keeps a fixture's resources (a temporary directory, a test database) alive.
pub(crate) type Guard = Box<dyn Any + Send>;

// ---------------------------------------------------------------------------------------
// helpers shared by both suites

static STAGED: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` into the store's staging area as the archive does, and describes it.
pub(crate) async fn stage<B: BlobStore + ?Sized>(store: &B, bytes: &[u8]) -> StagedBlob {
    let n = STAGED.fetch_add(1, Ordering::SeqCst);
    let path = store
        .staging_dir()
        .join(format!("test-{}-{n}", std::process::id()));
    let mut f = tokio::fs::File::create(&path).await.unwrap();
    f.write_all(bytes).await.unwrap();
    f.sync_all().await.unwrap();
    StagedBlob {
        path,
        hash: blake3::hash(bytes).to_hex().to_string(),
        size: bytes.len() as u64,
    }
}

async fn read_all(mut r: BlobReader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

fn hash_of(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex().to_string()
}

fn tag(keyword: &str) -> Tag {
    attrs::by_keyword(keyword)
        .unwrap_or_else(|| panic!("{keyword} not in the catalogue"))
        .tag
}

fn query(model: QueryModel, level: Level, pairs: &[(&str, &str)]) -> Query {
    Query::parse(model, level, pairs.iter().map(|(k, v)| (tag(k), *v))).unwrap()
}

fn study_q(level: Level, pairs: &[(&str, &str)]) -> Query {
    query(QueryModel::StudyRoot, level, pairs)
}

fn patient_q(level: Level, pairs: &[(&str, &str)]) -> Query {
    query(QueryModel::PatientRoot, level, pairs)
}

/// A plain synthetic record: patient `p`, its study `s`, series `se`, instance `i`.
pub(crate) fn record(p: u32, s: u32, se: u32, i: u32) -> InstanceRecord {
    let uid = format!("1.2.826.0.1.{p}.{s}.{se}.{}", i + 1);
    InstanceRecord {
        patient: PatientAttrs {
            patient_id: format!("P{p}"),
            issuer: "ISSUER".into(),
            name: format!("Name{p}^Given"),
            birth_date: "19800101".into(),
            sex: "F".into(),
        },
        study: StudyAttrs {
            study_uid: format!("1.2.826.0.1.{p}.{s}"),
            date: "20240101".into(),
            time: "120000".into(),
            accession: format!("ACC{p}-{s}"),
            study_id: s.to_string(),
            description: "Synthetic".into(),
            referring_physician: "Ref^Doctor".into(),
        },
        series: SeriesAttrs {
            series_uid: format!("1.2.826.0.1.{p}.{s}.{se}"),
            modality: "CT".into(),
            number: Some(i64::from(se) + 1),
            description: "Axial".into(),
            body_part: "CHEST".into(),
            date: "20240101".into(),
            time: "120100".into(),
        },
        instance: InstanceAttrs {
            sop_instance_uid: uid.clone(),
            sop_class_uid: CT.into(),
            number: Some(i64::from(i) + 1),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        },
        hash: hash_of(&uid),
        size: 1000 + u64::from(i),
        dataset_offset: 336,
        origin_site: "SITEA".into(),
        source: "TESTSCU".into(),
        received_at_ms: 1_700_000_000_000 + i64::from(i),
    }
}

// ---------------------------------------------------------------------------------------
// the blob store suite

/// Tests every [`BlobStore`] must pass.
pub(crate) mod blob_tests {
    use super::*;

    pub async fn put_open_and_size<B: BlobStore>(store: Arc<B>) {
        let bytes = b"DICM and then some bytes".to_vec();
        let staged = stage(&*store, &bytes).await;
        let (hash, staged_path) = (staged.hash.clone(), staged.path.clone());
        assert!(!store.exists(&hash).await.unwrap());
        store.put(staged).await.unwrap();
        assert!(
            !staged_path.exists(),
            "the staged file is moved, not copied"
        );
        assert!(store.exists(&hash).await.unwrap());
        assert_eq!(store.size(&hash).await.unwrap(), bytes.len() as u64);
        assert_eq!(read_all(store.open(&hash, 0).await.unwrap()).await, bytes);
    }

    pub async fn open_at_offset<B: BlobStore>(store: Arc<B>) {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let staged = stage(&*store, &bytes).await;
        let hash = staged.hash.clone();
        store.put(staged).await.unwrap();
        assert_eq!(
            read_all(store.open(&hash, 132).await.unwrap()).await,
            bytes[132..]
        );
        assert_eq!(
            read_all(store.open(&hash, 99_999).await.unwrap()).await,
            bytes[99_999..]
        );
        assert!(read_all(store.open(&hash, 100_000).await.unwrap())
            .await
            .is_empty());
    }

    pub async fn missing_blob_is_not_found<B: BlobStore>(store: Arc<B>) {
        let h = hash_of("never stored");
        assert!(matches!(
            store.open(&h, 0).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(matches!(store.size(&h).await, Err(BlobError::NotFound(_))));
        assert!(!store.exists(&h).await.unwrap());
        store.delete(&h).await.unwrap();
    }

    pub async fn put_is_idempotent<B: BlobStore>(store: Arc<B>) {
        let bytes = b"same bytes twice".to_vec();
        let first = stage(&*store, &bytes).await;
        let second = stage(&*store, &bytes).await;
        let (hash, second_path) = (first.hash.clone(), second.path.clone());
        store.put(first).await.unwrap();
        store.put(second).await.unwrap();
        assert!(!second_path.exists(), "a staged duplicate is removed");
        assert_eq!(store.list().await.unwrap(), vec![hash.clone()]);
        assert_eq!(read_all(store.open(&hash, 0).await.unwrap()).await, bytes);
    }

    pub async fn delete_removes<B: BlobStore>(store: Arc<B>) {
        let staged = stage(&*store, b"to be deleted").await;
        let hash = staged.hash.clone();
        store.put(staged).await.unwrap();
        store.delete(&hash).await.unwrap();
        assert!(!store.exists(&hash).await.unwrap());
        assert!(store.list().await.unwrap().is_empty());
        store.delete(&hash).await.unwrap();
    }

    pub async fn list_returns_every_hash<B: BlobStore>(store: Arc<B>) {
        let mut expected = BTreeSet::new();
        for n in 0..20 {
            let staged = stage(&*store, format!("object {n}").as_bytes()).await;
            expected.insert(staged.hash.clone());
            store.put(staged).await.unwrap();
        }
        let listed: BTreeSet<String> = store.list().await.unwrap().into_iter().collect();
        assert_eq!(listed, expected);
    }

    pub async fn invalid_hash_is_refused<B: BlobStore>(store: Arc<B>) {
        let bad = [
            "../../etc/passwd".to_string(),
            "ABCDEF".repeat(10) + "ABCD",
            "a".repeat(63),
            "a".repeat(65),
            String::new(),
            format!("{}/{}", "a".repeat(31), "b".repeat(32)),
        ];
        for h in &bad {
            assert!(
                matches!(store.open(h, 0).await, Err(BlobError::InvalidHash(_))),
                "{h}"
            );
            assert!(
                matches!(store.size(h).await, Err(BlobError::InvalidHash(_))),
                "{h}"
            );
            assert!(
                matches!(store.delete(h).await, Err(BlobError::InvalidHash(_))),
                "{h}"
            );
            assert!(
                matches!(store.exists(h).await, Err(BlobError::InvalidHash(_))),
                "{h}"
            );
        }
        let mut staged = stage(&*store, b"bad name").await;
        staged.hash = "../escape".into();
        let path = staged.path.clone();
        assert!(matches!(
            store.put(staged).await,
            Err(BlobError::InvalidHash(_))
        ));
        assert!(path.exists(), "a refused put touches nothing");
        assert!(store.list().await.unwrap().is_empty());
    }

    pub async fn concurrent_puts_of_one_object<B: BlobStore>(store: Arc<B>) {
        let bytes = b"raced".to_vec();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let staged = stage(&*store, &bytes).await;
            let store = store.clone();
            tasks.push(tokio::spawn(async move { store.put(staged).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let hash = blake3::hash(&bytes).to_hex().to_string();
        assert_eq!(store.list().await.unwrap(), vec![hash.clone()]);
        assert_eq!(read_all(store.open(&hash, 0).await.unwrap()).await, bytes);
    }
}

/// Instantiates the blob store suite for a backend: `blob_store_suite!(name, fixture)` where
/// `fixture` is an `async fn() -> (Arc<Store>, Guard)`.
macro_rules! blob_store_suite {
    ($name:ident, $fixture:path) => {
        mod $name {
            blob_store_suite!(@each $fixture;
                put_open_and_size, open_at_offset, missing_blob_is_not_found, put_is_idempotent,
                delete_removes, list_returns_every_hash, invalid_hash_is_refused,
                concurrent_puts_of_one_object);
        }
    };
    (@each $fixture:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                // A fixture gives `None` when its service is not configured (the test is
                // skipped, or fails when the service is required: see `s3_store`).
                let Some((store, _guard)) = $crate::conformance::Fixture::get($fixture().await)
                else {
                    return;
                };
                $crate::conformance::blob_tests::$test(store).await;
            }
        )*
    };
}

/// What a blob store fixture gives: a store, or for a backend that needs an outside
/// service, `None` when that service is not there.
pub(crate) trait Fixture<B> {
    /// The store and what keeps it alive, if any.
    fn get(self) -> Option<(Arc<B>, Guard)>;
}

impl<B> Fixture<B> for (Arc<B>, Guard) {
    fn get(self) -> Option<(Arc<B>, Guard)> {
        Some(self)
    }
}

impl<B> Fixture<B> for Option<(Arc<B>, Guard)> {
    fn get(self) -> Option<(Arc<B>, Guard)> {
        self
    }
}

// ---------------------------------------------------------------------------------------
// the data set the index suite queries, and its reference model

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const PR: &str = "1.2.840.10008.5.1.4.1.1.11.1";
const SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";
const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const OT: &str = "1.2.840.10008.5.1.4.1.1.7";

fn pat(id: &str, issuer: &str, name: &str, birth: &str, sex: &str) -> PatientAttrs {
    PatientAttrs {
        patient_id: id.into(),
        issuer: issuer.into(),
        name: name.into(),
        birth_date: birth.into(),
        sex: sex.into(),
    }
}

fn stu(uid: &str, date: &str, time: &str, acc: &str, id: &str, desc: &str, rp: &str) -> StudyAttrs {
    StudyAttrs {
        study_uid: uid.into(),
        date: date.into(),
        time: time.into(),
        accession: acc.into(),
        study_id: id.into(),
        description: desc.into(),
        referring_physician: rp.into(),
    }
}

fn ser(
    uid: &str,
    modality: &str,
    number: Option<i64>,
    desc: &str,
    body: &str,
    date: &str,
    time: &str,
) -> SeriesAttrs {
    SeriesAttrs {
        series_uid: uid.into(),
        modality: modality.into(),
        number,
        description: desc.into(),
        body_part: body.into(),
        date: date.into(),
        time: time.into(),
    }
}

fn inst(
    p: &PatientAttrs,
    s: &StudyAttrs,
    se: &SeriesAttrs,
    uid: &str,
    class: &str,
    number: Option<i64>,
) -> InstanceRecord {
    InstanceRecord {
        patient: p.clone(),
        study: s.clone(),
        series: se.clone(),
        instance: InstanceAttrs {
            sop_instance_uid: uid.into(),
            sop_class_uid: class.into(),
            number,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        },
        hash: hash_of(uid),
        size: 1000 + uid.len() as u64,
        dataset_offset: 300 + uid.len() as u64,
        origin_site: "SITEA".into(),
        source: "MODALITY1".into(),
        received_at_ms: 1_700_000_000_000,
    }
}

/// Four patients (two share a PatientID under two issuers), six studies (one without any
/// modality), ten series, fourteen instances, inserted out of order, with empty values, non-ASCII and
/// GLOB/LIKE metacharacters in the data.
pub(crate) fn dataset() -> Vec<InstanceRecord> {
    let pa = pat("12345", "SITEA", "Doe^John", "19700101", "M");
    let pb = pat("12345", "SITEB", "Smith^Anna", "19851231", "F");
    let pc = pat("777", "SITEA", "Müller^Jürgen", "", "O");
    let pd = pat("A[1]", "SITEA", "o'brien^pat", "20000229", "");

    let s1 = stu(
        "1.2.840.9.1",
        "20200115",
        "101500",
        "ACC1",
        "1",
        "CT Chest",
        "House^Gregory",
    );
    let s2 = stu(
        "1.2.840.9.2",
        "20210310",
        "235959.5",
        "ACC2",
        "2",
        "MR Brain",
        "",
    );
    let s3 = stu(
        "1.2.840.9.3",
        "20200115",
        "",
        "ACC3",
        "",
        "CT Abdomen",
        "house^g",
    );
    let s4 = stu(
        "1.2.840.9.4",
        "",
        "080000",
        "",
        "4",
        "Knee 50%_x",
        "Wilson^James",
    );
    let s5 = stu(
        "1.2.840.9.5",
        "20221201",
        "120000",
        "A[C]C5",
        "5",
        "[special]",
        "Cuddy^Lisa",
    );
    let s6 = stu("1.2.840.9.6", "", "", "ACC6", "6", "", "");

    let se11 = ser(
        "1.2.840.9.1.1",
        "CT",
        Some(1),
        "Axial",
        "CHEST",
        "20200115",
        "101600",
    );
    let se12 = ser("1.2.840.9.1.2", "PR", None, "GSPS", "", "", "");
    let se21 = ser(
        "1.2.840.9.2.1",
        "MR",
        Some(1),
        "T1",
        "HEAD",
        "20210310",
        "235959.5",
    );
    let se22 = ser(
        "1.2.840.9.2.2",
        "MR",
        Some(2),
        "T2",
        "HEAD",
        "20210311",
        "000100",
    );
    let se23 = ser("1.2.840.9.2.3", "SR", Some(99), "Report", "", "", "");
    let se31 = ser(
        "1.2.840.9.3.1",
        "CT",
        Some(1),
        "Abd",
        "ABDOMEN",
        "20200115",
        "",
    );
    let se41 = ser("1.2.840.9.4.1", "MR", None, "Knee", "KNEE", "", "080500");
    let se42 = ser("1.2.840.9.4.2", "CR", Some(3), "", "", "", "");
    let se51 = ser("1.2.840.9.5.1", "OT", Some(1), "", "", "20221201", "120000");
    let se61 = ser("1.2.840.9.6.1", "", Some(1), "", "", "", "");

    vec![
        inst(&pa, &s1, &se11, "1.2.840.9.1.1.3", CT, Some(3)),
        inst(&pa, &s1, &se11, "1.2.840.9.1.1.1", CT, Some(1)),
        inst(&pb, &s3, &se31, "1.2.840.9.3.1.1", CT, Some(1)),
        inst(&pa, &s1, &se12, "1.2.840.9.1.2.1", PR, None),
        inst(&pa, &s2, &se22, "1.2.840.9.2.2.1", MR, Some(1)),
        inst(&pa, &s2, &se21, "1.2.840.9.2.1.2", MR, Some(2)),
        inst(&pa, &s2, &se21, "1.2.840.9.2.1.1", MR, Some(1)),
        inst(&pc, &s4, &se41, "1.2.840.9.4.1.1", MR, None),
        inst(&pa, &s1, &se11, "1.2.840.9.1.1.2", CT, Some(2)),
        inst(&pc, &s4, &se42, "1.2.840.9.4.2.1", CR, Some(1)),
        inst(&pd, &s5, &se51, "1.2.840.9.5.1.1", OT, Some(7)),
        inst(&pa, &s2, &se23, "1.2.840.9.2.3.1", SR, Some(1)),
        inst(&pc, &s4, &se41, "1.2.840.9.4.1.2", MR, Some(5)),
        inst(&pb, &s6, &se61, "1.2.840.9.6.1.1", SR, Some(1)),
    ]
}

fn stored(r: &InstanceRecord) -> StoredInstance {
    StoredInstance {
        study_uid: r.study.study_uid.clone(),
        series_uid: r.series.series_uid.clone(),
        sop_instance_uid: r.instance.sop_instance_uid.clone(),
        sop_class_uid: r.instance.sop_class_uid.clone(),
        transfer_syntax: r.instance.transfer_syntax.clone(),
        hash: r.hash.clone(),
        size: r.size,
        dataset_offset: r.dataset_offset,
        patient_id: r.patient.patient_id.clone(),
        issuer: r.patient.issuer.clone(),
    }
}

/// What an index must answer, computed naively from the records (each entity's records
/// carry identical attributes in the data set, so "first writer wins" needs no modelling).
pub(crate) struct Model {
    recs: Vec<InstanceRecord>,
}

fn distinct_joined<'a>(values: impl Iterator<Item = &'a String>) -> String {
    let set: BTreeSet<&str> = values
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    set.into_iter().collect::<Vec<_>>().join("\\")
}

impl Model {
    fn key(level: Level, r: &InstanceRecord) -> String {
        match level {
            Level::Patient => format!("{}\u{0}{}", r.patient.patient_id, r.patient.issuer),
            Level::Study => r.study.study_uid.clone(),
            Level::Series => r.series.series_uid.clone(),
            Level::Image => r.instance.sop_instance_uid.clone(),
        }
    }

    fn entities(&self, level: Level) -> Vec<&InstanceRecord> {
        let mut seen = BTreeSet::new();
        self.recs
            .iter()
            .filter(|r| seen.insert(Model::key(level, r)))
            .collect()
    }

    fn related<'a>(
        &'a self,
        level: Level,
        r: &InstanceRecord,
    ) -> impl Iterator<Item = &'a InstanceRecord> {
        let key = Model::key(level, r);
        self.recs
            .iter()
            .filter(move |x| Model::key(level, x) == key)
    }

    fn count_distinct(&self, level: Level, r: &InstanceRecord, below: Level) -> String {
        let set: BTreeSet<String> = self
            .related(level, r)
            .map(|x| Model::key(below, x))
            .collect();
        set.len().to_string()
    }

    fn value(&self, attr: &IndexedAttr, r: &InstanceRecord) -> String {
        let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
        match attr.keyword {
            "PatientID" => r.patient.patient_id.clone(),
            "IssuerOfPatientID" => r.patient.issuer.clone(),
            "PatientName" => r.patient.name.clone(),
            "PatientBirthDate" => r.patient.birth_date.clone(),
            "PatientSex" => r.patient.sex.clone(),
            "NumberOfPatientRelatedStudies" => self.count_distinct(Level::Patient, r, Level::Study),
            "NumberOfPatientRelatedSeries" => self.count_distinct(Level::Patient, r, Level::Series),
            "NumberOfPatientRelatedInstances" => {
                self.count_distinct(Level::Patient, r, Level::Image)
            }
            "StudyInstanceUID" => r.study.study_uid.clone(),
            "StudyDate" => r.study.date.clone(),
            "StudyTime" => r.study.time.clone(),
            "AccessionNumber" => r.study.accession.clone(),
            "StudyID" => r.study.study_id.clone(),
            "StudyDescription" => r.study.description.clone(),
            "ReferringPhysicianName" => r.study.referring_physician.clone(),
            "ModalitiesInStudy" => {
                distinct_joined(self.related(Level::Study, r).map(|x| &x.series.modality))
            }
            "SOPClassesInStudy" => distinct_joined(
                self.related(Level::Study, r)
                    .map(|x| &x.instance.sop_class_uid),
            ),
            "NumberOfStudyRelatedSeries" => self.count_distinct(Level::Study, r, Level::Series),
            "NumberOfStudyRelatedInstances" => self.count_distinct(Level::Study, r, Level::Image),
            "SeriesInstanceUID" => r.series.series_uid.clone(),
            "Modality" => r.series.modality.clone(),
            "SeriesNumber" => num(r.series.number),
            "SeriesDescription" => r.series.description.clone(),
            "BodyPartExamined" => r.series.body_part.clone(),
            "SeriesDate" => r.series.date.clone(),
            "SeriesTime" => r.series.time.clone(),
            "NumberOfSeriesRelatedInstances" => self.count_distinct(Level::Series, r, Level::Image),
            "SOPInstanceUID" => r.instance.sop_instance_uid.clone(),
            "SOPClassUID" => r.instance.sop_class_uid.clone(),
            "InstanceNumber" => num(r.instance.number),
            other => panic!("the conformance model does not know {other}: teach it"),
        }
    }

    fn row(&self, level: Level, r: &InstanceRecord) -> AttrValues {
        attrs::at_or_above(level)
            .map(|a| (a.tag, self.value(a, r)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    fn matched(&self, q: &Query) -> Vec<&InstanceRecord> {
        self.entities(q.level)
            .into_iter()
            .filter(|r| {
                q.keys
                    .iter()
                    .all(|k| reference::matches(k.attr, &k.matcher, &self.value(k.attr, r)))
            })
            .collect()
    }

    /// The answers, sorted (the order of `find` is stable but backend-defined).
    fn find(&self, q: &Query) -> Vec<AttrValues> {
        let mut rows: Vec<AttrValues> = self
            .matched(q)
            .into_iter()
            .map(|r| self.row(q.level, r))
            .collect();
        rows.sort();
        rows
    }

    /// The instances under the matched entities, sorted by SOP Instance UID.
    fn locate(&self, q: &Query) -> Vec<StoredInstance> {
        let keys: BTreeSet<String> = self
            .matched(q)
            .into_iter()
            .map(|r| Model::key(q.level, r))
            .collect();
        let mut out: Vec<StoredInstance> = self
            .recs
            .iter()
            .filter(|r| keys.contains(&Model::key(q.level, r)))
            .map(stored)
            .collect();
        out.sort_by(|a, b| a.sop_instance_uid.cmp(&b.sop_instance_uid));
        out
    }

    fn by_uid(&self, uid: &str) -> &InstanceRecord {
        self.recs
            .iter()
            .find(|r| r.instance.sop_instance_uid == uid)
            .unwrap()
    }

    /// Checks the order `locate` promises: studies contiguous; within a study, series by
    /// number (absent last) and each series contiguous; within a series, instances by number
    /// (absent last).
    fn check_locate_order(&self, got: &[StoredInstance]) {
        let nk = |n: Option<i64>| (n.is_none(), n.unwrap_or(0));
        let mut closed_studies = BTreeSet::new();
        let mut closed_series = BTreeSet::new();
        for pair in got.windows(2) {
            let (a, b) = (
                self.by_uid(&pair[0].sop_instance_uid),
                self.by_uid(&pair[1].sop_instance_uid),
            );
            if a.study.study_uid != b.study.study_uid {
                closed_studies.insert(a.study.study_uid.clone());
                assert!(
                    !closed_studies.contains(&b.study.study_uid),
                    "study split: {got:#?}"
                );
            }
            if a.series.series_uid != b.series.series_uid {
                closed_series.insert(a.series.series_uid.clone());
                assert!(
                    !closed_series.contains(&b.series.series_uid),
                    "series split: {got:#?}"
                );
                if a.study.study_uid == b.study.study_uid {
                    assert!(
                        nk(a.series.number) <= nk(b.series.number),
                        "series order: {got:#?}"
                    );
                }
            } else {
                assert!(
                    nk(a.instance.number) <= nk(b.instance.number),
                    "instance order: {got:#?}"
                );
            }
        }
    }

    /// Query texts for one attribute, covering each matcher kind its type allows, built from
    /// the values in the data so that most of them match something.
    fn candidates(&self, attr: &IndexedAttr) -> Vec<String> {
        let mut values: BTreeSet<String> = BTreeSet::new();
        for r in self.entities(attr.level) {
            for v in self.value(attr, r).split('\\') {
                if !v.is_empty() {
                    values.insert(v.to_string());
                }
            }
        }
        let values: Vec<String> = values.into_iter().collect();
        let mut out = Vec::new();
        let two = || {
            values
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join("\\")
        };
        let one_char = |v: &str| {
            let mut chars: Vec<char> = v.chars().collect();
            if chars.len() > 1 {
                chars[1] = '?';
            }
            chars.into_iter().collect::<String>()
        };
        let first = |v: &str| v.chars().next().map(String::from).unwrap_or_default();
        let last = |v: &str| v.chars().last().map(String::from).unwrap_or_default();
        match attr.kind {
            AttrKind::Text | AttrKind::PersonName => {
                for v in &values {
                    out.push(v.clone());
                    out.push(format!("{}*", first(v)));
                    out.push(format!("{}*", v.chars().take(3).collect::<String>()));
                    out.push(format!("*{}", last(v)));
                    out.push(one_char(v));
                    if attr.kind == AttrKind::PersonName {
                        out.push(v.to_uppercase());
                        out.push(v.to_lowercase());
                        out.push(format!("{}*", first(v).to_lowercase()));
                        out.push(one_char(&v.to_uppercase()));
                    }
                }
                out.push("NOPE".into());
                out.push("**".into());
                out.push("?*".into());
                if values.len() >= 2 {
                    out.push(two());
                }
                if let Some(v) = values.first() {
                    // a list holding the empty value also finds entities without one
                    out.push(format!("{v}\\"));
                }
            }
            AttrKind::Uid => {
                out.extend(values.iter().cloned());
                out.push("1.2.999.1".into());
                if values.len() >= 2 {
                    out.push(two());
                }
            }
            AttrKind::Date | AttrKind::Time => {
                for v in &values {
                    out.push(v.clone());
                    out.push(format!("{v}-"));
                    out.push(format!("-{v}"));
                    if let Some((whole, _fraction)) = v.split_once('.') {
                        // an upper bound also takes the values it prefixes
                        out.push(format!("-{whole}"));
                    }
                }
                if values.len() >= 2 {
                    out.push(format!("{}-{}", values[0], values[values.len() - 1]));
                }
                if attr.kind == AttrKind::Date {
                    out.extend(
                        ["19000101-19991231", "20200101-20201231", "2020.01.15"].map(String::from),
                    );
                } else {
                    out.extend(
                        ["10-12", "0800-1016", "-1200", "2359-", "00-0001"].map(String::from),
                    );
                }
            }
            AttrKind::Integer => {
                out.extend(values.iter().cloned());
                out.push("12345678".into());
            }
        }
        out.dedup();
        out
    }

    /// Every parseable single-key query at `level`, then pairs of keys.
    fn generated(&self, model: QueryModel, level: Level) -> Vec<Query> {
        let matchable: Vec<&IndexedAttr> = attrs::at_or_above(level)
            .filter(|a| a.origin == Origin::Stored || a.keyword == "ModalitiesInStudy")
            .collect();
        let mut singles = Vec::new();
        for attr in &matchable {
            for text in self.candidates(attr) {
                let q = Query::parse(model, level, [(attr.tag, text.as_str())])
                    .unwrap_or_else(|e| panic!("generated {}={text:?}: {e}", attr.keyword));
                singles.push((attr.tag, text, q));
            }
        }
        let mut out: Vec<Query> = singles.iter().map(|(_, _, q)| q.clone()).collect();
        // Pairs: every two different attributes, with a few candidates of each.
        let few: Vec<&(Tag, String, Query)> = {
            let mut per_attr: BTreeMap<Tag, usize> = BTreeMap::new();
            singles
                .iter()
                .filter(|(t, _, _)| {
                    let n = per_attr.entry(*t).or_default();
                    *n += 1;
                    *n <= 3
                })
                .collect()
        };
        for (i, a) in few.iter().enumerate() {
            for b in &few[i + 1..] {
                if a.0 != b.0 {
                    out.push(
                        Query::parse(model, level, [(a.0, a.1.as_str()), (b.0, b.1.as_str())])
                            .unwrap(),
                    );
                }
            }
        }
        out
    }
}

fn sorted(mut rows: Vec<AttrValues>) -> Vec<AttrValues> {
    rows.sort();
    rows
}

fn uids(rows: &[AttrValues], keyword: &str) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r.get(&tag(keyword)).cloned().unwrap_or_default())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn load<I: Index>(index: &I) -> Model {
    let recs = dataset();
    for r in &recs {
        let out = index.insert(r, "SITEA").await.unwrap();
        assert!(matches!(out, InsertOutcome::Inserted { .. }), "{out:?}");
    }
    Model { recs }
}

// ---------------------------------------------------------------------------------------
// the index suite

/// Tests every [`Index`] must pass.
pub(crate) mod index_tests {
    use super::*;

    pub async fn insert_duplicate_conflict<I: Index>(index: Arc<I>) {
        let rec = record(1, 1, 1, 1);
        let first = index.insert(&rec, "SITEA").await.unwrap();
        assert!(
            matches!(first, InsertOutcome::Inserted { seq } if seq > 0),
            "{first:?}"
        );
        assert_eq!(
            index.insert(&rec, "SITEA").await.unwrap(),
            InsertOutcome::Duplicate
        );
        let mut other = rec.clone();
        other.hash = hash_of("other bytes");
        other.series.description = "would change nothing".into();
        assert_eq!(
            index.insert(&other, "SITEB").await.unwrap(),
            InsertOutcome::Conflict {
                existing_hash: rec.hash.clone()
            }
        );
        // Neither the duplicate nor the conflict wrote anything.
        assert_eq!(index.changes(0, 0).await.unwrap().len(), 1);
        let stats = index.stats().await.unwrap();
        assert_eq!((stats.instances, stats.bytes), (1, rec.size));
        let got = index
            .instance(&rec.instance.sop_instance_uid)
            .await
            .unwrap();
        assert_eq!(got, Some(stored(&rec)));
        let rows = index
            .find(&study_q(Level::Series, &[]), 0, 0)
            .await
            .unwrap();
        assert_eq!(
            rows[0].get(&tag("SeriesDescription")).map(String::as_str),
            Some("Axial")
        );
        assert_eq!(index.instance("1.2.3.404").await.unwrap(), None);
    }

    pub async fn concurrent_inserts_of_one_uid<I: Index>(index: Arc<I>) {
        let rec = record(2, 1, 1, 1);
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for n in 0..16 {
            let mut rec = rec.clone();
            if n % 2 == 1 {
                rec.hash = hash_of("the other object");
            }
            let (index, barrier) = (index.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let out = index.insert(&rec, "SITEA").await.unwrap();
                (rec.hash, out)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let inserted: Vec<_> = results
            .iter()
            .filter(|(_, o)| matches!(o, InsertOutcome::Inserted { .. }))
            .collect();
        assert_eq!(inserted.len(), 1, "{results:?}");
        let winner = inserted[0].0.clone();
        for (hash, out) in &results {
            if matches!(out, InsertOutcome::Inserted { .. }) {
                continue;
            }
            if *hash == winner {
                assert_eq!(*out, InsertOutcome::Duplicate);
            } else {
                assert_eq!(
                    *out,
                    InsertOutcome::Conflict {
                        existing_hash: winner.clone()
                    }
                );
            }
        }
        let got = index
            .instance(&rec.instance.sop_instance_uid)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.hash, winner);
        assert_eq!(index.stats().await.unwrap().instances, 1);
        assert_eq!(index.changes(0, 0).await.unwrap().len(), 1);
    }

    pub async fn concurrent_inserts_into_one_new_series<I: Index>(index: Arc<I>) {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let index = index.clone();
            tasks.push(tokio::spawn(async move {
                index.insert(&record(3, 1, 1, i), "SITEA").await.unwrap()
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), InsertOutcome::Inserted { .. }));
        }
        let stats = index.stats().await.unwrap();
        assert_eq!(
            (stats.patients, stats.studies, stats.series, stats.instances),
            (1, 1, 1, 16)
        );
        let rows = index
            .find(&study_q(Level::Series, &[]), 0, 0)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][&tag("NumberOfSeriesRelatedInstances")], "16");
        assert_eq!(rows[0][&tag("NumberOfStudyRelatedInstances")], "16");
        assert_eq!(rows[0][&tag("NumberOfPatientRelatedInstances")], "16");
    }

    pub async fn issuers_keep_patients_apart<I: Index>(index: Arc<I>) {
        let mut a = record(4, 1, 1, 1);
        a.patient.patient_id = "12345".into();
        a.patient.issuer = "HOSP-A".into();
        a.patient.name = "Alpha^Ann".into();
        let mut b = record(5, 1, 1, 1);
        b.patient.patient_id = "12345".into();
        b.patient.issuer = "HOSP-B".into();
        b.patient.name = "Beta^Bob".into();
        index.insert(&a, "SITEA").await.unwrap();
        index.insert(&b, "SITEB").await.unwrap();
        assert_eq!(index.stats().await.unwrap().patients, 2);

        let rows = index
            .find(&patient_q(Level::Patient, &[("PatientID", "12345")]), 0, 0)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2, "two people, never one merged chart");
        assert_eq!(uids(&rows, "IssuerOfPatientID"), set(&["HOSP-A", "HOSP-B"]));
        assert_eq!(uids(&rows, "PatientName"), set(&["Alpha^Ann", "Beta^Bob"]));
        for r in &rows {
            assert_eq!(r[&tag("NumberOfPatientRelatedStudies")], "1");
        }
        let rows = index
            .find(&study_q(Level::Study, &[("PatientID", "12345")]), 0, 0)
            .await
            .unwrap();
        assert_eq!(uids(&rows, "IssuerOfPatientID"), set(&["HOSP-A", "HOSP-B"]));
        let rows = index
            .find(
                &study_q(
                    Level::Study,
                    &[("PatientID", "12345"), ("IssuerOfPatientID", "HOSP-B")],
                ),
                0,
                0,
            )
            .await
            .unwrap();
        assert_eq!(
            uids(&rows, "StudyInstanceUID"),
            set(&[b.study.study_uid.as_str()])
        );
        let located = index
            .locate(&patient_q(
                Level::Patient,
                &[("PatientID", "12345"), ("IssuerOfPatientID", "HOSP-A")],
            ))
            .await
            .unwrap();
        assert_eq!(located, vec![stored(&a)]);
    }

    pub async fn first_writer_wins_and_blanks_fill<I: Index>(index: Arc<I>) {
        let mut a = record(6, 1, 1, 1);
        a.series.description = String::new();
        a.series.number = None;
        a.study.description = String::new();
        a.patient.sex = String::new();
        let mut b = record(6, 1, 1, 2);
        b.series.description = "Filled".into();
        b.series.number = Some(4);
        b.series.modality = "MR".into();
        b.study.description = "Study filled".into();
        b.study.accession = "OTHER".into();
        b.patient.sex = "F".into();
        b.patient.name = "Other^Name".into();
        index.insert(&a, "SITEA").await.unwrap();
        index.insert(&b, "SITEA").await.unwrap();
        let rows = index
            .find(&study_q(Level::Series, &[]), 0, 0)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r[&tag("Modality")], "CT", "first writer wins");
        assert_eq!(r[&tag("SeriesDescription")], "Filled", "blanks are filled");
        assert_eq!(r[&tag("SeriesNumber")], "4");
        assert_eq!(r[&tag("StudyDescription")], "Study filled");
        assert_eq!(r[&tag("AccessionNumber")], a.study.accession);
        assert_eq!(r[&tag("PatientSex")], "F");
        assert_eq!(r[&tag("PatientName")], a.patient.name);
        // Filled values are matchable, including folded person names.
        let q = patient_q(
            Level::Patient,
            &[("PatientName", "NAME6^*"), ("PatientSex", "F")],
        );
        assert_eq!(index.find(&q, 0, 0).await.unwrap().len(), 1);
    }

    async fn check_generated<I: Index>(index: &I, model: &Model, qmodel: QueryModel, level: Level) {
        let queries = model.generated(qmodel, level);
        let mut kinds = BTreeSet::new();
        let (mut empty, mut nonempty) = (0, 0);
        for q in &queries {
            for k in &q.keys {
                kinds.insert(match k.matcher {
                    Matcher::Universal => "universal",
                    Matcher::Single(_) => "single",
                    Matcher::Wildcard(_) => "wildcard",
                    Matcher::Range { .. } => "range",
                    Matcher::List(_) => "list",
                });
            }
            let expected = model.find(q);
            let got = sorted(index.find(q, 0, 0).await.unwrap());
            assert_eq!(got, expected, "find {:?} at {level:?}", q.keys);
            if expected.is_empty() {
                empty += 1;
            } else {
                nonempty += 1;
            }
            let located = index.locate(q).await.unwrap();
            model.check_locate_order(&located);
            let mut located = located;
            located.sort_by(|a, b| a.sop_instance_uid.cmp(&b.sop_instance_uid));
            assert_eq!(located, model.locate(q), "locate {:?} at {level:?}", q.keys);
        }
        let all: BTreeSet<&str> = ["single", "wildcard", "range", "list"]
            .into_iter()
            .collect();
        assert_eq!(kinds, all, "{level:?}");
        assert!(
            empty > 10 && nonempty > 10,
            "{level:?}: {empty} empty, {nonempty} non-empty answers"
        );
    }

    pub async fn matching_at_patient_level<I: Index>(index: Arc<I>) {
        let model = load(&*index).await;
        check_generated(&*index, &model, QueryModel::PatientRoot, Level::Patient).await;
    }

    pub async fn matching_at_study_level<I: Index>(index: Arc<I>) {
        let model = load(&*index).await;
        check_generated(&*index, &model, QueryModel::StudyRoot, Level::Study).await;
    }

    pub async fn matching_at_series_level<I: Index>(index: Arc<I>) {
        let model = load(&*index).await;
        check_generated(&*index, &model, QueryModel::StudyRoot, Level::Series).await;
    }

    pub async fn matching_at_image_level<I: Index>(index: Arc<I>) {
        let model = load(&*index).await;
        check_generated(&*index, &model, QueryModel::PatientRoot, Level::Image).await;
    }

    /// Hand-written expectations: they keep the reference model and generator honest.
    pub async fn matching_known_answers<I: Index>(index: Arc<I>) {
        load(&*index).await;
        let find = |q: Query| {
            let index = index.clone();
            async move { index.find(&q, 0, 0).await.unwrap() }
        };
        let studies = |pairs: &[(&str, &str)]| study_q(Level::Study, pairs);
        let st = |rows: &[AttrValues]| uids(rows, "StudyInstanceUID");
        let s = |ns: &[u8]| -> BTreeSet<String> {
            ns.iter().map(|n| format!("1.2.840.9.{n}")).collect()
        };

        let rows = find(patient_q(Level::Patient, &[("PatientID", "12345")])).await;
        assert_eq!(uids(&rows, "IssuerOfPatientID"), set(&["SITEA", "SITEB"]));
        assert_eq!(
            st(&find(studies(&[("PatientName", "doe^*")])).await),
            s(&[1, 2])
        );
        assert_eq!(
            st(&find(studies(&[("PatientName", "MÜLLER^JÜRGEN")])).await),
            s(&[4])
        );
        assert_eq!(
            st(&find(studies(&[("PatientName", "m?ller*")])).await),
            s(&[4])
        );
        assert_eq!(st(&find(studies(&[("PatientID", "A[1]")])).await), s(&[5]));
        assert_eq!(st(&find(studies(&[("PatientID", "A[1*")])).await), s(&[5]));
        assert_eq!(st(&find(studies(&[("PatientID", "A?1?")])).await), s(&[5]));
        assert_eq!(
            st(&find(studies(&[("ReferringPhysicianName", "HOUSE^G*")])).await),
            s(&[1, 3])
        );
        assert_eq!(
            st(&find(studies(&[("StudyDate", "20200101-20201231")])).await),
            s(&[1, 3])
        );
        assert_eq!(
            st(&find(studies(&[("StudyDate", "20210101-")])).await),
            s(&[2, 5])
        );
        assert_eq!(
            st(&find(studies(&[("StudyDate", "-20200115")])).await),
            s(&[1, 3])
        );
        assert_eq!(
            st(&find(studies(&[("StudyTime", "-235959")])).await),
            s(&[1, 2, 4, 5])
        );
        assert_eq!(st(&find(studies(&[("StudyTime", "12")])).await), s(&[5]));
        assert_eq!(
            st(&find(studies(&[("ModalitiesInStudy", "MR")])).await),
            s(&[2, 4])
        );
        assert_eq!(
            st(&find(studies(&[("ModalitiesInStudy", "CT\\OT")])).await),
            s(&[1, 3, 5])
        );
        assert_eq!(
            st(&find(studies(&[("ModalitiesInStudy", "?R")])).await),
            s(&[1, 2, 4])
        );
        assert_eq!(
            st(&find(studies(&[("ModalitiesInStudy", "CT\\")])).await),
            s(&[1, 3, 6])
        );
        assert_eq!(
            st(&find(studies(&[("StudyDescription", "Knee 50%_*")])).await),
            s(&[4])
        );
        assert_eq!(
            st(&find(studies(&[("StudyDescription", "Knee 5%*")])).await),
            s(&[])
        );
        assert_eq!(
            st(&find(studies(&[("StudyDescription", "[spec*")])).await),
            s(&[5])
        );
        assert_eq!(
            st(&find(studies(&[("StudyDescription", "ct*")])).await),
            s(&[]),
            "text is case-sensitive"
        );
        assert_eq!(
            st(&find(studies(&[("AccessionNumber", "ACC1\\ACC3")])).await),
            s(&[1, 3])
        );
        assert_eq!(
            st(&find(studies(&[("AccessionNumber", "A[C]C?")])).await),
            s(&[5])
        );
        assert_eq!(
            st(&find(studies(&[(
                "StudyInstanceUID",
                "1.2.840.9.2\\1.2.840.9.5\\1.2.3"
            )]))
            .await),
            s(&[2, 5])
        );
        let q = patient_q(
            Level::Study,
            &[("PatientSex", "M"), ("StudyDate", "20210101-")],
        );
        assert_eq!(st(&find(q).await), s(&[2]));

        let series = find(study_q(Level::Series, &[("Modality", "MR")])).await;
        assert_eq!(
            uids(&series, "SeriesInstanceUID"),
            set(&["1.2.840.9.2.1", "1.2.840.9.2.2", "1.2.840.9.4.1"])
        );
        let series = find(study_q(
            Level::Series,
            &[("SeriesNumber", "1"), ("StudyDate", "20200115")],
        ))
        .await;
        assert_eq!(
            uids(&series, "SeriesInstanceUID"),
            set(&["1.2.840.9.1.1", "1.2.840.9.3.1"])
        );
        let images = find(study_q(
            Level::Image,
            &[("SOPClassUID", MR), ("StudyInstanceUID", "1.2.840.9.4")],
        ))
        .await;
        assert_eq!(
            uids(&images, "SOPInstanceUID"),
            set(&["1.2.840.9.4.1.1", "1.2.840.9.4.1.2"])
        );
    }

    pub async fn computed_attributes<I: Index>(index: Arc<I>) {
        load(&*index).await;
        let rows = index
            .find(
                &study_q(Level::Study, &[("StudyInstanceUID", "1.2.840.9.1")]),
                0,
                0,
            )
            .await
            .unwrap();
        let r = &rows[0];
        assert_eq!(r[&tag("ModalitiesInStudy")], "CT\\PR");
        assert_eq!(r[&tag("SOPClassesInStudy")], format!("{PR}\\{CT}"));
        assert_eq!(r[&tag("NumberOfStudyRelatedSeries")], "2");
        assert_eq!(r[&tag("NumberOfStudyRelatedInstances")], "4");
        assert_eq!(r[&tag("NumberOfPatientRelatedStudies")], "2");
        assert_eq!(r[&tag("NumberOfPatientRelatedSeries")], "5");
        assert_eq!(r[&tag("NumberOfPatientRelatedInstances")], "8");
        assert_eq!(r[&tag("PatientID")], "12345");
        assert_eq!(r[&tag("IssuerOfPatientID")], "SITEA");
        assert!(
            !r.contains_key(&tag("SeriesInstanceUID")),
            "nothing below the level"
        );
        let rows = index
            .find(
                &study_q(Level::Series, &[("SeriesInstanceUID", "1.2.840.9.1.2")]),
                0,
                0,
            )
            .await
            .unwrap();
        let r = &rows[0];
        assert_eq!(r[&tag("NumberOfSeriesRelatedInstances")], "1");
        assert!(
            !r.contains_key(&tag("SeriesNumber")),
            "absent values are absent"
        );
        assert!(!r.contains_key(&tag("BodyPartExamined")));
        let rows = index
            .find(
                &study_q(Level::Image, &[("SOPInstanceUID", "1.2.840.9.5.1.1")]),
                0,
                0,
            )
            .await
            .unwrap();
        assert_eq!(rows[0][&tag("InstanceNumber")], "7");
        assert_eq!(rows[0][&tag("SeriesNumber")], "1");
        assert!(!rows[0].contains_key(&tag("PatientSex")));
    }

    pub async fn limit_and_offset<I: Index>(index: Arc<I>) {
        load(&*index).await;
        for (q, total) in [
            (study_q(Level::Study, &[]), 6),
            (study_q(Level::Image, &[]), 14),
            (study_q(Level::Series, &[("Modality", "CT\\MR")]), 5),
        ] {
            let all = index.find(&q, 0, 0).await.unwrap();
            assert_eq!(all.len(), total);
            assert_eq!(
                index.find(&q, 0, 0).await.unwrap(),
                all,
                "the order is stable"
            );
            for page in 1..=4u32 {
                let mut paged = Vec::new();
                let mut offset = 0;
                loop {
                    let got = index.find(&q, page, offset).await.unwrap();
                    assert!(got.len() <= page as usize);
                    if got.is_empty() {
                        break;
                    }
                    offset += got.len() as u32;
                    paged.extend(got);
                }
                assert_eq!(paged, all, "pages of {page}");
            }
            assert_eq!(index.find(&q, 0, 2).await.unwrap(), all[2..]);
            assert!(index.find(&q, 3, 100).await.unwrap().is_empty());
        }
    }

    pub async fn locate_at_each_level<I: Index>(index: Arc<I>) {
        let model = load(&*index).await;
        let order = |v: &[StoredInstance]| {
            v.iter()
                .map(|s| s.sop_instance_uid.clone())
                .collect::<Vec<_>>()
        };
        let q = patient_q(
            Level::Patient,
            &[("PatientID", "12345"), ("IssuerOfPatientID", "SITEA")],
        );
        let got = index.locate(&q).await.unwrap();
        assert_eq!(got.len(), 8);
        model.check_locate_order(&got);

        let q = study_q(Level::Study, &[("StudyInstanceUID", "1.2.840.9.2")]);
        assert_eq!(
            order(&index.locate(&q).await.unwrap()),
            [
                "1.2.840.9.2.1.1",
                "1.2.840.9.2.1.2",
                "1.2.840.9.2.2.1",
                "1.2.840.9.2.3.1"
            ]
        );
        let q = study_q(
            Level::Study,
            &[("StudyInstanceUID", "1.2.840.9.1\\1.2.840.9.5")],
        );
        let got = index.locate(&q).await.unwrap();
        assert_eq!(got.len(), 5);
        model.check_locate_order(&got);
        let s1: Vec<_> = order(&got)
            .into_iter()
            .filter(|u| u.starts_with("1.2.840.9.1."))
            .collect();
        assert_eq!(
            s1,
            [
                "1.2.840.9.1.1.1",
                "1.2.840.9.1.1.2",
                "1.2.840.9.1.1.3",
                "1.2.840.9.1.2.1"
            ]
        );

        // A key on the series level selects the whole study at STUDY level.
        let q = study_q(Level::Study, &[("ModalitiesInStudy", "PR")]);
        assert_eq!(index.locate(&q).await.unwrap().len(), 4);

        let q = study_q(Level::Series, &[("SeriesInstanceUID", "1.2.840.9.4.1")]);
        assert_eq!(
            order(&index.locate(&q).await.unwrap()),
            ["1.2.840.9.4.1.2", "1.2.840.9.4.1.1"],
            "absent instance numbers last"
        );
        let q = study_q(Level::Image, &[("SOPInstanceUID", "1.2.840.9.3.1.1")]);
        let got = index.locate(&q).await.unwrap();
        assert_eq!(got, vec![stored(model.by_uid("1.2.840.9.3.1.1"))]);
        let q = study_q(Level::Image, &[("SOPInstanceUID", "1.2.3.404")]);
        assert!(index.locate(&q).await.unwrap().is_empty());
    }

    /// Keys below the requested level never come from `Query::parse`, but a query built in
    /// code may carry them: they select the entities having a descendant that matches them
    /// all (the same descendant), and `locate` still returns the whole entities.
    pub async fn keys_below_the_level<I: Index>(index: Arc<I>) {
        load(&*index).await;
        let key = |keyword: &str, matcher: Matcher| pacsgrid_dicom::QueryKey {
            attr: attrs::by_keyword(keyword).unwrap(),
            matcher,
        };
        let built = |level: Level, keys: Vec<pacsgrid_dicom::QueryKey>| Query {
            model: QueryModel::PatientRoot,
            level,
            keys,
            return_tags: Vec::new(),
        };
        let q = built(
            Level::Study,
            vec![key("Modality", Matcher::Single("PR".into()))],
        );
        assert_eq!(
            uids(&index.find(&q, 0, 0).await.unwrap(), "StudyInstanceUID"),
            set(&["1.2.840.9.1"])
        );
        assert_eq!(index.locate(&q).await.unwrap().len(), 4);
        let q = built(
            Level::Patient,
            vec![
                key("Modality", Matcher::Single("MR".into())),
                key("InstanceNumber", Matcher::Single("5".into())),
            ],
        );
        assert_eq!(
            uids(&index.find(&q, 0, 0).await.unwrap(), "PatientID"),
            set(&["777"])
        );
        let q = built(
            Level::Patient,
            vec![
                key("Modality", Matcher::Single("CT".into())),
                key("InstanceNumber", Matcher::Single("5".into())),
            ],
        );
        assert!(
            index.find(&q, 0, 0).await.unwrap().is_empty(),
            "one descendant matches all"
        );
    }

    pub async fn feed_and_quarantine<I: Index>(index: Arc<I>) {
        let recs = dataset();
        let mut seqs = Vec::new();
        for r in &recs {
            match index.insert(r, "SITEA").await.unwrap() {
                InsertOutcome::Inserted { seq } => seqs.push(seq),
                other => panic!("{other:?}"),
            }
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let feed = index.changes(0, 0).await.unwrap();
        assert_eq!(feed.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs);
        for (c, r) in feed.iter().zip(&recs) {
            assert_eq!(c.kind, ChangeKind::Stored);
            assert_eq!(c.sop_instance_uid, r.instance.sop_instance_uid);
            assert_eq!(c.study_uid, r.study.study_uid);
            assert_eq!(c.series_uid, r.series.series_uid);
            assert_eq!(c.hash, r.hash);
            assert_eq!(c.at_ms, r.received_at_ms);
        }
        // Paging with a cursor returns every entry once.
        let (mut cursor, mut paged) = (0, Vec::new());
        loop {
            let page = index.changes(cursor, 4).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 4);
            cursor = page[page.len() - 1].seq;
            paged.extend(page);
        }
        assert_eq!(paged, feed);
        assert!(index.changes(cursor, 10).await.unwrap().is_empty());

        // A duplicate adds nothing; a quarantine adds an entry after the others.
        assert_eq!(
            index.insert(&recs[0], "SITEA").await.unwrap(),
            InsertOutcome::Duplicate
        );
        let kept = &recs[2];
        let entry = QuarantineEntry {
            id: 0,
            sop_instance_uid: kept.instance.sop_instance_uid.clone(),
            kept_hash: kept.hash.clone(),
            quarantined_hash: hash_of("a second, different object"),
            reason: "same SOP Instance UID, different bytes".into(),
            source: "OTHERSCU".into(),
            at_ms: 1_700_000_100_000,
        };
        let id = index.quarantine(&entry).await.unwrap();
        let second = QuarantineEntry {
            quarantined_hash: hash_of("a third object"),
            at_ms: entry.at_ms + 1,
            ..entry.clone()
        };
        let id2 = index.quarantine(&second).await.unwrap();
        assert!(id2 > id);
        let listed = index.quarantined(0).await.unwrap();
        assert_eq!(
            listed,
            vec![
                QuarantineEntry {
                    id: id2,
                    ..second.clone()
                },
                QuarantineEntry {
                    id,
                    ..entry.clone()
                }
            ]
        );
        assert_eq!(index.quarantined(1).await.unwrap().len(), 1);
        let tail = index.changes(cursor, 0).await.unwrap();
        assert_eq!(tail.len(), 2);
        assert!(tail[0].seq > cursor && tail[1].seq > tail[0].seq);
        assert_eq!(tail[0].kind, ChangeKind::Quarantined);
        assert_eq!(tail[0].hash, entry.quarantined_hash);
        assert_eq!(tail[0].sop_instance_uid, kept.instance.sop_instance_uid);
        assert_eq!(tail[0].study_uid, kept.study.study_uid);
        // The instance itself is untouched.
        assert_eq!(
            index
                .instance(&kept.instance.sop_instance_uid)
                .await
                .unwrap(),
            Some(stored(kept))
        );

        let mut expected: Vec<String> = recs.iter().map(|r| r.hash.clone()).collect();
        expected.push(entry.quarantined_hash.clone());
        expected.push(second.quarantined_hash.clone());
        expected.sort();
        expected.dedup();
        let mut hashes = index.all_hashes().await.unwrap();
        hashes.sort();
        assert_eq!(hashes, expected);
    }

    pub async fn stats_count_everything<I: Index>(index: Arc<I>) {
        assert_eq!(index.stats().await.unwrap(), IndexStats::default());
        let model = load(&*index).await;
        let bytes: u64 = model.recs.iter().map(|r| r.size).sum();
        let stats = index.stats().await.unwrap();
        assert_eq!(
            stats,
            IndexStats {
                patients: 4,
                studies: 6,
                series: 10,
                instances: 14,
                bytes,
                quarantined: 0,
            }
        );
        let r = &model.recs[0];
        index
            .quarantine(&QuarantineEntry {
                id: 0,
                sop_instance_uid: r.instance.sop_instance_uid.clone(),
                kept_hash: r.hash.clone(),
                quarantined_hash: hash_of("x"),
                reason: "test".into(),
                source: "T".into(),
                at_ms: 1,
            })
            .await
            .unwrap();
        assert_eq!(index.stats().await.unwrap().quarantined, 1);
        assert_eq!(index.stats().await.unwrap().instances, 14);
    }
    /// The whole index, at every level, equals the model, and the totals count the model.
    async fn check_everything<I: Index>(index: &I, model: &Model) {
        for (qmodel, level) in [
            (QueryModel::PatientRoot, Level::Patient),
            (QueryModel::StudyRoot, Level::Study),
            (QueryModel::StudyRoot, Level::Series),
            (QueryModel::StudyRoot, Level::Image),
        ] {
            let q = query(qmodel, level, &[]);
            let got = sorted(index.find(&q, 0, 0).await.unwrap());
            assert_eq!(got, model.find(&q), "everything at {level:?}");
        }
        let count = |level| model.entities(level).len() as u64;
        assert_eq!(
            index.stats().await.unwrap(),
            IndexStats {
                patients: count(Level::Patient),
                studies: count(Level::Study),
                series: count(Level::Series),
                instances: count(Level::Image),
                bytes: model.recs.iter().map(|r| r.size).sum(),
                quarantined: 0,
            }
        );
    }

    pub async fn delete_at_each_level<I: Index>(index: Arc<I>) {
        let mut model = load(&*index).await;
        let head = index.feed_head().await.unwrap();
        let at = 1_800_000_000_000;
        // (target, what it must remove: patients, studies, series, instances)
        let steps: Vec<(DeleteTarget, [u64; 4])> = vec![
            // one of three instances of a series: only the instance goes
            (
                DeleteTarget::Instance("1.2.840.9.1.1.2".into()),
                [0, 0, 0, 1],
            ),
            // the only series of its modality and SOP class in study 1
            (DeleteTarget::Series("1.2.840.9.1.2".into()), [0, 0, 1, 1]),
            // the last instance of a series takes the series with it
            (
                DeleteTarget::Instance("1.2.840.9.2.2.1".into()),
                [0, 0, 1, 1],
            ),
            // a whole study; its patient keeps study 1
            (DeleteTarget::Study("1.2.840.9.2".into()), [0, 1, 2, 3]),
            // a patient with one study of two series
            (
                DeleteTarget::Patient {
                    patient_id: "777".into(),
                    issuer: "SITEA".into(),
                },
                [1, 1, 2, 3],
            ),
            // a study of a patient with two studies: the patient stays...
            (DeleteTarget::Study("1.2.840.9.6".into()), [0, 1, 1, 1]),
            // ...until its last study goes
            (DeleteTarget::Study("1.2.840.9.3".into()), [1, 1, 1, 1]),
        ];
        let mut seen_seq = head;
        for (target, [patients, studies, series, instances]) in steps {
            let gone: Vec<InstanceRecord> = model
                .recs
                .iter()
                .filter(|r| match &target {
                    DeleteTarget::Patient { patient_id, issuer } => {
                        r.patient.patient_id == *patient_id && r.patient.issuer == *issuer
                    }
                    DeleteTarget::Study(u) => r.study.study_uid == *u,
                    DeleteTarget::Series(u) => r.series.series_uid == *u,
                    DeleteTarget::Instance(u) => r.instance.sop_instance_uid == *u,
                })
                .cloned()
                .collect();
            let d = index.delete(&target, at).await.unwrap();
            assert_eq!(
                [d.patients, d.studies, d.series, d.instances],
                [patients, studies, series, instances],
                "{target:?}"
            );
            assert_eq!(d.bytes, gone.iter().map(|r| r.size).sum::<u64>());
            // One tombstone per instance, in the feed, after everything before.
            let feed = index.changes(seen_seq, 0).await.unwrap();
            assert_eq!(feed, d.tombstones, "{target:?}");
            let mut tomb: Vec<(String, String, String, String)> = feed
                .iter()
                .map(|c| {
                    assert_eq!((c.kind, c.at_ms), (ChangeKind::Deleted, at));
                    assert!(c.seq > seen_seq);
                    (
                        c.sop_instance_uid.clone(),
                        c.study_uid.clone(),
                        c.series_uid.clone(),
                        c.hash.clone(),
                    )
                })
                .collect();
            tomb.sort();
            let mut want: Vec<_> = gone
                .iter()
                .map(|r| {
                    (
                        r.instance.sop_instance_uid.clone(),
                        r.study.study_uid.clone(),
                        r.series.series_uid.clone(),
                        r.hash.clone(),
                    )
                })
                .collect();
            want.sort();
            assert_eq!(tomb, want, "{target:?}");
            seen_seq = index.feed_head().await.unwrap();
            let mut unref = d.unreferenced_hashes.clone();
            unref.sort();
            let mut hashes: Vec<String> = gone.iter().map(|r| r.hash.clone()).collect();
            hashes.sort();
            assert_eq!(unref, hashes);
            for r in &gone {
                let uid = &r.instance.sop_instance_uid;
                assert_eq!(index.instance(uid).await.unwrap(), None);
                assert_eq!(index.provenance(uid).await.unwrap(), None);
                assert!(index.tombstoned(&r.hash).await.unwrap());
            }
            model
                .recs
                .retain(|r| !gone.iter().any(|g| g.instance == r.instance));
            // Counts, ModalitiesInStudy and SOPClassesInStudy of what stays follow.
            check_everything(&*index, &model).await;
            let mut hashes = index.all_hashes().await.unwrap();
            hashes.sort();
            let mut want: Vec<String> = model.recs.iter().map(|r| r.hash.clone()).collect();
            want.sort();
            assert_eq!(hashes, want);
        }
        for r in &model.recs {
            assert!(!index.tombstoned(&r.hash).await.unwrap());
        }
        // Unknown targets remove nothing and write no tombstone.
        for target in [
            DeleteTarget::Instance("1.2.840.9.1.1.2".into()),
            DeleteTarget::Series("1.2.404".into()),
            DeleteTarget::Study("1.2.404".into()),
            DeleteTarget::Patient {
                patient_id: "12345".into(),
                issuer: "NOBODY".into(),
            },
        ] {
            assert_eq!(
                index.delete(&target, at).await.unwrap(),
                Deletion::default()
            );
        }
        assert_eq!(index.feed_head().await.unwrap(), seen_seq);
        check_everything(&*index, &model).await;
    }

    pub async fn deleted_can_be_stored_again<I: Index>(index: Arc<I>) {
        let model = load(&*index).await;
        let study: Vec<&InstanceRecord> = model
            .recs
            .iter()
            .filter(|r| r.study.study_uid == "1.2.840.9.1")
            .collect();
        let d = index
            .delete(&DeleteTarget::Study("1.2.840.9.1".into()), 1)
            .await
            .unwrap();
        assert_eq!(d.instances, study.len() as u64);
        let head = index.feed_head().await.unwrap();
        for r in &study {
            match index.insert(r, "SITEA").await.unwrap() {
                InsertOutcome::Inserted { seq } => assert!(seq > head),
                other => panic!("{other:?}"),
            }
        }
        check_everything(&*index, &model).await;
        let feed = index.changes(0, 0).await.unwrap();
        let kinds: Vec<ChangeKind> = feed.iter().map(|c| c.kind).collect();
        let n = model.recs.len();
        let k = study.len();
        assert_eq!(kinds.len(), n + 2 * k);
        assert!(kinds[..n].iter().all(|k| *k == ChangeKind::Stored));
        assert!(kinds[n..n + k].iter().all(|k| *k == ChangeKind::Deleted));
        assert!(kinds[n + k..].iter().all(|k| *k == ChangeKind::Stored));
    }

    pub async fn delete_keeps_blobs_still_referenced<I: Index>(index: Arc<I>) {
        // Two instances with the same bytes hash (content addressing shares the blob), and a
        // quarantined object whose hash is a third instance's.
        let a = record(7, 1, 1, 1);
        let mut b = record(7, 1, 2, 2);
        b.hash = a.hash.clone();
        let c = record(7, 1, 1, 3);
        let d = record(7, 1, 2, 1);
        for r in [&a, &b, &c, &d] {
            index.insert(r, "SITEA").await.unwrap();
        }
        index
            .quarantine(&QuarantineEntry {
                id: 0,
                sop_instance_uid: d.instance.sop_instance_uid.clone(),
                kept_hash: d.hash.clone(),
                quarantined_hash: c.hash.clone(),
                reason: "test".into(),
                source: "T".into(),
                at_ms: 1,
            })
            .await
            .unwrap();
        let del = index
            .delete(&DeleteTarget::Series(a.series.series_uid.clone()), 2)
            .await
            .unwrap();
        assert_eq!((del.series, del.instances), (1, 2));
        assert!(
            del.unreferenced_hashes.is_empty(),
            "b still holds a's hash, the quarantine holds c's: {:?}",
            del.unreferenced_hashes
        );
        let del = index
            .delete(
                &DeleteTarget::Instance(d.instance.sop_instance_uid.clone()),
                3,
            )
            .await
            .unwrap();
        assert_eq!(
            (del.patients, del.studies, del.series, del.instances),
            (0, 0, 0, 1)
        );
        assert_eq!(del.unreferenced_hashes, vec![d.hash.clone()]);
        let del = index
            .delete(
                &DeleteTarget::Instance(b.instance.sop_instance_uid.clone()),
                4,
            )
            .await
            .unwrap();
        assert_eq!(
            (del.patients, del.studies, del.series, del.instances),
            (1, 1, 1, 1)
        );
        assert_eq!(del.unreferenced_hashes, vec![a.hash.clone()]);
        let stats = index.stats().await.unwrap();
        assert_eq!(
            (
                stats.patients,
                stats.instances,
                stats.bytes,
                stats.quarantined
            ),
            (0, 0, 0, 1)
        );
    }

    pub async fn provenance_and_feed_head<I: Index>(index: Arc<I>) {
        assert_eq!(index.feed_head().await.unwrap(), 0);
        let rec = record(8, 1, 1, 1);
        let InsertOutcome::Inserted { seq } = index.insert(&rec, "SITEB").await.unwrap() else {
            panic!("not inserted");
        };
        assert_eq!(index.feed_head().await.unwrap(), seq);
        assert_eq!(
            index
                .provenance(&rec.instance.sop_instance_uid)
                .await
                .unwrap(),
            Some(Provenance {
                origin_site: rec.origin_site.clone(),
                source: rec.source.clone(),
                received_at_ms: rec.received_at_ms,
                holders: vec!["SITEB".into()],
            })
        );
        assert_eq!(index.provenance("1.2.404").await.unwrap(), None);
    }

    /// Marks commit with their store whatever its outcome, stay until their session clears
    /// them, and come back in order for the records a restart writes.
    pub async fn audit_marks_outlive_their_session<I: Index>(index: Arc<I>) {
        let mark = |session: &str| AuditMark {
            session: session.into(),
            who: format!("{{\"ae\":\"{session}\"}}"),
        };
        let a = record(9, 1, 1, 1);
        let b = record(9, 1, 1, 2);
        let mut changed = b.clone();
        changed.hash = hash_of("other bytes");
        assert!(matches!(
            index.insert_marked(&a, "S", &mark("s1")).await.unwrap(),
            InsertOutcome::Inserted { .. }
        ));
        assert!(matches!(
            index.insert_marked(&b, "S", &mark("s2")).await.unwrap(),
            InsertOutcome::Inserted { .. }
        ));
        assert_eq!(
            index.insert_marked(&a, "S", &mark("s2")).await.unwrap(),
            InsertOutcome::Duplicate
        );
        assert!(matches!(
            index
                .insert_marked(&changed, "S", &mark("s2"))
                .await
                .unwrap(),
            InsertOutcome::Conflict { .. }
        ));
        index.insert(&record(9, 1, 1, 3), "S").await.unwrap();
        let pending = index.pending_audits(0).await.unwrap();
        let seen: Vec<(&str, &str)> = pending
            .iter()
            .map(|p| (p.mark.session.as_str(), p.sop_instance_uid.as_str()))
            .collect();
        let (ua, ub) = (&a.instance.sop_instance_uid, &b.instance.sop_instance_uid);
        assert_eq!(
            seen,
            vec![("s1", ua.as_str()), ("s2", ub), ("s2", ua), ("s2", ub)]
        );
        assert_eq!(pending[0].mark, mark("s1"));
        assert_eq!(
            (
                pending[0].study_uid.as_str(),
                pending[0].patient_id.as_str(),
                pending[0].issuer.as_str(),
                pending[0].sop_class_uid.as_str(),
                pending[0].at_ms
            ),
            (
                a.study.study_uid.as_str(),
                a.patient.patient_id.as_str(),
                a.patient.issuer.as_str(),
                a.instance.sop_class_uid.as_str(),
                a.received_at_ms
            )
        );
        assert_eq!(index.pending_audits(2).await.unwrap().len(), 2);
        assert_eq!(index.clear_audit_marks("s1").await.unwrap(), 1);
        assert_eq!(index.clear_audit_marks("s1").await.unwrap(), 0);
        let left = index.pending_audits(0).await.unwrap();
        assert_eq!(left.len(), 3);
        assert_eq!(
            index.clear_audit_marks_through(left[1].id).await.unwrap(),
            2
        );
        assert_eq!(index.pending_audits(0).await.unwrap().len(), 1);
    }
}

/// Instantiates the index suite for a backend: `index_suite!(name, fixture)` where
/// `fixture` is an `async fn()` giving an empty index as `(Arc<Index>, Guard)`, or as an
/// `Option` of it for a backend whose server may be absent (the tests then pass empty).
macro_rules! index_suite {
    ($name:ident, $fixture:path) => {
        mod $name {
            index_suite!(@each $fixture;
                insert_duplicate_conflict, concurrent_inserts_of_one_uid,
                concurrent_inserts_into_one_new_series, issuers_keep_patients_apart,
                first_writer_wins_and_blanks_fill, matching_at_patient_level,
                matching_at_study_level, matching_at_series_level, matching_at_image_level,
                matching_known_answers, computed_attributes, limit_and_offset,
                locate_at_each_level, keys_below_the_level, feed_and_quarantine,
                stats_count_everything, delete_at_each_level, deleted_can_be_stored_again,
                delete_keeps_blobs_still_referenced, provenance_and_feed_head,
                audit_marks_outlive_their_session);
            index_suite!(@grid $fixture;
                incarnation_is_stable, remote_records_have_no_holder_until_announced,
                local_stores_announce_their_holder, tombstones_apply_travel_and_win,
                holdings_page_through_everything, cursors_and_conflicts_persist,
                a_page_applied_twice_changes_nothing, an_empty_page_still_saves_the_cursor,
                concurrent_holder_changes_are_each_committed_once);
            index_suite!(@pair $fixture; a_page_applies_like_its_changes_one_by_one);
        }
    };
    (@pair $fixture:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some((a, _guard_a)) = $crate::conformance::Fixture::get($fixture().await)
                else {
                    return;
                };
                let Some((b, _guard_b)) = $crate::conformance::Fixture::get($fixture().await)
                else {
                    return;
                };
                $crate::conformance::grid::$test(a, b).await;
            }
        )*
    };
    (@each $fixture:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some((index, _guard)) = $crate::conformance::Fixture::get($fixture().await)
                else {
                    return;
                };
                $crate::conformance::index_tests::$test(index).await;
            }
        )*
    };
    (@grid $fixture:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some((index, _guard)) = $crate::conformance::Fixture::get($fixture().await)
                else {
                    return;
                };
                $crate::conformance::grid::$test(index).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// the backends under test: one line each

async fn folder_store() -> (Arc<FolderBlobStore>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store = FolderBlobStore::open(dir.path()).unwrap();
    (Arc::new(store), Box::new(dir))
}

async fn sqlite_index() -> (Arc<SqliteIndex>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let index = SqliteIndex::open(&dir.path().join("index.sqlite")).unwrap();
    (Arc::new(index), Box::new(dir))
}

/// An S3 store under a fresh prefix of the test bucket, when `PACSGRID_S3_TEST_ENDPOINT`
/// names an S3-compatible server (`scripts/test.sh` starts moto and sets it, with
/// `PACSGRID_S3_TEST_BUCKET`, which must exist, and AWS_* credentials). Without it the S3
/// tests are skipped, unless `PACSGRID_S3_TEST_REQUIRED=1`, which makes them fail.
pub(crate) async fn s3_store() -> Option<(Arc<S3BlobStore>, Guard)> {
    let Ok(endpoint) = std::env::var("PACSGRID_S3_TEST_ENDPOINT") else {
        assert!(
            std::env::var("PACSGRID_S3_TEST_REQUIRED").as_deref() != Ok("1"),
            "PACSGRID_S3_TEST_REQUIRED=1 but PACSGRID_S3_TEST_ENDPOINT is not set"
        );
        eprintln!("skipped: PACSGRID_S3_TEST_ENDPOINT is not set");
        return None;
    };
    let bucket =
        std::env::var("PACSGRID_S3_TEST_BUCKET").unwrap_or_else(|_| "pacsgrid-test".into());
    let n = STAGED.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(
        &secret,
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into()),
    )
    .unwrap();
    let cfg = S3Config {
        bucket,
        prefix: format!("conformance/{}-{n}-{nanos}", std::process::id()),
        endpoint: Some(endpoint.clone()),
        region: Some("us-east-1".into()),
        allow_http: endpoint.starts_with("http://"),
        virtual_hosted_style: false,
        access_key_id: Some(std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into())),
        secret_access_key_file: Some(secret),
    };
    let store = S3BlobStore::open(&cfg, &dir.path().join("staging"))
        .await
        .unwrap_or_else(|e| panic!("the S3 test server at {endpoint}: {e}"));
    Some((Arc::new(store), Box::new(dir)))
}

blob_store_suite!(folder_blob_store, crate::conformance::folder_store);
blob_store_suite!(s3_blob_store, crate::conformance::s3_store);

/// What the S3 store does beyond the shared suite: large objects and refused bytes.
mod s3_only {
    use super::*;
    use futures::TryStreamExt;

    /// 20 MiB of bytes that differ along the object, so a misplaced part shows.
    fn big() -> Vec<u8> {
        (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_objects_go_up_in_parts_and_come_back_in_chunks() {
        let Some((store, _guard)) = s3_store().await else {
            return;
        };
        let bytes = big();
        let staged = stage(&*store, &bytes).await;
        let hash = staged.hash.clone();
        store.put(staged).await.unwrap();
        assert_eq!(store.size(&hash).await.unwrap(), bytes.len() as u64);
        let offset = 7_340_033usize;
        let parts: Vec<bytes::Bytes> = store
            .chunks(&hash, offset as u64, 1 << 20)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= 1 << 20));
        assert!(parts.concat() == bytes[offset..], "ranged read differs");
        assert!(read_all(store.open(&hash, 0).await.unwrap()).await == bytes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_that_do_not_match_their_hash_are_refused() {
        let Some((store, _guard)) = s3_store().await else {
            return;
        };
        for bytes in [b"small object".to_vec(), big()] {
            let mut staged = stage(&*store, &bytes).await;
            staged.hash = hash_of("something else");
            let (hash, path) = (staged.hash.clone(), staged.path.clone());
            let err = store.put(staged).await.unwrap_err();
            assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
            assert!(!store.exists(&hash).await.unwrap(), "nothing stored");
            assert!(
                path.exists(),
                "a refused put leaves the staged file to its owner"
            );
        }
        assert!(store.list().await.unwrap().is_empty());
    }
}
index_suite!(sqlite_index, crate::conformance::sqlite_index);
index_suite!(postgres_index, crate::conformance::postgres_index);

/// A config for a fresh schema (named from `prefix`) of the test database, when
/// `PACSGRID_PG_TEST_URL` names one (`scripts/test.sh` starts a throwaway server and sets it).
/// Without it the PostgreSQL tests are skipped, unless `PACSGRID_PG_TEST_REQUIRED=1`, which
/// makes them fail.
pub(crate) fn postgres_test_config(prefix: &str) -> Option<PostgresConfig> {
    let Ok(url) = std::env::var("PACSGRID_PG_TEST_URL") else {
        assert!(
            std::env::var("PACSGRID_PG_TEST_REQUIRED").as_deref() != Ok("1"),
            "PACSGRID_PG_TEST_REQUIRED=1 but PACSGRID_PG_TEST_URL is not set"
        );
        eprintln!("skipped: PACSGRID_PG_TEST_URL is not set");
        return None;
    };
    let n = STAGED.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut cfg = PostgresConfig::new(&url);
    cfg.schema = format!("{prefix}_{}_{n}_{nanos}", std::process::id());
    cfg.max_connections = 4;
    Some(cfg)
}

/// A PostgreSQL index in a fresh schema of the test database (see [`postgres_test_config`]).
pub(crate) async fn postgres_index() -> Option<(Arc<PostgresIndex>, Guard)> {
    let cfg = postgres_test_config("conformance")?;
    let index = PostgresIndex::open(&cfg)
        .await
        .unwrap_or_else(|e| panic!("the PostgreSQL test server: {e}"));
    Some((Arc::new(index), Box::new(())))
}
