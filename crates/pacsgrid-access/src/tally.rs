//! Counting what a transfer touched, study by study, so that one audit record per study
//! (PS3.15 A.5.3.2: one patient per message) goes out when the transfer ends.

use pacsgrid_audit::{AuditEvent, StudyRef};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
struct Study {
    seen: u64,
    patient: Option<(String, Option<String>)>,
    accession: Option<String>,
    classes: BTreeMap<String, u64>,
}

/// The studies (with patient and SOP class counts) a transfer or an association touched.
#[derive(Debug, Default, Clone)]
pub struct StudyTally {
    order: Vec<String>,
    studies: BTreeMap<String, Study>,
}

impl StudyTally {
    /// An empty tally.
    pub fn new() -> StudyTally {
        StudyTally::default()
    }

    /// Counts one instance of `sop_class_uid` in study `study_uid` of patient
    /// (`patient_id`, `issuer`).
    pub fn add(
        &mut self,
        study_uid: &str,
        patient_id: Option<&str>,
        issuer: Option<&str>,
        sop_class_uid: &str,
    ) {
        let s = self.study(study_uid);
        if s.patient.is_none() {
            if let Some(id) = patient_id {
                s.patient = Some((id.to_string(), issuer.map(str::to_string)));
            }
        }
        s.seen += 1;
        if !sop_class_uid.is_empty() {
            *s.classes.entry(sop_class_uid.to_string()).or_default() += 1;
        }
    }

    /// Notes a study that was touched as a whole (a delete, a metadata read) without counting
    /// instances.
    pub fn touch(&mut self, study_uid: &str, patient_id: Option<&str>, issuer: Option<&str>) {
        let s = self.study(study_uid);
        if s.patient.is_none() {
            s.patient = patient_id.map(|id| (id.to_string(), issuer.map(str::to_string)));
        }
    }

    /// Sets the accession number of a study already in the tally.
    pub fn accession(&mut self, study_uid: &str, accession: &str) {
        if let Some(s) = self.studies.get_mut(study_uid) {
            if !accession.is_empty() {
                s.accession = Some(accession.to_string());
            }
        }
    }

    fn study(&mut self, uid: &str) -> &mut Study {
        if !self.studies.contains_key(uid) {
            self.order.push(uid.to_string());
        }
        self.studies.entry(uid.to_string()).or_default()
    }

    /// Whether nothing was touched.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// How many studies were touched.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// How many instances were counted in all.
    pub fn instances(&self) -> u64 {
        self.studies.values().map(|s| s.seen).sum()
    }

    /// One event per study, in the order first touched: `template` with that study's patient
    /// and the study (with its SOP classes and counts) added as participant objects.
    pub fn into_events(self, template: &AuditEvent) -> Vec<AuditEvent> {
        let StudyTally { order, mut studies } = self;
        order
            .into_iter()
            .filter_map(|uid| {
                let s = studies.remove(&uid)?;
                let mut study = StudyRef::new(&uid);
                for (class, n) in s.classes {
                    study = study.sop_class(&class, n);
                }
                if let Some(a) = &s.accession {
                    study = study.accession(a);
                }
                let mut ev = template.clone();
                if let Some((id, issuer)) = &s.patient {
                    ev = ev.patient(id, issuer.as_deref());
                }
                Some(ev.study(study))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacsgrid_audit::{AuditSource, Participant};

    #[test]
    fn one_event_per_study_with_counts() {
        let mut t = StudyTally::new();
        t.add("1.2", Some("P1"), Some("H"), "CT");
        t.add("1.3", Some("P2"), None, "MR");
        t.add("1.2", Some("P1"), Some("H"), "CT");
        t.add("1.2", Some("P1"), Some("H"), "SR");
        assert_eq!((t.len(), t.instances()), (2, 4));
        let src = AuditSource {
            site: "a".into(),
            source_id: "a".into(),
            ae_title: None,
            host: None,
        };
        let template = AuditEvent::instances_stored(&src, Participant::ae("CT1", None));
        let evs = t.into_events(&template);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].study_uids(), vec!["1.2".to_string()]);
        assert_eq!(evs[0].patient_ref().map(|p| p.id.as_str()), Some("P1"));
        assert_eq!(evs[1].patient_ref().map(|p| p.id.as_str()), Some("P2"));
    }
}
