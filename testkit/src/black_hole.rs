//! A loopback TCP relay a test can turn into a black hole: a vanished peer behind a VIP
//! or a partition that swallows packets, where nothing is ever answered and nothing is
//! reset (unlike [`crate::CutRelay`], whose cut closes connections at once).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A relay from `127.0.0.1:port()` to a target address. [`HoleRelay::blackhole`]
/// makes every open connection, and new ones accepted meanwhile, swallow everything
/// silently and never close; [`HoleRelay::restore`] relays *new* connections again (the
/// old ones stay dead, as they would behind a real partition).
/// [`HoleRelay::retarget`] sends new connections elsewhere while the open ones stay
/// (a DNS name or VIP moved to a promoted replica).
#[derive(Debug)]
pub struct HoleRelay {
    port: u16,
    target: Arc<Mutex<String>>,
    hole: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl HoleRelay {
    /// Starts relaying to `target` (`host:port`).
    pub fn start(target: &str) -> io::Result<HoleRelay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let hole = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let target = Arc::new(Mutex::new(target.to_string()));
        let (h, c, t) = (hole.clone(), conns.clone(), target.clone());
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                let dead = Arc::new(AtomicBool::new(h.load(Ordering::SeqCst)));
                c.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(dead.clone());
                let target = t.lock().unwrap_or_else(|e| e.into_inner()).clone();
                thread::spawn(move || relay(inbound, &target, &dead));
            }
        });
        Ok(HoleRelay {
            port,
            target,
            hole,
            conns,
        })
    }

    /// The local port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every connection, open or new, swallows everything from now on.
    pub fn blackhole(&self) {
        self.hole.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// New connections go to `target` from now on; open ones stay where they are.
    pub fn retarget(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target.to_string();
    }

    /// New connections are relayed again.
    pub fn restore(&self) {
        self.hole.store(false, Ordering::SeqCst);
    }
}

fn relay(inbound: TcpStream, target: &str, dead: &Arc<AtomicBool>) {
    let Ok(outbound) = TcpStream::connect(target) else {
        return;
    };
    let (Ok(client_rx), Ok(server_tx)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    let d = dead.clone();
    let up = thread::spawn(move || pump(client_rx, server_tx, &d));
    let held = pump(outbound, inbound, dead);
    // A dead connection is never closed towards the client.
    while dead.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_secs(3600));
    }
    drop(held);
    let _ = up.join();
}

/// Copies `from` to `to` until `from` ends, dropping what arrives once `dead`; gives
/// the streams back so the caller decides when they close.
fn pump(mut from: TcpStream, mut to: TcpStream, dead: &AtomicBool) -> (TcpStream, TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !dead.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    (from, to)
}
