//! What sites say to each other on the grid port (`/grid/v1/...`), as JSON types.
//!
//! - `GET /grid/v1/hello`: who the site is now ([`Hello`]).
//! - `GET /grid/v1/feed?after=N&limit=M`: its change feed ([`FeedPage`]); idempotent, a
//!   cursor stays valid for the life of an incarnation.
//! - `GET /grid/v1/blobs/{hash}`: the bytes of a blob the site holds (404 otherwise). With
//!   `Range: bytes=N-` (see [`resume_range`]) it sends the bytes from N on as a 206 with
//!   `Content-Range: bytes N-(size-1)/size`, so a cut-off copy goes on where it stopped; an
//!   N at or past the end is a 416 with `Content-Range: bytes */size`. Other range forms
//!   are ignored (a 200 with every byte), as RFC 9110 allows.
//! - `GET /grid/v1/digests`: one digest per bucket of its instances ([`Digests`]);
//!   `GET /grid/v1/digests/{bucket}`: the bucket's instances ([`BucketList`]).
//! - `GET /grid/v1/records/{sop_instance_uid}`: one instance's record and holders.

use pacsgrid_archive::{FeedEntry, Holder, InstanceRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `Range` header asking for a blob's bytes from `offset` on.
pub fn resume_range(offset: u64) -> String {
    format!("bytes={offset}-")
}

/// The offset of a `Range: bytes=N-` header; `None` for any other form (suffix ranges,
/// several ranges, a closed range), which the server then answers with the whole blob.
pub fn parse_resume_range(value: &str) -> Option<u64> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    let start = spec.strip_suffix('-')?;
    if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    start.parse().ok()
}

/// The `Content-Range` header of a 206 that sends bytes `start..size`.
pub fn content_range(start: u64, size: u64) -> String {
    format!("bytes {start}-{}/{size}", size.saturating_sub(1))
}

/// The first byte and the whole size of a `Content-Range: bytes S-E/T` header, checking that
/// the range runs to the end (the only form a site sends).
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end + 1 == total).then_some((start, total))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_range_round_trips_and_other_forms_are_not_one() {
        assert_eq!(parse_resume_range(&resume_range(1234)), Some(1234));
        assert_eq!(parse_resume_range("bytes=0-"), Some(0));
        for other in [
            "bytes=-500",
            "bytes=0-99",
            "bytes=1-,5-",
            "items=3-",
            "bytes=x-",
            "bytes=-",
        ] {
            assert_eq!(parse_resume_range(other), None, "{other}");
        }
    }

    #[test]
    fn a_content_range_round_trips_and_must_run_to_the_end() {
        assert_eq!(
            parse_content_range(&content_range(10, 100)),
            Some((10, 100))
        );
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1)));
        assert_eq!(parse_content_range("bytes 10-50/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
