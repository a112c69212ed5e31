//! The hub's certificate authority and what it issues, and a sidecar's own identity.
//!
//! On first start the hub makes a CA (`ca.pem`, `ca.key`) in its data directory; at every
//! start it issues itself a serving certificate (`hub.pem`, `hub.key`) for [`crate::HUB_NAME`]
//! and the names it is given. A sidecar makes its own key pair and sends a certificate
//! signing request when it enrols; the hub signs it for the sidecar id it assigns, for client
//! authentication only, so a sidecar's certificate can never pass as the hub's. Private keys
//! are written 0600 and never leave the machine that made them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, Fingerprint, HUB_NAME};

/// How long the CA, and the identities it issues, are valid. Identities are cut off by
/// revocation, which the hub checks at every connection, not by expiry.
const AUTHORITY_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The serving certificate is issued anew at every start.
const SERVING_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);
/// Certificates start an hour back, for clocks a little behind the hub's.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The hub's certificate authority.
pub struct Authority {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    fingerprint: Fingerprint,
}

/// A certificate chain (leaf first) and its key.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertifiedKey {
    fn clone(&self) -> CertifiedKey {
        CertifiedKey { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl Authority {
    /// Loads `DIR/ca.pem` and `DIR/ca.key`, or makes them when neither exists. One without the
    /// other is an error: a new CA would silently cut off every sidecar and token file.
    pub fn load_or_create(dir: &Path) -> Result<Authority, Error> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert = read_cert(&cert_path)?;
                let key = read_key(&key_path)?;
                let issuer = Issuer::from_ca_cert_der(&cert, key)?;
                Ok(Authority { fingerprint: Fingerprint::of(&cert), cert, issuer })
            }
            (false, false) => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::default();
                params.distinguished_name =
                    name(&format!("AgentCom hub CA {}", hex::encode(rand::random::<[u8; 4]>())));
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages =
                    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
                validity(&mut params, AUTHORITY_VALIDITY);
                let cert = params.self_signed(&key)?;
                write_private(&key_path, &key.serialize_pem())?;
                write_public(&cert_path, &cert.pem())?;
                let cert = cert.der().clone();
                Ok(Authority { fingerprint: Fingerprint::of(&cert), cert, issuer: Issuer::new(params, key) })
            }
            (true, false) => Err(missing(&key_path, &cert_path)),
            (false, true) => Err(missing(&cert_path, &key_path)),
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A serving certificate for [`HUB_NAME`], `localhost`, the loopback addresses and `names`
    /// (DNS names or IP addresses), written to `DIR/hub.pem` (chain) and `DIR/hub.key`.
    pub fn serving(&self, dir: &Path, names: &[String]) -> Result<CertifiedKey, Error> {
        let mut sans: Vec<String> = [HUB_NAME, "localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        for name in names {
            if !sans.contains(name) {
                sans.push(name.clone());
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(HUB_NAME);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SERVING_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer)?;
        write_private(&dir.join("hub.key"), &key.serialize_pem())?;
        write_public(&dir.join("hub.pem"), &format!("{}{}", cert.pem(), pem_of(&self.cert)))?;
        Ok(CertifiedKey { chain: vec![cert.der().clone(), self.cert.clone()], key: pkcs8(&key) })
    }

    /// Signs a sidecar's certificate signing request for `sidecar_id`. Only the request's key
    /// is used (its signature proves the sender holds it); the name, usage and validity are
    /// the hub's: client authentication only.
    pub fn sign_sidecar(&self, csr_der: &[u8], sidecar_id: &str) -> Result<CertificateDer<'static>, Error> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(sidecar_id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, AUTHORITY_VALIDITY);
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.der().clone())
    }
}

/// A sidecar's key pair and the signing request it sends when it enrols.
pub struct Request {
    pub key: KeyPair,
    pub csr_der: Vec<u8>,
}

impl Request {
    pub fn new(hostname: &str) -> Result<Request, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(hostname);
        let csr = params.serialize_request(&key)?;
        Ok(Request { csr_der: csr.der().to_vec(), key })
    }
}

/// A sidecar's identity, kept in `STATE_DIR/identity/`: its id, its key (0600), the
/// certificate the hub issued, and the hub's CA (pinned from then on).
pub struct Identity {
    pub sidecar_id: String,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("sidecar_id", &self.sidecar_id)
            .field("cert", &Fingerprint::of(&self.cert))
            .field("ca", &Fingerprint::of(&self.ca))
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("identity")
    }

    /// The identity kept in `state_dir`, if the sidecar has enrolled.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, Error> {
        let dir = Identity::dir(state_dir);
        let id_path = dir.join("id");
        if !id_path.exists() {
            return Ok(None);
        }
        let sidecar_id = std::fs::read_to_string(&id_path).map_err(io(&id_path))?.trim().to_owned();
        let key_path = dir.join("key.pem");
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|err| file(&key_path, err))?;
        Ok(Some(Identity {
            sidecar_id,
            cert: read_cert(&dir.join("cert.pem"))?,
            key,
            ca: read_cert(&dir.join("ca.pem"))?,
        }))
    }

    /// Writes the identity (the key first, 0600; the id last, so a crash midway leaves no
    /// identity rather than half of one).
    pub fn save(state_dir: &Path, sidecar_id: &str, key: &KeyPair, cert: &[u8], ca: &[u8]) -> Result<Identity, Error> {
        let dir = Identity::dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        }
        write_private(&dir.join("key.pem"), &key.serialize_pem())?;
        write_public(&dir.join("cert.pem"), &pem_of(&CertificateDer::from(cert.to_vec())))?;
        write_public(&dir.join("ca.pem"), &pem_of(&CertificateDer::from(ca.to_vec())))?;
        write_public(&dir.join("id"), &format!("{sidecar_id}\n"))?;
        Ok(Identity {
            sidecar_id: sidecar_id.to_owned(),
            cert: CertificateDer::from(cert.to_vec()),
            key: pkcs8(key),
            ca: CertificateDer::from(ca.to_vec()),
        })
    }

    pub fn certified_key(&self) -> CertifiedKey {
        CertifiedKey { chain: vec![self.cert.clone()], key: self.key.clone_key() }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + valid_for;
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivatePkcs8KeyDer::from(key.serialize_der()).into()
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec()))
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, Error> {
    CertificateDer::from_pem_file(path).map_err(|err| file(path, err))
}

fn read_key(path: &Path) -> Result<KeyPair, Error> {
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    KeyPair::from_pem(&pem).map_err(|err| Error::File { path: path.to_owned(), message: err.to_string() })
}

fn missing(absent: &Path, present: &Path) -> Error {
    Error::File {
        path: absent.to_owned(),
        message: format!(
            "missing while {} exists: restore it from a backup (a new authority would cut off every enrolled sidecar and token file), or remove both to start over",
            present.display()
        ),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

fn file(path: &Path, err: impl std::fmt::Display) -> Error {
    Error::File { path: path.to_owned(), message: err.to_string() }
}

/// Writes a key: created 0600 (never readable by others, not even for an instant), synced,
/// and renamed into place.
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    write_file(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> Result<(), Error> {
    write_file(path, text, 0o644)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_authority_is_made_once_and_kept_with_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
        assert_eq!(mode(&dir.path().join("ca.pem")), 0o644);
        let again = Authority::load_or_create(dir.path()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint(), "the same CA after a restart");
        let serving = again.serving(dir.path(), &["hub.example".into()]).unwrap();
        assert_eq!(serving.chain.len(), 2);
        assert_eq!(serving.chain[1], *ca.cert());
        assert_eq!(mode(&dir.path().join("hub.key")), 0o600);

        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = Authority::load_or_create(dir.path()).err().unwrap().to_string();
        assert!(err.contains("ca.key") && err.contains("restore it"), "{err}");
    }

    #[test]
    fn our_pem_is_what_rustls_reads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        let pem = pem_of(ca.cert());
        assert_eq!(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(), *ca.cert());
    }

    #[test]
    fn a_sidecar_identity_is_signed_from_its_request_and_saved_privately() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        let request = Request::new("gpu-1").unwrap();
        let cert = ca.sign_sidecar(&request.csr_der, "sc-gpu-1").unwrap();
        let state = dir.path().join("state");
        Identity::save(&state, "sc-gpu-1", &request.key, &cert, ca.cert()).unwrap();
        assert_eq!(mode(&Identity::dir(&state).join("key.pem")), 0o600);
        assert_eq!(mode(&Identity::dir(&state)), 0o700);
        let loaded = Identity::load(&state).unwrap().unwrap();
        assert_eq!(loaded.sidecar_id, "sc-gpu-1");
        assert_eq!(loaded.cert, cert);
        assert_eq!(loaded.ca, *ca.cert());
        assert!(Identity::load(&dir.path().join("nothing")).unwrap().is_none());
        assert!(ca.sign_sidecar(b"not a request", "x").is_err());
    }
}
