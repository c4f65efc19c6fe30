//! What is being asked for, in terms every protocol maps onto: a C-FIND and a QIDO-RS search
//! are both a [`Operation::Query`].

/// One kind of access a request needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Store instances (C-STORE, STOW-RS).
    Store,
    /// Search the index (C-FIND, QIDO-RS, REST listings and searches).
    Query,
    /// Read instances, metadata or renderings back (C-GET, WADO-RS, WADO-URI, REST reads).
    Retrieve,
    /// Send instances to a third AE (C-MOVE); `destination` is the move destination.
    Move {
        /// The C-MOVE destination AE title.
        destination: String,
    },
    /// Delete studies, series or instances.
    Delete,
    /// Ask the grid to bring a patient's studies here ahead of need.
    Prefetch,
    /// Read node and grid status (counts, health; no patient data).
    ReadStatus,
    /// Run maintenance: scrub, repair, other administrative actions.
    Maintain,
    /// Read the audit trail.
    ReadAudit,
    /// A grid peer reading this site's feed, records and blobs.
    GridSync,
}

impl Operation {
    /// The operation in words, for refusals and logs ("retrieve", "move to \"WS1\"").
    pub fn describe(&self) -> String {
        match self {
            Operation::Store => "store".into(),
            Operation::Query => "query".into(),
            Operation::Retrieve => "retrieve".into(),
            Operation::Move { destination } => format!("move to {destination:?}"),
            Operation::Delete => "delete".into(),
            Operation::Prefetch => "prefetch".into(),
            Operation::ReadStatus => "read status".into(),
            Operation::Maintain => "run maintenance".into(),
            Operation::ReadAudit => "read the audit trail".into(),
            Operation::GridSync => "read grid feeds".into(),
        }
    }

    /// Whether the operation touches patient data (and so always leaves an audit record when
    /// it happens, not only when it is refused).
    pub fn touches_patient_data(&self) -> bool {
        !matches!(self, Operation::ReadStatus | Operation::Maintain)
    }
}
