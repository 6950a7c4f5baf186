//! edgectl's exit statuses, in one table: this one, printed by `edgectl --help` and copied
//! in the README (The CLI).
//!
//! | status | meaning | what to do |
//! |---|---|---|
//! | 0 | every device reached the goal (or the command needs no device) | |
//! | 1 | a device failed, refused, timed out or did not answer | read the per-device reasons |
//! | 2 | edgectl could not run the command: flags, configuration, keys, files | fix what the message names |
//! | 3 | the broker (or, for `devices`, `deployments` and `deploy` with `[fleet] url`, the fleet service) could not be reached, or the connection broke | retry later; check the broker and the network |

use std::process::ExitCode;

use edgectl::{CommandError, DeployError, LinkError};

/// `--help`'s version of the table above.
pub const HELP: &str = "Exit status: 0 every device reached the goal; 1 a device failed, refused, timed out or \
                        did not answer; 2 edgectl could not run the command (flags, configuration, keys, files); \
                        3 the broker (or the fleet service) could not be reached or the connection broke (retry later). \
                        EDGECTL_LOG=debug shows what is ignored on the wire.";

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Ok,
    /// 1.
    DeviceFailed,
    /// 2 (also what clap exits with for a bad command line).
    Usage,
    /// 3.
    Broker,
}

impl Exit {
    /// The status for an error that stopped edgectl: 3 when it is the broker connection, 2
    /// otherwise.
    pub fn of_error(e: &anyhow::Error) -> Exit {
        let link = e
            .downcast_ref::<LinkError>()
            .or_else(|| e.downcast_ref::<CommandError>().and_then(CommandError::link))
            .or_else(|| e.downcast_ref::<DeployError>().and_then(DeployError::link));
        let fleet = e.downcast_ref::<edgectl::fleet::FleetError>().is_some_and(|f| f.is_connection())
            || e.downcast_ref::<edgectl::deployments::FleetDeployError>().is_some_and(|f| f.is_connection());
        if fleet || link.is_some_and(LinkError::is_connection) {
            Exit::Broker
        } else {
            Exit::Usage
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(match e {
            Exit::Ok => 0,
            Exit::DeviceFailed => 1,
            Exit::Usage => 2,
            Exit::Broker => 3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_broker_connection_is_3_and_anything_else_2() {
        let down = LinkError::Connect { url: "mqtts://b:8883".into(), reason: "refused".into(), transient: true };
        assert_eq!(Exit::of_error(&anyhow::Error::from(down).context("watch")), Exit::Broker);
        // A certificate the broker refuses will not get better by retrying.
        let tls = LinkError::Connect { url: "mqtts://b:8883".into(), reason: "TLS: bad cert".into(), transient: false };
        assert_eq!(Exit::of_error(&anyhow::Error::from(tls)), Exit::Usage);
        let deploy = DeployError::from(LinkError::Closed);
        assert_eq!(Exit::of_error(&anyhow::Error::from(deploy)), Exit::Broker);
        let acl = CommandError::from(LinkError::SubscribeRefused("edge/+/ack".into()));
        assert_eq!(Exit::of_error(&anyhow::Error::from(acl)), Exit::Usage);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("--model x.bin: cannot tell the format")), Exit::Usage);
    }
}
