//! `edge-agent check-config`: the configuration checked in full, the device certificate
//! read (X.509 v3, CN = `device_id`, not expired: [`edge_mqtt::cert`]), and every model it
//! names loaded with its options, without starting the agent. Anything wrong exits 2 with
//! one line naming the file, the key or model, and the problem; a certificate that expires
//! within 30 days is a warning on stderr.
//!
//! It also checks that the TLS files can be read by whoever will run the agent: run as root
//! (`sudo edge-agent check-config`), it warns about each file the service user
//! ([`SERVICE_USER`]) could not read; run as anyone else, a file it cannot read itself is an
//! error. Without the first, a key left `0600 root:root` passes here and the service fails at
//! its first connection.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::engine::Model;
use crate::exit::Failure;

/// The flags of `edge-agent check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TOML configuration.
    #[arg(long, env = crate::config::CONFIG_ENV, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Checks the configuration and its models; prints one `ok` line.
pub fn run(args: Args) -> Result<(), Failure> {
    let path = &args.config;
    let config = Config::load(path).map_err(Failure::config)?;
    // Printed at the end, with the `ok`: a configuration that fails is one line.
    let mut notes = Vec::new();
    if config.mqtt.url.starts_with("mqtts://") {
        let m = &config.mqtt;
        let files = [("ca_file", &*m.ca_file), ("cert_file", &*m.cert_file), ("key_file", &*m.key_file)];
        notes = check_access(&files).map_err(|e| Failure::config(format!("config {}: {e}", path.display())))?;
        let now = (crate::clock::now_ms() / 1000) as i64;
        let cert = edge_mqtt::cert::check_device(&config.mqtt.cert_file, &config.device_id, now)
            .map_err(|e| Failure::config(format!("config {}: {e}", path.display())))?;
        let left = cert.not_after - now;
        if left < edge_mqtt::cert::EXPIRY_WARNING_SECS {
            eprintln!(
                "warning: [mqtt] cert_file {} expires in {} days; issue a new certificate for {}",
                config.mqtt.cert_file.display(),
                left / 86_400,
                config.device_id
            );
        }
    }
    for (i, m) in config.models.iter().enumerate() {
        let what = format!("config {}: [[models]] #{} ({:?})", path.display(), i + 1, m.name);
        let options = crate::models::load::options_for(m).map_err(|e| Failure::config(format!("{what}: {e}")))?;
        Model::load(&m.path, &options).map_err(|e| Failure::config(format!("{what}: {e}")))?;
    }
    for note in notes {
        eprintln!("{note}");
    }
    println!("config {}: ok (device {}, {} models)", path.display(), config.device_id, config.models.len());
    Ok(())
}

/// The user the agent runs as: `User=` in `systemd/edge-agent.service`, created by
/// `edge-agent.sysusers`.
pub const SERVICE_USER: &str = "edge-agent";

/// As root: a warning per file [`SERVICE_USER`] could not read (or a note that the user does
/// not exist here), to print. As anyone else: an error for the first file this user cannot
/// read.
fn check_access(files: &[(&str, &Path)]) -> Result<Vec<String>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        for (key, path) in files {
            if let Err(e) = std::fs::File::open(path) {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    return Err(format!(
                        "[mqtt] {key} {}: this user cannot read it ({e}); make it readable by the {SERVICE_USER} \
                         user: `chown {SERVICE_USER}: {0}` or `chgrp {SERVICE_USER} {0} && chmod 0640 {0}`",
                        path.display()
                    ));
                }
            }
        }
        return Ok(Vec::new());
    }
    let Some(user) = Account::lookup(SERVICE_USER) else {
        return Ok(vec![format!(
            "note: no `{SERVICE_USER}` user on this machine (the service's User=), so whether the service can read \
             [mqtt] ca_file, cert_file and key_file is not checked"
        )]);
    };
    let mut warnings = Vec::new();
    for (key, path) in files {
        if let Some((blocker, why)) = user.denied(path) {
            let fix = if blocker == *path {
                format!("`chown {SERVICE_USER}: {0}` or `chgrp {SERVICE_USER} {0} && chmod 0640 {0}`", path.display())
            } else {
                format!("`chgrp {SERVICE_USER} {0} && chmod 0750 {0}`", blocker.display())
            };
            warnings.push(format!(
                "warning: [mqtt] {key} {}: the service user {SERVICE_USER} cannot read it ({why}); run {fix}",
                path.display()
            ));
        }
    }
    Ok(warnings)
}

/// A user and its groups, as the kernel checks file access for its processes.
#[derive(Debug)]
struct Account {
    uid: u32,
    gids: Vec<u32>,
}

impl Account {
    /// `getpwnam_r` and `getgrouplist`; `None` when there is no such user.
    fn lookup(name: &str) -> Option<Account> {
        let cname = std::ffi::CString::new(name).ok()?;
        // SAFETY: passwd is plain data; getpwnam_r fills it and points its strings into buf,
        // which outlives every use below; result is null unless an entry was found.
        let (uid, gid) = unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut buf = vec![0 as libc::c_char; 16 * 1024];
            let mut result = std::ptr::null_mut();
            let rc = libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
            if rc != 0 || result.is_null() {
                return None;
            }
            (pwd.pw_uid, pwd.pw_gid)
        };
        let mut gids = vec![0 as libc::gid_t; 64];
        loop {
            let mut n = gids.len() as libc::c_int;
            // SAFETY: gids has room for n entries; getgrouplist writes at most n and sets n
            // to the number it has (or needs, when it returns -1).
            let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, gids.as_mut_ptr(), &mut n) };
            if rc >= 0 {
                gids.truncate(n.max(0) as usize);
                break;
            }
            if n as usize <= gids.len() {
                gids = vec![gid];
                break;
            }
            gids.resize(n as usize, 0);
        }
        Some(Account { uid, gids })
    }

    /// The first path that stops this user reading `path` (a directory above it without
    /// search permission, or the file without read permission) and why, from the mode bits.
    /// ACLs and capabilities are not considered.
    fn denied<'a>(&self, path: &'a Path) -> Option<(&'a Path, String)> {
        let dirs = path.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty());
        let mut steps: Vec<(&Path, u32)> = dirs.map(|d| (d, 0o1)).collect();
        steps.reverse();
        steps.push((path, 0o4));
        for (p, bit) in steps {
            let Ok(meta) = std::fs::metadata(p) else { continue };
            let mode = meta.mode();
            let granted = if self.uid == 0 {
                true
            } else if meta.uid() == self.uid {
                mode >> 6 & bit != 0
            } else if self.gids.contains(&meta.gid()) {
                mode >> 3 & bit != 0
            } else {
                mode & bit != 0
            };
            if !granted {
                let what = if bit == 0o1 { "directory " } else { "" };
                return Some((
                    p,
                    format!(
                        "{what}{} is uid {}, gid {}, mode {:04o}",
                        p.display(),
                        meta.uid(),
                        meta.gid(),
                        mode & 0o7777
                    ),
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A user who owns nothing here: uid and gid not those of the test's files.
    fn stranger(gids: Vec<u32>) -> Account {
        Account { uid: 64_999, gids }
    }

    #[test]
    fn a_key_only_its_owner_reads_is_denied_to_the_service_user_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("device.key");
        std::fs::write(&key, "k").unwrap();
        chmod(dir.path(), 0o755);
        chmod(&key, 0o600);
        let (blocker, why) = stranger(vec![64_999]).denied(&key).expect("denied");
        assert_eq!(blocker, key.as_path());
        assert!(why.contains("mode 0600") && why.contains(&key.display().to_string()), "{why}");
    }

    #[test]
    fn group_read_is_enough_for_a_member_of_the_files_group() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("device.key");
        std::fs::write(&key, "k").unwrap();
        chmod(dir.path(), 0o750);
        chmod(&key, 0o640);
        let gid = std::fs::metadata(&key).unwrap().gid();
        assert!(stranger(vec![gid]).denied(&key).is_none());
        // Not a member: the directory stops it before the file does.
        let (blocker, why) = stranger(vec![64_999]).denied(&key).expect("denied");
        assert_eq!(blocker, dir.path());
        assert!(why.starts_with("directory "), "{why}");
    }

    #[test]
    fn a_user_that_does_not_exist_is_none() {
        assert!(Account::lookup("edge-agent-no-such-user").is_none());
        assert_eq!(Account::lookup("root").map(|a| a.uid), Some(0));
    }
}
