//! End to end with real dcmtk clients against a real archive: echo, store, find, get, move,
//! and the refusals. Each test is skipped (with a message) when dcmtk is not installed.

mod common;

use common::*;
use pacsgrid_dicom::{Level, Query, QueryModel};
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_store_with_storescu() {
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(|_| {}).await;
    let files = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for i in 1..=3 {
        let mut s = Spec::ct(i, "1.2.826.0.1.1", "1.2.826.0.1.1.1");
        if i == 2 {
            s.ts = IMPLICIT;
        }
        if i == 3 {
            s.size = 512; // 512 KiB: many PDUs
        }
        write_instance(files.path(), &s);
        specs.push(s);
    }
    let out = dcmtk("echoscu", &["-aec", "PACSGRID", "127.0.0.1", &node.port()]).await;
    assert!(out.status.success(), "{}", text(&out));

    let dir = files.path().display().to_string();
    let out = dcmtk(
        "storescu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "+sd",
            "+sp",
            "*.dcm",
            "127.0.0.1",
            &node.port(),
            &dir,
        ],
    )
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(
        t.matches("Received Store Response (Success)").count(),
        3,
        "{t}"
    );
    for s in &specs {
        let inst = node.archive.instance(&s.sop_uid).await.unwrap();
        assert!(inst.is_some(), "{} not stored", s.sop_uid);
    }
    // again: identical duplicates are a success
    let out = dcmtk(
        "storescu",
        &[
            "-aec",
            "PACSGRID",
            "+sd",
            "+sp",
            "*.dcm",
            "127.0.0.1",
            &node.port(),
            &dir,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let m = node.metrics.snapshot();
    assert_eq!(m.stores_ok, 6);
    assert_eq!(m.echoes, 1);
    assert!(m.bytes_received > 512 * 512 * 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_object_is_quarantined_with_a_warning() {
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(|_| {}).await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let s = Spec::ct(1, "1.2.826.0.1.2", "1.2.826.0.1.2.1");
    let first = write_instance(a.path(), &s);
    let mut changed = s.clone();
    changed.description = "CHANGED".into();
    let second = write_instance(b.path(), &changed);
    let out = dcmtk(
        "storescu",
        &[
            "-aec",
            "PACSGRID",
            "127.0.0.1",
            &node.port(),
            &first.display().to_string(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = dcmtk(
        "storescu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "127.0.0.1",
            &node.port(),
            &second.display().to_string(),
        ],
    )
    .await;
    let t = text(&out);
    assert!(t.contains("Received Store Response (Warning"), "{t}");
    assert_eq!(node.metrics.snapshot().stores_quarantined, 1);
    assert_eq!(node.archive.quarantined(10).await.unwrap().len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_called_ae_and_unknown_calling_ae_are_rejected() {
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(|c| c.allowed_calling_aes = Some(vec!["FRIEND".into()])).await;
    let out = dcmtk(
        "echoscu",
        &["-aet", "FRIEND", "-aec", "WRONG", "127.0.0.1", &node.port()],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Called AE Title Not Recognized"),
        "{}",
        text(&out)
    );
    let out = dcmtk(
        "echoscu",
        &[
            "-aet",
            "STRANGER",
            "-aec",
            "PACSGRID",
            "127.0.0.1",
            &node.port(),
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&out)
    );
    let out = dcmtk(
        "echoscu",
        &[
            "-aet",
            "FRIEND",
            "-aec",
            "PACSGRID",
            "127.0.0.1",
            &node.port(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(node.metrics.snapshot().associations_rejected, 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn association_cap_rejects_transiently() {
    if !have_dcmtk() {
        return;
    }
    use pacsgrid_dimse::association::{Association, ProposedContext, RequestParams};
    use std::time::Duration;
    let node = Node::start(|c| c.max_associations = 1).await;
    let params = RequestParams {
        calling_ae: "HOLDER".into(),
        called_ae: "PACSGRID".into(),
        contexts: vec![ProposedContext {
            abstract_syntax: pacsgrid_dicom::uid::VERIFICATION.into(),
            transfer_syntaxes: vec![IMPLICIT.into()],
        }],
        roles: vec![],
        max_pdu_length: 65536,
        timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
    };
    let held = Association::request(&node.addr.to_string(), &params)
        .await
        .unwrap();
    let out = dcmtk("echoscu", &["-aec", "PACSGRID", "127.0.0.1", &node.port()]).await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("Transient") && t.contains("Local Limit Exceeded"),
        "{t}"
    );
    held.release().await.unwrap();
    // the slot is free again
    let mut ok = false;
    for _ in 0..20 {
        let out = dcmtk("echoscu", &["-aec", "PACSGRID", "127.0.0.1", &node.port()]).await;
        if out.status.success() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
    node.stop().await;
}

async fn store_all(node: &Node, specs: &[Spec]) -> tempfile::TempDir {
    let files = tempfile::tempdir().unwrap();
    for s in specs {
        write_instance(files.path(), s);
    }
    let dir = files.path().display().to_string();
    let out = dcmtk(
        "storescu",
        &[
            "-aec",
            "PACSGRID",
            "+sd",
            "+sp",
            "*.dcm",
            "127.0.0.1",
            &node.port(),
            &dir,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_answers_requested_keys_and_refuses_bad_queries() {
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(|_| {}).await;
    let mut a = Spec::ct(1, "1.2.826.0.1.3", "1.2.826.0.1.3.1");
    a.patient_name = "MÜLLER^ANNA".into();
    a.patient_id = "PM".into();
    let b = Spec::ct(1, "1.2.826.0.1.4", "1.2.826.0.1.4.1");
    let _files = store_all(&node, &[a.clone(), b.clone()]).await;

    let port = node.port();
    let out = dcmtk(
        "findscu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "SpecificCharacterSet=ISO_IR 192",
            "-k",
            "PatientName=MÜ*",
            "-k",
            "StudyInstanceUID",
            "-k",
            "ModalitiesInStudy",
            "-k",
            "PatientID",
            "-k",
            "0009,0010",
            "127.0.0.1",
            &port,
        ],
    )
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.matches("(Pending)").count(), 1, "{t}");
    assert!(t.contains("1.2.826.0.1.3"), "{t}");
    assert!(t.contains("ISO_IR 192"), "{t}");
    assert!(t.contains("RetrieveAETitle"), "{t}");
    assert!(t.contains("IssuerOfPatientID"), "{t}");
    assert!(
        !t.contains("StudyDate"),
        "only requested keys come back: {t}"
    );
    assert!(t.contains("Final Find Response (Success)"), "{t}");

    let out = dcmtk(
        "findscu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyDate=20241399",
            "127.0.0.1",
            &port,
        ],
    )
    .await;
    let t = text(&out);
    assert!(t.contains("Final Find Response (Failed"), "{t}");
    let out = dcmtk(
        "findscu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "SOPInstanceUID=1.2.3",
            "127.0.0.1",
            &port,
        ],
    )
    .await;
    let t = text(&out);
    assert!(
        t.contains("Final Find Response (Failed") || t.contains("Error"),
        "{t}"
    );

    let out = dcmtk(
        "findscu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-P",
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            "PatientID=P1",
            "-k",
            "StudyInstanceUID=1.2.826.0.1.4",
            "-k",
            "SeriesInstanceUID=1.2.826.0.1.4.1",
            "-k",
            "SOPInstanceUID",
            "127.0.0.1",
            &port,
        ],
    )
    .await;
    let t = text(&out);
    assert_eq!(t.matches("(Pending)").count(), 1, "{t}");
    assert!(t.contains(&b.sop_uid), "{t}");
    // the node still serves after the refusals
    let out = dcmtk("echoscu", &["-aec", "PACSGRID", "127.0.0.1", &port]).await;
    assert!(out.status.success());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_stored_bytes() {
    if !have_dcmtk() {
        return;
    }
    let node = Node::start(|_| {}).await;
    let specs: Vec<Spec> = (1..=3)
        .map(|i| Spec::ct(i, "1.2.826.0.1.5", "1.2.826.0.1.5.1"))
        .collect();
    let _files = store_all(&node, &specs).await;
    let out_dir = tempfile::tempdir().unwrap();
    let od = out_dir.path().display().to_string();
    let out = dcmtk(
        "getscu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-S",
            "-od",
            &od,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=1.2.826.0.1.5",
            "127.0.0.1",
            &node.port(),
        ],
    )
    .await;
    let t = text(&out);
    assert!(t.contains("Received C-GET Response (Success)"), "{t}");
    assert!(t.contains("Number of Completed Suboperations : 3"), "{t}");
    // each received object's data set equals the stored one, byte for byte
    for s in &specs {
        let inst = node.archive.instance(&s.sop_uid).await.unwrap().unwrap();
        let mut stored = Vec::new();
        let mut r = node.archive.open_dataset(&inst).await.unwrap();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut stored)
            .await
            .unwrap();
        let got = std::fs::read(out_dir.path().join(format!("CT.{}", s.sop_uid))).unwrap();
        assert!(got.ends_with(&stored), "data set of {} differs", s.sop_uid);
    }
    assert_eq!(node.metrics.snapshot().retrieve_subops_ok, 3);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_sends_to_the_destination_and_refuses_unknown_ones() {
    if !have_dcmtk() {
        return;
    }
    let dest_port = free_port();
    let node = Node::start(|c| {
        c.remote_aes.push(pacsgrid_dimse::RemoteAe {
            ae_title: "DEST".into(),
            host: "127.0.0.1".into(),
            port: dest_port,
            tls: None,
        })
    })
    .await;
    let mut specs: Vec<Spec> = (1..=3)
        .map(|i| Spec::ct(i, "1.2.826.0.1.6", "1.2.826.0.1.6.1"))
        .collect();
    specs[2].sop_class = MR;
    specs[2].series_uid = "1.2.826.0.1.6.2".into();
    specs[2].sop_uid = "1.2.826.0.1.6.2.1".into();
    let _files = store_all(&node, &specs).await;

    let recv = tempfile::tempdir().unwrap();
    // implicit only: the explicit objects must be converted on the way
    let mut scp = storescp("DEST", dest_port, recv.path(), &["+xi"]).await;
    let out = dcmtk(
        "movescu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-aem",
            "DEST",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=1.2.826.0.1.6",
            "127.0.0.1",
            &node.port(),
        ],
    )
    .await;
    let t = text(&out);
    assert!(t.contains("Received Final Move Response (Success)"), "{t}");
    let received: Vec<_> = std::fs::read_dir(recv.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(received.len(), 3, "{t}");
    for f in &received {
        let h = pacsgrid_dimse::client::parse_part10_header(&std::fs::read(f).unwrap()).unwrap();
        assert_eq!(
            h.transfer_syntax,
            IMPLICIT,
            "{} was not converted",
            f.display()
        );
    }

    let out = dcmtk(
        "movescu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-aem",
            "NOBODY",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=1.2.826.0.1.6",
            "127.0.0.1",
            &node.port(),
        ],
    )
    .await;
    let t = text(&out);
    assert!(t.contains("MoveDestinationUnknown"), "{t}");
    let _ = scp.kill().await;

    // the destination is down now: every sub-operation fails, the node reports it
    let out = dcmtk(
        "movescu",
        &[
            "-v",
            "-aec",
            "PACSGRID",
            "-aem",
            "DEST",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=1.2.826.0.1.6",
            "127.0.0.1",
            &node.port(),
        ],
    )
    .await;
    let t = text(&out);
    assert!(
        t.contains("Final Move Response (Refused") || t.contains("Failed"),
        "{t}"
    );

    // the query model still works after all that
    let q = Query::parse(
        QueryModel::StudyRoot,
        Level::Study,
        Vec::<(pacsgrid_dicom::Tag, &str)>::new(),
    )
    .unwrap();
    assert_eq!(node.archive.find(&q, 10, 0).await.unwrap().len(), 1);
    assert!(node.metrics.retrieves.load(Ordering::Relaxed) >= 3);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_scu_sends_local_files_to_storescp() {
    if !have_dcmtk() {
        return;
    }
    use pacsgrid_dimse::client::{contexts_for, read_part10_header};
    use pacsgrid_dimse::{RemoteAe, StoreScu};
    init_logs();
    let port = free_port();
    let recv = tempfile::tempdir().unwrap();
    let mut scp = storescp("DEST", port, recv.path(), &[]).await;
    let files = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for i in 1..=2 {
        let mut s = Spec::ct(i, "1.2.826.0.1.7", "1.2.826.0.1.7.1");
        s.ts = if i == 1 { EXPLICIT } else { IMPLICIT };
        paths.push(write_instance(files.path(), &s));
    }
    let mut headers = Vec::new();
    for p in &paths {
        headers.push(read_part10_header(p).await.unwrap());
    }
    let contexts = contexts_for(
        headers
            .iter()
            .map(|h| (h.sop_class_uid.as_str(), h.transfer_syntax.as_str())),
    );
    let remote = RemoteAe {
        ae_title: "DEST".into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    };
    let mut scu = StoreScu::connect(&remote, "IMPORTER", 65536, contexts)
        .await
        .unwrap();
    for p in &paths {
        let rsp = scu.send_file(p).await.unwrap();
        assert_eq!(rsp.status, 0, "{rsp:?}");
    }
    scu.release().await.unwrap();
    let _ = scp.kill().await;
    let mut got: Vec<_> = std::fs::read_dir(recv.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    got.sort();
    assert_eq!(got.len(), 2);
    // storescp writes what it received after its own meta group: the data sets must match
    for p in &paths {
        let src = std::fs::read(p).unwrap();
        let h = pacsgrid_dimse::client::parse_part10_header(&src).unwrap();
        let ds = &src[h.dataset_offset as usize..];
        assert!(
            got.iter().any(|g| std::fs::read(g).unwrap().ends_with(ds)),
            "{} not received intact",
            p.display()
        );
    }
}
