//! How `edge-agent` ends: one error type, [`Failure`], that carries its exit [`Code`].
//!
//! Every command returns `Result<(), Failure>`; `main` prints the failure's one-line reason
//! on stderr (`edge-agent: ...`) and exits with its code. The codes, and what the shipped
//! systemd unit (`systemd/edge-agent.service`, `Restart=on-failure`,
//! `RestartPreventExitStatus=2`) does with each when `edge-agent run` ends with it:
//!
//! | code | meaning | systemd |
//! |---|---|---|
//! | 0 | done; `run`: stopped by SIGTERM or Ctrl-C, every component drained | not restarted (a stop that was asked for) |
//! | 1 | the command failed: a tool's error (`inspect`, `infer`, ...), or `run` could not start (state directory, `[http] listen` port, certificates, key store) | restarted |
//! | 2 | invalid configuration (`run`, `check-config`), or an invalid command line (clap's usage error) | **not** restarted: restarting cannot fix it |
//! | 3 | `inspect`: the model is not supported (its report says why); never from `run` | — |
//! | 70 | `run`: a component failed or panicked while running; the others were shut down in order (EX_SOFTWARE) | restarted |
//! | 75 | `run`: stopped by a `restart` command (EX_TEMPFAIL) | restarted |
//! | 101 | a panic outside any component (Rust's panic exit status): a bug | restarted |
//!
//! `docs/deploy.md` ("systemd policy") has the same table; a test below checks the unit's
//! `RestartPreventExitStatus=` against it.

use std::fmt;

/// An exit code of `edge-agent`; the table in the module docs says what each means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// The command did its job; `run` was stopped by a signal.
    Ok = 0,
    /// The command failed, or `run` could not start.
    Failed = 1,
    /// The configuration or the command line is invalid: restarting cannot fix it.
    Config = 2,
    /// `inspect` found the model unsupported (the report was printed).
    Unsupported = 3,
    /// A component of the running agent failed or panicked (EX_SOFTWARE).
    ComponentFailed = 70,
    /// A `restart` command stopped the agent (EX_TEMPFAIL).
    Restart = 75,
}

impl Code {
    /// Every code `edge-agent` itself returns (101, a panic, is Rust's).
    pub const ALL: [Code; 6] =
        [Code::Ok, Code::Failed, Code::Config, Code::Unsupported, Code::ComponentFailed, Code::Restart];

    /// The process exit status.
    pub fn status(self) -> u8 {
        self as u8
    }

    /// Whether the service manager should start the agent again after `run` ends with this
    /// code. Only a stop that was asked for (0) and an invalid configuration (2) are final
    /// (`run` never ends with 3).
    pub fn restart(self) -> bool {
        !matches!(self, Code::Ok | Code::Config)
    }
}

impl From<Code> for std::process::ExitCode {
    fn from(code: Code) -> Self {
        std::process::ExitCode::from(code.status())
    }
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: Code,
    reason: String,
}

impl Failure {
    /// A failure with `code` and a reason that says what failed, on what, and what to do.
    pub fn new(code: Code, reason: impl fmt::Display) -> Failure {
        Failure { code, reason: reason.to_string() }
    }

    /// An invalid configuration (exit 2).
    pub fn config(reason: impl fmt::Display) -> Failure {
        Failure::new(Code::Config, reason)
    }

    /// The reason on one line, as `main` prints it after `edge-agent: `.
    pub fn line(&self) -> String {
        self.reason.replace('\n', " ")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Failure {}

/// Any other error is a failed command (exit 1), with its whole chain of causes.
impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::new(Code::Failed, format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `key=` lines in the shipped unit.
    fn unit_values(key: &str) -> Vec<String> {
        let unit = include_str!("../../systemd/edge-agent.service");
        let prefix = format!("{key}=");
        unit.lines().filter_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_string()).collect()
    }

    #[test]
    fn the_unit_prevents_a_restart_exactly_for_the_final_failure_codes() {
        // A code added to RestartPreventExitStatus= by mistake (say 70) would leave a device
        // whose component failed stopped for good, with MQTT down and no remote way back.
        let prevented: Vec<u8> = unit_values("RestartPreventExitStatus")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(|c| c.parse().unwrap())
            .collect();
        let final_failures: Vec<u8> =
            Code::ALL.into_iter().filter(|c| !c.restart() && *c != Code::Ok).map(Code::status).collect();
        assert_eq!(prevented, final_failures);
        assert_eq!(unit_values("Restart"), ["on-failure"], "on-failure restarts every non-zero exit but those");
    }

    #[test]
    fn a_reason_is_printed_on_one_line() {
        let f: Failure = anyhow::anyhow!("second line\nof the cause").context("loading x.onnx").into();
        assert_eq!(f.code, Code::Failed);
        assert_eq!(f.line(), "loading x.onnx: second line of the cause");
    }
}
