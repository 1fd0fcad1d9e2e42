//! Key files: a device's secrets, and an organisation admin's.
//!
//! Both are small JSON files holding hex-encoded secrets. They are written
//! with mode 0600 and refused on reading when group or others have any
//! access, like ssh does with private keys: a key another local user could
//! read is a key that must be assumed leaked.
//!
//! A device key file holds the device's Ed25519 signing seed, its X25519
//! agreement secret (its Noise static key), and the seed of its *next*
//! signing key, to which the registry record commits (pre-rotation): a thief
//! of the current key alone cannot rotate the device to a key of its own.
//! While a rotation is in flight the file also holds the keys it rotates to,
//! so a rotation interrupted after submission can be completed or retried.
//!
//! Any key file may be sealed under a passphrase ([`keyreg_consensus::sealed`]:
//! Argon2id + ChaCha20-Poly1305 around the same JSON). `load`, `create` and
//! `replace` take the passphrase from the environment (`KEYREG_PASSPHRASE_FILE`
//! or `KEYREG_PASSPHRASE`): with one configured, files are written sealed;
//! the `_with` variants take it explicitly.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use keyreg_consensus::crypto::{CryptoError, Domain, Hash, PublicKey, SigningKey};
use keyreg_consensus::sealed::{self, configured_passphrase, Passphrase, SealError, SealParams};
use keyreg_registry::names::{DeviceName, NameError, OrgId};
use keyreg_registry::records::AgreementKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

/// Key files are tiny; anything larger is not one.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;
const KEY_FILE_VERSION: u8 = 1;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: mode {mode:03o} lets group or others access a secret key; run `chmod 600 {path}`"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{0}: already exists (refusing to overwrite a key file)")]
    Exists(PathBuf),
    #[error("{0}: larger than any key file")]
    TooLarge(PathBuf),
    #[error("{path}: not a {expected} key file: {reason}")]
    Malformed {
        path: PathBuf,
        expected: &'static str,
        reason: String,
    },
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Not a `#[source]`: the message already includes it once.
    #[error("{path}: {error}")]
    Sealed { path: PathBuf, error: SealError },
}

/// The passphrase configured in the environment, if any.
fn environment_passphrase(path: &Path) -> Result<Option<Passphrase>, KeyFileError> {
    configured_passphrase(None).map_err(|error| KeyFileError::Sealed {
        path: path.to_path_buf(),
        error,
    })
}

/// A 32-byte secret in hex, wiped from memory when dropped.
fn secret_from_hex(hex_str: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_str, &mut out[..]).map_err(|e| e.to_string())?;
    Ok(out)
}

fn random_secret() -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    keyreg_consensus::crypto::random_bytes(&mut out[..])?;
    Ok(out)
}

/// One generation of a device's keys.
#[derive(Clone)]
pub struct DeviceKeySet {
    pub signing: SigningKey,
    pub agreement: StaticSecret,
    /// The signing key the record commits to as the next one.
    pub next_signing: SigningKey,
}

impl DeviceKeySet {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(DeviceKeySet {
            signing: SigningKey::generate()?,
            agreement: StaticSecret::from(*random_secret()?),
            next_signing: SigningKey::generate()?,
        })
    }

    pub fn agreement_key(&self) -> AgreementKey {
        AgreementKey(x25519_dalek::PublicKey::from(&self.agreement).to_bytes())
    }

    /// The pre-rotation commitment to `next_signing`.
    pub fn next_key_commitment(&self) -> Hash {
        self.next_signing.public().digest(Domain::DeviceKey)
    }

    /// The key set a rotation moves to: the committed next key becomes the
    /// signing key, with a fresh agreement key and a fresh next key.
    pub fn successor(&self) -> Result<Self, CryptoError> {
        Ok(DeviceKeySet {
            signing: self.next_signing.clone(),
            agreement: StaticSecret::from(*random_secret()?),
            next_signing: SigningKey::generate()?,
        })
    }
}

/// A device's key file.
#[derive(Clone)]
pub struct DeviceKeys {
    pub name: DeviceName,
    pub current: DeviceKeySet,
    /// The keys of a rotation that was submitted but not yet seen committed.
    pub pending_rotation: Option<DeviceKeySet>,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("name", &self.name)
            .field("signing_key", &self.current.signing.public())
            .field("pending_rotation", &self.pending_rotation.is_some())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySetJson {
    signing_seed: String,
    agreement_secret: String,
    next_signing_seed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceKeysJson {
    kind: String,
    version: u8,
    name: String,
    /// Public parts, for humans and scripts; recomputed (not trusted) on load.
    signing_key: String,
    agreement_key: String,
    current: KeySetJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_rotation: Option<KeySetJson>,
}

impl KeySetJson {
    fn from_set(set: &DeviceKeySet) -> Self {
        KeySetJson {
            signing_seed: hex::encode(set.signing.seed()),
            agreement_secret: hex::encode(set.agreement.to_bytes()),
            next_signing_seed: hex::encode(set.next_signing.seed()),
        }
    }

    fn to_set(&self) -> Result<DeviceKeySet, String> {
        Ok(DeviceKeySet {
            signing: SigningKey::from_seed(*secret_from_hex(&self.signing_seed)?),
            agreement: StaticSecret::from(*secret_from_hex(&self.agreement_secret)?),
            next_signing: SigningKey::from_seed(*secret_from_hex(&self.next_signing_seed)?),
        })
    }
}

impl Drop for KeySetJson {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.signing_seed.zeroize();
        self.agreement_secret.zeroize();
        self.next_signing_seed.zeroize();
    }
}

const DEVICE_KIND: &str = "keyreg-device-key";
const ADMIN_KIND: &str = "keyreg-admin-key";

/// The JSON form of a key file: a `kind` tag and a format `version` ahead
/// of the kind's own fields.
trait KeyJson: Serialize + DeserializeOwned {
    const KIND: &'static str;
    /// What a malformed file was expected to be, for errors.
    const EXPECTED: &'static str;
    fn header(&self) -> (&str, u8);

    fn to_text(&self) -> Zeroizing<String> {
        // Plain strings and numbers: serialisation cannot fail.
        Zeroizing::new(serde_json::to_string_pretty(self).unwrap_or_default() + "\n")
    }
}

impl KeyJson for DeviceKeysJson {
    const KIND: &'static str = DEVICE_KIND;
    const EXPECTED: &'static str = "device";
    fn header(&self) -> (&str, u8) {
        (&self.kind, self.version)
    }
}

impl KeyJson for AdminKeyJson {
    const KIND: &'static str = ADMIN_KIND;
    const EXPECTED: &'static str = "admin";
    fn header(&self) -> (&str, u8) {
        (&self.kind, self.version)
    }
}

fn malformed<'p>(path: &'p Path, expected: &'static str) -> impl Fn(String) -> KeyFileError + 'p {
    move |reason| KeyFileError::Malformed {
        path: path.to_path_buf(),
        expected,
        reason,
    }
}

/// Reads a (possibly sealed) key file as `T`, checking its kind and version.
fn read_key_json<T: KeyJson>(
    path: &Path,
    passphrase: Option<&Passphrase>,
) -> Result<T, KeyFileError> {
    let text = read_secret_file(path, passphrase)?;
    let malformed = malformed(path, T::EXPECTED);
    let json: T = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    let (kind, version) = json.header();
    if kind != T::KIND || version != KEY_FILE_VERSION {
        return Err(malformed(format!("kind {kind:?} version {version}")));
    }
    Ok(json)
}

impl DeviceKeys {
    pub fn generate(name: DeviceName) -> Result<Self, CryptoError> {
        Ok(DeviceKeys {
            name,
            current: DeviceKeySet::generate()?,
            pending_rotation: None,
        })
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        Self::load_with(path, environment_passphrase(path)?.as_ref())
    }

    /// Loads a key file, opening it with `passphrase` if it is sealed.
    pub fn load_with(path: &Path, passphrase: Option<&Passphrase>) -> Result<Self, KeyFileError> {
        let json: DeviceKeysJson = read_key_json(path, passphrase)?;
        let malformed = malformed(path, DeviceKeysJson::EXPECTED);
        let name = DeviceName::new(&json.name).map_err(|e| malformed(e.to_string()))?;
        let current = json.current.to_set().map_err(&malformed)?;
        let pending_rotation = match &json.pending_rotation {
            Some(p) => Some(p.to_set().map_err(&malformed)?),
            None => None,
        };
        Ok(DeviceKeys {
            name,
            current,
            pending_rotation,
        })
    }

    /// Writes a new key file (never overwriting one).
    pub fn create(&self, path: &Path) -> Result<(), KeyFileError> {
        self.create_with(path, environment_passphrase(path)?.as_ref())
    }

    /// Writes a new key file, sealed under `passphrase` if one is given.
    pub fn create_with(
        &self,
        path: &Path,
        passphrase: Option<&Passphrase>,
    ) -> Result<(), KeyFileError> {
        write_secret_file(path, &self.to_json(), passphrase, false)
    }

    /// Replaces an existing key file atomically (write, sync, rename).
    pub fn replace(&self, path: &Path) -> Result<(), KeyFileError> {
        let passphrase = environment_passphrase(path)?;
        write_secret_file(path, &self.to_json(), passphrase.as_ref(), true)
    }

    fn to_json(&self) -> Zeroizing<String> {
        let json = DeviceKeysJson {
            kind: DEVICE_KIND.into(),
            version: KEY_FILE_VERSION,
            name: self.name.to_string(),
            signing_key: self.current.signing.public().to_hex(),
            agreement_key: hex::encode(self.current.agreement_key().0),
            current: KeySetJson::from_set(&self.current),
            pending_rotation: self.pending_rotation.as_ref().map(KeySetJson::from_set),
        };
        json.to_text()
    }
}

/// An organisation admin's signing key.
#[derive(Clone)]
pub struct AdminKey {
    pub org: OrgId,
    pub signing: SigningKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminKeyJson {
    kind: String,
    version: u8,
    org: String,
    public_key: String,
    signing_seed: String,
}

impl Drop for AdminKeyJson {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.signing_seed.zeroize();
    }
}

impl AdminKey {
    pub fn generate(org: OrgId) -> Result<Self, CryptoError> {
        Ok(AdminKey {
            org,
            signing: SigningKey::generate()?,
        })
    }

    pub fn public(&self) -> PublicKey {
        self.signing.public()
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        Self::load_with(path, environment_passphrase(path)?.as_ref())
    }

    /// Loads a key file, opening it with `passphrase` if it is sealed.
    pub fn load_with(path: &Path, passphrase: Option<&Passphrase>) -> Result<Self, KeyFileError> {
        let json: AdminKeyJson = read_key_json(path, passphrase)?;
        let malformed = malformed(path, AdminKeyJson::EXPECTED);
        Ok(AdminKey {
            org: OrgId::new(&json.org).map_err(|e| malformed(e.to_string()))?,
            signing: SigningKey::from_seed(
                *secret_from_hex(&json.signing_seed).map_err(&malformed)?,
            ),
        })
    }

    pub fn create(&self, path: &Path) -> Result<(), KeyFileError> {
        self.create_with(path, environment_passphrase(path)?.as_ref())
    }

    /// Writes a new key file, sealed under `passphrase` if one is given.
    pub fn create_with(
        &self,
        path: &Path,
        passphrase: Option<&Passphrase>,
    ) -> Result<(), KeyFileError> {
        let json = AdminKeyJson {
            kind: ADMIN_KIND.into(),
            version: KEY_FILE_VERSION,
            org: self.org.to_string(),
            public_key: self.public().to_hex(),
            signing_seed: hex::encode(self.signing.seed()),
        };
        write_secret_file(path, &json.to_text(), passphrase, false)
    }
}

/// Reads a key file after checking its permissions and size, opening it
/// with `passphrase` if it is sealed.
fn read_secret_file(
    path: &Path,
    passphrase: Option<&Passphrase>,
) -> Result<Zeroizing<String>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_private(path, &meta)?;
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::TooLarge(path.to_path_buf()));
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::TooLarge(path.to_path_buf()));
    }
    if !sealed::is_sealed(text.as_bytes()) {
        return Ok(text);
    }
    let sealed_error = |error| KeyFileError::Sealed {
        path: path.to_path_buf(),
        error,
    };
    let passphrase = passphrase.ok_or_else(|| sealed_error(SealError::PassphraseNeeded))?;
    let plain = sealed::open(text.as_bytes(), passphrase).map_err(sealed_error)?;
    String::from_utf8(plain.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| KeyFileError::Malformed {
            path: path.to_path_buf(),
            expected: "sealed",
            reason: "the sealed content is not text".into(),
        })
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

/// Writes `text` to `path` with mode 0600, sealed under `passphrase` if one
/// is given. With `replace`, writes a sibling temporary file and renames it
/// over `path`, so a crash leaves either the old or the new file, never half
/// of one.
fn write_secret_file(
    path: &Path,
    text: &str,
    passphrase: Option<&Passphrase>,
    replace: bool,
) -> Result<(), KeyFileError> {
    let sealed_text;
    let text = match passphrase {
        Some(passphrase) => {
            sealed_text = sealed::seal(text.as_bytes(), passphrase, SealParams::default())
                .map_err(|error| KeyFileError::Sealed {
                    path: path.to_path_buf(),
                    error,
                })?;
            sealed_text.as_str()
        }
        None => text,
    };
    let target = if replace {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        PathBuf::from(tmp)
    } else {
        path.to_path_buf()
    };
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| KeyFileError::Io { path: p, source }
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(target.clone())
        } else {
            io(&target)(e)
        }
    })?;
    // A pre-existing temporary file keeps its old mode: force 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io(&target))?;
    }
    file.write_all(text.as_bytes()).map_err(io(&target))?;
    file.sync_all().map_err(io(&target))?;
    if replace {
        fs::rename(&target, path).map_err(io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> DeviceName {
        DeviceName::new("acme/sensor-1").unwrap()
    }

    #[test]
    fn device_keys_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        let mut keys = DeviceKeys::generate(name()).unwrap();
        keys.create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = DeviceKeys::load(&path).unwrap();
        assert_eq!(loaded.name, keys.name);
        assert_eq!(
            loaded.current.signing.public(),
            keys.current.signing.public()
        );
        assert_eq!(loaded.current.agreement_key(), keys.current.agreement_key());
        assert_eq!(
            loaded.current.next_key_commitment(),
            keys.current.next_key_commitment()
        );
        assert!(loaded.pending_rotation.is_none());

        // Never overwritten by `create`; replaced atomically by `replace`.
        assert!(matches!(keys.create(&path), Err(KeyFileError::Exists(_))));
        keys.pending_rotation = Some(keys.current.successor().unwrap());
        keys.replace(&path).unwrap();
        let loaded = DeviceKeys::load(&path).unwrap();
        let pending = loaded.pending_rotation.unwrap();
        assert_eq!(pending.signing.public(), keys.current.next_signing.public());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[cfg(unix)]
    #[test]
    fn key_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.json");
        AdminKey::generate(OrgId::new("acme").unwrap())
            .unwrap()
            .create(&path)
            .unwrap();
        assert!(AdminKey::load(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            AdminKey::load(&path),
            Err(KeyFileError::InsecurePermissions { mode: 0o640, .. })
        ));
        // A device loader does not accept an admin file either.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            DeviceKeys::load(&path),
            Err(KeyFileError::Malformed { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn sealed_key_files_round_trip_and_refuse_wrong_or_tampered_input() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let passphrase = Passphrase::new("device passphrase").unwrap();
        let device_path = dir.path().join("dev.json");
        let mut keys = DeviceKeys::generate(name()).unwrap();
        keys.create_with(&device_path, Some(&passphrase)).unwrap();
        let text = fs::read_to_string(&device_path).unwrap();
        assert!(sealed::is_sealed(text.as_bytes()));
        assert!(!text.contains(&hex::encode(keys.current.signing.seed())));
        assert_eq!(
            fs::metadata(&device_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = DeviceKeys::load_with(&device_path, Some(&passphrase)).unwrap();
        assert_eq!(
            loaded.current.signing.public(),
            keys.current.signing.public()
        );
        // A rotation in flight is written back sealed.
        keys.pending_rotation = Some(keys.current.successor().unwrap());
        write_secret_file(&device_path, &keys.to_json(), Some(&passphrase), true).unwrap();
        assert!(DeviceKeys::load_with(&device_path, Some(&passphrase))
            .unwrap()
            .pending_rotation
            .is_some());

        let sealed_error = |result: Result<DeviceKeys, KeyFileError>| match result {
            Err(KeyFileError::Sealed { error, .. }) => error,
            other => panic!("expected a sealed-file error, got {:?}", other.map(|_| ())),
        };
        assert!(matches!(
            sealed_error(DeviceKeys::load_with(&device_path, None)),
            SealError::PassphraseNeeded
        ));
        let wrong = Passphrase::new("not it").unwrap();
        assert!(matches!(
            sealed_error(DeviceKeys::load_with(&device_path, Some(&wrong))),
            SealError::WrongPassphrase
        ));
        let text = fs::read_to_string(&device_path).unwrap();
        let tampered = dir.path().join("tampered.json");
        write_secret_file(
            &tampered,
            &text.replacen("\"ciphertext\": \"", "\"ciphertext\": \"ff", 1),
            None,
            false,
        )
        .unwrap();
        assert!(matches!(
            sealed_error(DeviceKeys::load_with(&tampered, Some(&passphrase))),
            SealError::Tampered
        ));
        let truncated = dir.path().join("truncated.json");
        write_secret_file(&truncated, &text[..text.len() - 40], None, false).unwrap();
        assert!(matches!(
            DeviceKeys::load_with(&truncated, Some(&passphrase)),
            Err(KeyFileError::Malformed { .. })
        ));
        fs::set_permissions(&device_path, fs::Permissions::from_mode(0o604)).unwrap();
        assert!(matches!(
            DeviceKeys::load_with(&device_path, Some(&passphrase)),
            Err(KeyFileError::InsecurePermissions { .. })
        ));

        // Admin keys: same format; plaintext files still load.
        let admin_path = dir.path().join("admin.json");
        let admin = AdminKey::generate(OrgId::new("acme").unwrap()).unwrap();
        admin.create_with(&admin_path, Some(&passphrase)).unwrap();
        assert_eq!(
            AdminKey::load_with(&admin_path, Some(&passphrase))
                .unwrap()
                .public(),
            admin.public()
        );
        let plain_path = dir.path().join("plain.json");
        admin.create_with(&plain_path, None).unwrap();
        assert_eq!(
            AdminKey::load_with(&plain_path, Some(&passphrase))
                .unwrap()
                .public(),
            admin.public()
        );
    }

    #[test]
    fn successor_uses_the_committed_key() {
        let set = DeviceKeySet::generate().unwrap();
        let next = set.successor().unwrap();
        assert_eq!(
            next.signing.public().digest(Domain::DeviceKey),
            set.next_key_commitment()
        );
        assert_ne!(next.agreement_key(), set.agreement_key());
        assert_ne!(next.next_signing.public(), set.next_signing.public());
    }
}
