//! The node's de-identification secret: read from its file, or made (32 random bytes,
//! owner-only, fsynced) the first time the node starts.

use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Fewer bytes than this is not a secret worth the name.
const MIN_LEN: usize = 16;

/// The secret in `path`, created when the file does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= MIN_LEN => return Ok(bytes),
        Ok(bytes) => anyhow::bail!(
            "the de-identification secret {} holds {} bytes; it needs at least {MIN_LEN}",
            path.display(),
            bytes.len()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", path.display()));
        }
    }
    let mut secret = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&secret)?;
    // a secret lost in a crash would change every pseudonym: on disk before first use
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    tracing::info!(path = %path.display(), "made a new de-identification secret");
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deid.secret");
        let a = load_or_create(&p).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(load_or_create(&p).unwrap(), a);
        std::fs::write(&p, b"short").unwrap();
        assert!(load_or_create(&p).is_err());
    }
}
