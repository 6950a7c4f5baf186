//! CPU time and memory of a process, from /proc (Linux).

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, seconds.
    pub cpu_secs: f64,
    /// Resident set size now, bytes (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size since the process started, bytes (`VmHWM`).
    pub peak_rss: u64,
}

/// The usage of `pid`, `None` when it is gone or /proc is unreadable.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage { cpu_secs: cpu_secs(&stat)?, rss: kib(&status, "VmRSS:")?, peak_rss: kib(&status, "VmHWM:")? })
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat, in clock ticks), in seconds. The
/// fields are counted after the command name's closing parenthesis, which may hold spaces.
fn cpu_secs(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")", field 3 (state) is index 0: utime (14) is index 11, stime (15) index 12.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

fn kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    Some(line[key.len()..].split_whitespace().next()?.parse::<u64>().ok()? * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (edge (fleet) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_secs(stat), Some(300.0 / hz));
    }

    #[test]
    fn this_process_has_a_usage() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss > 0 && u.peak_rss >= u.rss);
    }
}
