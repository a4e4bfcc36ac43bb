//! What a busy sample was doing: running, waiting for a lock, in I/O, or sleeping
//! ([`Activity`]). The collector ranks a bottleneck's causes by these counts, so the rules are
//! kept narrow and written down here:
//!
//! 1. `BLOCKED (on object monitor)` is a monitor wait: **lock**.
//! 2. Otherwise the JDK frames on top of the stack (above the first non-JDK frame) say what the
//!    JDK was asked to do; the topmost one that matches decides:
//!    - acquiring a `java.util.concurrent` lock (`AbstractQueuedSynchronizer.acquire*`,
//!      `ReentrantLock…lock`, `ReentrantReadWriteLock…lock`, `StampedLock.*Lock`): **lock**;
//!    - `Thread.sleep` (any of its JDK 8–25 spellings): **sleep**;
//!    - socket, file and HTTP I/O (`sun.nio.ch.*`, `java.net.Socket*`, `java.io.File*Stream`,
//!      `RandomAccessFile`, `sun.nio.fs.*`, `jdk.internal.net.http.*`, `sun.security.ssl.*`
//!      reads and writes): **io**. A JDBC or HTTP client waiting for its server ends in these.
//! 3. A thread that waits (`WAITING`/`TIMED_WAITING`: `Object.wait`, a park, a future) for none
//!    of those reasons is off CPU on purpose: **sleep**.
//! 4. Anything else is **running**: on CPU or wanting it (RUNNABLE, or no state line).
//!
//! Only the JDK frames on top count: `FileInputStream.read` far below user code means user code
//! called it earlier and is now doing something else.

use std::borrow::Borrow;

use crate::classify::is_jdk_class;
use crate::threaddump::{Frame, LockKind, ThreadInfo, ThreadState};

pub use bpmon_proto::Activity;

/// What one busy sample was doing, from the thread's state (when the dump printed one) and its
/// frames, top first.
pub fn activity<F: Borrow<Frame>>(state: Option<ThreadState>, frames: &[F]) -> Activity {
    if state == Some(ThreadState::Blocked) {
        return Activity::Lock;
    }
    let jdk_top = frames
        .iter()
        .map(Borrow::borrow)
        .take_while(|f| is_jdk_class(f.class()));
    for frame in jdk_top {
        if let Some(a) = jdk_frame_activity(frame) {
            return a;
        }
    }
    match state {
        Some(
            ThreadState::Waiting
            | ThreadState::TimedWaiting
            | ThreadState::Parked
            | ThreadState::TimedParked
            | ThreadState::Sleeping,
        ) => Activity::Sleep,
        _ => Activity::Running,
    }
}

/// The activity a JDK frame stands for, if it stands for one.
fn jdk_frame_activity(frame: &Frame) -> Option<Activity> {
    let class = frame.class();
    let method = frame.method();
    if is_lock_acquire(class, method) {
        return Some(Activity::Lock);
    }
    if class == "java.lang.Thread" && method.starts_with("sleep") {
        return Some(Activity::Sleep);
    }
    if is_io(class, method) {
        return Some(Activity::Io);
    }
    None
}

fn is_lock_acquire(class: &str, method: &str) -> bool {
    const SYNCHRONIZERS: &[&str] = &[
        "java.util.concurrent.locks.AbstractQueuedSynchronizer",
        "java.util.concurrent.locks.AbstractQueuedLongSynchronizer",
    ];
    if SYNCHRONIZERS.contains(&class) {
        // `acquire`, `acquireInterruptibly`, `acquireShared`, `acquireQueued`… but not the
        // condition waits (`ConditionObject.await` is a class of its own).
        return method.starts_with("acquire");
    }
    let lock_class = class.starts_with("java.util.concurrent.locks.ReentrantLock")
        || class.starts_with("java.util.concurrent.locks.ReentrantReadWriteLock")
        || class == "java.util.concurrent.locks.StampedLock";
    lock_class && (method == "lock" || method.ends_with("Lock") || method == "lockInterruptibly")
}

fn is_io(class: &str, method: &str) -> bool {
    const IO_CLASS_PREFIXES: &[&str] = &[
        "sun.nio.ch.",
        "sun.nio.fs.",
        "java.net.Socket",
        "java.net.PlainSocketImpl",
        "java.net.AbstractPlainSocketImpl",
        "java.net.DatagramSocket",
        "java.net.http.",
        "jdk.internal.net.http.",
        "sun.net.www.",
        "sun.security.ssl.SSLSocketImpl",
        "sun.security.ssl.SSLSocketInputRecord",
    ];
    const FILE_CLASSES: &[&str] = &[
        "java.io.FileInputStream",
        "java.io.FileOutputStream",
        "java.io.RandomAccessFile",
        "java.io.FileDescriptor",
        "java.io.UnixFileSystem",
    ];
    IO_CLASS_PREFIXES.iter().any(|p| class.starts_with(p))
        || (FILE_CLASSES.contains(&class) && method != "<init>")
}

/// The monitor or lock a thread waits for, from its lock lines: `- waiting to lock <0x…> (a C)`
/// for a monitor, `- parking to wait for <0x…> (a C)` under a lock acquisition. Returns the lock
/// object's address (to find its owner) and class.
pub fn awaited_lock(thread: &ThreadInfo) -> Option<(&str, &str)> {
    thread.locks.iter().find_map(|l| match l.kind {
        LockKind::WaitingToLock | LockKind::WaitingToRelock | LockKind::ParkingToWaitFor => {
            lock_object(&l.object)
        }
        _ => None,
    })
}

/// The address and class of a lock line's object, `<0x00000000ffd522e0> (a java.lang.Object)`.
pub fn lock_object(object: &str) -> Option<(&str, &str)> {
    let (address, rest) = object.trim().split_once(' ')?;
    let address = address.strip_prefix('<')?.strip_suffix('>')?;
    let class = rest.trim().strip_prefix("(a ")?.strip_suffix(')')?;
    Some((address, class.trim()))
}

/// The threads holding each monitor, by the object's address, from the `- locked <0x…>` lines of
/// the threads whose frames were kept.
pub fn monitor_owners(threads: &[ThreadInfo]) -> std::collections::HashMap<&str, &str> {
    let mut owners = std::collections::HashMap::new();
    for t in threads {
        for l in &t.locks {
            if l.kind == LockKind::Locked {
                if let Some((address, _)) = lock_object(&l.object) {
                    owners.insert(address, t.header.name.as_str());
                }
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threaddump::{frames_from_lines, parse};

    fn of(state: Option<ThreadState>, lines: &[&str]) -> Activity {
        activity(state, &frames_from_lines(lines.iter().copied()))
    }

    #[test]
    fn a_monitor_wait_is_lock() {
        let a = of(
            Some(ThreadState::Blocked),
            &[
                "at com.acme.Shared.update(Shared.java:12)",
                "at com.acme.Map.map(Map.java:3)",
            ],
        );
        assert_eq!(a, Activity::Lock);
    }

    #[test]
    fn parking_in_a_reentrant_lock_is_lock_and_in_a_condition_is_sleep() {
        let lock = [
            "at jdk.internal.misc.Unsafe.park(java.base@17/Native Method)",
            "at java.util.concurrent.locks.LockSupport.park(java.base@17/LockSupport.java:211)",
            "at java.util.concurrent.locks.AbstractQueuedSynchronizer.acquire(java.base@17/AbstractQueuedSynchronizer.java:715)",
            "at java.util.concurrent.locks.ReentrantLock$Sync.lock(java.base@17/ReentrantLock.java:153)",
            "at java.util.concurrent.locks.ReentrantLock.lock(java.base@17/ReentrantLock.java:322)",
            "at com.acme.Map.map(Map.java:3)",
        ];
        assert_eq!(of(Some(ThreadState::Parked), &lock), Activity::Lock);
        let condition = [
            "at jdk.internal.misc.Unsafe.park(java.base@17/Native Method)",
            "at java.util.concurrent.locks.LockSupport.park(java.base@17/LockSupport.java:341)",
            "at java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject.await(java.base@17/AbstractQueuedSynchronizer.java:1623)",
            "at java.util.concurrent.LinkedBlockingQueue.take(java.base@17/LinkedBlockingQueue.java:435)",
            "at com.acme.Handoff.map(Handoff.java:9)",
        ];
        assert_eq!(of(Some(ThreadState::Parked), &condition), Activity::Sleep);
    }

    #[test]
    fn sleeping_is_sleep_on_every_jdk() {
        for top in [
            "at java.lang.Thread.sleep(java.base@17/Native Method)",
            "at java.lang.Thread.sleep0(java.base@21/Native Method)",
            "at java.lang.Thread.sleepNanos0(java.base@25/Native Method)",
        ] {
            let a = of(
                Some(ThreadState::Sleeping),
                &[top, "at com.acme.Throttle.map(Throttle.java:5)"],
            );
            assert_eq!(a, Activity::Sleep, "{top}");
        }
    }

    #[test]
    fn a_runnable_socket_read_is_io_and_plain_code_is_running() {
        let socket = [
            "at sun.nio.ch.SocketDispatcher.read0(java.base@17/Native Method)",
            "at sun.nio.ch.NioSocketImpl.implRead(java.base@17/NioSocketImpl.java:276)",
            "at java.net.Socket$SocketInputStream.read(java.base@17/Socket.java:966)",
            "at org.postgresql.core.PGStream.receiveChar(PGStream.java:453)",
            "at com.acme.Lookup.map(Lookup.java:20)",
        ];
        assert_eq!(of(Some(ThreadState::Runnable), &socket), Activity::Io);
        let file = [
            "at java.io.FileOutputStream.writeBytes(java.base@17/Native Method)",
            "at java.io.FileOutputStream.write(java.base@17/FileOutputStream.java:349)",
            "at com.acme.Sink.invoke(Sink.java:8)",
        ];
        assert_eq!(of(Some(ThreadState::Runnable), &file), Activity::Io);
        let cpu = [
            "at java.lang.Math.sqrt(java.base@17/Math.java:1)",
            "at com.acme.Enrich.map(Enrich.java:40)",
        ];
        assert_eq!(of(Some(ThreadState::Runnable), &cpu), Activity::Running);
        assert_eq!(of(None, &cpu), Activity::Running);
    }

    #[test]
    fn only_the_jdk_frames_on_top_count() {
        // Called a file read long ago; now computing in user code above it.
        let lines = [
            "at com.acme.Parse.line(Parse.java:5)",
            "at java.io.FileInputStream.read(java.base@17/FileInputStream.java:1)",
            "at com.acme.Source.run(Source.java:2)",
        ];
        assert_eq!(of(Some(ThreadState::Runnable), &lines), Activity::Running);
    }

    #[test]
    fn the_awaited_monitor_and_its_owner_come_from_the_lock_lines() {
        let dump = "\
\"Map (1/2)#0\" #60 prio=5 os_prio=0 cpu=1.00ms elapsed=9.00s tid=0x1 nid=0x10 waiting for monitor entry  [0x0]
   java.lang.Thread.State: BLOCKED (on object monitor)
\tat com.acme.Shared.update(Shared.java:12)
\t- waiting to lock <0x00000000ffd522e0> (a com.acme.Shared)
\tat com.acme.Map.map(Map.java:3)

\"Map (2/2)#0\" #61 prio=5 os_prio=0 cpu=1.00ms elapsed=9.00s tid=0x2 nid=0x11 runnable  [0x0]
   java.lang.Thread.State: RUNNABLE
\tat com.acme.Shared.update(Shared.java:13)
\t- locked <0x00000000ffd522e0> (a com.acme.Shared)
\tat com.acme.Map.map(Map.java:3)

";
        let d = parse(dump);
        let waiter = d.thread("Map (1/2)#0").unwrap();
        let (address, class) = awaited_lock(waiter).unwrap();
        assert_eq!(class, "com.acme.Shared");
        assert_eq!(monitor_owners(&d.threads)[address], "Map (2/2)#0");
        assert_eq!(awaited_lock(d.thread("Map (2/2)#0").unwrap()), None);
    }
}
