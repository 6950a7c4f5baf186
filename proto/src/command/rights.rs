//! What each command needs of the key that signs it.
//!
//! | role | may sign |
//! |---|---|
//! | `observe` | `get-status`, `infer` |
//! | `deploy` | the above, `deploy-model`, `activate`, `rollback`, `remove-model`, `cancel` |
//! | `admin` | everything: also `set-config`, `restart`, `erase`, `add-operator`, `revoke-key` |
//!
//! Roles nest: each holds the rights of the ones above it. The table lives here, beside the
//! payloads, so that a new payload cannot be added without deciding its role (the match in
//! [`Payload::required_role`] has no wildcard).

use serde::{Deserialize, Serialize};

use super::Payload;

/// An operator key's role. Ordered: a role holds the rights of every lower one. Variants
/// only ever grow at the end (and a new one must be placed in the order by `rank`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: `get-status`, `infer`.
    Observe,
    /// Change models: deploy, activate, roll back, remove, cancel.
    Deploy,
    /// Everything, including settings, restarts, erase and key changes.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Observe, Role::Deploy, Role::Admin];

    /// The name in configuration files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Observe => "observe",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }

    /// Position in the order of rights.
    fn rank(self) -> u8 {
        match self {
            Role::Observe => 0,
            Role::Deploy => 1,
            Role::Admin => 2,
        }
    }

    /// Whether this role holds the rights of `needed`.
    pub fn covers(self, needed: Role) -> bool {
        self.rank() >= needed.rank()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected observe, deploy or admin"))
    }
}

/// A key an `add-operator` command trusts from then on, with its rights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorGrant {
    /// The ed25519 public key.
    pub key: [u8; 32],
    /// What it may sign.
    pub role: Role,
    /// Device ids and groups its commands may target; empty for every device.
    pub groups: Vec<String>,
    /// Longest lifetime (`expires_at - issued_at`) of a command it signs, in seconds; `None`
    /// for the device's general limits only.
    pub max_ttl_secs: Option<u64>,
}

impl Payload {
    /// The command's name, as edgectl spells it and metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            Payload::DeployModel(_) | Payload::DeployModelContent(_) | Payload::DeployModelProfiled(_) => {
                "deploy-model"
            }
            Payload::Activate { .. } => "activate",
            Payload::Rollback { .. } => "rollback",
            Payload::RemoveModel { .. } => "remove-model",
            Payload::GetStatus => "get-status",
            Payload::SetConfig { .. } => "set-config",
            Payload::Infer { .. } => "infer",
            Payload::Erase => "erase",
            Payload::Restart => "restart",
            Payload::Cancel { .. } => "cancel",
            Payload::AddOperator(_) => "add-operator",
            Payload::RevokeKey { .. } => "revoke-key",
            Payload::Shadow { .. } => "shadow",
            Payload::EndShadow { .. } => "end-shadow",
        }
    }

    /// The lowest role that may sign this command (the table in the module docs).
    pub fn required_role(&self) -> Role {
        match self {
            Payload::GetStatus | Payload::Infer { .. } => Role::Observe,
            Payload::DeployModel(_)
            | Payload::DeployModelContent(_)
            | Payload::DeployModelProfiled(_)
            | Payload::Activate { .. }
            | Payload::Rollback { .. }
            | Payload::RemoveModel { .. }
            | Payload::Cancel { .. }
            | Payload::Shadow { .. }
            | Payload::EndShadow { .. } => Role::Deploy,
            Payload::SetConfig { .. }
            | Payload::Erase
            | Payload::Restart
            | Payload::AddOperator(_)
            | Payload::RevokeKey { .. } => Role::Admin,
        }
    }

    /// Whether a device configured with a quorum needs that many admin signatures for this
    /// command: the ones that cannot be undone or that change who may do anything.
    pub fn needs_quorum(&self) -> bool {
        matches!(self, Payload::Erase | Payload::AddOperator(_) | Payload::RevokeKey { .. })
    }

    /// Whether this command hands a deployment to a device: the one kind the fleet service
    /// may hold and deliver for days (docs/protocol.md, "Lifetime of a deployment").
    pub fn is_deployment(&self) -> bool {
        self.manifest().is_some() || matches!(self, Payload::Cancel { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_parse() {
        assert!(Role::Admin.covers(Role::Deploy) && Role::Deploy.covers(Role::Observe));
        assert!(!Role::Observe.covers(Role::Deploy) && !Role::Deploy.covers(Role::Admin));
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().unwrap_err().contains("observe, deploy or admin"));
    }

    #[test]
    fn the_role_table() {
        assert_eq!(Payload::GetStatus.required_role(), Role::Observe);
        assert_eq!(Payload::Cancel { command_id: [0; 16] }.required_role(), Role::Deploy);
        assert_eq!(Payload::Rollback { name: "m".into() }.required_role(), Role::Deploy);
        assert_eq!(Payload::Erase.required_role(), Role::Admin);
        assert_eq!(Payload::RevokeKey { key_id: [0; 8] }.required_role(), Role::Admin);
        assert_eq!(Payload::SetConfig { telemetry_interval_secs: None, log_level: None }.required_role(), Role::Admin);
        assert!(Payload::Erase.needs_quorum() && !Payload::Restart.needs_quorum());
    }
}
