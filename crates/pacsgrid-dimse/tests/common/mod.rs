//! Shared helpers of the end-to-end tests: a node over a temporary archive, synthetic
//! DICOM files, and dcmtk runs.

#![allow(dead_code)]

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use pacsgrid_archive::{Archive, ArchiveConfig};
use pacsgrid_dimse::{DimseConfig, DimseMetrics, DimseServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
pub const EXPLICIT: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT: &str = "1.2.840.10008.1.2";
pub const RLE: &str = "1.2.840.10008.1.2.5";

/// Whether dcmtk is installed (tests that drive it are skipped otherwise, loudly).
pub fn have_dcmtk() -> bool {
    let ok = Path::new("/usr/bin/storescu").exists();
    if !ok {
        eprintln!("SKIPPED: /usr/bin/storescu is absent (install dcmtk)");
    }
    ok
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A running node: archive in a temp dir, DIMSE server on an ephemeral port.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub archive: Arc<Archive>,
    pub addr: SocketAddr,
    pub metrics: Arc<DimseMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Node {
    pub async fn start(configure: impl FnOnce(&mut DimseConfig)) -> Node {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(ArchiveConfig {
            data_dir: dir.path().join("data"),
            site: "test".into(),
            default_issuer: "TEST".into(),
            blobs: Default::default(),
            index: Default::default(),
        })
        .await
        .unwrap();
        let mut cfg = DimseConfig {
            ae_title: "PACSGRID".into(),
            idle_timeout: Duration::from_secs(20),
            association_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
            ..DimseConfig::default()
        };
        configure(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let access = Arc::new(pacsgrid_access::AccessPoint::open_door("test"));
        let server = DimseServer::new(cfg, Arc::clone(&archive), access);
        let metrics = server.metrics();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(listener, async {
            let _ = rx.await;
        }));
        Node {
            dir,
            archive,
            addr,
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        self.archive.close();
    }
}

/// What an instance to generate looks like.
#[derive(Clone, Debug)]
pub struct Spec {
    pub patient_id: String,
    pub patient_name: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub sop_class: &'static str,
    pub ts: &'static str,
    pub description: String,
    /// Rows = columns of a 16-bit image.
    pub size: u16,
}

impl Spec {
    pub fn ct(n: u32, study: &str, series: &str) -> Spec {
        Spec {
            patient_id: "P1".into(),
            patient_name: "DOE^JANE".into(),
            study_uid: study.into(),
            series_uid: series.into(),
            sop_uid: format!("{series}.{n}"),
            sop_class: CT,
            ts: EXPLICIT,
            description: "HEAD".into(),
            size: 16,
        }
    }
}

/// Writes a small but complete image object as a Part 10 file.
pub fn write_instance(dir: &Path, spec: &Spec) -> PathBuf {
    let mut obj = InMemDicomObject::new_empty();
    let s = |obj: &mut InMemDicomObject, tag, vr, v: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    if !spec.patient_name.is_ascii() {
        s(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    }
    s(&mut obj, tags::SOP_CLASS_UID, VR::UI, spec.sop_class);
    s(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &spec.sop_uid);
    s(&mut obj, tags::STUDY_DATE, VR::DA, "20240102");
    s(&mut obj, tags::STUDY_TIME, VR::TM, "101500");
    s(&mut obj, tags::ACCESSION_NUMBER, VR::SH, "ACC1");
    s(
        &mut obj,
        tags::MODALITY,
        VR::CS,
        if spec.sop_class == MR { "MR" } else { "CT" },
    );
    s(&mut obj, tags::STUDY_DESCRIPTION, VR::LO, &spec.description);
    s(&mut obj, tags::PATIENT_NAME, VR::PN, &spec.patient_name);
    s(&mut obj, tags::PATIENT_ID, VR::LO, &spec.patient_id);
    s(&mut obj, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
    s(&mut obj, tags::PATIENT_SEX, VR::CS, "F");
    s(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, &spec.study_uid);
    s(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &spec.series_uid,
    );
    s(&mut obj, tags::STUDY_ID, VR::SH, "1");
    s(&mut obj, tags::SERIES_NUMBER, VR::IS, "1");
    s(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    obj.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1u16),
    ));
    s(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    obj.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(spec.size),
    ));
    obj.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(spec.size),
    ));
    obj.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(16u16),
    ));
    obj.put(DataElement::new(
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(12u16),
    ));
    obj.put(DataElement::new(
        tags::HIGH_BIT,
        VR::US,
        PrimitiveValue::from(11u16),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    ));
    let n = spec.size as usize * spec.size as usize;
    let pixels: Vec<u16> = (0..n).map(|i| (i % 4096) as u16).collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    ));
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(spec.ts)
                .media_storage_sop_class_uid(spec.sop_class)
                .media_storage_sop_instance_uid(&spec.sop_uid),
        )
        .unwrap();
    let path = dir.join(format!("{}.dcm", spec.sop_uid));
    file.write_to_file(&path).unwrap();
    path
}

/// Runs a dcmtk tool (by absolute path, with TCP_NODELAY=1 as NOTES.md asks).
pub async fn dcmtk(tool: &str, args: &[&str]) -> Output {
    let path = format!("/usr/bin/{tool}");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&path)
            .args(args)
            .env("TCP_NODELAY", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} timed out"))
    .unwrap_or_else(|e| panic!("{tool}: {e}"));
    out
}

/// stdout + stderr of a run, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A free TCP port on loopback (for a dcmtk storescp).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts dcmtk storescp writing into `dir`, and waits until it listens.
pub async fn storescp(ae: &str, port: u16, dir: &Path, extra: &[&str]) -> tokio::process::Child {
    let mut args: Vec<String> = vec![
        "-aet".into(),
        ae.into(),
        "-od".into(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(port.to_string());
    let child = tokio::process::Command::new("/usr/bin/storescp")
        .args(&args)
        .env("TCP_NODELAY", "1")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}
