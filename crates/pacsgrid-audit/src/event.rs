//! The audit event model, close to DICOM PS3.15 A.5 and IHE ATNA: what happened, who took
//! part, which node reported it and which patient data it touched.
//!
//! Callers build an event in one line with a constructor per kind
//! (`AuditEvent::instances_stored(&source, sender).patient(..).study(..)`); the reporting node
//! is added as a participant by the constructor so that no caller forgets it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A coded value (code, coding scheme, meaning) as PS3.15 uses them for event IDs and roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The code value, e.g. "110104".
    pub code: &'static str,
    /// The coding scheme designator, e.g. "DCM".
    pub system: &'static str,
    /// The code meaning.
    pub meaning: &'static str,
}

const fn dcm(code: &'static str, meaning: &'static str) -> Code {
    Code {
        code,
        system: "DCM",
        meaning,
    }
}

/// Which security alert a `SecurityAlert` event reports (PS3.16 CID 403 event type codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A node or user failed to authenticate (bad certificate, bad token).
    NodeAuthentication,
    /// A request was refused because its requester lacks the right (an AE without find
    /// rights, a role without access).
    UseOfRestrictedFunction,
    /// Network settings changed.
    NetworkConfiguration,
    /// Security settings changed (users, keys, rights).
    SecurityConfiguration,
    /// Audit recording started.
    AuditRecordingStarted,
    /// Audit recording stopped.
    AuditRecordingStopped,
}

impl AlertKind {
    fn code(self) -> Code {
        match self {
            AlertKind::NodeAuthentication => dcm("110126", "Node Authentication"),
            AlertKind::UseOfRestrictedFunction => dcm("110132", "Use of Restricted Function"),
            AlertKind::NetworkConfiguration => dcm("110128", "Network Configuration"),
            AlertKind::SecurityConfiguration => dcm("110129", "Security Configuration"),
            AlertKind::AuditRecordingStarted => dcm("110134", "Audit Recording Started"),
            AlertKind::AuditRecordingStopped => dcm("110133", "Audit Recording Stopped"),
        }
    }
}

/// The kind of event, which fixes its EventID, EventTypeCode and stable short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The node started (Application Activity, Application Start).
    ApplicationStart,
    /// The node stopped (Application Activity, Application Stop).
    ApplicationStop,
    /// Instances were received and stored (DICOM Instances Transferred, action C).
    InstancesStored,
    /// A query was answered (Query).
    Query,
    /// Instances were sent out: C-MOVE, C-GET, WADO (DICOM Instances Transferred, action R).
    InstancesTransferred,
    /// Instances were read, changed or deleted in place (DICOM Instances Accessed).
    InstancesAccessed,
    /// Data left the node's control, e.g. to media or another system (Export).
    Export,
    /// Data entered from outside the network services, e.g. a file import (Import).
    Import,
    /// A study was deleted (DICOM Study Deleted).
    StudyDeleted,
    /// A user logged in (User Authentication, Login).
    Login,
    /// A user logged out (User Authentication, Logout).
    Logout,
    /// A refusal or authentication failure (Security Alert).
    SecurityAlert(AlertKind),
    /// The node's configuration changed (Security Alert, Software Configuration).
    ConfigurationChange,
    /// Someone read the audit trail itself (Audit Log Used).
    AuditLogUsed,
}

impl EventKind {
    /// The stable short name written in the log's `event` field and used as syslog MSGID.
    /// Scripts rely on these: never rename one.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ApplicationStart => "application-start",
            EventKind::ApplicationStop => "application-stop",
            EventKind::InstancesStored => "instances-stored",
            EventKind::Query => "query",
            EventKind::InstancesTransferred => "instances-transferred",
            EventKind::InstancesAccessed => "instances-accessed",
            EventKind::Export => "export",
            EventKind::Import => "import",
            EventKind::StudyDeleted => "study-deleted",
            EventKind::Login => "login",
            EventKind::Logout => "logout",
            EventKind::SecurityAlert(_) => "security-alert",
            EventKind::ConfigurationChange => "configuration-change",
            EventKind::AuditLogUsed => "audit-log-used",
        }
    }

    /// Every stable short name, for validating a search filter.
    pub const NAMES: &'static [&'static str] = &[
        "application-start",
        "application-stop",
        "instances-stored",
        "query",
        "instances-transferred",
        "instances-accessed",
        "export",
        "import",
        "study-deleted",
        "login",
        "logout",
        "security-alert",
        "configuration-change",
        "audit-log-used",
    ];

    /// The EventID code (PS3.16 CID 400).
    pub fn event_id(self) -> Code {
        match self {
            EventKind::ApplicationStart | EventKind::ApplicationStop => {
                dcm("110100", "Application Activity")
            }
            EventKind::InstancesStored | EventKind::InstancesTransferred => {
                dcm("110104", "DICOM Instances Transferred")
            }
            EventKind::InstancesAccessed => dcm("110103", "DICOM Instances Accessed"),
            EventKind::StudyDeleted => dcm("110105", "DICOM Study Deleted"),
            EventKind::Export => dcm("110106", "Export"),
            EventKind::Import => dcm("110107", "Import"),
            EventKind::Query => dcm("110112", "Query"),
            EventKind::SecurityAlert(_) | EventKind::ConfigurationChange => {
                dcm("110113", "Security Alert")
            }
            EventKind::Login | EventKind::Logout => dcm("110114", "User Authentication"),
            EventKind::AuditLogUsed => dcm("110101", "Audit Log Used"),
        }
    }

    /// The EventTypeCode, where the kind has one (PS3.16 CID 401, 403, 404).
    pub fn event_type(self) -> Option<Code> {
        match self {
            EventKind::ApplicationStart => Some(dcm("110120", "Application Start")),
            EventKind::ApplicationStop => Some(dcm("110121", "Application Stop")),
            EventKind::Login => Some(dcm("110122", "Login")),
            EventKind::Logout => Some(dcm("110123", "Logout")),
            EventKind::SecurityAlert(a) => Some(a.code()),
            EventKind::ConfigurationChange => Some(dcm("110131", "Software Configuration")),
            _ => None,
        }
    }

    /// The action code PS3.15 A.5.3 prescribes for this kind.
    pub fn default_action(self) -> Action {
        match self {
            EventKind::InstancesStored | EventKind::Import => Action::Create,
            EventKind::InstancesTransferred
            | EventKind::InstancesAccessed
            | EventKind::Export
            | EventKind::AuditLogUsed => Action::Read,
            EventKind::StudyDeleted => Action::Delete,
            _ => Action::Execute,
        }
    }
}

/// EventActionCode: what was done to the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// C: created.
    Create,
    /// R: read, viewed, printed or sent.
    Read,
    /// U: updated.
    Update,
    /// D: deleted.
    Delete,
    /// E: executed (an application function such as a query or a login).
    Execute,
}

impl Action {
    /// The one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute => "E",
        }
    }
}

/// EventOutcomeIndicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: success.
    Success,
    /// 4: minor failure (the request was refused or partly failed; the node is fine).
    MinorFailure,
    /// 8: serious failure (the action failed).
    SeriousFailure,
    /// 12: major failure (the node became unavailable).
    MajorFailure,
}

impl Outcome {
    /// The numeric value written in the XML and the log.
    pub fn value(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::MinorFailure => 4,
            Outcome::SeriousFailure => 8,
            Outcome::MajorFailure => 12,
        }
    }
}

/// RoleIDCode of an active participant (PS3.16 CID 402).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The process that sent the data.
    Source,
    /// The process that received the data.
    Destination,
    /// The application the event is about (start, stop).
    Application,
    /// Who started the application.
    ApplicationLauncher,
}

impl Role {
    /// The code of this role.
    pub fn code(self) -> Code {
        match self {
            Role::Application => dcm("110150", "Application"),
            Role::ApplicationLauncher => dcm("110151", "Application Launcher"),
            Role::Destination => dcm("110152", "Destination Role ID"),
            Role::Source => dcm("110153", "Source Role ID"),
        }
    }
}

/// A person, program or AE that took part in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// UserID: a login name, an AE title, or a process id.
    pub user_id: String,
    /// AlternativeUserID, e.g. `AETITLES=STORESCU`.
    pub alternative_user_id: Option<String>,
    /// UserName, a human-readable name.
    pub user_name: Option<String>,
    /// Whether this participant asked for the event.
    pub is_requestor: bool,
    /// Host name or IP address the participant acted from.
    pub host: Option<String>,
    /// Roles in the event.
    pub roles: Vec<Role>,
}

impl Participant {
    /// A remote DICOM application entity, identified by its AE title and peer address.
    pub fn ae(ae_title: &str, host: Option<&str>) -> Participant {
        Participant {
            user_id: ae_title.to_string(),
            alternative_user_id: Some(format!("AETITLES={ae_title}")),
            user_name: None,
            is_requestor: true,
            host: host.map(str::to_string),
            roles: Vec::new(),
        }
    }

    /// A person or program authenticated on HTTP (token subject), with its peer address.
    pub fn user(user_id: &str, host: Option<&str>) -> Participant {
        Participant {
            user_id: user_id.to_string(),
            alternative_user_id: None,
            user_name: None,
            is_requestor: true,
            host: host.map(str::to_string),
            roles: Vec::new(),
        }
    }

    /// Sets the human-readable name.
    pub fn named(mut self, name: &str) -> Participant {
        self.user_name = Some(name.to_string());
        self
    }

    fn with_role(mut self, role: Role, is_requestor: bool) -> Participant {
        if !self.roles.contains(&role) {
            self.roles.push(role);
        }
        self.is_requestor = is_requestor;
        self
    }

    /// The participant as one line of JSON, for keeping it outside the log until its record
    /// is written (see [`Participant::from_json`]).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads back what [`Participant::to_json`] wrote; `None` if `text` is not that.
    pub fn from_json(text: &str) -> Option<Participant> {
        serde_json::from_str(text).ok()
    }

    /// Whether `host` is an IP address (NetworkAccessPointTypeCode 2) rather than a name (1).
    pub fn host_is_ip(&self) -> bool {
        self.host
            .as_deref()
            .is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok())
    }
}

/// The node that reports events (AuditSourceIdentification), also added as a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSource {
    /// AuditEnterpriseSiteID: the site name.
    pub site: String,
    /// AuditSourceID: this node's identity, unique in the grid.
    pub source_id: String,
    /// The node's own AE title, if it has one.
    pub ae_title: Option<String>,
    /// The node's host name or address.
    pub host: Option<String>,
}

impl AuditSource {
    /// The node as an active participant (never the requester).
    pub fn participant(&self) -> Participant {
        Participant {
            user_id: self.source_id.clone(),
            alternative_user_id: self.ae_title.as_ref().map(|ae| format!("AETITLES={ae}")),
            user_name: None,
            is_requestor: false,
            host: self.host.clone(),
            roles: Vec::new(),
        }
    }
}

/// A patient a event touched: identity is (PatientID, IssuerOfPatientID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientRef {
    /// PatientID.
    pub id: String,
    /// IssuerOfPatientID (the default issuer where the sender gave none).
    pub issuer: Option<String>,
    /// PatientName, if known.
    pub name: Option<String>,
}

/// A study an event touched, with the SOP classes and instance counts involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyRef {
    /// StudyInstanceUID.
    pub uid: String,
    /// AccessionNumber, if known.
    pub accession: Option<String>,
    /// (SOP Class UID, number of instances) pairs.
    pub sop_classes: Vec<(String, u64)>,
}

impl StudyRef {
    /// A study known only by its UID.
    pub fn new(uid: &str) -> StudyRef {
        StudyRef {
            uid: uid.to_string(),
            accession: None,
            sop_classes: Vec::new(),
        }
    }

    /// Adds `count` instances of `sop_class_uid`.
    pub fn sop_class(mut self, sop_class_uid: &str, count: u64) -> StudyRef {
        self.sop_classes.push((sop_class_uid.to_string(), count));
        self
    }

    /// Sets the accession number.
    pub fn accession(mut self, accession: &str) -> StudyRef {
        self.accession = Some(accession.to_string());
        self
    }
}

/// A ParticipantObjectIdentification: data the event touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParticipantObject {
    /// A patient.
    Patient(PatientRef),
    /// A study.
    Study(StudyRef),
    /// A query: the SOP class (or service) queried and the query as received.
    Query {
        /// SOP Class UID of the query model, or the service URI for DICOMweb.
        sop_class_uid: String,
        /// The query as received (data set bytes or URL query string); written base64.
        query: Vec<u8>,
        /// Transfer syntax the query data set came in, for DIMSE.
        transfer_syntax: Option<String>,
    },
    /// Something named by a URI: the subject of a security alert, a configuration file.
    Uri(String),
}

/// One audit event, ready to be rendered as a PS3.15 audit message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened.
    pub kind: EventKind,
    /// EventActionCode.
    pub action: Action,
    /// EventOutcomeIndicator.
    pub outcome: Outcome,
    /// EventOutcomeDescription: why it failed, free text.
    pub outcome_description: Option<String>,
    /// EventDateTime.
    pub time: DateTime<Utc>,
    /// Who took part; the reporting node is among them.
    pub participants: Vec<Participant>,
    /// The reporting node.
    pub source: AuditSource,
    /// Data touched.
    pub objects: Vec<ParticipantObject>,
}

impl AuditEvent {
    /// A bare event of `kind` reported by `source` now, with the kind's default action and
    /// success; the per-kind constructors below are what callers normally use.
    pub fn new(kind: EventKind, source: &AuditSource) -> AuditEvent {
        AuditEvent {
            kind,
            action: kind.default_action(),
            outcome: Outcome::Success,
            outcome_description: None,
            time: Utc::now(),
            participants: Vec::new(),
            source: source.clone(),
            objects: Vec::new(),
        }
    }

    fn node_as(mut self, role: Role) -> AuditEvent {
        let node = self.source.participant().with_role(role, false);
        self.participants.push(node);
        self
    }

    /// The node started; `launcher` is who started it, if known.
    pub fn application_start(source: &AuditSource, launcher: Option<Participant>) -> AuditEvent {
        let ev = AuditEvent::new(EventKind::ApplicationStart, source).node_as(Role::Application);
        ev.launched_by(launcher)
    }

    /// The node is stopping; `launcher` is who stopped it, if known.
    pub fn application_stop(source: &AuditSource, launcher: Option<Participant>) -> AuditEvent {
        let ev = AuditEvent::new(EventKind::ApplicationStop, source).node_as(Role::Application);
        ev.launched_by(launcher)
    }

    fn launched_by(self, launcher: Option<Participant>) -> AuditEvent {
        match launcher {
            Some(p) => self.participant(p.with_role(Role::ApplicationLauncher, true)),
            None => self,
        }
    }

    /// `sender` stored instances on this node (C-STORE, STOW-RS, REST upload).
    pub fn instances_stored(source: &AuditSource, sender: Participant) -> AuditEvent {
        AuditEvent::new(EventKind::InstancesStored, source)
            .participant(sender.with_role(Role::Source, true))
            .node_as(Role::Destination)
    }

    /// `requestor` queried this node (C-FIND, QIDO-RS, REST search); `query` is the query as
    /// received, under `sop_class_uid` (the information model, or the service URI).
    pub fn query(
        source: &AuditSource,
        requestor: Participant,
        sop_class_uid: &str,
        query: &[u8],
    ) -> AuditEvent {
        AuditEvent::new(EventKind::Query, source)
            .participant(requestor.with_role(Role::Source, true))
            .node_as(Role::Destination)
            .object(ParticipantObject::Query {
                sop_class_uid: sop_class_uid.to_string(),
                query: query.to_vec(),
                transfer_syntax: None,
            })
    }

    /// This node sent instances out at `requestor`'s request (C-MOVE, C-GET, WADO). For a
    /// C-MOVE to a third AE, `destination` names it; otherwise the requester receives.
    pub fn instances_transferred(
        source: &AuditSource,
        requestor: Participant,
        destination: Option<Participant>,
    ) -> AuditEvent {
        let ev = AuditEvent::new(EventKind::InstancesTransferred, source).node_as(Role::Source);
        match destination {
            Some(dest) => ev
                .participant(requestor.with_role(Role::Source, true))
                .participant(dest.with_role(Role::Destination, false)),
            None => ev.participant(requestor.with_role(Role::Destination, true)),
        }
    }

    /// `requestor` read, changed or deleted instances in place (`action` says which).
    pub fn instances_accessed(
        source: &AuditSource,
        requestor: Participant,
        action: Action,
    ) -> AuditEvent {
        let mut ev = AuditEvent::new(EventKind::InstancesAccessed, source)
            .participant(requestor.with_role(Role::Source, true))
            .node_as(Role::Destination);
        ev.action = action;
        ev
    }

    /// `requestor` exported data from this node to `destination` (media, file, another system).
    pub fn export(source: &AuditSource, requestor: Participant, destination: &str) -> AuditEvent {
        let requestor = Participant {
            is_requestor: true,
            ..requestor
        };
        AuditEvent::new(EventKind::Export, source)
            .participant(requestor)
            .node_as(Role::Source)
            .object(ParticipantObject::Uri(destination.to_string()))
    }

    /// `requestor` imported data into this node from `origin` (files, media).
    pub fn import(source: &AuditSource, requestor: Participant, origin: &str) -> AuditEvent {
        AuditEvent::new(EventKind::Import, source)
            .participant(requestor.with_role(Role::Source, true))
            .node_as(Role::Destination)
            .object(ParticipantObject::Uri(origin.to_string()))
    }

    /// `requestor` deleted a study (add it with [`AuditEvent::study`]).
    pub fn study_deleted(source: &AuditSource, requestor: Participant) -> AuditEvent {
        AuditEvent::new(EventKind::StudyDeleted, source)
            .participant(requestor.with_role(Role::Source, true))
            .node_as(Role::Destination)
    }

    /// `user` logged in (or tried to: set a failure outcome).
    pub fn login(source: &AuditSource, user: Participant) -> AuditEvent {
        AuditEvent::new(EventKind::Login, source)
            .participant(user.with_role(Role::Source, true))
            .node_as(Role::Destination)
    }

    /// `user` logged out.
    pub fn logout(source: &AuditSource, user: Participant) -> AuditEvent {
        AuditEvent::new(EventKind::Logout, source)
            .participant(user.with_role(Role::Source, true))
            .node_as(Role::Destination)
    }

    /// A refusal or authentication failure caused by `requestor`, described in `why`.
    /// Outcome is minor failure: the request failed, the node did not.
    pub fn security_alert(
        source: &AuditSource,
        alert: AlertKind,
        requestor: Participant,
        why: &str,
    ) -> AuditEvent {
        AuditEvent::new(EventKind::SecurityAlert(alert), source)
            .participant(requestor.with_role(Role::Source, true))
            .node_as(Role::Destination)
            .outcome(Outcome::MinorFailure, Some(why))
    }

    /// `user` changed the node's configuration; `what` names the setting or file.
    pub fn configuration_change(source: &AuditSource, user: Participant, what: &str) -> AuditEvent {
        AuditEvent::new(EventKind::ConfigurationChange, source)
            .participant(user.with_role(Role::Source, true))
            .node_as(Role::Destination)
            .object(ParticipantObject::Uri(what.to_string()))
    }

    /// `reader` read the audit trail; `log` is the URI of the log read (with the search's
    /// filter as its query, so the record says what was looked for).
    pub fn audit_log_used(source: &AuditSource, reader: Participant, log: &str) -> AuditEvent {
        let reader = Participant {
            is_requestor: true,
            ..reader
        };
        AuditEvent::new(EventKind::AuditLogUsed, source)
            .participant(reader)
            .node_as(Role::Application)
            .object(ParticipantObject::Uri(log.to_string()))
    }

    /// Sets the outcome and its description.
    pub fn outcome(mut self, outcome: Outcome, description: Option<&str>) -> AuditEvent {
        self.outcome = outcome;
        self.outcome_description = description.map(str::to_string);
        self
    }

    /// Sets the event time (constructors use now).
    pub fn at(mut self, time: DateTime<Utc>) -> AuditEvent {
        self.time = time;
        self
    }

    /// Sets when the event happened from milliseconds since the Unix epoch (kept as is if
    /// out of range).
    pub fn at_unix_ms(self, ms: i64) -> AuditEvent {
        match DateTime::from_timestamp_millis(ms) {
            Some(t) => self.at(t),
            None => self,
        }
    }

    /// Adds a participant.
    pub fn participant(mut self, p: Participant) -> AuditEvent {
        self.participants.push(p);
        self
    }

    /// Adds a participant object.
    pub fn object(mut self, o: ParticipantObject) -> AuditEvent {
        self.objects.push(o);
        self
    }

    /// Adds the patient (PatientID, IssuerOfPatientID).
    pub fn patient(self, id: &str, issuer: Option<&str>) -> AuditEvent {
        self.object(ParticipantObject::Patient(PatientRef {
            id: id.to_string(),
            issuer: issuer.map(str::to_string),
            name: None,
        }))
    }

    /// Adds a study.
    pub fn study(self, study: StudyRef) -> AuditEvent {
        self.object(ParticipantObject::Study(study))
    }

    /// Records the transfer syntax of a DIMSE query data set (no effect on other events).
    pub fn query_transfer_syntax(mut self, ts_uid: &str) -> AuditEvent {
        for o in &mut self.objects {
            if let ParticipantObject::Query {
                transfer_syntax, ..
            } = o
            {
                *transfer_syntax = Some(ts_uid.to_string());
            }
        }
        self
    }

    /// Who the event is attributed to: the requester, else the first participant.
    pub fn user(&self) -> Option<&str> {
        self.participants
            .iter()
            .find(|p| p.is_requestor)
            .or_else(|| self.participants.first())
            .map(|p| p.user_id.as_str())
    }

    /// The first patient the event touched.
    pub fn patient_ref(&self) -> Option<&PatientRef> {
        self.objects.iter().find_map(|o| match o {
            ParticipantObject::Patient(p) => Some(p),
            _ => None,
        })
    }

    /// The UIDs of every study the event touched, in order.
    pub fn study_uids(&self) -> Vec<String> {
        self.objects
            .iter()
            .filter_map(|o| match o {
                ParticipantObject::Study(s) => Some(s.uid.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> AuditSource {
        AuditSource {
            site: "site-a".into(),
            source_id: "node-1".into(),
            ae_title: Some("PACSGRID".into()),
            host: Some("10.0.0.1".into()),
        }
    }

    #[test]
    fn participants_survive_their_json_form() {
        let p = Participant::ae("CT1", Some("10.1.2.3")).named("CT in room 4");
        assert_eq!(Participant::from_json(&p.to_json()), Some(p));
        assert_eq!(Participant::from_json("{not json"), None);
    }

    #[test]
    fn store_has_sender_as_requesting_source_and_node_as_destination() {
        let ev = AuditEvent::instances_stored(&src(), Participant::ae("MODALITY", Some("::1")))
            .patient("P1", Some("HOSP"))
            .study(StudyRef::new("1.2.3").sop_class("1.2.840.10008.5.1.4.1.1.2", 3));
        assert_eq!(ev.action, Action::Create);
        assert_eq!(ev.kind.event_id().code, "110104");
        assert_eq!(ev.user(), Some("MODALITY"));
        assert_eq!(ev.participants[0].roles, vec![Role::Source]);
        assert!(ev.participants[0].host_is_ip());
        assert_eq!(ev.participants[1].roles, vec![Role::Destination]);
        assert!(!ev.participants[1].is_requestor);
        assert_eq!(ev.patient_ref().unwrap().issuer.as_deref(), Some("HOSP"));
        assert_eq!(ev.study_uids(), vec!["1.2.3".to_string()]);
    }

    #[test]
    fn names_list_matches_every_kind() {
        let kinds = [
            EventKind::ApplicationStart,
            EventKind::ApplicationStop,
            EventKind::InstancesStored,
            EventKind::Query,
            EventKind::InstancesTransferred,
            EventKind::InstancesAccessed,
            EventKind::Export,
            EventKind::Import,
            EventKind::StudyDeleted,
            EventKind::Login,
            EventKind::Logout,
            EventKind::SecurityAlert(AlertKind::NodeAuthentication),
            EventKind::ConfigurationChange,
            EventKind::AuditLogUsed,
        ];
        let names: Vec<_> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(names, EventKind::NAMES);
    }

    #[test]
    fn move_to_third_party_names_requestor_and_destination() {
        let ev = AuditEvent::instances_transferred(
            &src(),
            Participant::ae("WORKSTATION", None),
            Some(Participant::ae("STORESCP", Some("host.example"))),
        );
        assert_eq!(ev.action, Action::Read);
        assert_eq!(ev.user(), Some("WORKSTATION"));
        let dest = ev.participants.iter().find(|p| p.user_id == "STORESCP");
        assert!(dest.is_some_and(|d| !d.is_requestor && d.roles == vec![Role::Destination]));
    }
}
