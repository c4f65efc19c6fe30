//! DICOM networking for pacsgrid: associations over dicom-ul PDUs, DIMSE messages, and one
//! module per service (echo, store, find, get, move), as SCP and as SCU.
//!
//! Every service calls the archive only; nothing here touches files or tables directly.

#![warn(missing_docs)]

mod access;
pub mod association;
pub mod client;
pub mod config;
mod echo;
mod find;
mod get;
pub mod identifier;
pub mod message;
pub mod metrics;
mod move_;
mod retrieve;
pub mod server;
mod store;
pub mod stream;
pub mod tls;

pub use association::{AssocError, Association, PresentationContext, ProposedContext};
pub use client::{StoreResponse, StoreScu};
pub use config::{DimseConfig, RemoteAe};
pub use metrics::{DimseMetrics, MetricsSnapshot};
pub use server::{DimseListener, DimseServer};
pub use stream::DicomStream;
pub use tls::{TlsError, TlsServerFiles};
