//! `edge-agent`: the daemon binary and its model tools.
//!
//! `main` stays thin: parse the command line, call the command's module in
//! [`edge_agent::cli`], print a failure's one-line reason on stderr and exit with its code
//! (the table is in [`edge_agent::exit`]).

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use edge_agent::cli;
use edge_agent::exit::{Code, Failure};

#[derive(Parser)]
#[command(name = "edge-agent", version, about = "Inference agent for fleets of small Linux boxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent daemon.
    Run(cli::run::Args),
    /// Validate a configuration file and the models it names; exit 2 with one line if wrong.
    CheckConfig(cli::check_config::Args),
    /// Print a model's format, signature, operators and whether it is supported.
    Inspect(cli::inspect::Args),
    /// Run a model on .npy inputs and write its outputs as .npy files.
    Infer(cli::infer::Args),
    /// Make a model's reference profile (bins and fractions of every input and output) from
    /// sample inputs, as JSON for `edgectl deploy --profile FILE`; devices report drift
    /// against it.
    Profile(cli::reference::Args),
    /// Validate a staged OTA transfer (run by the agent itself in a child process under
    /// memory and time limits): load the model, run its validation vector, print a JSON
    /// report.
    #[command(hide = true)]
    Validate(cli::validate::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (edge-agent.1 and one per command) into a directory.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run(args) => cli::run::run(args),
        Command::CheckConfig(args) => cli::check_config::run(args),
        Command::Inspect(args) => cli::inspect::run(args),
        Command::Infer(args) => cli::infer::run(args),
        Command::Profile(args) => cli::reference::run(args),
        Command::Validate(args) => cli::validate::run(args),
        // Generated from the definitions the binary parses with; the .deb ships them.
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "edge-agent", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => std::fs::create_dir_all(&out)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &out))
            .map_err(|e| Failure::new(Code::Failed, format!("--out {}: {e}", out.display()))),
    }
}

fn main() -> ExitCode {
    edge_agent::memory::tune_allocator();
    // A bad command line exits 2 here (clap), like an invalid configuration.
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => Code::Ok.into(),
        Err(failure) => {
            eprintln!("edge-agent: {}", failure.line());
            failure.code.into()
        }
    }
}
