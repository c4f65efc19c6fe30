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
