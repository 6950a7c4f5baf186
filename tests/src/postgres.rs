//! A real PostgreSQL server for the tests: a fresh cluster made by `initdb` in a temporary
//! directory, started by `pg_ctl` on a free loopback port (its Unix socket in the same
//! directory, so nothing under /run is touched), stopped (`immediate`) on drop.
//! Each server is its own throwaway cluster: tests use its `postgres` database.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the cluster is made and
//! run as the `postgres` system user that Debian's package creates, and the directory is
//! handed to it. Debian installs the server binaries under
//! `/usr/lib/postgresql/<major>/bin`, off `PATH`; the newest there is used when `initdb`
//! is not on `PATH` (`scripts/setup.sh` installs the `postgresql` package).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A running PostgreSQL server whose superuser is `edge` (trust authentication on
/// loopback: no password); tests use its `postgres` database.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// uid and gid to run the server as (root cannot).
    user: Option<(u32, u32)>,
    running: bool,
}

impl Postgres {
    /// Makes a cluster and starts it, retrying on a new port a few times if the chosen one
    /// is taken meanwhile.
    pub fn start() -> Result<Postgres> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new().prefix("edge-it-postgres-").tempdir().context("postgres: temp dir")?;
        let user = if unsafe { libc::geteuid() } == 0 { Some(postgres_user()?) } else { None };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).context("postgres: chown the temp dir")?;
        }
        let mut pg = Postgres { bin, dir, port: 0, user, running: false };
        pg.run("initdb", &["-D", "data", "-U", "edge", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])?;
        let mut last = None;
        for _ in 0..5 {
            pg.port = crate::free_port()?;
            match pg.pg_ctl_start() {
                Ok(()) => {
                    pg.running = true;
                    return Ok(pg);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres: did not start")))
    }

    /// `postgres://edge@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://edge@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown), waiting until it has.
    pub fn stop(&mut self) -> Result<()> {
        if self.running {
            self.run("pg_ctl", &["-D", "data", "-m", "fast", "-w", "stop"])?;
            self.running = false;
        }
        Ok(())
    }

    fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.socket_dir()
        );
        self.run("pg_ctl", &["-D", "data", "-l", "server.log", "-o", &options, "-w", "-t", "30", "start"])
            .with_context(|| format!("postgres: server log:\n{}", self.log()))
    }

    /// Runs one of the server's programs in the temporary directory, as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(args).current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        let out = cmd.output().with_context(|| format!("postgres: running {program}"))?;
        if !out.status.success() {
            bail!(
                "postgres: {program} {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.run("pg_ctl", &["-D", "data", "-m", "immediate", "-w", "stop"]);
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: the newest Debian major version under
/// `/usr/lib/postgresql`, else a directory on `PATH` holding both.
fn find_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
                .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    if let Some((_, bin)) = majors.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    });
    on_path.ok_or_else(|| {
        anyhow::anyhow!(
            "postgres: no initdb and pg_ctl under /usr/lib/postgresql/*/bin nor on PATH; run scripts/setup.sh (it \
             installs Debian's postgresql package)"
        )
    })
}

/// uid and gid of the `postgres` system user.
fn postgres_user() -> Result<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!(
            "postgres: running as root, and there is no `postgres` user to run the server as (PostgreSQL refuses \
             root); install Debian's postgresql package (scripts/setup.sh) or run the tests as another user"
        );
    }
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}
