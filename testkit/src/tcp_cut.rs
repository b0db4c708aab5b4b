//! A loopback TCP relay a test can cut and restore: the way tests take a real
//! dependency (PostgreSQL, say) away from a running service without stopping the
//! dependency itself, which other tests share.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// A relay from `127.0.0.1:port()` to a target address. While cut, open connections
/// are closed and new ones are accepted and closed at once (what a client sees of a
/// server that went away); restored, it relays again.
#[derive(Debug)]
pub struct CutRelay {
    port: u16,
    up: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<Mutex<Vec<Instant>>>,
}

impl CutRelay {
    /// Starts relaying to `target` (`host:port`).
    pub fn start(target: &str) -> io::Result<CutRelay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let stopped = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let accepted: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
        let (u, s, o, a, target) = (
            up.clone(),
            stopped.clone(),
            open.clone(),
            accepted.clone(),
            target.to_string(),
        );
        thread::spawn(move || {
            for inbound in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                a.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now());
                if !u.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(&target) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                relay(inbound, outbound, &o, &u);
            }
        });
        Ok(CutRelay {
            port,
            up,
            stopped,
            open,
            accepted,
        })
    }

    /// When each connection attempt was accepted (cut or not), oldest first: when a
    /// client retried.
    pub fn accepted_at(&self) -> Vec<Instant> {
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The loopback port to connect to instead of the target.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every open connection and refuses new ones until [`CutRelay::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.cut();
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port)));
    }
}

/// Copies both ways on two threads; both sockets are remembered so a cut closes them.
fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    open: &Arc<Mutex<Vec<TcpStream>>>,
    up: &AtomicBool,
) {
    let (Ok(in2), Ok(out2)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    {
        let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
        // Kept until a cut or drop (two descriptors per connection): tests open few.
        for s in [&inbound, &outbound] {
            if let Ok(c) = s.try_clone() {
                o.push(c);
            }
        }
        // A cut between the accept loop's check and the push above drained the list
        // before these were in it: close them as the cut would have (checked under the
        // lock, so a later cut finds them listed).
        if !up.load(Ordering::SeqCst) {
            for s in o.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
            return;
        }
    }
    thread::spawn(move || pipe(inbound, out2));
    thread::spawn(move || pipe(outbound, in2));
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo_server() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = io::copy(&mut r, &mut w);
                });
            }
        });
        port
    }

    fn round_trip(port: u16) -> io::Result<Vec<u8>> {
        let mut c = TcpStream::connect(("127.0.0.1", port))?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        c.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn relays_until_cut_and_again_after_restore() {
        let relay = CutRelay::start(&format!("127.0.0.1:{}", echo_server())).unwrap();
        assert_eq!(round_trip(relay.port()).unwrap(), b"ping");

        let mut held = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
        held.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        held.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        held.read_exact(&mut buf).unwrap();
        relay.cut();
        // The held connection is closed; a new one reads nothing back.
        let _ = held.write_all(b"ping");
        assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)));
        assert!(round_trip(relay.port()).is_err());

        relay.restore();
        assert_eq!(round_trip(relay.port()).unwrap(), b"ping");
    }
}
