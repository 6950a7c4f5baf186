//! The topic layout. Everything a device publishes or receives lives under
//! `{prefix}/{device}/`, so a broker ACL `pattern readwrite edge/%u/#` (with the device
//! certificate's CN as user name) confines a device to its own topics.
//!
//! | topic | direction | retained | payload |
//! |---|---|---|---|
//! | `{prefix}/{device}/telemetry` | device → fleet | no | [`crate::telemetry::Telemetry`] |
//! | `{prefix}/{device}/status` | device → fleet | yes | [`crate::status::Status`] (also the last will) |
//! | `{prefix}/{device}/cmd` | fleet → device | no | [`crate::command::Command`] |
//! | `{prefix}/{device}/ack` | device → fleet | no | [`crate::command::Ack`] |
//! | `{prefix}/{device}/ota` | fleet → device | no | [`crate::ota::Chunk`] |
//! | `{prefix}/{device}/need` | device → fleet | no | [`crate::ota::Need`] |
//! | `{prefix}/group/{group}/cmd` | fleet → group | no | [`crate::command::Command`] |
//! | `{prefix}/group/{group}/ota` | fleet → group | no | [`crate::ota::Chunk`] |
//!
//! `group` is therefore reserved: it cannot be a device id. So are the user names the
//! shipped broker ACL (`deploy/mosquitto/acl`) grants more than a device's own topics:
//! [`reserved_device_id`] says which and why.

/// Why `id` may not be a device id, `None` when it may. A device's certificate CN is its
/// broker user name, so a device named like a privileged user would get that user's rights
/// from the shipped ACL.
pub fn reserved_device_id(id: &str) -> Option<&'static str> {
    match id {
        "group" => Some(
            "`group` is the topic level of group commands (edge/group/...), so a device of that name could \
             publish to every group",
        ),
        "operator" => Some(
            "the broker's ACL grants user `operator` every device's topics (use --operator for operator \
             tooling: edgectl pki issue --operator)",
        ),
        "observer" => Some(
            "the broker's ACL grants user `observer` every device's status, telemetry, acks and commands \
             (edgectl pki issue --operator observer)",
        ),
        "deployer" => Some(
            "the broker's ACL grants user `deployer` every device's commands and OTA topics \
             (edgectl pki issue --operator deployer)",
        ),
        "edge-fleet" => {
            Some("the broker's ACL grants user `edge-fleet` (the fleet service) every device's cmd and ota topics")
        }
        _ => None,
    }
}

/// Topic builder for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    device: String,
}

/// Whether `s` can be one topic level: non-empty, no `/`, no wildcards, no NUL.
pub fn valid_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

impl Topics {
    /// Topics of `device` under `prefix`. Both must be single topic levels.
    pub fn new(prefix: &str, device: &str) -> Option<Topics> {
        (valid_level(prefix) && valid_level(device)).then(|| Topics { prefix: prefix.into(), device: device.into() })
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Periodic telemetry.
    pub fn telemetry(&self) -> String {
        format!("{}/{}/telemetry", self.prefix, self.device)
    }

    /// Retained online/offline status.
    pub fn status(&self) -> String {
        format!("{}/{}/status", self.prefix, self.device)
    }

    /// Commands addressed to this device.
    pub fn commands(&self) -> String {
        format!("{}/{}/cmd", self.prefix, self.device)
    }

    /// Acknowledgements of this device's commands.
    pub fn acks(&self) -> String {
        format!("{}/{}/ack", self.prefix, self.device)
    }

    /// OTA chunks addressed to this device (repairs, single-device deploys).
    pub fn ota(&self) -> String {
        format!("{}/{}/ota", self.prefix, self.device)
    }

    /// This device's requests for missing chunks.
    pub fn need(&self) -> String {
        format!("{}/{}/need", self.prefix, self.device)
    }

    /// OTA chunks addressed to `group`; `None` when `group` is not a single topic level.
    pub fn group_ota(&self, group: &str) -> Option<String> {
        fleet::group_ota(&self.prefix, group)
    }

    /// Commands addressed to `group`, which this device subscribes to when it is a member.
    /// `None` when `group` is not a single topic level.
    pub fn group_commands(&self, group: &str) -> Option<String> {
        fleet::group_command(&self.prefix, group)
    }
}

/// Subscription filters for an operator watching the fleet.
pub mod fleet {
    /// Telemetry of every device, or of one.
    pub fn telemetry(prefix: &str, device: Option<&str>) -> String {
        format!("{prefix}/{}/telemetry", device.unwrap_or("+"))
    }

    /// Status of every device, or of one.
    pub fn status(prefix: &str, device: Option<&str>) -> String {
        format!("{prefix}/{}/status", device.unwrap_or("+"))
    }

    /// Where an operator publishes a command for one device.
    pub fn command(prefix: &str, device: &str) -> String {
        format!("{prefix}/{device}/cmd")
    }

    /// Where an operator publishes a command for a group; `None` when `group` is not a
    /// single topic level.
    pub fn group_command(prefix: &str, group: &str) -> Option<String> {
        super::valid_level(group).then(|| format!("{prefix}/group/{group}/cmd"))
    }

    /// Where an operator publishes OTA chunks for one device.
    pub fn ota(prefix: &str, device: &str) -> String {
        format!("{prefix}/{device}/ota")
    }

    /// Where an operator publishes OTA chunks for a group; `None` when `group` is not a
    /// single topic level.
    pub fn group_ota(prefix: &str, group: &str) -> Option<String> {
        super::valid_level(group).then(|| format!("{prefix}/group/{group}/ota"))
    }

    /// Repair requests of every device, or of one.
    pub fn need(prefix: &str, device: Option<&str>) -> String {
        format!("{prefix}/{}/need", device.unwrap_or("+"))
    }

    /// Acknowledgements of every device, or of one.
    pub fn acks(prefix: &str, device: Option<&str>) -> String {
        format!("{prefix}/{}/ack", device.unwrap_or("+"))
    }

    /// The device segment of a device topic.
    pub fn device_of(topic: &str) -> Option<&str> {
        topic.split('/').nth(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acls_privileged_user_names_are_reserved_and_every_acl_user_is_one() {
        for id in ["group", "operator", "edge-fleet", "observer", "deployer"] {
            assert!(reserved_device_id(id).is_some(), "{id}");
        }
        assert_eq!(reserved_device_id("cam-1"), None);
        let acl = include_str!("../../deploy/mosquitto/acl");
        for user in acl.lines().filter_map(|l| l.strip_prefix("user ")) {
            assert!(reserved_device_id(user.trim()).is_some(), "the ACL grants `{user}` rights: reserve it");
        }
    }

    #[test]
    fn every_device_topic_is_under_prefix_and_device() {
        let t = Topics::new("edge", "dev-1").unwrap();
        for topic in [t.telemetry(), t.status(), t.commands(), t.acks(), t.ota(), t.need()] {
            assert!(topic.starts_with("edge/dev-1/"), "{topic}");
        }
        assert_eq!(fleet::device_of(&t.telemetry()), Some("dev-1"));
        assert_eq!(fleet::telemetry("edge", None), "edge/+/telemetry");
        assert_eq!(fleet::command("edge", "dev-1"), t.commands());
        assert_eq!(fleet::acks("edge", Some("dev-1")), t.acks());
        assert_eq!(fleet::acks("edge", None), "edge/+/ack");
    }

    #[test]
    fn group_commands_have_their_own_subtree_and_refuse_wildcards() {
        let t = Topics::new("edge", "dev-1").unwrap();
        assert_eq!(t.group_commands("lab").as_deref(), Some("edge/group/lab/cmd"));
        assert_eq!(t.group_ota("lab").as_deref(), Some("edge/group/lab/ota"));
        assert_eq!(fleet::ota("edge", "dev-1"), t.ota());
        assert_eq!(fleet::need("edge", None), "edge/+/need");
        assert_eq!(fleet::group_command("edge", "+"), None);
        assert_eq!(fleet::group_command("edge", "a/b"), None);
    }

    #[test]
    fn refuses_levels_that_would_escape_the_device_subtree() {
        assert!(Topics::new("edge", "a/b").is_none());
        assert!(Topics::new("edge", "+").is_none());
        assert!(Topics::new("", "dev").is_none());
    }
}
