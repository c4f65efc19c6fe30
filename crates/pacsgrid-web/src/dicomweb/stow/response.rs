//! The Store Instances Response (PS3.18 10.5.3): one DICOM JSON object listing what was
//! stored and what failed, and the HTTP status that summarises it.

use axum::http::StatusCode;
use pacsgrid_dicom::status;
use serde_json::{json, Map, Value};

/// Warning on an instance that was already stored with the same bytes: nothing changed.
///
/// PS3.18 defines no code for this case; B000 is the generic storage warning that clients
/// show as a warning, as the DIMSE side uses it for conflicts.
pub(crate) const WARNING_DUPLICATE: u16 = 0xB000;
/// Warning on an instance whose UID was already stored with other bytes: the stored one
/// is kept, this one quarantined (the same code C-STORE answers).
pub(crate) const WARNING_QUARANTINED: u16 = status::WARNING_STORED_CONFLICT;

/// One instance the node holds after the request (stored now, or already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Referenced {
    /// SOPClassUID.
    pub sop_class_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// Where WADO-RS retrieves it.
    pub retrieve_url: String,
    /// Set when stored with a warning (duplicate, quarantined).
    pub warning: Option<u16>,
}

/// One part that was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failed {
    /// SOPClassUID, when the part said.
    pub sop_class_uid: Option<String>,
    /// SOPInstanceUID, when the part said.
    pub sop_instance_uid: Option<String>,
    /// The DIMSE status code of the failure (PS3.18 Table 10.5.3-3 uses those).
    pub reason: u16,
}

/// Everything a request produced, in part order.
#[derive(Debug, Default)]
pub(crate) struct StoreReport {
    /// Instances held.
    pub referenced: Vec<Referenced>,
    /// Parts refused.
    pub failed: Vec<Failed>,
    /// The study URL, when every instance held belongs to one study.
    pub study_url: Option<String>,
}

impl StoreReport {
    /// The HTTP status PS3.18 10.5.3 gives this outcome: 200 when every instance was stored
    /// without warning, 202 when some were stored and others failed or warned, 409 when none
    /// was stored (503 when that was only for lack of resources).
    pub fn status(&self) -> StatusCode {
        if self.referenced.is_empty() {
            if !self.failed.is_empty()
                && self
                    .failed
                    .iter()
                    .all(|f| f.reason == status::REFUSED_OUT_OF_RESOURCES)
            {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            return StatusCode::CONFLICT;
        }
        if self.failed.is_empty() && self.referenced.iter().all(|r| r.warning.is_none()) {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        }
    }

    /// The response body in DICOM JSON (PS3.18 F.2).
    pub fn to_json(&self) -> Value {
        let mut top = Map::new();
        if let Some(url) = &self.study_url {
            top.insert("00081190".into(), attr("UR", json!([url])));
        }
        if !self.failed.is_empty() {
            let items: Vec<Value> = self
                .failed
                .iter()
                .map(|f| {
                    let mut item = Map::new();
                    item.insert("00081150".into(), ui(f.sop_class_uid.as_deref()));
                    item.insert("00081155".into(), ui(f.sop_instance_uid.as_deref()));
                    item.insert("00081197".into(), attr("US", json!([f.reason])));
                    Value::Object(item)
                })
                .collect();
            top.insert("00081198".into(), attr("SQ", Value::Array(items)));
        }
        if !self.referenced.is_empty() {
            let items: Vec<Value> = self
                .referenced
                .iter()
                .map(|r| {
                    let mut item = Map::new();
                    item.insert("00081150".into(), ui(Some(&r.sop_class_uid)));
                    item.insert("00081155".into(), ui(Some(&r.sop_instance_uid)));
                    item.insert("00081190".into(), attr("UR", json!([r.retrieve_url])));
                    if let Some(w) = r.warning {
                        item.insert("00081196".into(), attr("US", json!([w])));
                    }
                    Value::Object(item)
                })
                .collect();
            top.insert("00081199".into(), attr("SQ", Value::Array(items)));
        }
        Value::Object(top)
    }
}

/// A DICOM JSON attribute with values.
fn attr(vr: &str, values: Value) -> Value {
    json!({ "vr": vr, "Value": values })
}

/// A UI attribute; unknown UIDs are sent as an attribute without value (DICOM JSON's
/// empty value), so a client sees which item it was but no invented UID.
fn ui(uid: Option<&str>) -> Value {
    match uid {
        Some(u) if !u.is_empty() => attr("UI", json!([u])),
        _ => json!({ "vr": "UI" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn referenced(warning: Option<u16>) -> Referenced {
        Referenced {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: "1.2.3".into(),
            retrieve_url: "http://h/dicom-web/studies/1/series/2/instances/1.2.3".into(),
            warning,
        }
    }

    fn failed(reason: u16) -> Failed {
        Failed {
            sop_class_uid: None,
            sop_instance_uid: Some("1.2.4".into()),
            reason,
        }
    }

    #[test]
    fn status_follows_ps3_18() {
        let mut r = StoreReport::default();
        r.referenced.push(referenced(None));
        assert_eq!(r.status(), StatusCode::OK);
        r.referenced.push(referenced(Some(WARNING_DUPLICATE)));
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let mut r = StoreReport::default();
        r.referenced.push(referenced(None));
        r.failed.push(failed(0xC000));
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let mut r = StoreReport::default();
        r.failed.push(failed(0xC000));
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let mut r = StoreReport::default();
        r.failed.push(failed(status::REFUSED_OUT_OF_RESOURCES));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn json_lists_items_with_reasons() {
        let r = StoreReport {
            referenced: vec![referenced(Some(WARNING_QUARANTINED))],
            failed: vec![failed(0xA900)],
            study_url: Some("http://h/dicom-web/studies/1".into()),
        };
        let j = r.to_json();
        assert_eq!(j["00081190"]["Value"][0], "http://h/dicom-web/studies/1");
        let f = &j["00081198"]["Value"][0];
        assert_eq!(f["00081197"]["Value"][0], 0xA900);
        assert_eq!(f["00081150"], json!({"vr": "UI"}));
        assert_eq!(f["00081155"]["Value"][0], "1.2.4");
        let s = &j["00081199"]["Value"][0];
        assert_eq!(s["00081196"]["Value"][0], 0xB000);
        assert_eq!(s["00081196"]["vr"], "US");
        assert_eq!(s["00081155"]["Value"][0], "1.2.3");
    }
}
