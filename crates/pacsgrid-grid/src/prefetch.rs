//! Prefetch: when a new study of a patient arrives at this site, the patient's prior
//! studies held elsewhere are pulled here in advance (per `[grid.prefetch]`); an explicit
//! request pulls every study of a patient.

use crate::replicate::start_pull;
use crate::service::Grid;
use dicom_dictionary_std::tags;
use pacsgrid_archive::ChangeKind;
use pacsgrid_dicom::attrs::Level;
use pacsgrid_dicom::{Query, QueryModel};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What a prefetch queued.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrefetchReport {
    /// Studies chosen.
    pub studies: Vec<String>,
    /// Instances whose bytes are being pulled.
    pub instances_queued: u64,
    /// Instances already here.
    pub instances_local: u64,
}

/// Watches this site's own feed for new local studies until the service stops.
pub(crate) async fn run(grid: Arc<Grid>) {
    let mut cursor = grid.archive.feed_head().await.unwrap_or(0);
    let mut seen: HashSet<String> = HashSet::new();
    let interval = Duration::from_millis(grid.cfg.sync_interval_ms.max(50));
    while grid.pause(interval).await {
        let entries = match grid.archive.grid_feed(cursor, 500).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "prefetch: reading the feed failed");
                continue;
            }
        };
        for e in entries {
            cursor = e.seq;
            // a local arrival: this site is the holder the entry names
            if e.kind != ChangeKind::Stored || e.site != grid.site {
                continue;
            }
            let Some(rec) = e.record else { continue };
            if !seen.insert(rec.study.study_uid.clone()) {
                continue;
            }
            let rule = &grid.cfg.prefetch;
            match prefetch_patient(
                &grid,
                &rec.patient.patient_id,
                Some(&rec.patient.issuer),
                Some(&rec.study.study_uid),
                Some(rule.last_n),
            )
            .await
            {
                Ok(r) if !r.studies.is_empty() => tracing::info!(
                    patient_id = %rec.patient.patient_id,
                    new_study = %rec.study.study_uid,
                    priors = r.studies.len(),
                    queued = r.instances_queued,
                    "prefetching priors"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "prefetch failed"),
            }
        }
    }
}

fn date_days(yyyymmdd: &str) -> Option<i64> {
    if yyyymmdd.len() < 8 {
        return None;
    }
    let y: i64 = yyyymmdd[0..4].parse().ok()?;
    let m: i64 = yyyymmdd[4..6].parse().ok()?;
    let d: i64 = yyyymmdd[6..8].parse().ok()?;
    // days from civil (proleptic Gregorian), enough to compare ages
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Pulls a patient's studies (all but `except`, filtered by the site's rule when `last_n`
/// is given) to this site.
pub(crate) async fn prefetch_patient(
    grid: &Arc<Grid>,
    patient_id: &str,
    issuer: Option<&str>,
    except: Option<&str>,
    last_n: Option<usize>,
) -> Result<PrefetchReport, String> {
    let mut pairs = vec![
        (tags::PATIENT_ID, patient_id.to_string()),
        (tags::STUDY_INSTANCE_UID, String::new()),
        (tags::STUDY_DATE, String::new()),
        (tags::MODALITIES_IN_STUDY, String::new()),
    ];
    if let Some(i) = issuer {
        pairs.push((tags::ISSUER_OF_PATIENT_ID, i.to_string()));
    }
    let q = Query::parse(QueryModel::StudyRoot, Level::Study, pairs).map_err(|e| e.to_string())?;
    let studies = grid
        .archive
        .find(&q, 0, 0)
        .await
        .map_err(|e| e.to_string())?;
    let rule = &grid.cfg.prefetch;
    let today = date_days(&today_yyyymmdd());
    let mut chosen: Vec<(String, String)> = studies
        .iter()
        .filter_map(|s| {
            let uid = s.get(&tags::STUDY_INSTANCE_UID)?.clone();
            let date = s.get(&tags::STUDY_DATE).cloned().unwrap_or_default();
            let mods = s
                .get(&tags::MODALITIES_IN_STUDY)
                .cloned()
                .unwrap_or_default();
            if Some(uid.as_str()) == except {
                return None;
            }
            if last_n.is_some() {
                if !rule.modalities.is_empty()
                    && !mods
                        .split('\\')
                        .any(|m| rule.modalities.iter().any(|r| r == m))
                {
                    return None;
                }
                if rule.within_days > 0 {
                    let (Some(d), Some(t)) = (date_days(&date), today) else {
                        return None;
                    };
                    if t - d > rule.within_days as i64 {
                        return None;
                    }
                }
            }
            Some((date, uid))
        })
        .collect();
    chosen.sort_by(|a, b| b.cmp(a));
    if let Some(n) = last_n {
        chosen.truncate(n);
    }
    let mut report = PrefetchReport::default();
    for (_, study) in chosen {
        let q = Query::parse(
            QueryModel::StudyRoot,
            Level::Study,
            [(tags::STUDY_INSTANCE_UID, study.clone())],
        )
        .map_err(|e| e.to_string())?;
        let instances = grid.archive.locate(&q).await.map_err(|e| e.to_string())?;
        for inst in instances {
            let Some((_, holders)) = grid
                .archive
                .grid_record(&inst.sop_instance_uid)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            if holders.iter().any(|h| h.site == grid.site) {
                report.instances_local += 1;
                continue;
            }
            start_pull(grid, inst.sop_instance_uid, inst.hash, inst.size, holders);
            report.instances_queued += 1;
        }
        report.studies.push(study);
    }
    Ok(report)
}

fn today_yyyymmdd() -> String {
    let days = crate::service::now_ms().div_euclid(86_400_000);
    // civil from days (inverse of `date_days`)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}{m:02}{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(date_days("19700101"), Some(0));
        assert_eq!(
            date_days("20000301").unwrap() - date_days("20000228").unwrap(),
            2
        );
        let t = today_yyyymmdd();
        assert_eq!(t.len(), 8);
        assert!(date_days(&t).is_some());
    }
}
