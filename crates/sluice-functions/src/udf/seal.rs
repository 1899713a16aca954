//! Secrets at rest: with a key (`[functions] secrets_key_file`), every secret of a deployed
//! version is stored sealed, in the data directory and, on a shared journal, in NATS; it is
//! opened only to start the function's runtimes.
//!
//! A sealed value is `sluice-sealed:v1:`, the sealing key's id (8 hex digits, derived from the
//! key) and `:`, then the base64url of `nonce ‖ ciphertext ‖ tag` (ChaCha20-Poly1305, 256-bit
//! key). The associated data is the function's name and the
//! secret's, so a value copied to another function or another name does not open. The nonce is
//! synthetic (the first 96 bits of an HMAC-SHA256 of that associated data and the value, under a
//! key of its own), as in SIV modes: deploying the same secrets again seals them the same way,
//! so a deploy that changes nothing still creates no version, and a nonce repeats only with the
//! very same plaintext. Both keys are derived from the file's 32 bytes by HMAC-SHA256 with
//! distinct labels.
//!
//! Rotation: the node seals with its current key and opens with whichever of its keys (current
//! or previous, [`Keyring`]) has the id a value names, so a new key can be put in place while the
//! versions deployed before still open; a value whose key the node lacks is refused naming both.
//! Resealing ([`Keyring::reseal`], `reseal.rs`) then seals every stored value with the current
//! key, in place, so that the previous keys can be dropped.
//!
//! Without a key, secrets are stored as given (the version files have mode 0600); a node that
//! finds a sealed value and has no key, or another key, refuses to start the function and
//! says why.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::Sha256;

use super::UdfError;

/// What every sealed value starts with.
pub const SEALED_PREFIX: &str = "sluice-sealed:v1:";

/// The key secrets are sealed with.
pub struct SecretsKey {
    aead: LessSafeKey,
    nonce: [u8; 32],
    /// The key's public id, named in every value it seals.
    id: String,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl SecretsKey {
    /// A key from 64 hex digits (32 bytes; `openssl rand -hex 32`), surrounding whitespace
    /// ignored.
    pub fn from_hex(text: &str) -> Result<Self, UdfError> {
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                UdfError::Invalid(
                    "a secrets key is 64 hex digits (32 bytes, as `openssl rand -hex 32` prints)"
                        .into(),
                )
            })?;
        let enc = hmac(&bytes, &[b"sluice function secrets: encryption"]);
        let nonce = hmac(&bytes, &[b"sluice function secrets: nonce"]);
        let id = hex::encode(&hmac(&bytes, &[b"sluice function secrets: id"])[..4]);
        let aead = UnboundKey::new(&CHACHA20_POLY1305, &enc)
            .map_err(|_| UdfError::Invalid("the secrets key is not a ChaCha20 key".into()))?;
        Ok(Self {
            aead: LessSafeKey::new(aead),
            nonce,
            id,
        })
    }

    /// The key's public id (8 hex digits), named in every value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key in file `path`.
    pub fn read(path: &Path) -> Result<Self, UdfError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UdfError::Invalid(format!(
                "cannot read the secrets key {}: {e}",
                path.display()
            ))
        })?;
        Self::from_hex(&text).map_err(|e| UdfError::Invalid(format!("{}: {e}", path.display())))
    }

    fn seal(&self, function: &str, name: &str, value: &str) -> String {
        let aad = associated(function, name);
        let iv = hmac(&self.nonce, &[&aad, value.as_bytes()]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&iv[..NONCE_LEN]);
        let mut sealed = value.as_bytes().to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut sealed,
            )
            .expect("a secret is far below ChaCha20-Poly1305's message limit");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{SEALED_PREFIX}{}:{}",
            self.id,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        )
    }

    /// Opens `body` (what follows the key id).
    fn open(&self, function: &str, name: &str, body: &str) -> Result<String, UdfError> {
        let refused = |why: &str| {
            UdfError::Invalid(format!(
                "secret {name:?} of function {function:?} cannot be opened: {why}"
            ))
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| refused("it is not base64url"))?;
        if bytes.len() < NONCE_LEN {
            return Err(refused("it is too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused("bad nonce"))?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(associated(function, name)), &mut buf)
            .map_err(|_| refused("it was altered, or sealed for another function or name"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| refused("it is not UTF-8"))
    }
}

/// The keys of a node: the current one seals, any of them opens.
#[derive(Debug)]
pub struct Keyring {
    current: SecretsKey,
    previous: Vec<SecretsKey>,
}

impl Keyring {
    /// `current` seals; `current` and `previous` open what they sealed.
    pub fn new(current: SecretsKey, previous: Vec<SecretsKey>) -> Self {
        Self { current, previous }
    }

    /// The key that seals.
    pub fn current(&self) -> &SecretsKey {
        &self.current
    }

    /// Every key, the current one first.
    fn keys(&self) -> impl Iterator<Item = &SecretsKey> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// The ids of the node's keys, the current one first, as messages list them.
    fn ids(&self) -> String {
        self.keys()
            .map(SecretsKey::id)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn open(&self, function: &str, name: &str, sealed: &str) -> Result<String, UdfError> {
        let (id, body) = sealed.split_once(':').ok_or_else(|| {
            UdfError::Invalid(format!(
                "secret {name:?} of function {function:?} cannot be opened: it names no key"
            ))
        })?;
        let key = self.keys().find(|k| k.id == id).ok_or_else(|| {
            UdfError::Invalid(format!(
                "secret {name:?} of function {function:?} was sealed with key {id}, and \
                 this node has {}: every runner node needs the same secrets_key_file, and \
                 a key replaced goes to previous_secrets_key_files",
                self.ids()
            ))
        })?;
        key.open(function, name, body)
    }

    /// `stored`, the value of secret `name` of `function` v`version` as it is stored, sealed
    /// with the current key (see [`Resealed`]). `Err` says why it cannot be: its key is not one
    /// of this node's, or it does not open.
    pub(crate) fn reseal(
        &self,
        function: &str,
        version: u32,
        name: &str,
        stored: &str,
    ) -> Result<Resealed, String> {
        let Some(sealed) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(Resealed::Plain(self.current.seal(function, name, stored)));
        };
        let id = sealed.split_once(':').map_or("", |(id, _)| id);
        if id == self.current.id {
            return Ok(Resealed::Current);
        }
        if !self.keys().any(|k| k.id == id) {
            return Err(format!(
                "secret {name:?} of function {function:?} v{version} is sealed with key {id:?}, \
                 which this node does not have (it has {}): put that key in \
                 previous_secrets_key_files",
                self.ids()
            ));
        }
        let plain = self
            .open(function, name, sealed)
            .map_err(|e| format!("v{version}: {e}"))?;
        Ok(Resealed::Previous {
            key: id.to_string(),
            sealed: self.current.seal(function, name, &plain),
        })
    }
}

/// A stored secret value, resealed ([`Keyring::reseal`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resealed {
    /// It is sealed with the current key already, and stays as it is, byte for byte.
    Current,
    /// It was sealed with the previous key `key`; `sealed` is the same secret sealed with the
    /// current key.
    Previous {
        /// The id of the key that sealed it.
        key: String,
        /// The value sealed with the current key.
        sealed: String,
    },
    /// It was stored as given (before the node had a key); this is it sealed with the current
    /// key.
    Plain(String),
}

/// The associated data of `function`'s secret `name`.
fn associated(function: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(function.len() + name.len() + 1);
    aad.extend_from_slice(function.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// The secrets of a deploy as they are stored: sealed with `key`, or as given without one. A
/// value that already looks sealed is refused: it would not open as the value given.
pub(crate) fn seal_all(
    keys: Option<&Keyring>,
    function: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, UdfError> {
    secrets
        .iter()
        .map(|(name, value)| {
            if value.starts_with(SEALED_PREFIX) {
                return Err(UdfError::Invalid(format!(
                    "secret {name:?} starts with {SEALED_PREFIX:?}: give secrets as they are, \
                     not sealed"
                )));
            }
            let stored = match keys {
                Some(k) => k.current.seal(function, name, value),
                None => value.clone(),
            };
            Ok((name.clone(), stored))
        })
        .collect()
}

/// The secrets a function runs with, from what is stored: sealed values opened with `keys`,
/// others (stored before a key was set) as they are.
pub(crate) fn open_all(
    keys: Option<&Keyring>,
    function: &str,
    stored: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, UdfError> {
    stored
        .iter()
        .map(|(name, value)| {
            let plain = match (value.strip_prefix(SEALED_PREFIX), keys) {
                (None, _) => value.clone(),
                (Some(sealed), Some(k)) => k.open(function, name, sealed)?,
                (Some(_), None) => {
                    return Err(UdfError::Invalid(format!(
                        "secret {name:?} of function {function:?} is sealed and this node has \
                         no key: set [functions] secrets_key_file to the key it was sealed with"
                    )));
                }
            };
            Ok((name.clone(), plain))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const NEW_KEY: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff";

    fn keyring(current: &str, previous: &[&str]) -> Keyring {
        let key = |h: &str| SecretsKey::from_hex(h).unwrap();
        Keyring::new(key(current), previous.iter().map(|h| key(h)).collect())
    }

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_function_and_name() {
        let keys = keyring(KEY, &[]);
        let given = secrets(&[("API_SALT", "s3cret"), ("EMPTY", "")]);
        let stored = seal_all(Some(&keys), "f", &given).unwrap();
        let named = format!("{SEALED_PREFIX}{}:", keys.current().id());
        for (name, value) in &stored {
            assert!(value.starts_with(&named), "{name}: {value}");
            assert!(!value.contains("s3cret"));
        }
        assert_eq!(open_all(Some(&keys), "f", &stored).unwrap(), given);
        // The same secrets seal the same way (a redeploy changes nothing); another value,
        // name or function does not.
        assert_eq!(seal_all(Some(&keys), "f", &given).unwrap(), stored);
        let other = seal_all(Some(&keys), "f", &secrets(&[("API_SALT", "s3cres")])).unwrap();
        assert_ne!(other["API_SALT"], stored["API_SALT"]);
        assert_ne!(
            seal_all(Some(&keys), "g", &given).unwrap()["API_SALT"],
            stored["API_SALT"]
        );

        // Another function, another name, a changed byte, another key, no key: refused.
        let e = open_all(Some(&keys), "g", &stored).unwrap_err().to_string();
        assert!(e.contains("another function"), "{e}");
        let moved = secrets(&[("OTHER", &stored["API_SALT"])]);
        let e = open_all(Some(&keys), "f", &moved).unwrap_err().to_string();
        assert!(
            e.contains("secret \"OTHER\" of function \"f\" cannot be opened")
                && e.contains("sealed for another function or name"),
            "{e}"
        );
        // A character inside the base64url (its last one may carry only padding bits).
        let mut tampered = stored.clone();
        let v = tampered.get_mut("API_SALT").unwrap();
        let at = v.len() - 8;
        let changed = if &v[at..=at] == "A" { "B" } else { "A" };
        v.replace_range(at..=at, changed);
        let e = open_all(Some(&keys), "f", &tampered)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret \"API_SALT\" of function \"f\" cannot be opened: it was altered"),
            "{e}"
        );
        let other_key = keyring(NEW_KEY, &[]);
        let e = open_all(Some(&other_key), "f", &stored)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(keys.current().id()) && e.contains(other_key.current().id()),
            "{e}"
        );
        assert!(e.contains("previous_secrets_key_files"), "{e}");
        let e = open_all(None, "f", &stored).unwrap_err().to_string();
        assert!(e.contains("secrets_key_file"), "{e}");
    }

    #[test]
    fn a_new_key_seals_and_the_previous_one_still_opens_what_it_sealed() {
        let given = secrets(&[("K", "v")]);
        let old = seal_all(Some(&keyring(KEY, &[])), "f", &given).unwrap();
        let rotated = keyring(NEW_KEY, &[KEY]);
        assert_eq!(open_all(Some(&rotated), "f", &old).unwrap(), given);
        let new = seal_all(Some(&rotated), "f", &given).unwrap();
        assert_ne!(new, old);
        assert!(new["K"].contains(rotated.current().id()));
        assert_eq!(open_all(Some(&rotated), "f", &new).unwrap(), given);
        // The old key alone cannot open what the new one sealed, and says which key it lacks.
        let old_only = keyring(KEY, &[]);
        let e = open_all(Some(&old_only), "f", &new)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("sealed with key {}", rotated.current().id()))
                && e.contains(&format!("this node has {}", old_only.current().id())),
            "{e}"
        );
    }

    #[test]
    fn resealing_moves_previous_and_plain_values_to_the_current_key_and_keeps_the_rest() {
        let given = secrets(&[("K", "v")]);
        let old = seal_all(Some(&keyring(KEY, &[])), "f", &given).unwrap();
        let rotated = keyring(NEW_KEY, &[KEY]);
        let new = seal_all(Some(&rotated), "f", &given).unwrap();
        // Sealed with the previous key: sealed again with the current one, as a deploy would.
        let Resealed::Previous { key, sealed } = rotated.reseal("f", 1, "K", &old["K"]).unwrap()
        else {
            panic!("not resealed from the previous key");
        };
        assert_eq!(key, keyring(KEY, &[]).current().id());
        assert_eq!(sealed, new["K"]);
        // Already sealed with the current key: kept; stored as given: sealed.
        assert_eq!(
            rotated.reseal("f", 1, "K", &new["K"]).unwrap(),
            Resealed::Current
        );
        assert_eq!(
            rotated.reseal("f", 1, "K", "v").unwrap(),
            Resealed::Plain(new["K"].clone())
        );
        // A key this node lacks, and a value that does not open, are refused with the
        // function, version, secret and key.
        let e = keyring(NEW_KEY, &[])
            .reseal("f", 3, "K", &old["K"])
            .unwrap_err();
        let old_id = keyring(KEY, &[]).current().id().to_string();
        assert!(
            e.contains("secret \"K\" of function \"f\" v3")
                && e.contains(&old_id)
                && e.contains("does not have"),
            "{e}"
        );
        let e = rotated.reseal("g", 2, "K", &old["K"]).unwrap_err();
        assert!(
            e.starts_with("v2: ") && e.contains("another function"),
            "{e}"
        );
        let e = rotated.reseal("f", 2, "K", SEALED_PREFIX).unwrap_err();
        assert!(e.contains("v2") && e.contains("\"\""), "{e}");
    }

    #[test]
    fn without_a_key_secrets_stay_as_given_and_old_plain_ones_still_open() {
        let given = secrets(&[("K", "v")]);
        assert_eq!(seal_all(None, "f", &given).unwrap(), given);
        let keys = keyring(KEY, &[]);
        assert_eq!(open_all(Some(&keys), "f", &given).unwrap(), given);
        // A value that looks sealed is not taken as a secret.
        let looks_sealed = secrets(&[("K", "sluice-sealed:v1:AAAA")]);
        for k in [None, Some(&keys)] {
            let e = seal_all(k, "f", &looks_sealed).unwrap_err();
            assert!(matches!(e, UdfError::Invalid(_)), "{e}");
        }
    }

    #[test]
    fn a_key_is_64_hex_digits() {
        assert!(SecretsKey::from_hex(&format!("  {KEY}\n")).is_ok());
        for bad in [
            "",
            "00",
            &KEY[..62],
            &format!("{KEY}00"),
            &KEY.replace('0', "g"),
        ] {
            let e = SecretsKey::from_hex(bad).unwrap_err().to_string();
            assert!(e.contains("64 hex digits"), "{bad:?}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let e = SecretsKey::read(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the secrets key"), "{e}");
    }
}
