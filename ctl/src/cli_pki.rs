//! The `edgectl pki` command line: the flags of `pki init` and `pki issue`, and what they
//! print. The work is [`crate::pki`]'s.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::pki::{self, Subject, Written, DEFAULT_CA_DAYS, DEFAULT_LEAF_DAYS, OPERATOR_CN};

/// `edgectl pki ...`.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make a fleet CA and the broker's certificate: DIR/ca.pem, DIR/ca.key (0600, keep it
    /// off devices), DIR/broker.pem, DIR/broker.key (0600). Never overwrites.
    Init {
        /// Directory to write the four files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A DNS name or IP address devices reach the broker by, as in their [mqtt] url
        /// (repeatable; the first is also the CN). Default: localhost and 127.0.0.1.
        #[arg(long = "broker-host", value_name = "HOST")]
        broker_hosts: Vec<String>,
        /// Days the CA and the broker certificate are valid.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
    },
    /// Issue a device or operator certificate signed by the fleet CA: DIR/<CN>.pem and
    /// DIR/<CN>.key (0600). Never overwrites.
    Issue(IssueArgs),
}

/// The flags of `edgectl pki issue`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).multiple(false)))]
pub struct IssueArgs {
    /// The directory `pki init` wrote (ca.pem and ca.key).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// A device: the certificate's CN is the device id (its device_id in edge-agent.toml).
    #[arg(long, value_name = "ID", group = "subject")]
    device: Option<String>,
    /// Operator tooling (edgectl's [mqtt] cert_file). The shipped ACL grants the fleet to
    /// CN `operator`, the default; another NAME needs its own grant in the ACL.
    #[arg(long, value_name = "NAME", group = "subject", num_args = 0..=1, default_missing_value = OPERATOR_CN)]
    operator: Option<String>,
    /// Directory to write the certificate and key into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Days the certificate is valid (at most until the CA expires).
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
    days: u32,
}

impl PkiCommand {
    /// Does it, and writes what was written (and what to do next) to `out`; with `json`, one
    /// JSON document `{"written": [{"cert", "key", "common_name", "not_after"}], "next"}`
    /// (`not_after` in Unix seconds).
    pub fn run(&self, out: &mut impl Write, json: bool) -> anyhow::Result<()> {
        let (written, next) = match self {
            PkiCommand::Init { out: dir, broker_hosts, days } => {
                let fleet = pki::init(dir, broker_hosts, *days)?;
                let next = format!(
                    "next: install ca.pem and broker.* as the broker's cafile/certfile/keyfile \
                     (deploy/mosquitto/mosquitto.conf), then `edgectl pki issue --ca {} --device ID --out DIR` \
                     per device and `--operator` once",
                    dir.display()
                );
                (vec![fleet.ca, fleet.broker], Some(next))
            }
            PkiCommand::Issue(args) => {
                let subject = match (&args.device, &args.operator) {
                    (Some(id), _) => Subject::Device(id.clone()),
                    (None, Some(name)) => Subject::Operator(name.clone()),
                    (None, None) => unreachable!("clap requires one of --device and --operator"),
                };
                let written = pki::issue(&args.ca, &subject, &args.out, args.days)?;
                let next = match &subject {
                    Subject::Device(id) => Some(format!(
                        "next: on device {id}, device_id = \"{id}\", [mqtt] cert_file = {}, key_file = {}, \
                         ca_file = {}; the key readable by the edge-agent user (chown root:edge-agent, chmod 0640)",
                        written.cert.display(),
                        written.key.display(),
                        args.ca.join(pki::CA_CERT_FILE).display()
                    )),
                    Subject::Operator(name) if name != OPERATOR_CN => Some(format!(
                        "note: the shipped ACL grants the fleet to CN {OPERATOR_CN} only; add `user {name}` and \
                         `topic readwrite edge/#` to the broker's ACL for this certificate"
                    )),
                    Subject::Operator(_) => None,
                };
                (vec![written], next)
            }
        };
        if json {
            let files: Vec<_> = written
                .iter()
                .map(|w| {
                    serde_json::json!({
                        "cert": w.cert,
                        "key": w.key,
                        "common_name": w.common_name,
                        "not_after": w.not_after.unix_timestamp(),
                    })
                })
                .collect();
            let doc = serde_json::json!({ "written": files, "next": next });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            return Ok(());
        }
        for w in &written {
            line(out, w)?;
        }
        if let Some(next) = next {
            writeln!(out, "{next}")?;
        }
        Ok(())
    }
}

fn line(out: &mut impl Write, w: &Written) -> std::io::Result<()> {
    let until = w.not_after.date();
    writeln!(out, "wrote {} and {} (CN {}, valid until {until})", w.cert.display(), w.key.display(), w.common_name)
}
