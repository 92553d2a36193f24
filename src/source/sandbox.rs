//! What a source's worker process takes away from itself before it reads a byte of its input (issue 18, in
//! progress): a worker parses and decodes a client's bytes with GStreamer's C demuxers and decoders, so it
//! should be able to do nothing else.
//!
//! - [`limit`]: kernel resource limits: address space (`--source-memory-limit`), CPU seconds, no file growth
//!   (`RLIMIT_FSIZE` 0: no file can be written), no core dumps.
//! - [`lock_down`]: Landlock (files may be read, never written or created; TCP neither bound nor connected where
//!   the kernel's Landlock has network rules, ABI 4) and a seccomp filter (no `socket`, `connect`, `bind`,
//!   `execve`, no new process: `fork`, `vfork`, a `clone` without `CLONE_THREAD`; `clone3` answers ENOSYS so glibc
//!   falls back to `clone`, which the filter can see into). Both set `no_new_privs`.
//!
//! Both hold for the calling thread and the threads it starts after: the worker calls them first, on its only
//! thread. Everything goes through the safe APIs of `rustix`, `landlock` and `seccompiler` (this crate forbids
//! `unsafe`).

use std::collections::BTreeMap;

use landlock::{
    ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use rustix::process::{Resource, Rlimit, setrlimit};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A worker's resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space, bytes (`RLIMIT_AS`).
    pub memory: u64,
    /// CPU time, seconds (`RLIMIT_CPU`: SIGXCPU at the soft limit, SIGKILL a second later); None: no limit (a
    /// live source may run for days).
    pub cpu_seconds: Option<u64>,
}

/// Sets the calling process's resource limits (soft and hard: they cannot be raised again).
pub fn limit(l: Limits) -> Result<(), String> {
    let set = |r: Resource, v: u64, what: &str| {
        setrlimit(
            r,
            Rlimit {
                current: Some(v),
                maximum: Some(v),
            },
        )
        .map_err(|e| format!("setting the {what} limit: {e}"))
    };
    set(Resource::As, l.memory, "address space")?;
    if let Some(cpu) = l.cpu_seconds {
        // A second between the soft limit's SIGXCPU and the hard limit's SIGKILL.
        setrlimit(
            Resource::Cpu,
            Rlimit {
                current: Some(cpu),
                maximum: Some(cpu + 1),
            },
        )
        .map_err(|e| format!("setting the CPU time limit: {e}"))?;
    }
    set(Resource::Fsize, 0, "file size")?;
    set(Resource::Core, 0, "core dump")
}

/// What [`lock_down`] could enforce on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// `fully`, `partially` (an older Landlock ABI: e.g. no network rules before ABI 4) or `not` (no Landlock).
    pub landlock: &'static str,
    pub seccomp: bool,
}

/// Locks the calling thread (and the threads it starts later) down: Landlock, then seccomp.
pub fn lock_down() -> Result<Enforced, String> {
    let landlock = landlock().map_err(|e| format!("Landlock: {e}"))?;
    seccomp().map_err(|e| format!("seccomp: {e}"))?;
    Ok(Enforced {
        landlock,
        seccomp: true,
    })
}

fn landlock() -> Result<&'static str, landlock::RulesetError> {
    // The newest ABI this code knows; an older kernel enforces what it has (best effort).
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
        .create()?
        // Reading is allowed everywhere (plugins, the registry cache, /proc); executing files is not.
        .add_rules(path_beneath_rules(
            ["/"],
            AccessFs::ReadFile | AccessFs::ReadDir,
        ))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully",
        RulesetStatus::PartiallyEnforced => "partially",
        RulesetStatus::NotEnforced => "not",
    })
}

fn seccomp() -> Result<(), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let install = |rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32| {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(|e| e.to_string())?;
        let prog: BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?;
        seccompiler::apply_filter(&prog).map_err(|e| e.to_string())
    };
    // A clone that makes a process, not a thread: CLONE_THREAD not set.
    let new_process = SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )
        .map_err(|e| e.to_string())?,
    ])
    .map_err(|e| e.to_string())?;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
    ]
    .into_iter()
    .map(|s| (s, Vec::new()))
    .collect();
    denied.insert(libc::SYS_clone, vec![new_process]);
    install(denied, libc::EPERM)?;
    // clone3 passes its flags in memory a filter cannot read: ENOSYS makes glibc use clone.
    install(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        libc::ENOSYS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A locked-down thread can neither reach the network, nor write a file, nor start a program; a thread
    /// that is not locked down (the test's own) still can.
    #[test]
    fn a_locked_down_thread_cannot_connect_write_or_exec() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("written");
        let f = file.clone();
        let tried = std::thread::spawn(move || {
            let enforced = lock_down().expect("locked down");
            let connect = std::net::TcpStream::connect(addr).map(|_| ());
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").map(|_| ());
            let write = std::fs::write(&f, b"x");
            let exec = std::process::Command::new("/bin/true").status().map(|_| ());
            // Threads still start (GStreamer's streaming threads).
            let thread = std::thread::spawn(|| 7).join().unwrap();
            (enforced, connect, udp, write, exec, thread)
        })
        .join()
        .unwrap();
        let (enforced, connect, udp, write, exec, thread) = tried;
        assert!(enforced.seccomp);
        assert!(connect.is_err(), "no TCP connection");
        assert!(udp.is_err(), "no socket at all");
        if enforced.landlock != "not" {
            // Without Landlock (kernels before 5.13), the worker's RLIMIT_FSIZE of 0 is what stops writes.
            assert!(write.is_err() && !file.exists(), "no file written");
        }
        assert!(exec.is_err(), "no program started");
        assert_eq!(thread, 7);
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err(), "nothing reached the listener");
        // This thread was not locked down.
        std::fs::write(&file, b"x").unwrap();
        assert!(std::net::TcpStream::connect(addr).is_ok());
    }
}
