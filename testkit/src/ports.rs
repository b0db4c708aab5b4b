//! Loopback ports that no two components can be handed, and checks of who listens where.
//!
//! `bind(0)`-then-close hands out a port that is free *now*: until the child binds it,
//! the kernel may give it to anyone else's `bind(0)` or use it as the source port of an
//! outgoing connection, and a readiness probe may then reach another test's server on
//! it. So [`free_port`]:
//! * picks from just below the kernel's ephemeral range (`ip_local_port_range`), which
//!   `bind(0)` and outgoing connections never use;
//! * never hands out a port twice in this process (kept for the process's life);
//! * holds a lock file per port (`$TMPDIR/meshpass-testkit-ports/PORT`, owner pid and
//!   start time inside) so that other test processes on the machine skip it; a lock whose
//!   owner is gone is taken over;
//! * checks the port can be bound at that moment.
//!
//! Starters then confirm that *their* child owns the listening socket
//! ([`pid_listens_on`]) instead of trusting whatever answers on the port.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Ports handed out by this process (never handed out again).
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The range testkit picks from: the 10,000 ports below the ephemeral range (never
/// below 10,000), or `None` when the ephemeral range starts too low to leave room.
fn pick_range() -> Option<(u16, u16)> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u32 = text.split_whitespace().next()?.parse().ok()?;
    let start = low.saturating_sub(10_000).max(10_000);
    (low > start + 1_000).then_some((start as u16, low as u16))
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("meshpass-testkit-ports")
}

/// `pid:starttime` of this process: a pid alone may be reused by a later process.
fn owner_tag(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) counted after the `(comm)` field, which may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

fn owner_alive(tag: &str) -> bool {
    let Some(pid) = tag.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    owner_tag(pid).as_deref() == Some(tag.trim())
}

/// Takes the machine-wide lock of `port` for this process; false when another live
/// process holds it.
fn lock_port(port: u16) -> bool {
    let dir = lock_dir();
    if fs::create_dir_all(&dir).is_err() {
        // No shared temp dir: fall back to the in-process reservation alone.
        return true;
    }
    let path = dir.join(port.to_string());
    let me = owner_tag(std::process::id()).unwrap_or_default();
    for _ in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => return f.write_all(me.as_bytes()).is_ok(),
            Err(_) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                if holder.trim() == me {
                    return true;
                }
                if holder.is_empty() || owner_alive(&holder) {
                    // Held (or being written right now) by a live process.
                    return false;
                }
                // Stale: its owner exited. Remove and try once more.
                let _ = fs::remove_file(&path);
            }
        }
    }
    false
}

/// A TCP port on 127.0.0.1 reserved for this process: no other call in this process and
/// no other testkit process on the machine gets it, and the kernel does not hand it out
/// for `bind(0)` or outgoing connections (see the module docs). Free when returned; the
/// caller's child still has to bind it (check with [`pid_listens_on`]).
pub fn free_port() -> u16 {
    let mut taken = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((lo, hi)) = pick_range() {
        let span = u32::from(hi - lo);
        for _ in 0..2_000 {
            let port = lo + (rand_u32() % span) as u16;
            if taken.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            if lock_port(port) {
                taken.insert(port);
                return port;
            }
        }
    }
    // Fallback: a kernel-chosen port, still never handed out twice by this process.
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("cannot bind 127.0.0.1:0 to find a free port");
        if taken.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

fn rand_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Inodes of the sockets listening on `port` (any local address), from
/// `/proc/net/tcp{,6}`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; inode is field 9.
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if p == Some(port) && *state == "0A" {
                if let Ok(i) = inode.parse() {
                    inodes.push(i);
                }
            }
        }
    }
    inodes
}

/// Whether process `pid` itself holds a socket listening on `port`: the check that the
/// server answering on a port is the one a test started (not another test's server that
/// got the same port).
pub fn pid_listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .any(|i| inodes.contains(&i))
}

/// Waits until nothing listens on `port` any more (after a stop); false on timeout.
pub fn wait_port_released(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if listening_inodes(port).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_returns_a_bindable_port() {
        let p = free_port();
        assert_ne!(p, 0);
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn free_port_never_hands_the_same_port_to_two_callers_even_concurrently() {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| (0..20).map(|_| free_port()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            for p in t.join().unwrap() {
                assert!(all.insert(p), "port {p} handed out twice");
            }
        }
        assert_eq!(all.len(), 160);
    }

    #[test]
    fn free_port_avoids_the_kernels_ephemeral_range_and_locks_each_port_for_this_process() {
        let Some((lo, hi)) = pick_range() else {
            panic!("ip_local_port_range leaves no room below it on this machine");
        };
        let p = free_port();
        assert!((lo..hi).contains(&p), "{p} not in {lo}..{hi}");
        let holder = fs::read_to_string(lock_dir().join(p.to_string())).unwrap();
        assert_eq!(Some(holder), owner_tag(std::process::id()));
        // Another live owner's lock is respected; a dead owner's is taken over.
        let other = free_port();
        let path = lock_dir().join(other.to_string());
        let parent = owner_tag(std::os::unix::process::parent_id()).unwrap();
        fs::write(&path, &parent).unwrap();
        assert!(!lock_port(other));
        fs::write(&path, "999999999:1").unwrap();
        assert!(lock_port(other));
    }

    #[test]
    fn pid_listens_on_tells_this_process_listener_from_another_process() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(pid_listens_on(std::process::id(), port));
        assert!(!pid_listens_on(1, port));
        drop(l);
        assert!(wait_port_released(port, Duration::from_secs(5)));
        assert!(!pid_listens_on(std::process::id(), port));
    }
}
