//! The grid's small PKI: one CA per grid, one certificate per site. A site certificate names
//! the site (CN and a DNS SAN) and serves as both TLS server and client certificate, so the same
//! credentials authenticate a site whichever side of a connection it is on.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate inside a grid directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a grid directory.
pub const CA_KEY_FILE: &str = "ca.key";

const CA_COMMON_NAME: &str = "pacsgrid grid CA";
const CA_VALIDITY_DAYS: i64 = 20 * 365;
const SITE_VALIDITY_DAYS: i64 = 10 * 365;
const MAX_SITE_NAME_LEN: usize = 32;

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A site name breaks the naming rule.
    #[error("invalid site name {name:?}: {reason}")]
    SiteName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A host given for the certificate is neither an IP address nor a DNS name.
    #[error("invalid host {0:?} for a site certificate")]
    Host(String),
    /// The CA key already exists: creating a CA over it would orphan every site certificate.
    #[error("{0} already exists: refusing to replace an existing grid CA")]
    CaExists(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused to make or parse a certificate or key.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// The CA key does not belong to the CA certificate.
    #[error("{key} is not the private key of {cert}")]
    KeyMismatch {
        /// The CA certificate.
        cert: PathBuf,
        /// The key that does not match it.
        key: PathBuf,
    },
}

/// Checks a site name: 1 to 32 characters of lowercase ASCII letters, digits and '-'.
/// The name goes into certificates, file names and AE titles, hence the narrow alphabet.
pub fn validate_site_name(name: &str) -> Result<(), PkiError> {
    let err = |reason| {
        Err(PkiError::SiteName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > MAX_SITE_NAME_LEN {
        return err("it is longer than 32 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("only lowercase letters a-z, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return err("it must not start or end with '-'");
    }
    Ok(())
}

/// A site's certificate and private key, PEM encoded.
#[derive(Clone)]
pub struct SiteCredentials {
    /// The certificate, signed by the grid CA.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for SiteCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key into a log.
        f.debug_struct("SiteCredentials")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl SiteCredentials {
    /// Writes `DIR/<name>.pem` and `DIR/<name>.key` (the key readable by its owner only) and
    /// returns their paths. Existing files are replaced.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, self.cert_pem.as_bytes(), false, false)?;
        write_file(&key, self.key_pem.as_bytes(), true, false)?;
        Ok((cert, key))
    }
}

/// A grid certificate authority: signs the site certificates that peers trust each other by.
pub struct GridCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for GridCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridCa").finish_non_exhaustive()
    }
}

impl GridCa {
    /// Makes a new CA and writes `DIR/ca.pem` and `DIR/ca.key` (mode 0600). Refuses if
    /// `DIR/ca.key` exists. Creates DIR if needed.
    pub fn create(dir: &Path) -> Result<GridCa, PkiError> {
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            return Err(PkiError::CaExists(key_path));
        }
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A grid-unique CA name: a certificate from another grid's CA is then reported as
        // signed by an unknown issuer, not as a bad signature from this one.
        let id: String = key.public_key_raw()[1..7]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        dn.push(DnType::CommonName, format!("{CA_COMMON_NAME} {id}"));
        dn.push(DnType::OrganizationName, "pacsgrid");
        params.distinguished_name = dn;
        // The CA signs site certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        // The key first, with create_new: two concurrent inits cannot both win.
        write_file(&key_path, key.serialize_pem().as_bytes(), true, true)?;
        write_file(&dir.join(CA_CERT_FILE), cert_pem.as_bytes(), false, false)?;
        Ok(GridCa {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA written by [`GridCa::create`] from DIR.
    pub fn load(dir: &Path) -> Result<GridCa, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)?;
        let der = rustls_pki_types::CertificateDer::from(
            pem_body(&cert_pem).ok_or(rcgen::Error::CouldNotParseCertificate)?,
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(GridCa { cert_pem, issuer })
    }

    /// The CA certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for site `name`: CN and DNS SAN = name, plus a SAN for each of
    /// `hosts` (IP address or DNS name) and the loopback addresses 127.0.0.1 and ::1, valid as
    /// TLS server and client for ten years.
    pub fn issue_site(&self, name: &str, hosts: &[String]) -> Result<SiteCredentials, PkiError> {
        validate_site_name(name)?;
        let mut sans: Vec<SanType> = Vec::new();
        let mut push = |san: SanType| {
            if !sans.contains(&san) {
                sans.push(san);
            }
        };
        push(SanType::DnsName(name.try_into()?));
        for host in hosts {
            let host = host.trim();
            if let Ok(ip) = host.parse::<IpAddr>() {
                push(SanType::IpAddress(ip));
            } else if is_dns_name(host) {
                push(SanType::DnsName(host.try_into()?));
            } else {
                return Err(PkiError::Host(host.to_string()));
            }
        }
        push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "pacsgrid");
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, SITE_VALIDITY_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(SiteCredentials {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The site name a peer certificate carries (its subject CN), if it is a valid site name.
pub fn site_name_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    validate_site_name(cn).ok()?;
    Some(cn.to_string())
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for clocks between sites that disagree a little.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The DER bytes of the first PEM block in `pem`.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8], private: bool, create_new: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::CaExists(path.to_path_buf())
        } else {
            io(e)
        }
    })?;
    // `mode` applies only to a new file: tighten a replaced key file too.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        pem_body(pem).unwrap()
    }

    #[test]
    fn site_names_follow_the_rule() {
        for ok in ["a", "site-1", "hospital-north", &"x".repeat(32)] {
            validate_site_name(ok).unwrap();
        }
        for bad in ["", "A", "a_b", "a.b", "-a", "a-", &"x".repeat(33), "é"] {
            let err = validate_site_name(bad).unwrap_err();
            assert!(err.to_string().contains("invalid site name"), "{err}");
        }
    }

    #[test]
    fn issued_certificate_names_the_site_and_its_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GridCa::create(dir.path()).unwrap();
        let creds = ca
            .issue_site("north", &["localhost".into(), "10.1.2.3".into()])
            .unwrap();
        let der = der_of(&creds.cert_pem);
        assert_eq!(site_name_of(&der).as_deref(), Some("north"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                },
                other => format!("{other}"),
            })
            .collect();
        let all = names.join(",");
        for want in ["north", "localhost", "10.1.2.3", "127.0.0.1", "::1"] {
            assert!(all.contains(want), "{want} missing from {all}");
        }
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 86400);
        assert_eq!(years, 10);
        assert!(ca.issue_site("North", &[]).is_err());
        assert!(matches!(
            ca.issue_site("ok", &["bad host!".into()]),
            Err(PkiError::Host(_))
        ));
    }

    #[test]
    fn ca_files_are_written_private_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GridCa::create(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            GridCa::create(dir.path()),
            Err(PkiError::CaExists(_))
        ));
        let loaded = GridCa::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        // A certificate issued by the reloaded CA chains to the original CA certificate.
        let creds = loaded.issue_site("b", &[]).unwrap();
        let site_der = der_of(&creds.cert_pem);
        let (_, site) = x509_parser::parse_x509_certificate(&site_der).unwrap();
        let ca_der = der_of(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(site.issuer(), ca_cert.subject());
        let (cert, key) = creds.write(dir.path(), "b").unwrap();
        assert!(cert.exists() && key.exists());
    }

    #[test]
    fn a_foreign_key_is_refused() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        GridCa::create(one.path()).unwrap();
        GridCa::create(two.path()).unwrap();
        std::fs::copy(two.path().join(CA_KEY_FILE), one.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            GridCa::load(one.path()),
            Err(PkiError::KeyMismatch { .. })
        ));
    }
}
