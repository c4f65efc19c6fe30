//! The DICOM vocabulary shared by every pacsgrid layer.
//!
//! Nothing here performs I/O: it names things (UIDs, attributes, status codes), describes
//! queries and de-identifies data sets in memory, so that the fabric, the archive and the protocols agree on one model.

pub mod attrs;
pub mod deid;
pub mod part10;
pub mod query;
pub mod status;
pub mod uid;
pub mod wire;

pub use attrs::{AttrKind, IndexedAttr, Level};
pub use dicom_core::Tag;
pub use query::{Matcher, Query, QueryError, QueryKey, QueryModel};
