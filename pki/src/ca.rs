//! The cluster CA and what it issues: [`Ca`] (generate, load, issue, sign a CSR), the
//! [`Profile`] a certificate is made from, [`csr`] for the requesting side, [`ca_digest`]
//! (what a join token pins) and [`inspect`].
//!
//! Keys are ECDSA P-256 (rcgen's default). A certificate is valid from the second it is
//! made (no backdating: revocation compares notBefore with the revocation time) for the
//! profile's lifetime, with a random 128-bit serial.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::error::{PkiError, Result};
use crate::token::sha256_hex;

/// How long a generated CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The cluster certificate authority: its certificate and key (PEM) and the rcgen issuer
/// built from them.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

/// What a certificate says about its subject; chosen by the signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Subject CN (a node's name, `shoal-controller`, an etcd member's name…).
    pub common_name: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ips: Vec<IpAddr>,
    /// Server, client or both (extended key usages).
    pub usage: Usage,
    /// Validity from now.
    pub lifetime: Duration,
}

/// The extended key usages of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication only.
    Server,
    /// TLS client authentication only.
    Client,
    /// Both (etcd members, nodes, the controller).
    Both,
}

/// A freshly issued certificate with its new private key (PEM).
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// What [`inspect`] reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject CN (empty if none).
    pub common_name: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex.
    pub serial: String,
}

impl Ca {
    /// A new CA with CN `shoal-ca <cluster>`, valid 10 years.
    pub fn generate(cluster: &str) -> Result<Ca> {
        let key = KeyPair::generate().map_err(PkiError::cert("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("shoal-ca {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_LIFETIME);
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .map_err(PkiError::cert("self-signing the CA certificate"))?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key (PEM); refuses a key that is not the
    /// certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::cert("reading the CA key"))?;
        let der = cert_der(cert_pem, "the CA certificate")?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::parse("the CA certificate", e))?;
        if x509.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(PkiError::cert("reading the CA certificate"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM, PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// sha256 of the CA certificate's DER, lowercase hex (what join tokens carry).
    pub fn digest(&self) -> String {
        ca_digest(&self.cert_pem).expect("a loaded CA certificate parses")
    }

    /// A new key and a certificate for it made from `profile`.
    pub fn issue(&self, profile: &Profile) -> Result<Issued> {
        let key = KeyPair::generate().map_err(PkiError::cert("generating a key"))?;
        let cert = params(profile)?
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::cert(format!(
                "signing the certificate of {}",
                profile.common_name
            )))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the public key of `csr_pem` (whose self-signature is verified) with subject,
    /// SANs, usages and lifetime from `profile`; whatever else the request asks is ignored.
    pub fn sign_csr(&self, csr_pem: &str, profile: &Profile) -> Result<String> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(PkiError::cert("reading the certificate request"))?;
        let cert = params(profile)?
            .signed_by(&request.public_key, &self.issuer)
            .map_err(PkiError::cert(format!(
                "signing the certificate request of {}",
                profile.common_name
            )))?;
        Ok(cert.pem())
    }
}

/// A new key (PEM, PKCS#8) and a certificate request for it with subject CN `common_name`:
/// (CSR PEM, key PEM).
pub fn csr(common_name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(PkiError::cert("generating a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    let request = params
        .serialize_request(&key)
        .map_err(PkiError::cert("making the certificate request"))?;
    let pem = request
        .pem()
        .map_err(PkiError::cert("encoding the certificate request"))?;
    Ok((pem, key.serialize_pem()))
}

/// sha256 of the DER of the first certificate in `ca_cert_pem`, lowercase hex.
pub fn ca_digest(ca_cert_pem: &str) -> Result<String> {
    Ok(sha256_hex(&cert_der(ca_cert_pem, "the CA certificate")?))
}

/// Subject CN, validity and serial of the first certificate in `cert_pem`.
pub fn inspect(cert_pem: &str) -> Result<CertInfo> {
    let der = cert_der(cert_pem, "the certificate")?;
    info(&der)
}

/// [`inspect`] on DER.
pub(crate) fn info(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::parse("the certificate", e))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let validity = cert.validity();
    Ok(CertInfo {
        common_name,
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
        serial: hex::encode(cert.raw_serial()),
    })
}

/// The DER of the first CERTIFICATE block of `pem`.
pub(crate) fn cert_der(pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::parse(what, format!("no PEM certificate ({e})")))
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01; // positive, no leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// Valid from now (whole seconds) for `lifetime`.
fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    params.not_before = now;
    params.not_after = now + lifetime;
}

fn params(profile: &Profile) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&profile.common_name);
    params.subject_alt_names = profile
        .dns_names
        .iter()
        .map(|d| {
            d.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(PkiError::cert(format!("the DNS name {d:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    params
        .subject_alt_names
        .extend(profile.ips.iter().copied().map(SanType::IpAddress));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match profile.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Both => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    validity(&mut params, profile.lifetime);
    Ok(params)
}

/// [`inspect`] on a certificate's DER (what a TLS peer presented).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo> {
    info(der)
}
