//! `edge-agent run`: loads the configuration, sets up logging, runs [`crate::daemon`] on a
//! single-threaded runtime and turns how it stopped into an exit code
//! ([`crate::exit`]): 0 for a signal, 70 for a failed component, 75 for a `restart`
//! command, so that `Restart=on-failure` starts it again after either of those.

use std::path::PathBuf;

use crate::commands::settings::LogControl;
use crate::config::Config;
use crate::daemon::{self, Stopped};
use crate::exit::{Code, Failure};

/// The flags of `edge-agent run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TOML configuration.
    #[arg(long, env = crate::config::CONFIG_ENV, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are written on stderr (outside journald).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    // No doc comments here: clap would print them in `--help` as well.
    Text,
    Json,
}

/// Runs the agent until it stops; a failure carries the exit code the table in
/// [`crate::exit`] gives it.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = Config::load(&args.config).map_err(Failure::config)?;
    let log = init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Code::Failed, format!("cannot start the runtime: {e}")))?;
    let stopped = runtime.block_on(daemon::run(config, Some(args.config), Some(log)))?;
    match stopped {
        Stopped::Shutdown => Ok(()),
        Stopped::Restart => {
            Err(Failure::new(Code::Restart, "stopped by a restart command; the service manager starts it again"))
        }
        Stopped::Failed { component, reason } => Err(Failure::new(
            Code::ComponentFailed,
            format!(
                "component {component} failed: {reason}; the agent stopped in order and exits {} so that the \
                 service manager restarts it",
                Code::ComponentFailed.status()
            ),
        )),
    }
}

/// Under systemd (`JOURNAL_STREAM` set) logs go to journald with structured fields; if the
/// journal socket is missing, or outside systemd, they go to stderr as text or JSON.
/// `RUST_LOG` filters; the default is info. Returns the control that changes the filter at
/// run time (the `set-config` command).
fn init_logging(format: LogFormat) -> LogControl {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{reload, EnvFilter, Layer};
    let initial = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(initial);
    let control: LogControl = std::sync::Arc::new(move |level: &str| {
        let next = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
        handle.reload(next).map_err(|e| format!("cannot change the log filter: {e}"))
    });
    let mut journald = None;
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(layer) => journald = Some(layer.with_syslog_identifier("edge-agent".into())),
            Err(e) => eprintln!("edge-agent: journald unavailable ({e}); logging to stderr"),
        }
    }
    let stderr = match (&journald, format) {
        (Some(_), _) => None,
        (None, LogFormat::Text) => Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()),
        (None, LogFormat::Json) => Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed()),
    };
    tracing_subscriber::registry().with(filter).with(journald).with(stderr).init();
    control
}
