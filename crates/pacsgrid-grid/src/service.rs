//! The running grid service of one site: its peers as it sees them, and the tasks that
//! keep the site in the grid (feed pulls, placement, collection, scrub, anti-entropy,
//! prefetch), started together and stopped together.

use crate::client::{GridNetError, PeerClient};
use crate::config::GridConfig;
use crate::transfer::Throttle;
use pacsgrid_archive::{Archive, ArchiveError, Holder, Holdings};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// Why the grid service could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// Certificates, keys or the listener could not be set up.
    #[error("grid transport: {0}")]
    Net(#[from] GridNetError),
    /// The local archive failed.
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    /// The configuration is unusable.
    #[error("grid configuration: {0}")]
    Config(String),
    /// The grid port could not be opened.
    #[error("cannot listen for the grid on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What this site knows of one peer.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// Site name.
    pub name: String,
    /// Grid URL.
    pub url: String,
    /// The peer's incarnation as last seen (its feed cursor belongs to it).
    pub incarnation: Option<String>,
    /// Last entry of its feed applied here.
    pub cursor: i64,
    /// Newest entry of its feed, as it last said.
    pub head: i64,
    /// Whether the last contact worked.
    pub reachable: bool,
    /// Since when `reachable` has had its value (ms since the epoch).
    pub since_ms: i64,
    /// The last error, while unreachable.
    pub last_error: Option<String>,
    /// How far the peer has read this site's feed (for this site's incarnation).
    pub acked: Option<(String, i64)>,
    /// The peer's preferred backup sites.
    pub preferred: Vec<String>,
}

/// Figures of the last placement pass, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct PlacementFigures {
    /// Instances in the grid's index.
    pub instances: u64,
    /// Instances with fewer verified copies on healthy sites than the policy asks.
    pub under_replicated: u64,
    /// Instances each site holds (valid incarnation only).
    pub held: BTreeMap<String, u64>,
    /// When the pass ended (ms since the epoch).
    pub at_ms: i64,
}

/// Received copies waiting for their fsyncs and announcement, per transfer slot; each holds
/// an open staging file and at most 2 MiB of unwritten bytes.
pub(crate) const FINISHING_PER_TRANSFER: usize = 4;

/// The grid service of one site.
pub struct Grid {
    pub(crate) cfg: GridConfig,
    pub(crate) site: String,
    pub(crate) archive: Arc<Archive>,
    pub(crate) client: PeerClient,
    pub(crate) peers: RwLock<BTreeMap<String, PeerState>>,
    pub(crate) transfers: Arc<Semaphore>,
    /// Received copies being made durable and announced, at most
    /// [`FINISHING_PER_TRANSFER`] × `transfer_concurrency`: a transfer slot is free again
    /// once its bytes are in, so the disk's wait for one copy overlaps the next transfers,
    /// and concurrent fsyncs and holder commits share the disk's flushes.
    pub(crate) finishing: Arc<Semaphore>,
    pub(crate) throttle: Option<Throttle>,
    /// Hashes being pulled now, so a pass does not start the same pull twice.
    pub(crate) inflight: Mutex<HashSet<String>>,
    /// Failed pulls: when to try again, and how many tries so far.
    pub(crate) backoff: Mutex<HashMap<String, (Instant, u32)>>,
    pub(crate) figures: RwLock<PlacementFigures>,
    /// Wakes the placement pass early (new records, a lost site, a scrub).
    pub(crate) placement_due: Notify,
    /// Asks for a pass a little later to recount the copies: holder facts changed (a copy
    /// made here or announced by a peer), so the status need not wait for the next interval.
    pub(crate) recount_due: Notify,
    pub(crate) stop: watch::Receiver<bool>,
    /// The service itself, for trait methods that start tasks.
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<Grid>>,
    /// What peers were sent, for the audit trail.
    pub(crate) disclosures: Arc<crate::audit::Disclosures>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Grid {
    /// Starts the grid service: opens the grid port (mutual TLS), joins the archive to the
    /// grid and starts the background tasks; everything stops when `stop` turns true.
    pub async fn start(
        cfg: GridConfig,
        archive: Arc<Archive>,
        access: Arc<pacsgrid_access::AccessPoint>,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Grid>, GridError> {
        let site = archive.site().to_string();
        cfg.validate(&site).map_err(GridError::Config)?;
        let (server_tls, client_tls) = crate::tls::load_tls(&cfg)?;
        let client = PeerClient::new(client_tls, site.clone())?;
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| GridError::Listen {
                addr: cfg.listen.clone(),
                source,
            })?;
        let saved: HashMap<String, (String, i64)> = archive
            .peer_cursors()
            .await?
            .into_iter()
            .map(|c| (c.site, (c.incarnation, c.cursor)))
            .collect();
        let start = now_ms();
        let peers = cfg
            .peers
            .iter()
            .map(|p| {
                let (incarnation, cursor) = match saved.get(&p.name) {
                    Some((inc, cur)) => (Some(inc.clone()), *cur),
                    None => (None, 0),
                };
                let state = PeerState {
                    name: p.name.clone(),
                    url: p.url.clone(),
                    incarnation,
                    cursor,
                    head: 0,
                    reachable: false,
                    since_ms: start,
                    last_error: None,
                    acked: None,
                    preferred: Vec::new(),
                };
                (p.name.clone(), state)
            })
            .collect();
        let throttle = (cfg.transfer_max_mbps > 0).then(|| Throttle::new(cfg.transfer_max_mbps));
        let grid = Arc::new(Grid {
            transfers: Arc::new(Semaphore::new(cfg.transfer_concurrency.max(1))),
            finishing: Arc::new(Semaphore::new(
                cfg.transfer_concurrency.max(1) * FINISHING_PER_TRANSFER,
            )),
            cfg,
            site,
            archive: Arc::clone(&archive),
            client,
            peers: RwLock::new(peers),
            throttle,
            inflight: Mutex::new(HashSet::new()),
            backoff: Mutex::new(HashMap::new()),
            figures: RwLock::new(PlacementFigures::default()),
            placement_due: Notify::new(),
            recount_due: Notify::new(),
            stop: stop.clone(),
            me: std::sync::OnceLock::new(),
            disclosures: Arc::new(crate::audit::Disclosures::new(access)),
        });
        let _ = grid.me.set(Arc::downgrade(&grid));
        archive.attach_grid(grid.clone(), grid.clone());

        let allowed = Arc::new(grid.cfg.peer_names());
        let router = crate::api::router(Arc::clone(&grid));
        let mut stop_rx = stop.clone();
        tokio::spawn(Arc::clone(&grid.disclosures).run(stop.clone()));
        tokio::spawn(crate::transport::serve(
            listener,
            server_tls,
            allowed,
            Arc::clone(grid.disclosures.access()),
            router,
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        for name in grid.peer_names() {
            tokio::spawn(crate::sync::run(Arc::clone(&grid), name));
        }
        tokio::spawn(crate::replicate::run(Arc::clone(&grid)));
        tokio::spawn(crate::gc::run(Arc::clone(&grid)));
        if grid.cfg.scrub_interval_secs > 0 {
            tokio::spawn(crate::scrub::run(Arc::clone(&grid)));
        }
        if grid.cfg.anti_entropy_interval_secs > 0 {
            tokio::spawn(crate::anti_entropy::run(Arc::clone(&grid)));
        }
        if grid.cfg.prefetch.enabled {
            tokio::spawn(crate::prefetch::run(Arc::clone(&grid)));
        }
        tracing::info!(
            site = %grid.site,
            listen = %grid.cfg.listen,
            peers = grid.cfg.peers.len(),
            copies = grid.cfg.copies,
            "grid service started"
        );
        Ok(grid)
    }

    /// Names of the configured peers.
    pub fn peer_names(&self) -> Vec<String> {
        self.cfg.peers.iter().map(|p| p.name.clone()).collect()
    }

    /// A copy of one peer's state.
    pub(crate) fn peer(&self, name: &str) -> Option<PeerState> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Changes one peer's state.
    pub(crate) fn update_peer(&self, name: &str, f: impl FnOnce(&mut PeerState)) {
        if let Some(p) = self
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(name)
        {
            f(p);
        }
    }

    /// Whether a peer has been unreachable for longer than the grace period.
    pub(crate) fn is_lost(&self, p: &PeerState) -> bool {
        !p.reachable && now_ms() - p.since_ms >= (self.cfg.lost_after_secs as i64) * 1000
    }

    /// This site and every peer not counted as lost, sorted.
    pub(crate) fn healthy_sites(&self) -> Vec<String> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = peers
            .values()
            .filter(|p| !self.is_lost(p))
            .map(|p| p.name.clone())
            .collect();
        out.push(self.site.clone());
        out.sort();
        out
    }

    /// Whether a holder fact is current: facts about a peer's earlier incarnation are not.
    pub(crate) fn holder_valid(&self, h: &Holder) -> bool {
        if h.site == self.site {
            return true;
        }
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        match peers.get(&h.site).and_then(|p| p.incarnation.as_deref()) {
            Some(inc) => inc == h.incarnation,
            None => true,
        }
    }

    /// Holders of an instance that another site can fetch from now, reachable ones first.
    pub(crate) fn sources(&self, holders: &[Holder]) -> Vec<PeerState> {
        let mut out: Vec<PeerState> = holders
            .iter()
            .filter(|h| h.site != self.site && self.holder_valid(h))
            .filter_map(|h| self.peer(&h.site))
            .filter(|p| !self.is_lost(p))
            .collect();
        out.sort_by_key(|p| !p.reachable);
        out
    }

    /// The preferred backup sites of `origin` (this site's own, or what the peer said).
    pub(crate) fn preferences_of(&self, origin: &str) -> Vec<String> {
        if origin == self.site {
            return self.cfg.preferred_backup.clone();
        }
        self.peer(origin).map(|p| p.preferred).unwrap_or_default()
    }

    /// Whether the service is stopping.
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Every instance of the index with its holders, a page of `size` at a time, so a pass
    /// over the whole grid's index holds one page in memory.
    pub(crate) fn holding_pages(
        &self,
        size: u32,
    ) -> impl futures::Stream<Item = Result<Vec<Holdings>, ArchiveError>> + '_ {
        futures::stream::try_unfold(0i64, move |after| async move {
            let page = self.archive.holdings(after, size).await?;
            Ok(page.last().map(|last| last.id).map(|id| (page, id)))
        })
    }

    /// Completes when the service stops.
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Sleeps for `d`, or less if the service stops; `false` when stopping.
    pub(crate) async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopping(),
            _ = self.stopped() => false,
        }
    }
}
