//! What sites say to each other on the grid port (`/grid/v1/...`), as JSON types.
//!
//! - `GET /grid/v1/hello`: who the site is now ([`Hello`]).
//! - `GET /grid/v1/feed?after=N&limit=M`: its change feed ([`FeedPage`]); idempotent, a
//!   cursor stays valid for the life of an incarnation.
//! - `GET /grid/v1/blobs/{hash}`: the bytes of a blob the site holds (404 otherwise).
//! - `GET /grid/v1/digests`: one digest per bucket of its instances ([`Digests`]);
//!   `GET /grid/v1/digests/{bucket}`: the bucket's instances ([`BucketList`]).
//! - `GET /grid/v1/records/{sop_instance_uid}`: one instance's record and holders.

use pacsgrid_archive::{FeedEntry, Holder, InstanceRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Number of anti-entropy buckets (instances are spread by a hash of their UID).
pub const BUCKETS: usize = 64;

/// A site's answer to `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Site name.
    pub site: String,
    /// Its data directory's incarnation.
    pub incarnation: String,
    /// Newest sequence number of its feed.
    pub feed_head: i64,
    /// How far it has read each peer's feed (per peer: incarnation and cursor), so a site
    /// knows when every peer has seen its tombstones.
    pub cursors: BTreeMap<String, (String, i64)>,
    /// Its preferred backup sites: the placement of instances it originated honours them.
    pub preferred_backup: Vec<String>,
    /// Its clock, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// One page of a site's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    /// The site's incarnation the sequence numbers belong to.
    pub incarnation: String,
    /// Its newest sequence number.
    pub head: i64,
    /// Entries after the cursor asked for, oldest first.
    pub entries: Vec<FeedEntry>,
}

/// Per-bucket digests of a site's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// BLAKE3 over the sorted "uid hash" lines of each bucket, hex.
    pub buckets: Vec<String>,
}

/// One instance in a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketItem {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Content hash.
    pub hash: String,
}

/// The instances of one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketList {
    /// Sorted by UID.
    pub instances: Vec<BucketItem>,
}

/// One instance's record and holders, as a site knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAnswer {
    /// The metadata.
    pub record: InstanceRecord,
    /// Who holds the bytes.
    pub holders: Vec<Holder>,
}

/// The bucket an instance falls in.
pub fn bucket_of(sop_instance_uid: &str) -> usize {
    let h = blake3::hash(sop_instance_uid.as_bytes());
    (h.as_bytes()[0] as usize) % BUCKETS
}
