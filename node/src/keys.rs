//! Key files: a 32-byte Ed25519 seed as hex, readable by the owner only.
//!
//! A node's key file holds the seed that is both its validator signing key
//! and its libp2p identity. Files are created with mode 0600 and refused on
//! load when group or others may read them (as ssh does), so a key that has
//! leaked through loose permissions is noticed instead of silently used.
//! The file may be sealed under a passphrase ([`keyreg_consensus::sealed`]:
//! Argon2id + ChaCha20-Poly1305 around the same hex text).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keyreg_consensus::sealed::{self, configured_passphrase, Passphrase, SealError, SealParams};
use keyreg_consensus::SigningKey;
use thiserror::Error;
use zeroize::Zeroizing;

/// A plaintext key file is 64 hex characters plus a newline, a sealed one
/// well under a kilobyte; anything longer is not read into memory.
const MAX_KEY_FILE_LEN: u64 = 4096;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a key file (expected 64 hex characters)")]
    Malformed { path: PathBuf },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    /// Not a `#[source]`: the message already includes it once.
    #[error("{path}: {error}")]
    Sealed { path: PathBuf, error: SealError },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `key`'s seed to a new file at `path` with mode 0600, sealed under
/// `passphrase` when one is given. Never overwrites an existing file.
pub fn write_key_file(
    path: &Path,
    key: &SigningKey,
    passphrase: Option<&Passphrase>,
) -> Result<(), KeyFileError> {
    let plain = Zeroizing::new(format!("{}\n", hex::encode(key.seed())));
    let text = match passphrase {
        Some(passphrase) => Zeroizing::new(
            sealed::seal(plain.as_bytes(), passphrase, SealParams::default()).map_err(|error| {
                KeyFileError::Sealed {
                    path: path.to_path_buf(),
                    error,
                }
            })?,
        ),
        None => plain,
    };
    let mut file = create_private(path)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

/// Writes an organisation admin's key in the `keyreg` CLI's admin key file
/// format (JSON, mode 0600), for `dev` and `testnet` to hand out.
pub fn write_admin_key_file(path: &Path, org: &str, key: &SigningKey) -> Result<(), KeyFileError> {
    let json = serde_json::json!({
        "kind": "keyreg-admin-key",
        "version": 1,
        "org": org,
        "public_key": key.public().to_hex(),
        "signing_seed": hex::encode(key.seed()),
    });
    let text = Zeroizing::new(format!("{json:#}\n"));
    let mut file = create_private(path)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

fn create_private(path: &Path) -> Result<std::fs::File, KeyFileError> {
    // The mode is filtered by the umask, which can only remove bits.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
                path: path.to_path_buf(),
            },
            _ => io_error(path)(e),
        })
}

/// Reads a key file written by [`write_key_file`], refusing it when group
/// or others have any access. A sealed file is opened with the passphrase
/// from `passphrase_file`, else the environment
/// ([`configured_passphrase`]), asked for only then.
pub fn read_key_file(
    path: &Path,
    passphrase_file: Option<&Path>,
) -> Result<SigningKey, KeyFileError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let malformed = || KeyFileError::Malformed {
        path: path.to_path_buf(),
    };
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(malformed());
    }
    let bytes = Zeroizing::new(fs::read(path).map_err(io_error(path))?);
    let plain = if sealed::is_sealed(&bytes) {
        let sealed_error = |error| KeyFileError::Sealed {
            path: path.to_path_buf(),
            error,
        };
        let passphrase = configured_passphrase(passphrase_file)
            .map_err(sealed_error)?
            .ok_or(SealError::PassphraseNeeded)
            .map_err(sealed_error)?;
        sealed::open(&bytes, &passphrase).map_err(sealed_error)?
    } else {
        bytes
    };
    let text = std::str::from_utf8(&plain).map_err(|_| malformed())?;
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| malformed())?;
    Ok(SigningKey::from_seed(*seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = SigningKey::from_seed([7; 32]);
        write_key_file(&path, &key, None).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_key_file(&path, None).unwrap().public(), key.public());
        assert!(matches!(
            write_key_file(&path, &key, None),
            Err(KeyFileError::Exists { .. })
        ));
    }

    #[test]
    fn refuses_group_or_world_readable_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_key_file(&path, &SigningKey::from_seed([1; 32]), None).unwrap();
        for mode in [0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(matches!(
                read_key_file(&path, None),
                Err(KeyFileError::Permissions { .. })
            ));
        }
        let bad = dir.path().join("bad.key");
        fs::write(&bad, "not hex").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_key_file(&bad, None),
            Err(KeyFileError::Malformed { .. })
        ));
    }

    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn sealed_key_files_need_the_right_passphrase_and_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = SigningKey::from_seed([9; 32]);
        let passphrase = Passphrase::new("node passphrase").unwrap();
        write_key_file(&path, &key, Some(&passphrase)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(sealed::is_sealed(text.as_bytes()));
        assert!(!text.contains(&hex::encode(key.seed())), "no seed in clear");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let right = private_file(dir.path(), "right", "node passphrase\n");
        let wrong = private_file(dir.path(), "wrong", "guess\n");
        assert_eq!(
            read_key_file(&path, Some(&right)).unwrap().public(),
            key.public()
        );
        assert!(matches!(
            read_key_file(&path, Some(&wrong)),
            Err(KeyFileError::Sealed {
                error: SealError::WrongPassphrase,
                ..
            })
        ));
        // A passphrase file others can read is refused like a key file.
        fs::set_permissions(&right, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_key_file(&path, Some(&right)),
            Err(KeyFileError::Sealed {
                error: SealError::PassphraseFile { .. },
                ..
            })
        ));
        // Tampered and truncated files.
        let tampered = private_file(
            dir.path(),
            "tampered.key",
            &text.replacen("\"ciphertext\": \"", "\"ciphertext\": \"00", 1),
        );
        fs::set_permissions(&right, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_key_file(&tampered, Some(&right)),
            Err(KeyFileError::Sealed {
                error: SealError::Tampered,
                ..
            })
        ));
        let truncated = private_file(dir.path(), "truncated.key", &text[..text.len() / 2]);
        assert!(matches!(
            read_key_file(&truncated, Some(&right)),
            Err(KeyFileError::Malformed { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_key_file(&path, Some(&right)),
            Err(KeyFileError::Permissions { .. })
        ));
    }
}
