//! Renders an [`AuditEvent`] as a DICOM audit message (PS3.15 A.5.1 schema; element and
//! attribute names exactly as there). `schema/audit-message.rng` in this crate is that schema
//! and every event kind's output is validated against it.

use crate::event::{AuditEvent, Code, EventKind, Participant, ParticipantObject};
use base64::Engine;
use chrono::SecondsFormat;
use std::fmt::Write;

/// The message as one line of XML (no declaration: it travels inside a JSON line or a syslog
/// message, both UTF-8).
pub fn render(ev: &AuditEvent) -> String {
    let mut x = String::with_capacity(1024);
    x.push_str("<AuditMessage>");

    x.push_str("<EventIdentification");
    attr(&mut x, "EventActionCode", ev.action.code());
    attr(
        &mut x,
        "EventDateTime",
        &ev.time.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    attr(
        &mut x,
        "EventOutcomeIndicator",
        &ev.outcome.value().to_string(),
    );
    x.push('>');
    coded(&mut x, "EventID", ev.kind.event_id());
    if let Some(t) = ev.kind.event_type() {
        coded(&mut x, "EventTypeCode", t);
    }
    if let Some(d) = &ev.outcome_description {
        x.push_str("<EventOutcomeDescription>");
        text(&mut x, d);
        x.push_str("</EventOutcomeDescription>");
    }
    x.push_str("</EventIdentification>");

    // The schema needs at least one participant; the node itself always is one.
    let fallback = [ev.source.participant()];
    let participants = if ev.participants.is_empty() {
        &fallback[..]
    } else {
        &ev.participants[..]
    };
    for p in participants {
        participant(&mut x, p);
    }

    x.push_str("<AuditSourceIdentification");
    if !ev.source.site.is_empty() {
        attr(&mut x, "AuditEnterpriseSiteID", &ev.source.site);
    }
    attr(&mut x, "AuditSourceID", &ev.source.source_id);
    // 4: application server process.
    x.push_str("><AuditSourceTypeCode csd-code=\"4\"/></AuditSourceIdentification>");

    for o in &ev.objects {
        object(&mut x, ev.kind, o);
    }
    x.push_str("</AuditMessage>");
    x
}

fn participant(x: &mut String, p: &Participant) {
    x.push_str("<ActiveParticipant");
    attr(x, "UserID", &p.user_id);
    if let Some(a) = &p.alternative_user_id {
        attr(x, "AlternativeUserID", a);
    }
    if let Some(n) = &p.user_name {
        attr(x, "UserName", n);
    }
    attr(
        x,
        "UserIsRequestor",
        if p.is_requestor { "true" } else { "false" },
    );
    if let Some(h) = &p.host {
        attr(x, "NetworkAccessPointID", h);
        attr(
            x,
            "NetworkAccessPointTypeCode",
            if p.host_is_ip() { "2" } else { "1" },
        );
    }
    if p.roles.is_empty() {
        x.push_str("/>");
        return;
    }
    x.push('>');
    for r in &p.roles {
        coded(x, "RoleIDCode", r.code());
    }
    x.push_str("</ActiveParticipant>");
}

const PATIENT_NUMBER: Code = Code {
    code: "2",
    system: "RFC-3881",
    meaning: "Patient Number",
};
const URI: Code = Code {
    code: "12",
    system: "RFC-3881",
    meaning: "URI",
};
const STUDY_UID: Code = Code {
    code: "110180",
    system: "DCM",
    meaning: "Study Instance UID",
};
const SOP_CLASS_UID: Code = Code {
    code: "110181",
    system: "DCM",
    meaning: "SOP Class UID",
};

fn object(x: &mut String, kind: EventKind, o: &ParticipantObject) {
    x.push_str("<ParticipantObjectIdentification");
    match o {
        ParticipantObject::Patient(p) => {
            attr(
                x,
                "ParticipantObjectID",
                &patient_cx(&p.id, p.issuer.as_deref()),
            );
            // Person, Patient.
            attr(x, "ParticipantObjectTypeCode", "1");
            attr(x, "ParticipantObjectTypeCodeRole", "1");
            x.push('>');
            coded(x, "ParticipantObjectIDTypeCode", PATIENT_NUMBER);
            name(x, p.name.as_deref().unwrap_or(&p.id));
        }
        ParticipantObject::Study(s) => {
            attr(x, "ParticipantObjectID", &s.uid);
            // System object, Report: how PS3.15 A.5.3 identifies studies.
            attr(x, "ParticipantObjectTypeCode", "2");
            attr(x, "ParticipantObjectTypeCodeRole", "3");
            x.push('>');
            coded(x, "ParticipantObjectIDTypeCode", STUDY_UID);
            name(x, &s.uid);
            if s.accession.is_some() || !s.sop_classes.is_empty() {
                x.push_str("<ParticipantObjectDescription>");
                if let Some(a) = &s.accession {
                    x.push_str("<Accession");
                    attr(x, "Number", a);
                    x.push_str("/>");
                }
                for (uid, n) in &s.sop_classes {
                    x.push_str("<SOPClass");
                    attr(x, "UID", uid);
                    attr(x, "NumberOfInstances", &n.to_string());
                    x.push_str("/>");
                }
                x.push_str("</ParticipantObjectDescription>");
            }
        }
        ParticipantObject::Query {
            sop_class_uid,
            query,
            transfer_syntax,
        } => {
            let b64 = base64::engine::general_purpose::STANDARD;
            attr(x, "ParticipantObjectID", sop_class_uid);
            attr(x, "ParticipantObjectTypeCode", "2");
            attr(x, "ParticipantObjectTypeCodeRole", "3");
            x.push('>');
            coded(x, "ParticipantObjectIDTypeCode", SOP_CLASS_UID);
            x.push_str("<ParticipantObjectQuery>");
            x.push_str(&b64.encode(query));
            x.push_str("</ParticipantObjectQuery>");
            if let Some(ts) = transfer_syntax {
                x.push_str("<ParticipantObjectDetail type=\"TransferSyntax\"");
                attr(x, "value", &b64.encode(ts.as_bytes()));
                x.push_str("/>");
            }
        }
        ParticipantObject::Uri(uri) => {
            let role = match kind {
                EventKind::Export => "16", // data destination
                EventKind::Import => "25", // data source
                _ => "13",                 // security resource
            };
            attr(x, "ParticipantObjectID", uri);
            attr(x, "ParticipantObjectTypeCode", "2");
            attr(x, "ParticipantObjectTypeCodeRole", role);
            x.push('>');
            coded(x, "ParticipantObjectIDTypeCode", URI);
            // PS3.15 A.5.3.1 names the audit log object this way.
            match kind {
                EventKind::AuditLogUsed => name(x, "Security Audit Log"),
                _ => name(x, uri),
            }
        }
    }
    x.push_str("</ParticipantObjectIdentification>");
}

/// PatientID with its issuer in HL7 CX form (`ID^^^ISSUER`), as ATNA identifies patients.
fn patient_cx(id: &str, issuer: Option<&str>) -> String {
    // HL7 v2 escapes keep a '^' inside an ID from reading as a component separator.
    let esc = |s: &str| {
        s.replace('\\', "\\E\\")
            .replace('^', "\\S\\")
            .replace('&', "\\T\\")
    };
    match issuer {
        Some(i) if !i.is_empty() => format!("{}^^^{}", esc(id), esc(i)),
        _ => esc(id),
    }
}

fn name(x: &mut String, n: &str) {
    x.push_str("<ParticipantObjectName>");
    text(x, n);
    x.push_str("</ParticipantObjectName>");
}

fn coded(x: &mut String, element: &str, c: Code) {
    let _ = write!(x, "<{element}");
    attr(x, "csd-code", c.code);
    attr(x, "codeSystemName", c.system);
    attr(x, "displayName", c.meaning);
    attr(x, "originalText", c.meaning);
    x.push_str("/>");
}

fn attr(x: &mut String, name: &str, value: &str) {
    let _ = write!(x, " {name}=\"");
    escape(x, value, true);
    x.push('"');
}

fn text(x: &mut String, value: &str) {
    escape(x, value, false);
}

/// Escapes markup; characters XML 1.0 cannot carry at all (most C0 controls) become U+FFFD so
/// that hostile input (an AE title with a NUL) still yields a well-formed message.
fn escape(x: &mut String, s: &str, in_attr: bool) {
    for c in s.chars() {
        match c {
            '&' => x.push_str("&amp;"),
            '<' => x.push_str("&lt;"),
            '>' => x.push_str("&gt;"),
            '"' if in_attr => x.push_str("&quot;"),
            '\'' if in_attr => x.push_str("&apos;"),
            // Attribute value normalization would turn these into spaces; keep them.
            '\t' | '\n' | '\r' if in_attr => {
                let _ = write!(x, "&#{};", c as u32);
            }
            '\t' | '\n' | '\r' => x.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => x.push('\u{FFFD}'),
            c => x.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditSource, StudyRef};

    fn src() -> AuditSource {
        AuditSource {
            site: "site-a".into(),
            source_id: "node-1".into(),
            ae_title: Some("PACSGRID".into()),
            host: Some("localhost".into()),
        }
    }

    #[test]
    fn escapes_markup_and_controls() {
        let ev = AuditEvent::instances_stored(
            &src(),
            Participant::ae("A<&>\"'\u{0}B", Some("127.0.0.1")),
        )
        .patient("P^1", Some("H&H"));
        let x = render(&ev);
        assert!(
            x.contains("UserID=\"A&lt;&amp;&gt;&quot;&apos;\u{FFFD}B\""),
            "{x}"
        );
        assert!(
            x.contains("ParticipantObjectID=\"P\\S\\1^^^H\\T\\H\""),
            "{x}"
        );
        assert!(!x.contains('\u{0}'));
    }

    #[test]
    fn element_order_follows_the_schema() {
        let ev = AuditEvent::instances_stored(&src(), Participant::ae("MOD", None))
            .patient("P1", None)
            .study(StudyRef::new("1.2.3").sop_class("1.2.840.10008.5.1.4.1.1.2", 2));
        let x = render(&ev);
        let pos = |s: &str| x.find(s).unwrap_or_else(|| panic!("{s} missing in {x}"));
        assert!(pos("<EventIdentification") < pos("<ActiveParticipant"));
        assert!(pos("<ActiveParticipant") < pos("<AuditSourceIdentification"));
        assert!(pos("<AuditSourceIdentification") < pos("<ParticipantObjectIdentification"));
        assert!(x.contains("<SOPClass UID=\"1.2.840.10008.5.1.4.1.1.2\" NumberOfInstances=\"2\"/>"));
        assert!(x.contains("EventOutcomeIndicator=\"0\""));
    }

    #[test]
    fn query_is_base64() {
        let ev = AuditEvent::query(
            &src(),
            Participant::user("alice", None),
            "1.2.840.10008.5.1.4.1.2.2.1",
            b"<x>",
        )
        .query_transfer_syntax("1.2.840.10008.1.2.1");
        let x = render(&ev);
        assert!(
            x.contains("<ParticipantObjectQuery>PHg+</ParticipantObjectQuery>"),
            "{x}"
        );
        assert!(x.contains("type=\"TransferSyntax\""));
    }
}
