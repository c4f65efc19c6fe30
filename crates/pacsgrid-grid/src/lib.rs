//! The collective layer of pacsgrid: what makes many sites one grid.
//!
//! Each site pulls every other site's change feed over mutual TLS and keeps the whole grid's
//! index ([`sync`]); each decides from the same facts which copies it owes ([`placement`])
//! and pulls them, verified ([`replicate`], [`transfer`]); lost sites are replaced, corrupt
//! copies re-fetched ([`scrub`]), missed records found by digests ([`anti_entropy`]), deleted
//! bytes removed once every peer has the tombstone ([`gc`]), priors pulled ahead
//! ([`prefetch`]). The grid port serves peers ([`api`], [`protocol`]); [`pki`], [`tls`],
//! [`transport`] and [`client`] are how sites trust and reach each other.

mod anti_entropy;
mod api;
mod audit;
pub mod client;
pub mod config;
mod gc;
pub mod pki;
pub mod placement;
mod prefetch;
pub mod protocol;
mod replicate;
mod scrub;
mod service;
mod status;
mod sync;
pub mod tls;
mod transfer;
pub mod transport;

pub use client::{GridNetError, PeerByteStream, PeerClient};
pub use config::{GridConfig, GridPeer, PrefetchRule};
pub use pki::{site_name_of, validate_site_name, GridCa, PkiError, SiteCredentials};
pub use prefetch::PrefetchReport;
pub use scrub::ScrubReport;
pub use service::{Grid, GridError, PeerState, PlacementFigures};
pub use tls::load_tls;
pub use transfer::Throttle;
pub use transport::{serve, PeerSite};
