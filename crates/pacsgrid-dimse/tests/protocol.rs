//! End to end with our own association and message code as the peer: what dcmtk cannot
//! be made to send (cancels mid-answer, wrong contexts, malformed and oversize PDUs).

mod common;

use common::*;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use pacsgrid_dicom::{status, uid};
use pacsgrid_dimse::association::{Association, ProposedContext, RequestParams};
use pacsgrid_dimse::client::{contexts_for, read_part10_header};
use pacsgrid_dimse::message::{field, Command, Event};
use pacsgrid_dimse::{RemoteAe, StoreScu};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn params(contexts: Vec<ProposedContext>) -> RequestParams {
    RequestParams {
        calling_ae: "TESTSCU".into(),
        called_ae: "PACSGRID".into(),
        contexts,
        roles: vec![],
        max_pdu_length: 16384,
        timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
    }
}

fn ctx(abs: &str, ts: &[&str]) -> ProposedContext {
    ProposedContext {
        abstract_syntax: abs.into(),
        transfer_syntaxes: ts.iter().map(|s| s.to_string()).collect(),
    }
}

async fn store_files(node: &Node, specs: &[Spec]) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for s in specs {
        paths.push(write_instance(dir.path(), s));
    }
    let mut pairs = Vec::new();
    for p in &paths {
        let h = read_part10_header(p).await.unwrap();
        pairs.push((h.sop_class_uid, h.transfer_syntax));
    }
    let remote = RemoteAe {
        ae_title: "PACSGRID".into(),
        host: "127.0.0.1".into(),
        port: node.addr.port(),
        tls: None,
    };
    let mut scu = StoreScu::connect(&remote, "TESTSCU", 65536, contexts_for(pairs))
        .await
        .unwrap();
    for p in &paths {
        let rsp = scu.send_file(p).await.unwrap();
        assert_eq!(rsp.status, status::SUCCESS, "{rsp:?}");
    }
    scu.release().await.unwrap();
}

/// Our own C-STORE SCU against our SCP: stored, found, and a wrong-context store refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_scu_round_trip_and_context_mismatch() {
    let node = Node::start(|_| {}).await;
    let specs: Vec<Spec> = (1..=2)
        .map(|i| Spec::ct(i, "1.2.826.0.2.1", "1.2.826.0.2.1.1"))
        .collect();
    store_files(&node, &specs).await;
    assert!(node
        .archive
        .instance(&specs[0].sop_uid)
        .await
        .unwrap()
        .is_some());

    let remote = RemoteAe {
        ae_title: "PACSGRID".into(),
        host: "127.0.0.1".into(),
        port: node.addr.port(),
        tls: None,
    };
    assert_eq!(
        pacsgrid_dimse::client::echo(&remote, "TESTSCU")
            .await
            .unwrap(),
        status::SUCCESS
    );

    // an MR object announced on a CT context: refused, association goes on
    let mut a = Association::request(&node.addr.to_string(), &params(vec![ctx(CT, &[EXPLICIT])]))
        .await
        .unwrap();
    let cmd = Command::builder(field::C_STORE_RQ)
        .u16(tags::MESSAGE_ID, 9)
        .uid(tags::AFFECTED_SOP_CLASS_UID, MR)
        .uid(tags::AFFECTED_SOP_INSTANCE_UID, "1.2.826.0.2.9")
        .u16(tags::PRIORITY, 0)
        .with_dataset(true)
        .build();
    a.send_command(1, &cmd).await.unwrap();
    a.send_dataset(1, &[0u8; 1000]).await.unwrap();
    match a.next_event().await.unwrap() {
        Event::Command { command, .. } => {
            assert_eq!(command.field(), Some(field::C_STORE_RSP));
            assert_eq!(
                command.status(),
                Some(status::ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS)
            );
            assert!(command.string(tags::ERROR_COMMENT).is_some());
        }
        other => panic!("{other:?}"),
    }
    // truncated data set with a valid command: refused by the archive, nothing stored
    let cmd = Command::builder(field::C_STORE_RQ)
        .u16(tags::MESSAGE_ID, 10)
        .uid(tags::AFFECTED_SOP_CLASS_UID, CT)
        .uid(tags::AFFECTED_SOP_INSTANCE_UID, "1.2.826.0.2.10")
        .u16(tags::PRIORITY, 0)
        .with_dataset(true)
        .build();
    a.send_command(1, &cmd).await.unwrap();
    a.send_dataset(1, &[0x08, 0x00, 0x16, 0x00, b'U', b'I', 200, 0, b'1'])
        .await
        .unwrap();
    match a.next_event().await.unwrap() {
        Event::Command { command, .. } => {
            let st = command.status().unwrap();
            assert!(
                status::category(st) == status::Category::Failure,
                "{st:#06x}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(node
        .archive
        .instance("1.2.826.0.2.10")
        .await
        .unwrap()
        .is_none());
    a.release().await.unwrap();
    assert_eq!(node.metrics.snapshot().stores_failed, 2);
    node.stop().await;
}

fn identifier(level: &str, keys: &[(dicom_core::Tag, VR, &str)]) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(level),
    ));
    for (t, vr, v) in keys {
        obj.put(DataElement::new(*t, *vr, PrimitiveValue::from(*v)));
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts(
        &mut out,
        &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_is_cancelled_between_answers() {
    let node = Node::start(|_| {}).await;
    let specs: Vec<Spec> = (1..=1000)
        .map(|i| Spec::ct(i, "1.2.826.0.2.2", "1.2.826.0.2.2.1"))
        .collect();
    store_files(&node, &specs).await;
    let mut a = Association::request(
        &node.addr.to_string(),
        &params(vec![ctx(uid::STUDY_ROOT_FIND, &[IMPLICIT])]),
    )
    .await
    .unwrap();
    let rq = Command::builder(field::C_FIND_RQ)
        .u16(tags::MESSAGE_ID, 5)
        .uid(tags::AFFECTED_SOP_CLASS_UID, uid::STUDY_ROOT_FIND)
        .u16(tags::PRIORITY, 0)
        .with_dataset(true)
        .build();
    a.send_command(1, &rq).await.unwrap();
    a.send_dataset(
        1,
        &identifier(
            "IMAGE",
            &[
                (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.2.2"),
                (tags::SERIES_INSTANCE_UID, VR::UI, ""),
                (tags::SOP_INSTANCE_UID, VR::UI, ""),
            ],
        ),
    )
    .await
    .unwrap();
    let cancel = Command::builder(field::C_CANCEL_RQ)
        .u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, 5)
        .build();
    a.send_command(1, &cancel).await.unwrap();
    let mut pending = 0;
    let final_status = loop {
        match a.next_event().await.unwrap() {
            Event::Command { command, .. } => {
                let st = command.status().unwrap();
                if st == status::PENDING {
                    pending += 1;
                    continue;
                }
                break st;
            }
            Event::Data(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(final_status, status::CANCEL);
    assert!(
        pending < 1000,
        "cancel was not honoured ({pending} answers)"
    );
    a.release().await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_needs_the_scp_role_and_reports_failures() {
    let node = Node::start(|_| {}).await;
    let specs: Vec<Spec> = (1..=2)
        .map(|i| Spec::ct(i, "1.2.826.0.2.3", "1.2.826.0.2.3.1"))
        .collect();
    store_files(&node, &specs).await;
    // CT storage offered, but without role selection: nothing can be sent back
    let mut a = Association::request(
        &node.addr.to_string(),
        &params(vec![
            ctx(uid::STUDY_ROOT_GET, &[IMPLICIT]),
            ctx(CT, &[EXPLICIT]),
        ]),
    )
    .await
    .unwrap();
    let rq = Command::builder(field::C_GET_RQ)
        .u16(tags::MESSAGE_ID, 3)
        .uid(tags::AFFECTED_SOP_CLASS_UID, uid::STUDY_ROOT_GET)
        .u16(tags::PRIORITY, 0)
        .with_dataset(true)
        .build();
    a.send_command(1, &rq).await.unwrap();
    a.send_dataset(
        1,
        &identifier(
            "STUDY",
            &[(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.2.3")],
        ),
    )
    .await
    .unwrap();
    let (st, has_ds, pc) = loop {
        match a.next_event().await.unwrap() {
            Event::Command { command, pc_id } if command.status() != Some(status::PENDING) => {
                assert_eq!(command.u16(tags::NUMBER_OF_FAILED_SUBOPERATIONS), Some(2));
                break (command.status().unwrap(), command.has_dataset(), pc_id);
            }
            Event::Command { .. } => continue,
            other => panic!("{other:?}"),
        }
    };
    // nothing could be sent: a refusal, not a warning
    assert_eq!(st, status::REFUSED_OUT_OF_RESOURCES_SUBOPS);
    assert!(has_ds, "FailedSOPInstanceUIDList expected");
    let raw = a.read_small_dataset(pc, 1 << 16).await.unwrap();
    let obj = InMemDicomObject::read_dataset_with_ts(
        &raw[..],
        &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    let list = obj
        .element(tags::FAILED_SOP_INSTANCE_UID_LIST)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        list.contains(&specs[0].sop_uid) && list.contains(&specs[1].sop_uid),
        "{list}"
    );
    a.release().await.unwrap();

    // with the SCP role, and a cancel after the first sub-operation
    let mut p = params(vec![
        ctx(uid::STUDY_ROOT_GET, &[IMPLICIT]),
        ctx(CT, &[EXPLICIT]),
    ]);
    p.roles = vec![(CT.into(), false, true)];
    let mut a = Association::request(&node.addr.to_string(), &p)
        .await
        .unwrap();
    assert!(a
        .contexts()
        .iter()
        .any(|c| c.abstract_syntax == CT && c.requestor_scp));
    a.send_command(1, &rq).await.unwrap();
    a.send_dataset(
        1,
        &identifier(
            "STUDY",
            &[(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.2.3")],
        ),
    )
    .await
    .unwrap();
    let mut stores = 0;
    let final_cmd = loop {
        match a.next_event().await.unwrap() {
            Event::Command { command, pc_id } if command.field() == Some(field::C_STORE_RQ) => {
                assert_eq!(pc_id, 3);
                a.skip_dataset(pc_id).await.unwrap();
                stores += 1;
                if stores == 1 {
                    // cancel while the sub-operation is outstanding
                    let cancel = Command::builder(field::C_CANCEL_RQ)
                        .u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, 3)
                        .build();
                    a.send_command(1, &cancel).await.unwrap();
                }
                let rsp =
                    Command::response_to(&command, field::C_STORE_RSP, status::SUCCESS).build();
                a.send_command(pc_id, &rsp).await.unwrap();
            }
            Event::Command { command, .. } if command.status() == Some(status::PENDING) => continue,
            Event::Command { command, .. } => break command,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(final_cmd.status(), Some(status::CANCEL));
    assert_eq!(stores, 1);
    assert_eq!(
        final_cmd.u16(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS),
        Some(1)
    );
    assert_eq!(
        final_cmd.u16(tags::NUMBER_OF_REMAINING_SUBOPERATIONS),
        Some(1)
    );
    a.release().await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pdus_abort_only_their_association() {
    let node = Node::start(|c| c.max_pdu_length = 16384).await;
    // an association that stays open meanwhile
    let mut good = Association::request(
        &node.addr.to_string(),
        &params(vec![ctx(uid::VERIFICATION, &[IMPLICIT])]),
    )
    .await
    .unwrap();

    // oversize P-DATA after a good negotiation (we announced 16 KiB)
    let mut raw = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let rq = dicom_ul::pdu::AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "RAW".into(),
        called_ae_title: "PACSGRID".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![dicom_ul::pdu::PresentationContextProposed {
            id: 1,
            abstract_syntax: uid::VERIFICATION.into(),
            transfer_syntaxes: vec![IMPLICIT.into()],
        }],
        user_variables: vec![dicom_ul::pdu::UserVariableItem::MaxLength(16384)],
    };
    let mut bytes = Vec::new();
    dicom_ul::pdu::write_pdu(&mut bytes, &dicom_ul::pdu::Pdu::AssociationRQ(rq)).unwrap();
    raw.write_all(&bytes).await.unwrap();
    let mut head = [0u8; 6];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 2, "A-ASSOCIATE-AC expected");
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    let mut ac = vec![0u8; len];
    raw.read_exact(&mut ac).await.unwrap();
    let big = 100_000u32;
    let mut pdu = vec![4, 0];
    pdu.extend_from_slice(&(big + 6).to_be_bytes());
    pdu.extend_from_slice(&(big + 2).to_be_bytes());
    pdu.extend_from_slice(&[1, 3]);
    raw.write_all(&pdu).await.unwrap();
    let _ = raw.write_all(&vec![0u8; big as usize]).await;
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf).await;
    assert_eq!(buf.first(), Some(&7), "A-ABORT expected, got {buf:?}");

    let mut raw = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    // garbage PDU type 0x09
    raw.write_all(&[9, 0, 0, 0, 0, 2, 1, 2]).await.unwrap();
    let mut buf = Vec::new();
    raw.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf.first(), Some(&7), "A-ABORT expected, got {buf:?}");

    let mut raw = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    // A-ASSOCIATE-RQ claiming 3 GB
    raw.write_all(&[1, 0, 0xC0, 0, 0, 0]).await.unwrap();
    let mut buf = Vec::new();
    raw.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf.first(), Some(&7));

    // the open association still works
    let echo = Command::builder(field::C_ECHO_RQ)
        .u16(tags::MESSAGE_ID, 1)
        .uid(tags::AFFECTED_SOP_CLASS_UID, uid::VERIFICATION)
        .build();
    good.send_command(1, &echo).await.unwrap();
    match good.next_event().await.unwrap() {
        Event::Command { command, .. } => assert_eq!(command.status(), Some(status::SUCCESS)),
        other => panic!("{other:?}"),
    }
    good.release().await.unwrap();
    assert!(node.metrics.snapshot().associations_rejected >= 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_associations_are_aborted() {
    let node = Node::start(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut a = Association::request(
        &node.addr.to_string(),
        &params(vec![ctx(uid::VERIFICATION, &[IMPLICIT])]),
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), a.next_event())
        .await
        .unwrap();
    assert!(matches!(ev, Ok(Event::Aborted)), "{ev:?}");
    assert_eq!(node.metrics.snapshot().associations_aborted, 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_store_finish_and_aborts_idle_ones() {
    let node = Node::start(|_| {}).await;
    let addr = node.addr.to_string();
    let archive = std::sync::Arc::clone(&node.archive);
    let mut idle = Association::request(&addr, &params(vec![ctx(uid::VERIFICATION, &[IMPLICIT])]))
        .await
        .unwrap();
    let mut busy = Association::request(&addr, &params(vec![ctx(CT, &[EXPLICIT])]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::ct(1, "1.2.826.0.2.4", "1.2.826.0.2.4.1");
    let path = write_instance(dir.path(), &spec);
    let file = std::fs::read(&path).unwrap();
    let h = pacsgrid_dimse::client::parse_part10_header(&file).unwrap();
    let ds = &file[h.dataset_offset as usize..];
    let cmd = Command::builder(field::C_STORE_RQ)
        .u16(tags::MESSAGE_ID, 1)
        .uid(tags::AFFECTED_SOP_CLASS_UID, CT)
        .uid(tags::AFFECTED_SOP_INSTANCE_UID, &spec.sop_uid)
        .u16(tags::PRIORITY, 0)
        .with_dataset(true)
        .build();
    busy.send_command(1, &cmd).await.unwrap();
    // half the data set, then the node is asked to stop
    let (first, rest) = ds.split_at(ds.len() / 2);
    busy.send_pdv(
        1,
        false,
        false,
        &first[..first.len().min(busy.max_fragment())],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(node.stop());
    // the idle association is aborted at once
    let ev = tokio::time::timeout(Duration::from_secs(1), idle.next_event())
        .await
        .unwrap();
    assert!(matches!(ev, Ok(Event::Aborted) | Err(_)), "{ev:?}");
    // the running store may complete within the grace period
    let sent = first.len().min(busy.max_fragment());
    let mut remaining = first[sent..].to_vec();
    remaining.extend_from_slice(rest);
    busy.send_dataset(1, &remaining).await.unwrap();
    match busy.next_event().await.unwrap() {
        Event::Command { command, .. } => assert_eq!(command.status(), Some(status::SUCCESS)),
        other => panic!("{other:?}"),
    }
    assert!(archive.instance(&spec.sop_uid).await.unwrap().is_some());
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}
