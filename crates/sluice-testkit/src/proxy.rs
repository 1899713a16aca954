//! [`Proxy`]: a TCP forwarder on loopback that a test can cut and heal, to put one process on
//! the far side of a network partition from a service while the others still reach it.
//!
//! A cut stops every byte in both directions without closing anything, as a partition that
//! drops packets does: the peers see no reset, only silence, and what they sent meanwhile waits
//! (in the proxy and the kernel's buffers, as in TCP's retransmissions) and arrives in order
//! once the proxy heals. New connections made during a cut are accepted and stay silent too.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// How often a blocked pump looks at whether the proxy is stopping.
const POLL: Duration = Duration::from_millis(50);

/// Whether the link is cut, and a condition variable that wakes the pumps when it heals.
#[derive(Default)]
struct Gate {
    cut: Mutex<bool>,
    healed: Condvar,
}

impl Gate {
    /// Waits while the link is cut; `false` once the proxy stops.
    fn pass(&self, stopping: &AtomicBool) -> bool {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        while *cut {
            if stopping.load(Ordering::Relaxed) {
                return false;
            }
            cut = self
                .healed
                .wait_timeout(cut, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        !stopping.load(Ordering::Relaxed)
    }

    fn set(&self, cut: bool) {
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = cut;
        self.healed.notify_all();
    }
}

/// A TCP forwarder from a loopback port to `upstream`, stopped when dropped.
pub struct Proxy {
    addr: SocketAddr,
    gate: Arc<Gate>,
    stopping: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let proxy = Self {
            addr: listener.local_addr()?,
            gate: Arc::default(),
            stopping: Arc::default(),
        };
        let (gate, stopping) = (proxy.gate.clone(), proxy.stopping.clone());
        thread::spawn(move || accept(&listener, upstream, &gate, &stopping));
        Ok(proxy)
    }

    /// The address clients connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every byte both ways, leaving the connections open.
    pub fn cut(&self) {
        self.gate.set(true);
    }

    /// Lets the bytes through again, those held during the cut first.
    pub fn heal(&self) {
        self.gate.set(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.gate.healed.notify_all();
    }
}

/// Accepts connections until the proxy stops; two pumps for each.
fn accept(
    listener: &TcpListener,
    upstream: SocketAddr,
    gate: &Arc<Gate>,
    stopping: &Arc<AtomicBool>,
) {
    while !stopping.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(POLL);
                continue;
            }
            Err(_) => return,
        };
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let (gate, stopping) = (gate.clone(), stopping.clone());
            thread::spawn(move || pump(from, to, &gate, &stopping));
        }
    }
}

/// Copies `from` to `to` while the link is up; at the end of `from`, ends `to`'s writing half.
fn pump(mut from: TcpStream, mut to: TcpStream, gate: &Gate, stopping: &AtomicBool) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes are read only while the link is up, and a read made just before a cut is held until
    // it heals: nothing crosses a cut link.
    while gate.pass(stopping) {
        let n = match from.read(&mut buf) {
            // The end of the stream crosses the link only while it is up, as the bytes do.
            Ok(0) if gate.pass(stopping) => break,
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        if !gate.pass(stopping) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
