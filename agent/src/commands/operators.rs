//! Who may sign what: operator keys with their roles, scopes and lifetimes.
//!
//! Keys come from three places, in this order of precedence:
//!
//! 1. key changes made by signed commands (`add-operator`, `revoke-key`), kept in
//!    `state_dir/operators.json` so that they survive restarts and configuration changes;
//! 2. `[[ota.operators]]` entries, each with its roles, scope and lifetime;
//! 3. `[ota] trusted_keys`, a shorthand for admin keys with no scope.
//!
//! A revocation wins over the configuration: a key revoked by command stays refused even
//! though the configuration file still lists it (remove it there too). An `add-operator`
//! for a revoked key trusts it again, with the rights it names: the one way to undo a
//! revocation, and an admin command like the revocation itself.
//!
//! Revoking the last admin key that is not revoked is refused: no signed command could
//! then change anything, and the device could only be recovered by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edge_proto::command::{hex, key_id, OperatorGrant, Role, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::config::OtaConfig;
use crate::fsutil::write_atomic;

/// Name of the key changes' file in `state_dir`.
pub const OPERATORS_FILE: &str = "operators.json";

/// A key the device knows, with its rights.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    /// The public key.
    pub key: VerifyingKey,
    /// What it may sign.
    pub role: Role,
    /// Device ids and groups its commands may target; empty for every device.
    pub scope: Vec<String>,
    /// Longest lifetime of a command it signs, in seconds.
    pub max_ttl_secs: Option<u64>,
}

impl Operator {
    /// An admin key with no scope or lifetime of its own (`[ota] trusted_keys`).
    pub fn admin(key: VerifyingKey) -> Operator {
        Operator { key, role: Role::Admin, scope: vec![], max_ttl_secs: None }
    }

    /// Whether a command to `target` by this key may run on the device `device` (a member
    /// of `groups`): no scope; or the target is a group in scope; or it is this device and
    /// the device, or a group it is in, is in scope.
    pub fn may_target(&self, target: &edge_proto::command::Target, device: &str, groups: &[String]) -> bool {
        use edge_proto::command::Target;
        if self.scope.is_empty() {
            return true;
        }
        match target {
            Target::Group(g) => self.scope.contains(g),
            Target::Device(d) => {
                d == device && (self.scope.iter().any(|s| s == device) || groups.iter().any(|g| self.scope.contains(g)))
            }
        }
    }

    fn scope_text(&self) -> String {
        match self.scope.is_empty() {
            true => "every device".into(),
            false => self.scope.join(", "),
        }
    }
}

/// A configured key that is not usable, and the field that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting, e.g. `[[ota.operators]] #2 roles`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The keys `[ota] trusted_keys` and `[[ota.operators]]` configure, checked: every key
/// parses, no key is listed twice, roles are known, scopes are device ids or groups, and a
/// quorum has that many admin keys to meet it.
pub fn configured(ota: &OtaConfig) -> Result<Vec<Operator>, ConfigError> {
    let err = |field: String, reason: String| ConfigError { field, reason };
    let mut out: Vec<Operator> = vec![];
    for (i, entry) in ota.trusted_keys.iter().enumerate() {
        let key = super::keys::parse_key(entry)
            .map_err(|r| err(format!("[ota] trusted_keys[{i}]"), format!("{entry:?}: {r}")))?;
        out.push(Operator::admin(key));
    }
    for (i, o) in ota.operators.iter().enumerate() {
        let field = |f: &str| format!("[[ota.operators]] #{} {f}", i + 1);
        let key = super::keys::parse_key(&o.key).map_err(|r| err(field("key"), format!("{:?}: {r}", o.key)))?;
        let mut role = None;
        for r in &o.roles {
            let r: Role = r.parse().map_err(|e| err(field("roles"), e))?;
            role = Some(role.map_or(r, |old: Role| if r.covers(old) { r } else { old }));
        }
        let role =
            role.ok_or_else(|| err(field("roles"), "empty: give at least one of observe, deploy, admin".into()))?;
        for g in &o.groups {
            if !edge_proto::topics::valid_level(g) {
                return Err(err(field("groups"), format!("{g:?} is not a device id or group name")));
            }
        }
        if o.max_ttl_secs == Some(0) {
            return Err(err(field("max_ttl_secs"), "must be at least 1".into()));
        }
        out.push(Operator { key, role, scope: o.groups.clone(), max_ttl_secs: o.max_ttl_secs });
    }
    for (i, a) in out.iter().enumerate() {
        if out[..i].iter().any(|b| b.key == a.key) {
            return Err(err(
                "[ota] operators".into(),
                format!(
                    "key {} is listed twice (trusted_keys and [[ota.operators]] together): keep one entry",
                    hex(&key_id(&a.key))
                ),
            ));
        }
    }
    let admins = out.iter().filter(|o| o.role == Role::Admin).count();
    if ota.quorum > 1 && admins < ota.quorum {
        return Err(err(
            "[ota] quorum".into(),
            format!("{} admin signatures are needed but only {admins} admin keys are configured", ota.quorum),
        ));
    }
    Ok(out)
}

/// Why the key changes could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OperatorsError {
    /// Reading or writing the file failed.
    #[error("operator keys {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file does not decode.
    #[error(
        "operator keys {}: corrupt ({reason}); restore it from a backup, or remove it to forget every key \
         change made by command (revoked keys are then trusted again if the configuration lists them)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The key changes made by commands, as stored.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Changes {
    version: u16,
    /// Keys added, by hex key id.
    added: BTreeMap<String, Added>,
    /// Keys revoked, by hex key id.
    revoked: BTreeMap<String, Change>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Added {
    /// The public key, hex.
    key: String,
    role: Role,
    groups: Vec<String>,
    max_ttl_secs: Option<u64>,
    #[serde(flatten)]
    change: Change,
}

/// Which command made a change, and when (the device's clock, ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The command's id, hex.
    pub command: String,
    /// When it ran.
    pub at_ms: u64,
}

/// Every key the device knows.
#[derive(Debug)]
pub struct Operators {
    configured: Vec<Operator>,
    changes: Changes,
    path: PathBuf,
}

impl Operators {
    /// The configured keys with the changes stored in `state_dir`.
    pub fn load(configured: Vec<Operator>, state_dir: &Path) -> Result<Operators, OperatorsError> {
        let path = state_dir.join(OPERATORS_FILE);
        let changes = match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |reason: String| OperatorsError::Corrupt { path: path.clone(), reason };
                let changes: Changes = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if changes.version != 1 {
                    return Err(corrupt(format!("unknown version {}", changes.version)));
                }
                for (id, a) in &changes.added {
                    let key = super::keys::parse_key(&a.key).map_err(|e| corrupt(format!("key {}: {e}", a.key)))?;
                    if *id != hex(&key_id(&key)) {
                        return Err(corrupt(format!("entry {id} holds the key of {}", hex(&key_id(&key)))));
                    }
                }
                changes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Changes { version: 1, ..Changes::default() },
            Err(source) => return Err(OperatorsError::Io { path, source }),
        };
        Ok(Operators { configured, changes, path })
    }

    /// The key with id `id` and its rights, revoked or not: an added key's rights replace
    /// the configured ones.
    pub fn get(&self, id: &[u8; 8]) -> Option<Operator> {
        if let Some(a) = self.changes.added.get(&hex(id)) {
            let key = super::keys::parse_key(&a.key).expect("checked when loaded or added");
            return Some(Operator { key, role: a.role, scope: a.groups.clone(), max_ttl_secs: a.max_ttl_secs });
        }
        self.configured.iter().find(|o| key_id(&o.key) == *id).cloned()
    }

    /// Every known key, revoked ones included (a revoked key's commands are authenticated,
    /// then refused as revoked, which says more than "unknown key").
    pub fn keys(&self) -> Vec<VerifyingKey> {
        let mut keys: Vec<VerifyingKey> = self.configured.iter().map(|o| o.key).collect();
        for a in self.changes.added.values() {
            let key = super::keys::parse_key(&a.key).expect("checked when loaded or added");
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// Keys not revoked: the ones whose commands may still run.
    pub fn trusted_keys(&self) -> Vec<VerifyingKey> {
        self.keys().into_iter().filter(|k| self.revoked(&key_id(k)).is_none()).collect()
    }

    /// The revocation of `id`, if it was revoked.
    pub fn revoked(&self, id: &[u8; 8]) -> Option<&Change> {
        self.changes.revoked.get(&hex(id))
    }

    /// Admin keys not revoked.
    fn admins(&self) -> usize {
        self.keys()
            .iter()
            .map(key_id)
            .filter(|id| self.revoked(id).is_none() && self.get(id).is_some_and(|o| o.role == Role::Admin))
            .count()
    }

    /// Trusts `grant` from now on (replacing the rights of the same key, and undoing its
    /// revocation). Written to disk before it takes effect.
    pub fn add(&mut self, grant: &OperatorGrant, change: Change) -> Result<(), String> {
        let key = VerifyingKey::from_bytes(&grant.key).map_err(|_| "not a valid ed25519 public key".to_string())?;
        for g in &grant.groups {
            if !edge_proto::topics::valid_level(g) {
                return Err(format!("scope entry {g:?} is not a device id or group name"));
            }
        }
        let id = hex(&key_id(&key));
        let mut next = self.changes.clone();
        next.revoked.remove(&id);
        next.added.insert(
            id,
            Added {
                key: hex(key.as_bytes()),
                role: grant.role,
                groups: grant.groups.clone(),
                max_ttl_secs: grant.max_ttl_secs,
                change,
            },
        );
        self.commit(next)
    }

    /// Stops trusting `id`. Refused when it is the last admin key not revoked.
    pub fn revoke(&mut self, id: &[u8; 8], change: Change) -> Result<(), String> {
        let Some(op) = self.get(id) else {
            return Err(format!("key {} is not known to this device; nothing to revoke", hex(id)));
        };
        if self.revoked(id).is_some() {
            return Ok(());
        }
        if op.role == Role::Admin && self.admins() <= 1 {
            return Err(format!(
                "key {} is the last admin key: revoking it would leave no key able to change keys; \
                 add another admin key first (add-operator), then revoke this one",
                hex(id)
            ));
        }
        let mut next = self.changes.clone();
        next.revoked.insert(hex(id), change);
        self.commit(next)
    }

    fn commit(&mut self, next: Changes) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&next).expect("changes serialize");
        write_atomic(&self.path, &bytes).map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        self.changes = next;
        Ok(())
    }

    /// One line per key for the log at start: id, role, scope, revoked or not.
    pub fn describe(&self) -> Vec<String> {
        self.keys()
            .iter()
            .map(|k| {
                let id = key_id(k);
                let op = self.get(&id).expect("a known key");
                let revoked =
                    self.revoked(&id).map_or(String::new(), |c| format!(", revoked by command {}", c.command));
                format!("key {} ({}) for {}{revoked}", hex(&id), op.role, op.scope_text())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{SigningKey, Target};

    fn public(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    fn change() -> Change {
        Change { command: "00".into(), at_ms: 1 }
    }

    #[test]
    fn scope_allows_its_groups_and_devices_only() {
        let op = Operator { scope: vec!["cameras".into(), "dev-9".into()], ..Operator::admin(public(1)) };
        let cams = vec!["cameras".to_string()];
        assert!(op.may_target(&Target::Group("cameras".into()), "dev-1", &cams));
        assert!(!op.may_target(&Target::Group("all".into()), "dev-1", &cams), "a group outside the scope");
        assert!(op.may_target(&Target::Device("dev-1".into()), "dev-1", &cams), "a member of a scoped group");
        assert!(!op.may_target(&Target::Device("dev-2".into()), "dev-2", &[]), "a device outside it");
        assert!(op.may_target(&Target::Device("dev-9".into()), "dev-9", &[]), "a device named in it");
        assert!(Operator::admin(public(1)).may_target(&Target::Group("x".into()), "d", &[]));
    }

    #[test]
    fn changes_persist_and_revocation_beats_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (public(1), public(2), public(3));
        let mut ops = Operators::load(vec![Operator::admin(a), Operator::admin(b)], dir.path()).unwrap();
        let grant = OperatorGrant {
            key: *c.as_bytes(),
            role: Role::Observe,
            groups: vec!["lab".into()],
            max_ttl_secs: Some(60),
        };
        ops.add(&grant, change()).unwrap();
        ops.revoke(&key_id(&a), change()).unwrap();

        let ops = Operators::load(vec![Operator::admin(a), Operator::admin(b)], dir.path()).unwrap();
        assert!(ops.revoked(&key_id(&a)).is_some(), "a revocation survives a restart with the key still configured");
        let got = ops.get(&key_id(&c)).unwrap();
        assert_eq!((got.role, got.scope.clone(), got.max_ttl_secs), (Role::Observe, vec!["lab".to_string()], Some(60)));
        assert_eq!(ops.trusted_keys(), vec![b, c]);
        assert_eq!(ops.keys(), vec![a, b, c]);
    }

    #[test]
    fn the_last_admin_key_cannot_be_revoked_and_adding_undoes_a_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (public(1), public(2));
        let mut ops = Operators::load(vec![Operator::admin(a), Operator::admin(b)], dir.path()).unwrap();
        ops.revoke(&key_id(&a), change()).unwrap();
        let err = ops.revoke(&key_id(&b), change()).unwrap_err();
        assert!(err.contains("last admin key") && err.contains("add another admin key first"), "{err}");
        assert!(ops.revoke(&[9; 8], change()).unwrap_err().contains("not known"));
        let grant = OperatorGrant { key: *a.as_bytes(), role: Role::Deploy, groups: vec![], max_ttl_secs: None };
        ops.add(&grant, change()).unwrap();
        assert!(ops.revoked(&key_id(&a)).is_none());
        assert_eq!(ops.get(&key_id(&a)).unwrap().role, Role::Deploy, "the grant's rights replace the configured ones");
    }

    #[test]
    fn configured_keys_are_checked() {
        let k = |seed| hex(public(seed).as_bytes());
        let entry = |key: String, roles: &[&str]| crate::config::OperatorConfig {
            key,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            groups: vec![],
            max_ttl_secs: None,
        };
        let mut ota = OtaConfig { trusted_keys: vec![k(1)], ..OtaConfig::default() };
        ota.operators = vec![entry(k(2), &["observe", "deploy"])];
        let got = configured(&ota).unwrap();
        assert_eq!((got[0].role, got[1].role), (Role::Admin, Role::Deploy), "the highest role listed counts");

        ota.operators = vec![entry(k(1), &["observe"])];
        assert!(configured(&ota).unwrap_err().reason.contains("listed twice"));
        ota.operators = vec![entry(k(2), &["root"])];
        assert_eq!(configured(&ota).unwrap_err().field, "[[ota.operators]] #1 roles");
        ota.operators = vec![entry(k(2), &[])];
        assert!(configured(&ota).unwrap_err().reason.contains("at least one"));
        ota.operators = vec![entry("zz".into(), &["admin"])];
        assert_eq!(configured(&ota).unwrap_err().field, "[[ota.operators]] #1 key");
        ota.operators = vec![entry(k(2), &["deploy"])];
        ota.quorum = 2;
        let e = configured(&ota).unwrap_err();
        assert!(e.field == "[ota] quorum" && e.reason.contains("only 1 admin"), "{e:?}");
    }

    #[test]
    fn fuzz_operators_an_entry_under_another_key_id_is_corrupt_not_a_panic() {
        // Found by the `operators` fuzz target: an added key filed under an id that is not
        // its own made `describe` panic on a key it could not find.
        let dir = tempfile::tempdir().unwrap();
        let mut ops = Operators::load(vec![], dir.path()).unwrap();
        let grant = OperatorGrant { key: *public(1).as_bytes(), role: Role::Admin, groups: vec![], max_ttl_secs: None };
        ops.add(&grant, change()).unwrap();
        let path = dir.path().join(OPERATORS_FILE);
        let text = std::fs::read_to_string(&path).unwrap().replace(&hex(&key_id(&public(1))), "0000000000000000");
        std::fs::write(&path, text).unwrap();
        let err = Operators::load(vec![], dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("holds the key of"), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OPERATORS_FILE), b"{not json").unwrap();
        let err = Operators::load(vec![], dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("remove it"), "{err}");
    }
}
