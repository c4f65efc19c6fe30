//! Writes one audit message of every event kind, and a small log holding them, to
//! tests/data/audit-samples/, where tests/test_audit_schema.py validates the messages against
//! the PS3.15 schema and drives `pacsgrid audit verify` and `search` on the log. The output is
//! deterministic (fixed times), so an unchanged model leaves the committed files unchanged.

use crate::event::*;
use crate::log::AuditLog;
use chrono::{TimeZone, Utc};
use std::path::PathBuf;

fn samples() -> Vec<AuditEvent> {
    let src = AuditSource {
        site: "site-a".into(),
        source_id: "pacsgrid@node-1".into(),
        ae_title: Some("PACSGRID".into()),
        host: Some("10.1.2.3".into()),
    };
    let modality = Participant::ae("CT_ROOM_1", Some("10.1.2.50"));
    let alice = Participant::user("alice", Some("192.0.2.7")).named("Alice Example");
    // Hostile input must still give a valid message.
    let odd = Participant::ae("A<&>\"'\u{1}Z", Some("odd.example"));
    let ct = "1.2.840.10008.5.1.4.1.1.2";
    let mr = "1.2.840.10008.5.1.4.1.1.4";
    let study = || {
        StudyRef::new("1.2.826.0.1.3680043.8.498.1")
            .accession("ACC-1")
            .sop_class(ct, 120)
            .sop_class(mr, 2)
    };
    let at = |m: u32| Utc.with_ymd_and_hms(2025, 3, 1, 8, m, 0).unwrap();
    vec![
        AuditEvent::application_start(&src, Some(Participant::user("root", None))).at(at(0)),
        AuditEvent::instances_stored(&src, modality.clone())
            .patient("PAT-1", Some("HOSP-A"))
            .study(study())
            .at(at(1)),
        AuditEvent::query(
            &src,
            Participant::ae("WORKSTATION", Some("10.1.2.60")),
            "1.2.840.10008.5.1.4.1.2.2.1",
            b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY \x00<x>",
        )
        .query_transfer_syntax("1.2.840.10008.1.2.1")
        .patient("PAT-1", None)
        .at(at(2)),
        AuditEvent::instances_transferred(
            &src,
            Participant::ae("WORKSTATION", Some("10.1.2.60")),
            Some(Participant::ae("STORESCP", Some("10.1.2.61"))),
        )
        .patient("PAT-1", Some("HOSP-A"))
        .study(study())
        .at(at(3)),
        AuditEvent::instances_accessed(&src, alice.clone(), Action::Read)
            .patient("PAT-1", Some("HOSP-A"))
            .study(study())
            .at(at(4)),
        AuditEvent::export(&src, alice.clone(), "file:///media/dvd1")
            .patient("PAT-1", Some("HOSP-A"))
            .study(study())
            .at(at(5)),
        AuditEvent::import(&src, Participant::user("root", None), "file:///import/dir")
            .patient("P^2", Some("HOSP-B"))
            .study(StudyRef::new("1.2.3.4").sop_class(ct, 1))
            .at(at(6)),
        AuditEvent::study_deleted(&src, alice.clone())
            .patient("PAT-1", Some("HOSP-A"))
            .study(study())
            .at(at(7)),
        AuditEvent::login(&src, alice.clone()).at(at(8)),
        AuditEvent::logout(&src, alice.clone()).at(at(9)),
        AuditEvent::login(&src, Participant::user("mallory", Some("203.0.113.9")))
            .outcome(Outcome::MinorFailure, Some("expired token"))
            .at(at(10)),
        AuditEvent::security_alert(
            &src,
            AlertKind::UseOfRestrictedFunction,
            odd,
            "C-FIND refused: AE has no find right",
        )
        .at(at(11)),
        AuditEvent::security_alert(
            &src,
            AlertKind::NodeAuthentication,
            Participant::ae("UNKNOWN", Some("198.51.100.1")),
            "TLS: certificate not trusted",
        )
        .object(ParticipantObject::Uri("dicom-tls://198.51.100.1".into()))
        .at(at(12)),
        AuditEvent::configuration_change(&src, Participant::user("admin", None), "pacsgrid.toml")
            .at(at(13)),
        AuditEvent::application_stop(&src, None)
            .outcome(Outcome::Success, Some("signal"))
            .at(at(14)),
        AuditEvent::audit_log_used(
            &src,
            alice.clone(),
            "file:///var/lib/pacsgrid/audit/audit.log?patient=PAT-1",
        )
        .at(at(15)),
    ]
}

#[tokio::test]
async fn write_samples_of_every_kind() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/audit-samples");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::remove_file(p).unwrap();
        }
    }
    let evs = samples();
    let mut seen = std::collections::BTreeSet::new();
    for (i, ev) in evs.iter().enumerate() {
        seen.insert(ev.kind.name());
        let name = format!("{:02}-{}.xml", i + 1, ev.kind.name());
        std::fs::write(dir.join(name), crate::xml::render(ev)).unwrap();
    }
    assert_eq!(seen.len(), EventKind::NAMES.len(), "a kind has no sample");
    let log = AuditLog::open(&dir).unwrap();
    for ev in evs {
        log.append(ev).await.unwrap();
    }
}
