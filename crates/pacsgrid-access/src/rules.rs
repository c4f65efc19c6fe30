//! The rules: which grants allow which operations. One table for HTTP roles, one check for AE
//! rights; every protocol asks here through [`crate::AccessPoint`].

use crate::ae::AeRight;
use crate::operation::Operation;
use crate::principal::{Grants, Role};

/// Whether `role` allows `op` on the full, identified data. The table, by role (D: only
/// through the de-identified view, see [`role_allows_deidentified`]):
///
/// | role | store | query | retrieve | move | delete | prefetch | status | maintain | audit |
/// |---|---|---|---|---|---|---|---|---|---|
/// | admin | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
/// | radiologist | ✓ | ✓ | ✓ | ✓ |  | ✓ | ✓ |  |  |
/// | clinician |  | ✓ | ✓ |  |  |  | ✓ |  |  |
/// | researcher |  | D | D |  |  |  | ✓ |  |  |
/// | modality | ✓ |  |  |  |  |  | ✓ |  |  |
///
/// Radiologists store because reports (SR, key objects) are stored instances. Researchers see
/// only de-identified data: they query and retrieve where a path serves a de-identified view
/// (DICOMweb) and nowhere else.
pub fn role_allows(role: Role, op: &Operation) -> bool {
    use Operation as O;
    match role {
        Role::Admin => !matches!(op, O::GridSync),
        Role::Radiologist => matches!(
            op,
            O::Store | O::Query | O::Retrieve | O::Move { .. } | O::Prefetch | O::ReadStatus
        ),
        Role::Clinician => matches!(op, O::Query | O::Retrieve | O::ReadStatus),
        Role::Researcher => matches!(op, O::ReadStatus),
        Role::Modality => matches!(op, O::Store | O::ReadStatus),
    }
}

/// Whether `role` allows `op` on de-identified data (PS3.15 Annex E; see
/// `pacsgrid_dicom::deid`): searches and reads, for researchers.
pub fn role_allows_deidentified(role: Role, op: &Operation) -> bool {
    role == Role::Researcher && matches!(op, Operation::Query | Operation::Retrieve)
}

/// Which view of patient data a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The data as stored.
    Full,
    /// De-identified (pseudonyms, shifted dates, no names, no private elements); objects
    /// with burned-in annotation are withheld.
    DeIdentified,
}

/// The view in which `grants` allow `op`, where the path offers a de-identified view when
/// `deidentified_offered`; `None` when they allow it in none. The full view wins: a
/// researcher who is also a clinician sees what a clinician sees.
pub fn view(grants: &Grants, op: &Operation, deidentified_offered: bool) -> Option<View> {
    if allows(grants, op) {
        return Some(View::Full);
    }
    let deidentified = match grants {
        Grants::Roles(roles) => roles.iter().any(|r| role_allows_deidentified(*r, op)),
        _ => false,
    };
    (deidentified && deidentified_offered).then_some(View::DeIdentified)
}

/// Whether an AE with `rights` (and, for C-MOVE, `move_destinations`) may do `op`.
pub fn ae_allows(
    rights: &std::collections::BTreeSet<AeRight>,
    move_destinations: Option<&std::collections::BTreeSet<String>>,
    op: &Operation,
) -> bool {
    match op {
        Operation::Store => rights.contains(&AeRight::Store),
        Operation::Query => rights.contains(&AeRight::Find),
        Operation::Retrieve => rights.contains(&AeRight::Retrieve),
        Operation::Move { destination } => {
            rights.contains(&AeRight::Retrieve)
                && move_destinations.is_none_or(|d| d.contains(destination.trim()))
        }
        _ => false,
    }
}

/// Whether `grants` allow `op`: the single decision every path goes through.
pub fn allows(grants: &Grants, op: &Operation) -> bool {
    match grants {
        Grants::Unrestricted => true,
        Grants::Roles(roles) => roles.iter().any(|r| role_allows(*r, op)),
        Grants::Ae {
            rights,
            move_destinations,
        } => ae_allows(rights, move_destinations.as_ref(), op),
        Grants::GridPeer => matches!(op, Operation::GridSync),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Operation> {
        vec![
            Operation::Store,
            Operation::Query,
            Operation::Retrieve,
            Operation::Move {
                destination: "WS1".into(),
            },
            Operation::Delete,
            Operation::Prefetch,
            Operation::ReadStatus,
            Operation::Maintain,
            Operation::ReadAudit,
            Operation::GridSync,
        ]
    }

    #[test]
    fn role_table_as_documented() {
        // rows: admin, radiologist, clinician, researcher, modality; columns as ops()
        let table: [(Role, &str); 5] = [
            (Role::Admin, "SQRMDPTAU-"),
            (Role::Radiologist, "SQRM-PT---"),
            (Role::Clinician, "-QR---T---"),
            (Role::Researcher, "------T---"),
            (Role::Modality, "S-----T---"),
        ];
        for (role, row) in table {
            for (op, c) in ops().iter().zip(row.chars()) {
                assert_eq!(role_allows(role, op), c != '-', "{role:?} {op:?}");
            }
        }
    }

    #[test]
    fn researchers_read_only_de_identified_and_only_where_offered() {
        let researcher = Grants::Roles([Role::Researcher].into());
        for op in ops() {
            let read = matches!(op, Operation::Query | Operation::Retrieve);
            let expected = if read {
                Some(View::DeIdentified)
            } else if op == Operation::ReadStatus {
                Some(View::Full)
            } else {
                None
            };
            assert_eq!(view(&researcher, &op, true), expected, "{op:?}");
            if read {
                assert_eq!(view(&researcher, &op, false), None, "{op:?}");
            }
        }
        let both = Grants::Roles([Role::Researcher, Role::Clinician].into());
        assert_eq!(view(&both, &Operation::Query, true), Some(View::Full));
        let with_modality = Grants::Roles([Role::Researcher, Role::Modality].into());
        assert_eq!(
            view(&with_modality, &Operation::Retrieve, true),
            Some(View::DeIdentified)
        );
        assert_eq!(
            view(&with_modality, &Operation::Store, false),
            Some(View::Full)
        );
        assert_eq!(
            view(&Grants::Unrestricted, &Operation::Retrieve, true),
            Some(View::Full)
        );
        let ae = Grants::Ae {
            rights: [AeRight::Find].into(),
            move_destinations: None,
        };
        assert_eq!(view(&ae, &Operation::Retrieve, true), None);
    }

    #[test]
    fn ae_rights_and_destinations() {
        let rights = [AeRight::Find, AeRight::Retrieve].into();
        let dests = ["WS1".to_string()].into();
        let move_to = |d: &str| Operation::Move {
            destination: d.into(),
        };
        assert!(ae_allows(&rights, Some(&dests), &Operation::Query));
        assert!(!ae_allows(&rights, Some(&dests), &Operation::Store));
        assert!(ae_allows(&rights, Some(&dests), &move_to("WS1")));
        assert!(!ae_allows(&rights, Some(&dests), &move_to("EVIL")));
        assert!(ae_allows(&rights, None, &move_to("EVIL")));
        assert!(!ae_allows(&rights, None, &Operation::Delete));
    }

    #[test]
    fn grid_peers_only_sync() {
        for op in ops() {
            assert_eq!(
                allows(&Grants::GridPeer, &op),
                op == Operation::GridSync,
                "{op:?}"
            );
            assert!(allows(&Grants::Unrestricted, &op));
        }
    }
}
