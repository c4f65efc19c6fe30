//! The grid as this site sees it, for `GET /api/v1/grid` and `pacsgrid grid status`, and
//! the other operations the REST API may ask for (prefetch, scrub).

use crate::service::{now_ms, Grid};
use async_trait::async_trait;
use pacsgrid_archive::GridControl;
use serde_json::{json, Value};
use std::sync::Arc;

#[async_trait]
impl GridControl for Grid {
    async fn status(&self) -> Result<Value, String> {
        let inc = self
            .archive
            .incarnation()
            .await
            .map_err(|e| e.to_string())?;
        let head = self.archive.feed_head().await.map_err(|e| e.to_string())?;
        let conflicts = self
            .archive
            .grid_conflicts()
            .await
            .map_err(|e| e.to_string())?;
        let figures = self
            .figures
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let held = |s: &str| figures.held.get(s).copied().unwrap_or(0);
        let mut sites = vec![json!({
            "name": self.site,
            "self": true,
            "url": self.cfg.url,
            "reachable": true,
            "lost": false,
            "since_ms": null,
            "incarnation": inc,
            "feed_head": head,
            "cursor": null,
            "lag": 0,
            "instances_held": held(&self.site),
            "last_error": null,
        })];
        for name in self.peer_names() {
            let Some(p) = self.peer(&name) else { continue };
            sites.push(json!({
                "name": p.name,
                "self": false,
                "url": p.url,
                "reachable": p.reachable,
                "lost": self.is_lost(&p),
                "since_ms": p.since_ms,
                "incarnation": p.incarnation,
                "feed_head": p.head,
                "cursor": p.cursor,
                "lag": (p.head - p.cursor).max(0),
                "instances_held": held(&p.name),
                "last_error": p.last_error,
            }));
        }
        Ok(json!({
            "site": self.site,
            "copies": self.cfg.copies,
            "lost_after_secs": self.cfg.lost_after_secs,
            "instances": figures.instances,
            "under_replicated": figures.under_replicated,
            "counted_at_ms": figures.at_ms,
            "now_ms": now_ms(),
            "transfers_running": self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len(),
            "conflicts": conflicts,
            "sites": sites,
        }))
    }

    async fn prefetch(&self, patient_id: &str, issuer: Option<&str>) -> Result<Value, String> {
        let me = self.self_arc()?;
        let r = crate::prefetch::prefetch_patient(&me, patient_id, issuer, None, None).await?;
        tracing::info!(
            patient_id,
            studies = r.studies.len(),
            queued = r.instances_queued,
            "prefetch requested"
        );
        serde_json::to_value(r).map_err(|e| e.to_string())
    }

    async fn scrub(&self) -> Result<Value, String> {
        let me = self.self_arc()?;
        let r = crate::scrub::scrub(&me).await.map_err(|e| e.to_string())?;
        serde_json::to_value(r).map_err(|e| e.to_string())
    }
}

impl Grid {
    /// The service as an `Arc`, for operations that spawn tasks.
    fn self_arc(&self) -> Result<Arc<Grid>, String> {
        self.me
            .get()
            .and_then(|w| w.upgrade())
            .ok_or_else(|| "the grid service is stopping".to_string())
    }
}
