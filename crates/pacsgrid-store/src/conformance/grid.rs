//! The grid part of the index contract (see `grid_index.rs`), for every backend.

use super::record;
use crate::*;
use std::sync::Arc;

fn holder(site: &str, inc: &str) -> Holder {
    Holder {
        site: site.into(),
        incarnation: inc.into(),
    }
}

pub async fn incarnation_is_stable<I: Index>(index: Arc<I>) {
    let a = index.incarnation().await.unwrap();
    assert!(a.len() >= 16, "{a}");
    assert_eq!(index.incarnation().await.unwrap(), a);
}

pub async fn remote_records_have_no_holder_until_announced<I: Index>(index: Arc<I>) {
    let rec = record(1, 1, 1, 1);
    let sop = rec.instance.sop_instance_uid.clone();
    assert!(matches!(
        index.insert_remote(&rec).await.unwrap(),
        InsertOutcome::Inserted { .. }
    ));
    assert_eq!(
        index.insert_remote(&rec).await.unwrap(),
        InsertOutcome::Duplicate
    );
    let (got, holders) = index.record(&sop).await.unwrap().unwrap();
    assert_eq!(got, rec, "the full record comes back as it was given");
    assert!(holders.is_empty());

    let b1 = holder("b", "inc1");
    let seq = match index.set_holder(&sop, &rec.hash, &b1, true).await.unwrap() {
        HolderChange::Changed { seq } => seq,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        index.set_holder(&sop, &rec.hash, &b1, true).await.unwrap(),
        HolderChange::Unchanged,
        "idempotent"
    );
    assert_eq!(
        index.set_holder(&sop, "00ff", &b1, true).await.unwrap(),
        HolderChange::Unknown,
        "another hash is not this instance"
    );
    let feed = index.feed(seq - 1, 0).await.unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].kind, ChangeKind::Held);
    assert_eq!(
        (feed[0].site.as_str(), feed[0].incarnation.as_str()),
        ("b", "inc1")
    );

    // b is wiped: its new incarnation replaces the old copy, stale facts go
    index
        .set_holder(&sop, &rec.hash, &holder("c", "x"), true)
        .await
        .unwrap();
    assert_eq!(index.drop_stale_holders("b", "inc2").await.unwrap(), 1);
    assert_eq!(index.drop_stale_holders("b", "inc2").await.unwrap(), 0);
    let (_, holders) = index.record(&sop).await.unwrap().unwrap();
    assert_eq!(holders, vec![holder("c", "x")]);

    // a release by an old incarnation says nothing; by the right one it removes
    assert_eq!(
        index
            .set_holder(&sop, &rec.hash, &holder("c", "old"), false)
            .await
            .unwrap(),
        HolderChange::Unchanged
    );
    assert!(matches!(
        index
            .set_holder(&sop, &rec.hash, &holder("c", "x"), false)
            .await
            .unwrap(),
        HolderChange::Changed { .. }
    ));
    let (_, holders) = index.record(&sop).await.unwrap().unwrap();
    assert!(holders.is_empty());
}

pub async fn local_stores_announce_their_holder<I: Index>(index: Arc<I>) {
    let rec = record(2, 1, 1, 1);
    index.insert(&rec, "a").await.unwrap();
    let inc = index.incarnation().await.unwrap();
    let feed = index.feed(0, 0).await.unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].kind, ChangeKind::Stored);
    assert_eq!(
        (feed[0].site.as_str(), feed[0].incarnation.as_str()),
        ("a", inc.as_str())
    );
    assert_eq!(feed[0].record.as_ref(), Some(&rec));
    let h = index.holdings(0, 0).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].holders, vec![holder("a", &inc)]);
    assert_eq!(h[0].study_uid, rec.study.study_uid);
}

pub async fn tombstones_apply_travel_and_win<I: Index>(index: Arc<I>) {
    let rec = record(3, 1, 1, 1);
    let sop = rec.instance.sop_instance_uid.clone();
    index.insert_remote(&rec).await.unwrap();
    let t = Tombstone {
        sop_instance_uid: sop.clone(),
        study_uid: rec.study.study_uid.clone(),
        series_uid: rec.series.series_uid.clone(),
        hash: rec.hash.clone(),
        at_ms: rec.received_at_ms + 10,
        site: "b".into(),
    };
    match index.apply_tombstone(&t).await.unwrap() {
        TombstoneOutcome::Applied(d) => {
            assert_eq!(d.instances, 1);
            assert_eq!(d.unreferenced_hashes, vec![rec.hash.clone()]);
            assert_eq!(d.tombstones[0].at_ms, t.at_ms);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        index.apply_tombstone(&t).await.unwrap(),
        TombstoneOutcome::Known
    );
    assert!(index.instance(&sop).await.unwrap().is_none());
    let last = index.feed(0, 0).await.unwrap().pop().unwrap();
    assert_eq!((last.kind, last.site.as_str()), (ChangeKind::Deleted, "b"));
    // a late copy of the record from another peer does not bring it back
    assert_eq!(
        index.insert_remote(&rec).await.unwrap(),
        InsertOutcome::Duplicate
    );
    assert!(index.instance(&sop).await.unwrap().is_none());
    // stored again after the deletion: it comes back
    let mut again = rec.clone();
    again.received_at_ms = t.at_ms + 1;
    assert!(matches!(
        index.insert_remote(&again).await.unwrap(),
        InsertOutcome::Inserted { .. }
    ));
    assert_eq!(
        index.apply_tombstone(&t).await.unwrap(),
        TombstoneOutcome::Known
    );
    assert!(index.instance(&sop).await.unwrap().is_some());

    // a tombstone for something never seen is kept, and travels on
    let unseen = Tombstone {
        sop_instance_uid: "1.2.3.999".into(),
        hash: "ab".repeat(32),
        ..t.clone()
    };
    assert!(matches!(
        index.apply_tombstone(&unseen).await.unwrap(),
        TombstoneOutcome::Recorded { .. }
    ));
    assert_eq!(
        index.apply_tombstone(&unseen).await.unwrap(),
        TombstoneOutcome::Known
    );
    let mut late = record(3, 1, 1, 2);
    late.instance.sop_instance_uid = "1.2.3.999".into();
    late.hash = "ab".repeat(32);
    assert_eq!(
        index.insert_remote(&late).await.unwrap(),
        InsertOutcome::Duplicate
    );
    let removable: Vec<String> = index
        .removable()
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert!(removable.contains(&"ab".repeat(32)));
    assert!(!removable.contains(&rec.hash), "stored again: referenced");
}

pub async fn holdings_page_through_everything<I: Index>(index: Arc<I>) {
    for i in 0..25 {
        let rec = record(4, 1, 1, i);
        index.insert(&rec, "a").await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = index.holdings(after, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().id;
        assert!(page.iter().all(|h| h.holders.len() == 1));
        seen.extend(page.into_iter().map(|h| h.sop_instance_uid));
    }
    assert_eq!(seen.len(), 25);
}

pub async fn cursors_and_conflicts_persist<I: Index>(index: Arc<I>) {
    assert!(index.peer_cursors().await.unwrap().is_empty());
    let c = PeerCursor {
        site: "b".into(),
        incarnation: "i".into(),
        cursor: 42,
    };
    index.save_peer_cursor(&c).await.unwrap();
    index
        .save_peer_cursor(&PeerCursor {
            cursor: 43,
            ..c.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        index.peer_cursors().await.unwrap(),
        vec![PeerCursor { cursor: 43, ..c }]
    );
    let g = GridConflict {
        sop_instance_uid: "1.2.3".into(),
        local_hash: "aa".into(),
        hash: "bb".into(),
        site: "c".into(),
        at_ms: 5,
    };
    assert!(index.record_conflict(&g).await.unwrap());
    assert!(!index.record_conflict(&g).await.unwrap());
    assert_eq!(index.conflicts().await.unwrap(), vec![g]);
}

// ---------------------------------------------------------------------------------------
// peer pages

fn held(rec: &InstanceRecord, h: Holder, holds: bool) -> PeerChange {
    PeerChange::Holder {
        sop_instance_uid: rec.instance.sop_instance_uid.clone(),
        hash: rec.hash.clone(),
        holder: h,
        holds,
    }
}

fn tombstone(rec: &InstanceRecord, at_ms: i64) -> Tombstone {
    Tombstone {
        sop_instance_uid: rec.instance.sop_instance_uid.clone(),
        study_uid: rec.study.study_uid.clone(),
        series_uid: rec.series.series_uid.clone(),
        hash: rec.hash.clone(),
        at_ms,
        site: "b".into(),
    }
}

/// A page with every kind of change, including ones that change nothing.
fn mixed_page() -> Vec<PeerChange> {
    let (r1, r2, r3) = (record(1, 1, 1, 1), record(1, 1, 1, 2), record(1, 2, 1, 1));
    let mut other = r1.clone();
    other.hash = "cd".repeat(32);
    let mut unseen = record(9, 1, 1, 1);
    unseen.hash = "ab".repeat(32);
    vec![
        PeerChange::Record(Box::new(r1.clone())),
        held(&r1, holder("b", "ib"), true),
        PeerChange::Record(Box::new(r2.clone())),
        held(&r2, holder("b", "ib"), true),
        held(&r2, holder("c", "ic"), true),
        PeerChange::Record(Box::new(r3.clone())),
        held(&r3, holder("c", "ic"), true),
        // the same UID with other bytes: a conflict, nothing merged
        PeerChange::Record(Box::new(other.clone())),
        held(&other, holder("c", "ic"), true),
        // released by c; then again (already so), and by an old incarnation of b
        held(&r2, holder("c", "ic"), false),
        held(&r2, holder("c", "ic"), false),
        held(&r1, holder("b", "old"), false),
        // b is wiped: its new incarnation replaces the old copy
        held(&r1, holder("b", "ib2"), true),
        PeerChange::Tombstone(tombstone(&r3, r3.received_at_ms + 5)),
        PeerChange::Tombstone(tombstone(&unseen, 7)),
        // a late record of the deleted instance stays deleted
        PeerChange::Record(Box::new(r3.clone())),
        held(&r3, holder("b", "ib"), true),
        PeerChange::Record(Box::new(r1.clone())),
    ]
}

fn cursor(n: i64) -> PeerCursor {
    PeerCursor {
        site: "b".into(),
        incarnation: "ib".into(),
        cursor: n,
    }
}

/// Everything a peer or a query could see of the grid part of an index; feed times of
/// holder entries (the moment of applying) left out.
async fn state<I: Index>(index: &I) -> impl PartialEq + std::fmt::Debug {
    let mut feed = index.feed(0, 0).await.unwrap();
    for e in &mut feed {
        if matches!(e.kind, ChangeKind::Held | ChangeKind::Released) {
            e.at_ms = 0;
        }
    }
    let mut records = Vec::new();
    for h in index.holdings(0, 0).await.unwrap() {
        records.push(index.record(&h.sop_instance_uid).await.unwrap());
    }
    (
        feed,
        index.holdings(0, 0).await.unwrap(),
        records,
        index.stats().await.unwrap(),
        index.removable().await.unwrap(),
    )
}

async fn one_by_one<I: Index>(index: &I, changes: &[PeerChange]) -> Vec<PeerOutcome> {
    let mut out = Vec::new();
    for c in changes {
        out.push(match c {
            PeerChange::Record(r) => PeerOutcome::Record(index.insert_remote(r).await.unwrap()),
            PeerChange::Holder {
                sop_instance_uid,
                hash,
                holder,
                holds,
            } => PeerOutcome::Holder(
                index
                    .set_holder(sop_instance_uid, hash, holder, *holds)
                    .await
                    .unwrap(),
            ),
            PeerChange::Tombstone(t) => {
                PeerOutcome::Tombstone(index.apply_tombstone(t).await.unwrap())
            }
        });
    }
    out
}

/// Needs two empty indexes of the backend: one takes the page, the other its changes.
pub async fn a_page_applies_like_its_changes_one_by_one<I: Index>(paged: Arc<I>, single: Arc<I>) {
    let page = mixed_page();
    let a = paged
        .apply_peer_page(page.clone(), &cursor(18))
        .await
        .unwrap();
    let b = one_by_one(&*single, &page).await;
    assert_eq!(a, b, "the same outcomes, sequence numbers included");
    assert!(matches!(
        a[7],
        PeerOutcome::Record(InsertOutcome::Conflict { .. })
    ));
    assert_eq!(a[8], PeerOutcome::Holder(HolderChange::Unknown));
    assert_eq!(a[15], PeerOutcome::Record(InsertOutcome::Duplicate));
    assert_eq!(state(&*paged).await, state(&*single).await);
    assert_eq!(paged.peer_cursors().await.unwrap(), vec![cursor(18)]);
}

/// A page as one peer's feed could hold it: the mixed page without the copy released
/// and the new incarnation, which, read twice in a row, flip a holder and back (as the
/// same entries applied one by one would; each entry is idempotent, a sequence with
/// both a fact and its reversal is not).
fn replayable_page() -> Vec<PeerChange> {
    mixed_page()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| ![9, 10, 12].contains(i))
        .map(|(_, c)| c)
        .collect()
}

pub async fn a_page_applied_twice_changes_nothing<I: Index>(index: Arc<I>) {
    let page = replayable_page();
    index
        .apply_peer_page(page.clone(), &cursor(18))
        .await
        .unwrap();
    let before = state(&*index).await;
    let again = index.apply_peer_page(page, &cursor(18)).await.unwrap();
    assert_eq!(state(&*index).await, before, "no new feed entry, no change");
    for out in again {
        assert!(
            matches!(
                out,
                PeerOutcome::Record(InsertOutcome::Duplicate | InsertOutcome::Conflict { .. })
                    | PeerOutcome::Holder(HolderChange::Unchanged | HolderChange::Unknown)
                    | PeerOutcome::Tombstone(TombstoneOutcome::Known)
            ),
            "{out:?}"
        );
    }
}

pub async fn an_empty_page_still_saves_the_cursor<I: Index>(index: Arc<I>) {
    let out = index.apply_peer_page(Vec::new(), &cursor(5)).await.unwrap();
    assert!(out.is_empty());
    assert_eq!(index.peer_cursors().await.unwrap(), vec![cursor(5)]);
    assert_eq!(index.feed_head().await.unwrap(), 0);
}

pub async fn concurrent_holder_changes_are_each_committed_once<I: Index>(index: Arc<I>) {
    let recs: Vec<_> = (0..40).map(|i| record(2, 1, 1, i)).collect();
    for r in &recs {
        index.insert_remote(r).await.unwrap();
    }
    let head = index.feed_head().await.unwrap();
    let tasks: Vec<_> = recs
        .iter()
        .cloned()
        .map(|r| {
            let index = Arc::clone(&index);
            tokio::spawn(async move {
                index
                    .set_holder(
                        &r.instance.sop_instance_uid,
                        &r.hash,
                        &holder("a", "ia"),
                        true,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            HolderChange::Changed { seq } => seqs.push(seq),
            other => panic!("{other:?}"),
        }
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 40);
    assert_eq!(index.feed_head().await.unwrap(), head + 40);
    assert!(index
        .holdings(0, 0)
        .await
        .unwrap()
        .iter()
        .all(|h| h.holders == vec![holder("a", "ia")]));
    // and again: nothing changes
    for r in &recs {
        assert_eq!(
            index
                .set_holder(
                    &r.instance.sop_instance_uid,
                    &r.hash,
                    &holder("a", "ia"),
                    true
                )
                .await
                .unwrap(),
            HolderChange::Unchanged
        );
    }
    assert_eq!(index.feed_head().await.unwrap(), head + 40);
}
