//! Resealing ([`super::Functions::reseal`]): every secret of every stored version of every
//! function sealed with the node's current key, in place, so that the keys it replaced
//! (`previous_secrets_key_files`) can be dropped. It is what Vault's `rewrap` and KMS's
//! `ReEncrypt` are to their stores.
//!
//! A value sealed with a previous key is opened and sealed again with the current one; a value
//! stored as given (deployed before the node had a key) is sealed; a value sealed with the
//! current key stays as it is, byte for byte. No version is created, and code, settings and the
//! activation history do not change, so resealing again changes nothing. Sealing is
//! deterministic (`seal.rs`), so a resealed value is what a deploy of the same secret now
//! stores: redeploying a version's secrets after a reseal still creates no version.
//!
//! Everything is planned before anything is written: a value the node cannot reseal (its key
//! is not one of the node's, or it does not open) refuses the whole operation, naming the
//! function, version, secret and key, with nothing written. Then each version record that
//! changes is written the way a deploy writes it (temporary file, fsync, rename, directory
//! fsync, mode 0600), so a crash leaves each version wholly old or wholly resealed, both of
//! which open, and running reseal again finishes the work. The running functions keep their
//! runtimes: the secrets they opened are the same.

use std::collections::BTreeMap;

use serde::Serialize;

use super::UdfError;
use super::seal::{Keyring, Resealed, SEALED_PREFIX};
use super::store::{Deployed, Version};

/// Secret values, counted by how they are stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SecretCounts {
    /// Values sealed, by the id of the key that sealed them.
    pub by_key: BTreeMap<String, usize>,
    /// Values stored as given (deployed before the node had a key).
    pub plain: usize,
}

impl SecretCounts {
    /// Every value counted.
    pub fn total(&self) -> usize {
        self.by_key.values().sum::<usize>() + self.plain
    }

    /// Counts a value sealed with key `key`, or stored as given (`None`).
    fn count(&mut self, key: Option<&str>) {
        match key {
            Some(k) => *self.by_key.entry(k.to_string()).or_default() += 1,
            None => self.plain += 1,
        }
    }

    fn add(&mut self, other: &SecretCounts) {
        for (k, n) in &other.by_key {
            *self.by_key.entry(k.clone()).or_default() += n;
        }
        self.plain += other.plain;
    }
}

/// What resealing did to one function, or would do (a dry run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FunctionReseal {
    /// Function name.
    pub name: String,
    /// The versions whose record is (would be) rewritten: those with a value resealed.
    pub versions: Vec<u32>,
    /// The values resealed, by the key that had sealed them, and those that were stored as
    /// given.
    pub resealed: SecretCounts,
    /// Its values by how they are stored once the request is done: all with the current key
    /// after a reseal, as they are now after a dry run.
    pub in_use: SecretCounts,
}

/// What [`super::Functions::reseal`] did, or would do (a dry run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResealReport {
    /// The id of the node's current key, which seals every value after a reseal.
    pub key: String,
    /// Whether this is a dry run, which writes nothing.
    pub dry_run: bool,
    /// Every deployed function, by name.
    pub functions: Vec<FunctionReseal>,
    /// The sum of the functions' `resealed`.
    pub resealed: SecretCounts,
    /// The sum of the functions' `in_use`: the key ids still in use once the request is done.
    pub in_use: SecretCounts,
    /// Why a reseal is refused: one line per value that cannot be resealed. A dry run lists
    /// them; a reseal that has any is refused with them, and writes nothing.
    pub refused: Vec<String>,
}

impl ResealReport {
    /// The report of `plans`, made with key `key`.
    pub(crate) fn new(key: &str, dry_run: bool, plans: &[Plan]) -> Self {
        let mut report = Self {
            key: key.to_string(),
            dry_run,
            functions: plans.iter().map(|p| p.report.clone()).collect(),
            resealed: SecretCounts::default(),
            in_use: SecretCounts::default(),
            refused: plans.iter().flat_map(|p| p.refused.clone()).collect(),
        };
        report.sum();
        report
    }

    /// Puts `function` in place of what the report says of function `name` (`None`: `name` is
    /// no longer deployed), and sums again: the function was resealed again, after another
    /// node's change of it was taken.
    pub fn replace(&mut self, name: &str, function: Option<FunctionReseal>) {
        self.functions.retain(|f| f.name != name);
        if let Some(f) = function {
            let at = self.functions.partition_point(|g| g.name < f.name);
            self.functions.insert(at, f);
        }
        self.sum();
    }

    fn sum(&mut self) {
        self.resealed = SecretCounts::default();
        self.in_use = SecretCounts::default();
        for f in &self.functions {
            self.resealed.add(&f.resealed);
            self.in_use.add(&f.in_use);
        }
    }
}

/// One function's versions resealed.
#[derive(Debug)]
pub(crate) struct Plan {
    /// What it does.
    pub(crate) report: FunctionReseal,
    /// The version records that change, secrets resealed.
    pub(crate) rewrite: Vec<Version>,
    /// Why values of it cannot be resealed.
    pub(crate) refused: Vec<String>,
}

/// Function `d` with every secret of every version sealed with `keys`' current key. `dry_run`
/// says what `in_use` counts: the values as they are now, or as they are once it is written.
pub(crate) fn plan(keys: &Keyring, d: &Deployed, dry_run: bool) -> Plan {
    let mut now = SecretCounts::default();
    let mut resealed = SecretCounts::default();
    let mut rewrite = Vec::new();
    let mut refused = Vec::new();
    for v in &d.versions {
        let mut record = v.clone();
        for (name, stored) in &v.spec.secrets {
            now.count(key_of(stored));
            let sealed = match keys.reseal(&d.name, v.version, name, stored) {
                Ok(Resealed::Current) => continue,
                Ok(Resealed::Previous { key, sealed }) => {
                    resealed.count(Some(&key));
                    sealed
                }
                Ok(Resealed::Plain(sealed)) => {
                    resealed.count(None);
                    sealed
                }
                Err(why) => {
                    refused.push(why);
                    continue;
                }
            };
            record.spec.secrets.insert(name.clone(), sealed);
        }
        if record != *v {
            rewrite.push(record);
        }
    }
    let in_use = if dry_run || !refused.is_empty() {
        now
    } else {
        all_with(keys.current().id(), now.total())
    };
    Plan {
        report: FunctionReseal {
            name: d.name.clone(),
            versions: rewrite.iter().map(|v| v.version).collect(),
            resealed,
            in_use,
        },
        rewrite,
        refused,
    }
}

/// `n` values, all sealed with key `key`.
fn all_with(key: &str, n: usize) -> SecretCounts {
    SecretCounts {
        by_key: (n > 0).then(|| (key.to_string(), n)).into_iter().collect(),
        plain: 0,
    }
}

/// The id of the key a stored value is sealed with (`""` when it names none); `None` when it
/// is stored as given.
fn key_of(stored: &str) -> Option<&str> {
    let sealed = stored.strip_prefix(SEALED_PREFIX)?;
    Some(sealed.split_once(':').map_or("", |(id, _)| id))
}

/// `Err` when `refused` has any line: the whole reseal is refused, with nothing written.
pub(crate) fn refuse_any(refused: &[String]) -> Result<(), UdfError> {
    let Some(first) = refused.first() else {
        return Ok(());
    };
    let more = match refused.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more value(s); a dry run lists them all)"),
    };
    Err(UdfError::Invalid(format!(
        "nothing was resealed: {first}{more}"
    )))
}

/// The key a node reseals with: its current one. `Err` when it has none.
pub(crate) fn current(keys: Option<&Keyring>) -> Result<&Keyring, UdfError> {
    keys.ok_or_else(|| {
        UdfError::Invalid(
            "this node has no secrets key to reseal with: set [functions] secrets_key_file to \
             the new key and previous_secrets_key_files to the keys it replaces, then restart"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, resealed_from: &str, n: usize) -> FunctionReseal {
        FunctionReseal {
            name: name.into(),
            versions: vec![1],
            resealed: SecretCounts {
                by_key: BTreeMap::from([(resealed_from.to_string(), n)]),
                plain: 1,
            },
            in_use: all_with("cccccccc", n + 1),
        }
    }

    #[test]
    fn a_function_resealed_again_replaces_its_line_and_the_sums() {
        let plans: Vec<Plan> = [function("a", "aaaaaaaa", 2), function("c", "aaaaaaaa", 1)]
            .into_iter()
            .map(|report| Plan {
                report,
                rewrite: Vec::new(),
                refused: Vec::new(),
            })
            .collect();
        let mut report = ResealReport::new("cccccccc", false, &plans);
        assert_eq!(report.resealed.by_key["aaaaaaaa"], 3);
        assert_eq!((report.resealed.plain, report.in_use.total()), (2, 5));
        report.replace("b", Some(function("b", "bbbbbbbb", 4)));
        report.replace("a", None);
        let names: Vec<&str> = report.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(
            report.resealed.by_key,
            BTreeMap::from([("aaaaaaaa".into(), 1), ("bbbbbbbb".into(), 4)])
        );
        assert_eq!(report.in_use, all_with("cccccccc", 7));
    }

    #[test]
    fn a_stored_value_names_its_key_or_none() {
        assert_eq!(key_of("as given"), None);
        assert_eq!(key_of("sluice-sealed:v1:0a1b2c3d:AAAA"), Some("0a1b2c3d"));
        assert_eq!(key_of("sluice-sealed:v1:"), Some(""));
    }
}
