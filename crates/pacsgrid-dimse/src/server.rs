//! The DIMSE service provider: accept loop (on a plain port, a TLS port, or both), one task
//! per association, a cap on concurrent associations, and a graceful shutdown.

use crate::access::AssocAccess;
use crate::association::{AcceptError, AcceptPolicy, AssocError, Association, RejectReason};
use crate::config::DimseConfig;
use crate::message::{field, Command, Event};
use crate::metrics::{inc, ActiveGuard, DimseMetrics};
use crate::stream::DicomStream;
use pacsgrid_access::{AccessPoint, Denied, Principal};
use pacsgrid_archive::Archive;
use pacsgrid_dicom::status;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What every association task shares.
pub(crate) struct Services {
    pub(crate) cfg: DimseConfig,
    pub(crate) policy: AcceptPolicy,
    pub(crate) archive: Arc<Archive>,
    pub(crate) metrics: Arc<DimseMetrics>,
    pub(crate) access: Arc<AccessPoint>,
}

/// One port the DIMSE service listens on: plain TCP, or TLS with this configuration (see
/// [`crate::tls::server_config`]).
pub struct DimseListener {
    /// The bound socket.
    pub listener: TcpListener,
    /// The TLS configuration; `None` for the plain port.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl DimseListener {
    /// A plain DICOM port.
    pub fn plain(listener: TcpListener) -> Self {
        DimseListener {
            listener,
            tls: None,
        }
    }

    /// A DICOM TLS port.
    pub fn tls(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        DimseListener {
            listener,
            tls: Some(config),
        }
    }
}

/// A connection accepted on one of the ports, with that port's TLS configuration.
type Accepted = (TcpStream, SocketAddr, Option<Arc<rustls::ServerConfig>>);

/// Accepts on whichever port has a connection first. Cancel-safe, as `TcpListener::accept`.
async fn accept_any(listeners: &[DimseListener]) -> std::io::Result<Accepted> {
    let (res, _, _) = futures::future::select_all(listeners.iter().map(|l| {
        Box::pin(async move {
            let (stream, peer) = l.listener.accept().await?;
            Ok((stream, peer, l.tls.clone()))
        })
    }))
    .await;
    res
}

/// The DIMSE SCP of a node: C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE over the archive.
pub struct DimseServer {
    services: Arc<Services>,
}

impl DimseServer {
    /// A server for this configuration and archive; `access` admits AEs, decides their
    /// rights and takes the audit records of what they do.
    pub fn new(cfg: DimseConfig, archive: Arc<Archive>, access: Arc<AccessPoint>) -> Self {
        let mut policy = AcceptPolicy::from_config(&cfg);
        policy.access = Some(Arc::clone(&access));
        DimseServer {
            services: Arc::new(Services {
                cfg,
                policy,
                archive,
                metrics: Arc::new(DimseMetrics::default()),
                access,
            }),
        }
    }

    /// The server's counters, for `/metrics`; valid before, during and after [`Self::run`].
    pub fn metrics(&self) -> Arc<DimseMetrics> {
        Arc::clone(&self.services.metrics)
    }

    /// Accepts associations on `listener` until `shutdown` completes; then stops accepting,
    /// lets running associations go on for the configured grace period, and aborts the rest
    /// (an object being received is then discarded, never half-stored).
    pub async fn run<F>(self, listener: TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()>,
    {
        self.run_listeners(vec![DimseListener::plain(listener)], shutdown)
            .await
    }

    /// As [`Self::run`], on several ports at once (a TLS port and a plain one for legacy
    /// modalities): all share the association cap and the shutdown.
    pub async fn run_listeners<F>(
        self,
        listeners: Vec<DimseListener>,
        shutdown: F,
    ) -> std::io::Result<()>
    where
        F: Future<Output = ()>,
    {
        if listeners.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the DIMSE service needs at least one port",
            ));
        }
        let svc = self.services;
        // stores a previous run acknowledged without writing their records: write them
        // before any new association can add marks of its own
        crate::access::recover_unaudited_stores(&svc.access, &svc.archive).await;
        let limit = Arc::new(Semaphore::new(svc.cfg.max_associations.max(1)));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for l in &listeners {
            tracing::info!(
                ae_title = %svc.cfg.ae_title,
                addr = %l.listener.local_addr()?,
                tls = l.tls.is_some(),
                max_associations = svc.cfg.max_associations,
                max_pdu = svc.policy.max_pdu_length,
                "DIMSE service listening"
            );
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = accept_any(&listeners) => match accepted {
                    Ok((stream, peer, tls)) => {
                        let permit = Arc::clone(&limit).try_acquire_owned().ok();
                        let svc = Arc::clone(&svc);
                        let stop = stop.clone();
                        tasks.spawn(serve_connection(svc, stream, peer, tls, permit, stop));
                    }
                    Err(e) => {
                        // out of file descriptors and the like: back off instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            tracing::error!(error = %e, "association task panicked");
                        }
                    }
                }
            }
        }
        drop(listeners);
        let running = tasks.len();
        tracing::info!(running, "DIMSE service stopping");
        stop.cancel();
        let grace = tokio::time::sleep(svc.cfg.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut grace => {
                    tracing::warn!(left = tasks.len(), "shutdown grace period over; aborting associations");
                    tasks.abort_all();
                    break;
                }
                next = tasks.join_next() => if next.is_none() { break },
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!("DIMSE service stopped");
        Ok(())
    }
}

/// Negotiates one association and serves it, inside its own span.
async fn serve_connection(
    svc: Arc<Services>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    permit: Option<OwnedSemaphorePermit>,
    stop: CancellationToken,
) {
    let span = tracing::info_span!(
        "association",
        %peer,
        calling = tracing::field::Empty,
        called = tracing::field::Empty
    );
    async move {
        let Some(stream) = open_transport(&svc, stream, peer, tls).await else {
            return;
        };
        let accepted = Association::accept(
            stream,
            &svc.policy,
            permit.is_none(),
            svc.cfg.association_timeout,
            svc.cfg.idle_timeout,
        )
        .await;
        let assoc = match accepted {
            Ok(a) => a,
            Err(AcceptError::Rejected {
                reason,
                calling_ae,
                called_ae,
            }) => {
                inc(&svc.metrics.associations_rejected);
                tracing::warn!(calling = %calling_ae, called = %called_ae, %reason, "association rejected");
                if reason != RejectReason::LocalLimitExceeded {
                    audit_rejection(&svc, &calling_ae, peer, reason).await;
                }
                return;
            }
            Err(AcceptError::Assoc(e)) => {
                inc(&svc.metrics.associations_rejected);
                tracing::warn!(error = %e, "association negotiation failed");
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("calling", assoc.calling_ae());
        span.record("called", assoc.called_ae());
        let who = match svc.access.ae_rights().admit(assoc.calling_ae(), peer.ip()) {
            Ok(who) => who,
            Err(e) => {
                // the gate in negotiation already admitted it; the rules cannot have changed
                tracing::error!(error = %e, "admitted AE not admitted on second look; aborting");
                assoc.abort().await;
                return;
            }
        };
        let _active = ActiveGuard::new(&svc.metrics);
        tracing::info!(
            contexts = assoc.contexts().len(),
            max_pdu_send = assoc.max_pdu_send(),
            tls = assoc.is_tls(),
            peer_certificate = assoc.peer_certificate_name().unwrap_or(""),
            "association accepted"
        );
        let mut access = AssocAccess::new(who, &svc.access);
        serve(&svc, assoc, &mut access, stop).await;
        // whatever ended it, what it stored goes into the audit trail
        access.flush(&svc.access, &svc.archive).await;
        drop(permit);
    }
    .instrument(span)
    .await
}

/// Audits a rejected association request as a node-authentication alert.
async fn audit_rejection(svc: &Services, calling_ae: &str, peer: SocketAddr, reason: RejectReason) {
    let denied = match svc.access.ae_rights().admit(calling_ae, peer.ip()) {
        Err(d) => d,
        Ok(_) => Denied::UnknownAe {
            ae: calling_ae.to_string(),
            host: peer.ip().to_string(),
            why: reason.to_string(),
        },
    };
    let who = Principal {
        id: calling_ae.to_string(),
        kind: pacsgrid_access::PrincipalKind::Ae,
        host: Some(peer.ip().to_string()),
        channel: pacsgrid_access::Channel::Dimse,
        grants: pacsgrid_access::Grants::Roles(Default::default()),
    };
    svc.access.refused(&who, &denied).await;
}

/// The connection an association runs on: the TCP stream itself on the plain port; on the
/// TLS port, the stream after a TLS handshake bounded by the association timeout. `None`
/// when the handshake failed (reported through [`on_tls_refused`]); the node serves on.
async fn open_transport(
    svc: &Services,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Option<DicomStream> {
    let Some(config) = tls else {
        return Some(DicomStream::Plain(tcp));
    };
    let handshake = DicomStream::accept_tls(tcp, config);
    match tokio::time::timeout(svc.cfg.association_timeout, handshake).await {
        Ok(Ok(stream)) => {
            inc(&svc.metrics.tls_handshakes);
            tracing::debug!(
                peer_certificate = stream.peer_certificate_name().unwrap_or(""),
                tls = stream.tls_parameters().unwrap_or_default(),
                "TLS handshake done"
            );
            Some(stream)
        }
        Ok(Err(e)) => {
            on_tls_refused(svc, peer, &e.reason()).await;
            None
        }
        Err(_) => {
            let reason = format!(
                "no TLS handshake within the association timeout of {:?}",
                svc.cfg.association_timeout
            );
            on_tls_refused(svc, peer, &reason).await;
            None
        }
    }
}

/// Reports a connection to the TLS port whose handshake failed (an untrusted or missing
/// client certificate, plain DICOM spoken to the TLS port, a timeout): counted, and audited
/// as a node-authentication alert. `reason` is rustls's.
async fn on_tls_refused(svc: &Services, peer: SocketAddr, reason: &str) {
    inc(&svc.metrics.tls_handshakes_failed);
    tracing::warn!(%peer, reason, "TLS handshake refused");
    let who = Principal {
        id: "unknown (TLS handshake failed)".into(),
        kind: pacsgrid_access::PrincipalKind::Ae,
        host: Some(peer.ip().to_string()),
        channel: pacsgrid_access::Channel::Dimse,
        grants: pacsgrid_access::Grants::Roles(Default::default()),
    };
    let denied = Denied::Unauthenticated(format!("DICOM TLS handshake failed: {reason}"));
    svc.access.refused(&who, &denied).await;
}

/// How long an association may take, once shutdown began, to show a request it already sent.
const SHUTDOWN_READ_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves messages until release, abort, error or shutdown.
async fn serve(
    svc: &Services,
    mut assoc: Association,
    access: &mut AssocAccess,
    stop: CancellationToken,
) {
    loop {
        let event = if stop.is_cancelled() {
            // shutting down: serve what has already arrived (a request sent just before the
            // stop), abort only an association that is idle between messages, where
            // nothing is lost. The short grace lets bytes already in the socket be seen even
            // if the reactor has not reported them yet.
            match assoc.event_within(SHUTDOWN_READ_GRACE).await {
                Ok(Some(ev)) => Ok(ev),
                Ok(None) => {
                    tracing::info!("aborting idle association for shutdown");
                    inc(&svc.metrics.associations_aborted);
                    assoc.abort().await;
                    return;
                }
                Err(e) => Err(e),
            }
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => continue,
                ev = assoc.next_event() => ev,
            }
        };
        let result = match event {
            Ok(Event::Command { pc_id, command }) => {
                dispatch(svc, &mut assoc, access, pc_id, command).await
            }
            Ok(Event::Data(_)) => Err(AssocError::Protocol(
                "data set fragment without a command".into(),
            )),
            Ok(Event::Release) => {
                // the release answer tells the peer its transfers are complete: audit first
                access.flush(&svc.access, &svc.archive).await;
                if let Err(e) = assoc.answer_release().await {
                    tracing::debug!(error = %e, "release reply not delivered");
                }
                tracing::info!("association released");
                return;
            }
            Ok(Event::Aborted) => {
                tracing::info!("association aborted by the peer");
                return;
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            match &e {
                AssocError::Closed | AssocError::PeerAborted => {
                    tracing::warn!(error = %e, "association ended")
                }
                _ => {
                    tracing::warn!(error = %e, "aborting association");
                    inc(&svc.metrics.associations_aborted);
                }
            }
            assoc.abort_with(&e).await;
            return;
        }
    }
}

/// Hands a command to its service.
async fn dispatch(
    svc: &Services,
    assoc: &mut Association,
    access: &mut AssocAccess,
    pc_id: u8,
    command: Command,
) -> Result<(), AssocError> {
    if assoc.context(pc_id).is_none() {
        return Err(AssocError::Protocol(format!(
            "command on presentation context {pc_id}, which was not accepted"
        )));
    }
    match command.field() {
        Some(field::C_ECHO_RQ) => crate::echo::handle(assoc, pc_id, command, &svc.metrics).await,
        Some(field::C_STORE_RQ) => crate::store::handle(svc, assoc, access, pc_id, command).await,
        Some(field::C_FIND_RQ) => crate::find::handle(svc, assoc, access, pc_id, command).await,
        Some(field::C_GET_RQ) => crate::get::handle(svc, assoc, access, pc_id, command).await,
        Some(field::C_MOVE_RQ) => crate::move_::handle(svc, assoc, access, pc_id, command).await,
        Some(field::C_CANCEL_RQ) => {
            tracing::debug!("C-CANCEL for no running operation");
            Ok(())
        }
        Some(f) if f & 0x8000 != 0 => {
            tracing::warn!(
                command_field = format_args!("{f:#06x}"),
                "unsolicited response ignored"
            );
            if command.has_dataset() {
                assoc.skip_dataset(pc_id).await?;
            }
            Ok(())
        }
        other => {
            let f = other.unwrap_or(0);
            tracing::warn!(
                command_field = format_args!("{f:#06x}"),
                "unsupported DIMSE operation"
            );
            if command.has_dataset() {
                assoc.skip_dataset(pc_id).await?;
            }
            let rsp = Command::response_to(&command, f | 0x8000, status::UNRECOGNIZED_OPERATION)
                .error_comment("operation not supported by this SCP")
                .build();
            assoc.send_command(pc_id, &rsp).await
        }
    }
}
