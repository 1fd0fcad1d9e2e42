//! Passphrase-sealed secrets: the encrypted key-file format shared by the
//! node's key file and the client's device and admin key files.
//!
//! A sealed file wraps the plaintext key file's exact bytes:
//!
//! ```json
//! {"kind": "keyreg-sealed-key", "version": 1,
//!  "kdf": {"algorithm": "argon2id", "memory_kib": 65536, "iterations": 3,
//!          "parallelism": 1, "salt": "<16 bytes hex>"},
//!  "cipher": "chacha20-poly1305", "nonce": "<12 bytes hex>",
//!  "key_check": "<32 bytes hex>", "ciphertext": "<hex>"}
//! ```
//!
//! Argon2id stretches the passphrase (random salt and the parameters are
//! stored), ChaCha20-Poly1305 encrypts, with the file's header (kind,
//! version, KDF, cipher, nonce) as associated data. `key_check`, a BLAKE3
//! derivation of the derived key, tells a wrong passphrase apart from a
//! tampered file; it gives an attacker nothing the authentication tag does
//! not already give (both need the Argon2 work per guess).
//!
//! Parameters read from a file are bounded before use, so a hostile file
//! cannot make the reader allocate or compute without limit.
//!
//! The passphrase comes from [`configured_passphrase`]: a passphrase file
//! (a `--passphrase-file` flag or `KEYREG_PASSPHRASE_FILE`), else the
//! `KEYREG_PASSPHRASE` variable.

use std::io::Read;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::{random_bytes, CryptoError};

const KIND: &str = "keyreg-sealed-key";
const VERSION: u8 = 1;
const KDF: &str = "argon2id";
const CIPHER: &str = "chacha20-poly1305";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
/// A passphrase file longer than this is not one.
const MAX_PASSPHRASE_FILE_LEN: u64 = 4096;

/// The variable holding a passphrase.
pub const PASSPHRASE_ENV: &str = "KEYREG_PASSPHRASE";
/// The variable naming a file that holds the passphrase.
pub const PASSPHRASE_FILE_ENV: &str = "KEYREG_PASSPHRASE_FILE";

const KEY_CHECK_CONTEXT: &str = "keyreg 2026 sealed key file v1 key check";

/// Bounds on parameters accepted from a file: 1 GiB of memory, 64 passes,
/// 16 lanes (far above the defaults, far below a denial of service).
const MAX_MEMORY_KIB: u32 = 1 << 20;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for SealParams {
    /// 64 MiB, 3 passes, 1 lane (RFC 9106's second recommendation with one
    /// lane): about a fifth of a second per attempt on a server core.
    fn default() -> Self {
        SealParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl SealParams {
    fn argon2(&self) -> Result<argon2::Argon2<'static>, SealError> {
        if self.memory_kib > MAX_MEMORY_KIB
            || self.iterations > MAX_ITERATIONS
            || self.parallelism > MAX_PARALLELISM
        {
            return Err(SealError::Malformed(format!(
                "KDF parameters {self:?} exceed the limits"
            )));
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| SealError::Malformed(format!("KDF parameters: {e}")))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }
}

#[derive(Debug, Error)]
pub enum SealError {
    #[error("wrong passphrase (or the file's KDF parameters or salt were altered)")]
    WrongPassphrase,
    #[error("the sealed key file was tampered with or corrupted (authentication failed)")]
    Tampered,
    #[error("not a sealed key file: {0}")]
    Malformed(String),
    #[error("an empty passphrase protects nothing")]
    EmptyPassphrase,
    #[error("the key file is encrypted: give its passphrase with --passphrase-file, {PASSPHRASE_FILE_ENV} or {PASSPHRASE_ENV}")]
    PassphraseNeeded,
    #[error("passphrase file {path}: {reason}")]
    PassphraseFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A passphrase, wiped from memory when dropped.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// A passphrase given as text. Only a trailing line break is removed
    /// (files usually end with one); other whitespace is significant.
    pub fn new(text: impl Into<String>) -> Result<Self, SealError> {
        let mut text = Zeroizing::new(text.into());
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        if text.is_empty() {
            return Err(SealError::EmptyPassphrase);
        }
        Ok(Passphrase(text))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// The passphrase this process was given: `file` (a `--passphrase-file`
/// flag) if any, else the file named by `KEYREG_PASSPHRASE_FILE`, else
/// `KEYREG_PASSPHRASE`; `None` when none is configured. A passphrase file
/// must be private to its owner, like a key file.
pub fn configured_passphrase(file: Option<&Path>) -> Result<Option<Passphrase>, SealError> {
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(PASSPHRASE_FILE_ENV).map(PathBuf::from));
    if let Some(path) = file {
        return read_passphrase_file(&path).map(Some);
    }
    match std::env::var(PASSPHRASE_ENV) {
        Ok(text) => Passphrase::new(text).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(SealError::Malformed(format!(
            "{PASSPHRASE_ENV} is not UTF-8"
        ))),
    }
}

fn read_passphrase_file(path: &Path) -> Result<Passphrase, SealError> {
    let failed = |reason: String| SealError::PassphraseFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let meta = file.metadata().map_err(|e| failed(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(failed(format!(
                "mode {mode:03o} lets group or others read it; run `chmod 600`"
            )));
        }
    }
    if meta.len() > MAX_PASSPHRASE_FILE_LEN {
        return Err(failed("too large".into()));
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_PASSPHRASE_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(|e| failed(e.to_string()))?;
    Passphrase::new(text.as_str())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfJson {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedJson {
    kind: String,
    version: u8,
    kdf: KdfJson,
    cipher: String,
    nonce: String,
    key_check: String,
    ciphertext: String,
}

/// Whether `file` looks like a sealed key file (its `kind`), without
/// checking the rest: decides between the sealed and the plaintext reader.
pub fn is_sealed(file: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    serde_json::from_slice::<Kind>(file).is_ok_and(|k| k.kind.as_deref() == Some(KIND))
}

/// The associated data: everything in the file but the check and the
/// ciphertext, so no header field can be changed unnoticed.
fn associated_data(kdf: &KdfJson, nonce: &str) -> Vec<u8> {
    format!(
        "{KIND}\0{VERSION}\0{}\0{}\0{}\0{}\0{}\0{CIPHER}\0{nonce}",
        kdf.algorithm, kdf.memory_kib, kdf.iterations, kdf.parallelism, kdf.salt
    )
    .into_bytes()
}

fn derive_key(
    passphrase: &Passphrase,
    salt: &[u8],
    params: SealParams,
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut key = Zeroizing::new([0u8; 32]);
    params
        .argon2()?
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|e| SealError::Malformed(format!("KDF: {e}")))?;
    Ok(key)
}

fn key_check(key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(KEY_CHECK_CONTEXT, key)
}

/// Encrypts `secret` (a plaintext key file's bytes) under `passphrase`.
/// Returns the sealed file's text.
pub fn seal(
    secret: &[u8],
    passphrase: &Passphrase,
    params: SealParams,
) -> Result<String, SealError> {
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut salt)?;
    random_bytes(&mut nonce)?;
    let key = derive_key(passphrase, &salt, params)?;
    let kdf = KdfJson {
        algorithm: KDF.into(),
        memory_kib: params.memory_kib,
        iterations: params.iterations,
        parallelism: params.parallelism,
        salt: hex::encode(salt),
    };
    let nonce_hex = hex::encode(nonce);
    let aad = associated_data(&kdf, &nonce_hex);
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Malformed("encryption failed".into()))?;
    let json = SealedJson {
        kind: KIND.into(),
        version: VERSION,
        kdf,
        cipher: CIPHER.into(),
        nonce: nonce_hex,
        key_check: hex::encode(key_check(&key)),
        ciphertext: hex::encode(ciphertext),
    };
    serde_json::to_string_pretty(&json)
        .map(|text| text + "\n")
        .map_err(|e| SealError::Malformed(e.to_string()))
}

fn fixed_hex<const N: usize>(field: &str, text: &str) -> Result<[u8; N], SealError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| SealError::Malformed(format!("{field}: {e}")))?;
    Ok(out)
}

/// Decrypts a sealed file's bytes, returning the plaintext key file's bytes.
pub fn open(file: &[u8], passphrase: &Passphrase) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let json: SealedJson =
        serde_json::from_slice(file).map_err(|e| SealError::Malformed(e.to_string()))?;
    if json.kind != KIND
        || json.version != VERSION
        || json.kdf.algorithm != KDF
        || json.cipher != CIPHER
    {
        return Err(SealError::Malformed(format!(
            "unsupported kind {:?} version {} kdf {:?} cipher {:?}",
            json.kind, json.version, json.kdf.algorithm, json.cipher
        )));
    }
    let salt: [u8; SALT_LEN] = fixed_hex("salt", &json.kdf.salt)?;
    let nonce: [u8; NONCE_LEN] = fixed_hex("nonce", &json.nonce)?;
    let stored_check: [u8; 32] = fixed_hex("key_check", &json.key_check)?;
    let ciphertext = hex::decode(&json.ciphertext)
        .map_err(|e| SealError::Malformed(format!("ciphertext: {e}")))?;
    let params = SealParams {
        memory_kib: json.kdf.memory_kib,
        iterations: json.kdf.iterations,
        parallelism: json.kdf.parallelism,
    };
    let key = derive_key(passphrase, &salt, params)?;
    if key_check(&key) != stored_check {
        return Err(SealError::WrongPassphrase);
    }
    let aad = associated_data(&json.kdf, &json.nonce);
    ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests check the format, not the cost.
    const FAST: SealParams = SealParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn pass(text: &str) -> Passphrase {
        Passphrase::new(text).unwrap()
    }

    #[test]
    fn round_trip_and_fresh_salt_and_nonce() {
        let secret = b"the plaintext key file\n";
        let a = seal(secret, &pass("correct horse"), FAST).unwrap();
        let b = seal(secret, &pass("correct horse"), FAST).unwrap();
        assert_ne!(a, b, "salt and nonce are random");
        assert!(is_sealed(a.as_bytes()));
        assert!(!is_sealed(secret));
        assert!(!is_sealed(b"{\"kind\": \"keyreg-admin-key\"}"));
        assert_eq!(
            open(a.as_bytes(), &pass("correct horse\n"))
                .unwrap()
                .as_slice(),
            secret
        );
        assert!(!a.contains("plaintext"));
    }

    #[test]
    fn wrong_passphrase_and_tampering_are_told_apart() {
        let sealed = seal(b"secret", &pass("right"), FAST).unwrap();
        assert!(matches!(
            open(sealed.as_bytes(), &pass("wrong")),
            Err(SealError::WrongPassphrase)
        ));
        let mut json: serde_json::Value = serde_json::from_str(&sealed).unwrap();
        // Every byte of the ciphertext (and the tag) is authenticated.
        let ciphertext = json["ciphertext"].as_str().unwrap().to_string();
        for i in 0..ciphertext.len() {
            let mut bytes = ciphertext.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            json["ciphertext"] = String::from_utf8(bytes).unwrap().into();
            assert!(
                matches!(
                    open(json.to_string().as_bytes(), &pass("right")),
                    Err(SealError::Tampered)
                ),
                "ciphertext hex digit {i} flipped"
            );
        }
        json["ciphertext"] = ciphertext.into();
        // The nonce is bound as associated data and as the nonce itself.
        let mut nonce = json.clone();
        nonce["nonce"] = "00".repeat(NONCE_LEN).into();
        assert!(matches!(
            open(nonce.to_string().as_bytes(), &pass("right")),
            Err(SealError::Tampered)
        ));
        // Altered KDF inputs derive another key.
        let mut salt = json.clone();
        salt["kdf"]["salt"] = "11".repeat(SALT_LEN).into();
        assert!(matches!(
            open(salt.to_string().as_bytes(), &pass("right")),
            Err(SealError::WrongPassphrase)
        ));
        assert_eq!(
            open(json.to_string().as_bytes(), &pass("right"))
                .unwrap()
                .as_slice(),
            b"secret"
        );
    }

    #[test]
    fn truncated_malformed_and_hostile_files_are_refused() {
        let sealed = seal(b"secret", &pass("pw"), FAST).unwrap();
        for len in [0, 1, sealed.len() / 2, sealed.len() - 3] {
            assert!(
                matches!(
                    open(&sealed.as_bytes()[..len], &pass("pw")),
                    Err(SealError::Malformed(_))
                ),
                "truncated to {len}"
            );
        }
        let mut json: serde_json::Value = serde_json::from_str(&sealed).unwrap();
        let ciphertext = json["ciphertext"].as_str().unwrap().to_string();
        json["ciphertext"] = ciphertext[..ciphertext.len() - 2].to_string().into();
        assert!(matches!(
            open(json.to_string().as_bytes(), &pass("pw")),
            Err(SealError::Tampered)
        ));
        // A file asking for a terabyte of KDF memory is refused unread.
        let mut huge = json.clone();
        huge["kdf"]["memory_kib"] = u32::MAX.into();
        assert!(matches!(
            open(huge.to_string().as_bytes(), &pass("pw")),
            Err(SealError::Malformed(_))
        ));
        let mut other = json;
        other["version"] = 2.into();
        assert!(matches!(
            open(other.to_string().as_bytes(), &pass("pw")),
            Err(SealError::Malformed(_))
        ));
        assert!(matches!(
            Passphrase::new("\n"),
            Err(SealError::EmptyPassphrase)
        ));
    }
}
