//! Where an instance's copies belong: a deterministic choice every site computes alike from
//! the same facts, so that no site has to coordinate with another.
//!
//! The origin keeps its copy while it is healthy; the other copies go to the origin's
//! preferred backup sites first, then to the healthy sites ranked by rendezvous hashing of
//! (study, site). A whole study lands on the same sites, and losing a site moves only the
//! copies it held.

/// The sites that should hold a study's instances: at most `copies`, all in `healthy`.
pub fn targets(
    study_uid: &str,
    origin: &str,
    preferred: &[String],
    healthy: &[String],
    copies: usize,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(copies);
    if healthy.iter().any(|s| s == origin) {
        out.push(origin.to_string());
    }
    for p in preferred {
        if out.len() >= copies {
            break;
        }
        if healthy.contains(p) && !out.contains(p) {
            out.push(p.clone());
        }
    }
    let mut ranked: Vec<(u64, &String)> = healthy
        .iter()
        .filter(|s| !out.contains(s))
        .map(|s| (score(study_uid, s), s))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    for (_, s) in ranked {
        if out.len() >= copies {
            break;
        }
        out.push(s.clone());
    }
    out.truncate(copies);
    out
}

fn score(study_uid: &str, site: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(study_uid.as_bytes());
    h.update(b"\0");
    h.update(site.as_bytes());
    let b = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origin_first_then_distinct_sites() {
        let all = sites(&["a", "b", "c", "d"]);
        for i in 0..200 {
            let study = format!("1.2.3.{i}");
            let t = targets(&study, "b", &[], &all, 2);
            assert_eq!(t.len(), 2);
            assert_eq!(t[0], "b");
            assert_ne!(t[1], "b");
            assert_eq!(t, targets(&study, "b", &[], &all, 2), "deterministic");
        }
    }

    #[test]
    fn spreads_over_sites_and_honours_preferences() {
        let all = sites(&["a", "b", "c", "d"]);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            seen.insert(targets(&format!("1.2.{i}"), "a", &[], &all, 2)[1].clone());
        }
        assert_eq!(seen.len(), 3, "every other site gets some second copies");
        let t = targets("1.2.3", "a", &sites(&["d"]), &all, 2);
        assert_eq!(t, sites(&["a", "d"]));
    }

    #[test]
    fn losing_a_site_moves_only_its_copies() {
        let all = sites(&["a", "b", "c", "d"]);
        let without_c = sites(&["a", "b", "d"]);
        for i in 0..200 {
            let study = format!("1.9.{i}");
            let before = targets(&study, "a", &[], &all, 2);
            let after = targets(&study, "a", &[], &without_c, 2);
            if !before.contains(&"c".to_string()) {
                assert_eq!(before, after);
            }
            assert_eq!(after.len(), 2);
        }
        // origin lost: copies still K, among the survivors
        let t = targets("1.2.3", "c", &[], &without_c, 2);
        assert_eq!(t.len(), 2);
        assert!(!t.contains(&"c".to_string()));
        // fewer healthy sites than copies: all of them
        assert_eq!(targets("1.2", "a", &[], &sites(&["a"]), 2), sites(&["a"]));
    }
}
