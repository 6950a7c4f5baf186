//! Confining a process that parses untrusted input: the OTA validation child.
//!
//! The child opens what it needs first (the staged files), then calls [`confine`], then
//! parses the model. From then on it can compute and print, and little else:
//!
//! | layer | stops | needs |
//! |---|---|---|
//! | Landlock, every file-system right handled, none granted | opening any file (`device.key`, `model.key`, the TLS keys, the configuration), creating, removing, executing | Linux ≥ 5.13 with Landlock enabled |
//! | seccomp filter | `socket`, `socketpair` (no network, no local sockets), `execve`, `execveat`, new processes (`fork`, `vfork`, `clone` without `CLONE_THREAD`; `clone3` answers `ENOSYS` so the C library falls back to `clone`), `ptrace`, `process_vm_readv`/`writev`, `io_uring_setup` | Linux with seccomp filters (every kernel the agent runs on) |
//! | `no_new_privs` | gaining privileges through a set-uid program | — |
//!
//! The parent adds resource limits before the child starts ([`crate::engine::isolate`]):
//! address space sized from the board, CPU time, no file grown past 1 MiB, no core dumps,
//! and the child dies with the agent. Files the child opened before confining itself stay
//! readable: that is how it reads the staged model. A layer the kernel lacks is reported (the
//! validation report carries [`Report`]) and the others still apply.

/// What [`confine`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Some(abi)` when Landlock confines the file system; why not otherwise.
    pub landlock: Result<u32, String>,
    /// Whether the seccomp filter is installed; why not otherwise.
    pub seccomp: Result<(), String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.landlock {
            Ok(abi) => write!(f, "files: landlock (abi {abi}); ")?,
            Err(e) => write!(f, "files: NOT confined ({e}); ")?,
        }
        match &self.seccomp {
            Ok(()) => write!(f, "network, processes: seccomp"),
            Err(e) => write!(f, "network, processes: NOT confined ({e})"),
        }
    }
}

/// Confines the calling process for good: no new files, sockets or processes. Call it once
/// every input is open; threads started after it inherit it (those started before do not
/// for Landlock: call it before starting any).
pub fn confine() -> Report {
    // SAFETY: prctl with constant arguments.
    let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if nnp != 0 {
        let e = std::io::Error::last_os_error().to_string();
        return Report { landlock: Err(format!("no_new_privs: {e}")), seccomp: Err(format!("no_new_privs: {e}")) };
    }
    Report { landlock: landlock(), seccomp: seccomp() }
}

/// Landlock system calls: the same numbers on every architecture.
const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const SYS_LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
/// `landlock_create_ruleset` flag: return the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
/// The file-system rights of Landlock ABI 1 (execute, read, write, make and remove of every
/// kind); later ABIs add `REFER` (bit 13) and `TRUNCATE` (bit 14).
const ACCESS_FS_V1: u64 = (1 << 13) - 1;

fn landlock() -> Result<u32, String> {
    // SAFETY: the version query takes no attribute.
    let abi = unsafe {
        libc::syscall(SYS_LANDLOCK_CREATE_RULESET, std::ptr::null::<u8>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION)
    };
    if abi < 1 {
        return Err(format!("landlock unavailable: {}", std::io::Error::last_os_error()));
    }
    let mut handled = ACCESS_FS_V1;
    if abi >= 2 {
        handled |= 1 << 13;
    }
    if abi >= 3 {
        handled |= 1 << 14;
    }
    // struct landlock_ruleset_attr { __u64 handled_access_fs; } is enough: a kernel reads the
    // size given and treats the later fields (network, scopes) as unhandled.
    let attr: u64 = handled;
    // SAFETY: attr outlives the call and its size is passed.
    let fd = unsafe { libc::syscall(SYS_LANDLOCK_CREATE_RULESET, &attr as *const u64, 8usize, 0u32) };
    if fd < 0 {
        return Err(format!("landlock_create_ruleset: {}", std::io::Error::last_os_error()));
    }
    // No rule: nothing is granted under any directory.
    // SAFETY: fd is the ruleset just created; closed right after.
    let r = unsafe { libc::syscall(SYS_LANDLOCK_RESTRICT_SELF, fd as libc::c_int, 0u32) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd as libc::c_int) };
    if r != 0 {
        return Err(format!("landlock_restrict_self: {err}"));
    }
    Ok(abi as u32)
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct Prog {
    len: libc::c_ushort,
    filter: *const Insn,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "arm")]
const AUDIT_ARCH: u32 = 0x4000_0028;

/// System calls refused, with the errno they answer.
fn refused() -> Vec<(libc::c_long, i32)> {
    #[cfg_attr(target_arch = "aarch64", allow(unused_mut))] // no fork or vfork there
    let mut calls = vec![
        (libc::SYS_socket, libc::EACCES),
        (libc::SYS_socketpair, libc::EACCES),
        (libc::SYS_execve, libc::EACCES),
        (libc::SYS_execveat, libc::EACCES),
        (libc::SYS_ptrace, libc::EPERM),
        (libc::SYS_process_vm_readv, libc::EPERM),
        (libc::SYS_process_vm_writev, libc::EPERM),
        (libc::SYS_io_uring_setup, libc::EPERM),
        // Its flags are behind a pointer a filter cannot read: refusing it as unknown makes
        // the C library use clone, whose flags it can.
        (libc::SYS_clone3, libc::ENOSYS),
    ];
    #[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
    calls.extend([(libc::SYS_fork, libc::EPERM), (libc::SYS_vfork, libc::EPERM)]);
    calls
}

/// The filter: another architecture's calling convention is killed; the refused calls answer
/// their errno; `clone` is allowed for threads only; everything else is allowed.
fn filter() -> Vec<Insn> {
    let ins = |code, jt, jf, k| Insn { code, jt, jf, k };
    let mut p = vec![
        ins(LD_W_ABS, 0, 0, OFF_ARCH),
        ins(JEQ_K, 1, 0, AUDIT_ARCH),
        ins(RET_K, 0, 0, RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, OFF_NR),
    ];
    for (nr, errno) in refused() {
        p.push(ins(JEQ_K, 0, 1, nr as u32));
        p.push(ins(RET_K, 0, 0, RET_ERRNO | errno as u32));
    }
    p.extend([
        ins(JEQ_K, 0, 3, libc::SYS_clone as u32),
        ins(LD_W_ABS, 0, 0, OFF_ARG0),
        ins(JSET_K, 1, 0, libc::CLONE_THREAD as u32),
        ins(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        ins(RET_K, 0, 0, RET_ALLOW),
    ]);
    p
}

fn seccomp() -> Result<(), String> {
    let insns = filter();
    let prog = Prog { len: insns.len() as libc::c_ushort, filter: insns.as_ptr() };
    // SECCOMP_SET_MODE_FILTER with TSYNC: every thread of the process gets the filter,
    // including any started before this call.
    const SET_MODE_FILTER: libc::c_uint = 1;
    const FLAG_TSYNC: libc::c_uint = 1;
    // SAFETY: prog points at insns, which outlive the call; no_new_privs is set.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SET_MODE_FILTER, FLAG_TSYNC, &prog as *const Prog) };
    if r != 0 {
        return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};

    /// Set in the child the test below starts.
    const PROBE: &str = "EDGE_AGENT_SANDBOX_PROBE";

    /// Runs in a child process (this test binary again, with [`PROBE`] naming a secret
    /// file): opens one file, confines itself, then tries what the validation child must not
    /// do, and prints one line per attempt.
    fn probe(secret: &str) {
        let mut opened = std::fs::File::open(format!("{secret}.model")).unwrap();
        let report = super::confine();
        // A line of its own: libtest has printed the test name without a newline.
        println!("\nprobe: report {report}");
        let mut text = String::new();
        println!(
            "probe: pre-opened {}",
            opened.read_to_string(&mut text).map_or_else(|e| e.to_string(), |_| text.clone())
        );
        let kind = |r: std::io::Result<()>| r.map_or_else(|e| format!("{:?}", e.kind()), |_| "ok".into());
        println!("probe: open-key {}", kind(std::fs::File::open(secret).map(drop)));
        println!("probe: create {}", kind(std::fs::write(format!("{secret}.new"), b"x")));
        println!("probe: tcp {}", kind(std::net::TcpStream::connect("127.0.0.1:9").map(drop)));
        println!("probe: udp {}", kind(std::net::UdpSocket::bind("127.0.0.1:0").map(drop)));
        println!("probe: exec {}", kind(std::process::Command::new("/bin/true").status().map(drop)));
        println!("probe: thread {}", std::thread::spawn(|| 7).join().map_or("failed".into(), |v| v.to_string()));
    }

    #[test]
    fn a_confined_process_opens_no_file_or_socket_and_starts_no_program() {
        if let Ok(secret) = std::env::var(PROBE) {
            probe(&secret);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("device.key");
        std::fs::write(&secret, b"secret").unwrap();
        std::fs::write(dir.path().join("device.key.model"), b"model bytes").unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sandbox::tests::a_confined_process_opens_no_file_or_socket_and_starts_no_program"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(PROBE, &secret)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("probe: {key} ")))
                .unwrap_or_else(|| {
                    panic!("no {key} line in the probe's output:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
                })
                .to_string()
        };
        let report = line("report");
        assert!(report.contains("seccomp"), "{report}");
        assert_eq!(line("pre-opened"), "model bytes", "a file opened before stays readable");
        assert_eq!(line("exec"), format!("{:?}", ErrorKind::PermissionDenied));
        assert_eq!(line("tcp"), format!("{:?}", ErrorKind::PermissionDenied));
        assert_eq!(line("udp"), format!("{:?}", ErrorKind::PermissionDenied));
        assert_eq!(line("thread"), "7", "threads still start");
        if report.contains("landlock (abi") {
            assert_eq!(line("open-key"), format!("{:?}", ErrorKind::PermissionDenied));
            assert_eq!(line("create"), format!("{:?}", ErrorKind::PermissionDenied));
        } else {
            // Kernels without Landlock: said in the report (and the validation report).
            assert!(report.contains("files: NOT confined"), "{report}");
        }
        assert!(!dir.path().join("device.key.new").exists());
    }
}
