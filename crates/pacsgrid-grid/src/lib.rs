//! The collective layer of pacsgrid: what makes many sites one grid. This part holds the grid's
//! PKI, the mutual-TLS transport between sites (server and client) and the `[grid]`
//! configuration section.

pub mod client;
pub mod config;
pub mod pki;
pub mod tls;
pub mod transport;

pub use client::{GridNetError, PeerByteStream, PeerClient};
pub use config::{GridConfig, GridPeer, PrefetchRule};
pub use pki::{site_name_of, validate_site_name, GridCa, PkiError, SiteCredentials};
pub use tls::load_tls;
pub use transport::{serve, PeerSite};
