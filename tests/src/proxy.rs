//! A TCP proxy in front of a Flink REST endpoint that a test can take down and bring back on the
//! same port: "Flink REST unreachable" without touching the cluster. Also what lets a
//! JobManager bound to another address reach its own blob server at `localhost`
//! ([`TcpProxy::mirror`]).

use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    pub fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let mut p = TcpProxy {
            addr: listener.local_addr()?,
            upstream,
            running: None,
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        p.serve(listener)?;
        Ok(p)
    }

    /// Listens on `127.0.0.1:<p>` for a free port `<p>` and forwards to `<upstream_ip>:<p>`.
    pub fn mirror(upstream_ip: IpAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut p = TcpProxy {
            addr,
            upstream: SocketAddr::new(upstream_ip, addr.port()),
            running: None,
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        p.serve(listener)?;
        Ok(p)
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, conns, upstream) = (Arc::clone(&stop), Arc::clone(&self.conns), self.upstream);
        let handle = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                            if let Ok(mut all) = conns.lock() {
                                all.push(c2);
                                all.push(s2);
                            }
                        }
                        pump_both(client, server);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        self.running = Some((stop, handle));
        Ok(())
    }

    /// Closes the port and every connection through it: clients get "connection refused".
    pub fn down(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        if let Ok(mut all) = self.conns.lock() {
            for c in all.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr)
            .with_context(|| format!("re-binding the proxy on {}", self.addr))?;
        self.serve(listener)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.down();
    }
}

fn pump_both(client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || pump(client, server));
    std::thread::spawn(move || pump(s2, c2));
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
