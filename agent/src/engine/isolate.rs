//! Checking an untrusted model file in a child process.
//!
//! `catch_unwind` stops panics, but not what a hostile or broken file can do beyond them: an
//! allocation failure aborts, a stack overflow kills the process, a pathological graph can
//! spin for minutes. Before the agent adopts a file it did not ship with, it can have a
//! child process (`edge-agent inspect --json`) load it under resource limits (address space,
//! CPU time, no file grown past a megabyte, no core dump, killed with the agent) and a
//! deadline.
//! Whatever happens to the child, the agent gets an error and keeps running. The OTA
//! validation child also confines itself ([`crate::sandbox`]).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{EngineError, Inspection};

/// Resource limits for the checking child.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Address-space limit (`RLIMIT_AS`) in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline; the child is killed after it.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 1 << 30, timeout: Duration::from_secs(60) }
    }
}

/// The largest file the checking child may write or grow (`RLIMIT_FSIZE`), in bytes. Not 0:
/// under qemu-user (an arm image tested on an x86 machine) the emulator writes the
/// `/proc/self/maps` it shows the program into a temporary file, which a limit of 0 turns
/// into SIGXFSZ before `main`. The OTA validation child cannot open a file for writing in
/// the first place where Landlock is available ([`crate::sandbox`]).
pub const FILE_SIZE_LIMIT: u64 = 1 << 20;

/// The board's memory (`MemTotal` in /proc/meminfo), in bytes.
pub fn board_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Runs `program inspect --model FILE --json` under `limits` and returns its report.
/// `program` is normally `std::env::current_exe()`.
pub fn check_in_child(program: &Path, model: &Path, limits: Limits) -> Result<Inspection, EngineError> {
    let args = ["inspect".as_ref(), "--model".as_ref(), model.as_os_str(), "--json".as_ref()];
    let what = model.display().to_string();
    let stdout = run_child(program, &args, limits, &what)?;
    serde_json::from_str(&stdout)
        .map_err(|e| EngineError::Invalid(format!("{what}: unreadable model check report: {e}")))
}

/// Runs `program ARGS…` under `limits` and returns its standard output. `what` names the
/// model in errors. A crash, a kill at the deadline or a failure without output is an error
/// that says which.
pub fn run_child(program: &Path, args: &[&std::ffi::OsStr], limits: Limits, what: &str) -> Result<String, EngineError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let memory = limits.memory_bytes;
    // CPU time: what the child could use on every core until the deadline. It bounds a
    // child whose parent died before killing it (with PDEATHSIG, the second fence).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let cpu_secs = limits.timeout.as_secs().max(1).saturating_mul(cores) + 1;
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (setrlimit, prctl) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let set = |resource, value: u64| {
                    let lim = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
                    match libc::setrlimit(resource, &lim) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                };
                set(libc::RLIMIT_AS, memory)?;
                set(libc::RLIMIT_CPU, cpu_secs)?;
                // No file grows past FILE_SIZE_LIMIT (the child prints its report on a
                // pipe) and no core dump writes the model's bytes to disk.
                set(libc::RLIMIT_FSIZE, FILE_SIZE_LIMIT)?;
                set(libc::RLIMIT_CORE, 0)?;
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let io = |source| EngineError::Io { path: program.display().to_string(), source };
    let mut child = cmd.spawn().map_err(io)?;
    let deadline = Instant::now() + limits.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EngineError::Invalid(format!(
                "{what}: model check did not finish within {:?}",
                limits.timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if !status.success() && stdout.trim().is_empty() {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                return Err(EngineError::Invalid(format!(
                    "{what}: model check crashed (signal {signal}) under a {} MiB memory limit",
                    memory >> 20
                )));
            }
        }
        let reason = stderr.lines().last().unwrap_or("no output").to_string();
        return Err(EngineError::Invalid(format!("{what}: model check failed: {reason}")));
    }
    Ok(stdout)
}
