//! Acting as another user for one operation, without changing the whole agent.
//!
//! HotSpot accepts an attach peer whose effective uid *and* gid equal the JVM's (JDK 8), or root
//! (JDK 11+). bpmon does the least-privileged thing either way: when it runs as root it creates the
//! trigger file and connects the socket as the JVM's own uid/gid. glibc's `setresuid` would switch
//! every thread of the process (nptl broadcasts it), so the switch is made with the raw syscalls,
//! which the kernel applies to the calling thread only, on a short-lived thread of its own.

use std::io;

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `f` with effective uid/gid `uid`/`gid` and no supplementary groups, on a dedicated thread,
/// when the agent is root and the target is another user; otherwise runs it as we are.
pub fn as_user<T, F>(uid: u32, gid: u32, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    if euid != 0 || (uid == euid && gid == egid) {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                switch_this_thread(uid, gid)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("credential thread panicked")))
    })
}

/// Drops the calling thread (only) to `uid`/`gid`. The saved uid stays 0; the thread ends after
/// its one operation, so it never needs to switch back.
fn switch_this_thread(uid: u32, gid: u32) -> io::Result<()> {
    let keep = libc::c_long::from(-1i32);
    // SAFETY: plain syscalls with integer arguments (and a null list for setgroups of length 0);
    // they affect only the calling thread's credentials.
    unsafe {
        if libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_long,
            std::ptr::null::<libc::gid_t>(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_setresgid, keep, libc::c_long::from(gid), keep) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_setresuid, keep, libc::c_long::from(uid), keep) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The effective uid of the calling thread, from the kernel's per-thread view.
    fn thread_euid() -> u32 {
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        crate::discovery::parse_status(&status).unwrap().euid
    }

    #[test]
    fn switch_is_confined_to_the_helper_thread() {
        if !is_root() {
            // As a non-root user there is nothing to switch; `as_user` must run in place.
            let me = nix::unistd::geteuid().as_raw();
            let seen = as_user(me, nix::unistd::getegid().as_raw(), || Ok(thread_euid())).unwrap();
            assert_eq!(seen, me);
            return;
        }
        let seen = as_user(65534, 65534, || Ok(thread_euid())).unwrap();
        assert_eq!(seen, 65534, "the helper thread runs as the target user");
        assert_eq!(thread_euid(), 0, "the calling thread is still root");
        assert!(is_root(), "the process is still root");
    }
}
