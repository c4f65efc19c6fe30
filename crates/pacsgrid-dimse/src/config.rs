//! How the DIMSE service is set up. The binary builds this from its own configuration file.

use std::sync::Arc;
use std::time::Duration;

/// A remote application entity we may open associations to (a C-MOVE destination, an
/// `import --to` target).
#[derive(Debug, Clone)]
pub struct RemoteAe {
    /// Its AE title.
    pub ae_title: String,
    /// Host name or IP address; with TLS, also the name its certificate must carry.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// DICOM over TLS to it (see [`crate::tls::client_config`]); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl PartialEq for RemoteAe {
    /// Two entries are the same destination when they name the same AE at the same address
    /// with TLS on or off alike; TLS settings themselves cannot be compared.
    fn eq(&self, other: &Self) -> bool {
        self.ae_title == other.ae_title
            && self.host == other.host
            && self.port == other.port
            && self.tls.is_some() == other.tls.is_some()
    }
}

/// The settings of the DIMSE service provider and of the associations it requests.
#[derive(Debug, Clone)]
pub struct DimseConfig {
    /// Our AE title: called AE title of associations we accept, calling AE title of those we
    /// request, and the RetrieveAETitle of C-FIND answers.
    pub ae_title: String,
    /// When true, an association is accepted whatever called AE title it names; otherwise a
    /// called AE title other than ours is rejected ("called AE title not recognized").
    pub accept_any_called_ae: bool,
    /// The largest P-DATA PDU we accept (announced in A-ASSOCIATE-AC / -RQ). Larger PDUs
    /// mean fewer system calls; the memory held per association is about this much.
    pub max_pdu_length: u32,
    /// How many associations may be open at once; beyond it a request is rejected
    /// (transient, "local limit exceeded") so that the node keeps serving the ones it has.
    pub max_associations: usize,
    /// How long a peer has to complete association negotiation (A-ASSOCIATE-RQ after
    /// connecting, A-ASSOCIATE-AC after we request), and to connect out.
    pub association_timeout: Duration,
    /// How long an association may stay silent (no PDU from the peer) before we abort it.
    pub idle_timeout: Duration,
    /// When set, only these calling AE titles may associate.
    pub allowed_calling_aes: Option<Vec<String>>,
    /// The AEs we know by title: C-MOVE destinations.
    pub remote_aes: Vec<RemoteAe>,
    /// On shutdown, how long running associations may go on before they are aborted.
    pub shutdown_grace: Duration,
}

/// The default max PDU length we announce: 256 KiB, which keeps system calls few for
/// large objects while bounding the memory an association holds.
pub const DEFAULT_MAX_PDU_LENGTH: u32 = 262_144;

/// The smallest max PDU length we accept in our configuration: below this, command sets
/// would be split absurdly and the system call overhead would dominate.
pub const MIN_MAX_PDU_LENGTH: u32 = 16_384;

impl Default for DimseConfig {
    fn default() -> Self {
        DimseConfig {
            ae_title: "PACSGRID".into(),
            accept_any_called_ae: false,
            max_pdu_length: DEFAULT_MAX_PDU_LENGTH,
            max_associations: 64,
            association_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            allowed_calling_aes: None,
            remote_aes: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl DimseConfig {
    /// Finds a configured remote AE by title (exact, after trimming padding).
    pub fn remote_ae(&self, ae_title: &str) -> Option<&RemoteAe> {
        let wanted = ae_title.trim();
        self.remote_aes.iter().find(|r| r.ae_title.trim() == wanted)
    }

    /// The max PDU length actually used: the configured one, raised to the minimum we
    /// support and kept even, as PS3.8 expects.
    pub fn effective_max_pdu(&self) -> u32 {
        self.max_pdu_length.max(MIN_MAX_PDU_LENGTH) & !1
    }
}
