//! Impairing relays for link tests: a UDP forwarder and a TCP forwarder on loopback that delay
//! everything by a fixed time, and (UDP) drop a share of datagrams and every datagram larger
//! than a path MTU allows. Written for the tests because this machine's kernel has no `netem`.
//!
//! TCP cannot lose bytes inside a stream without breaking it, so the TCP relay delays only;
//! loss on a TCP path is recovered by the kernel below the application, which loopback does not
//! let us impair. The UDP relay can also move its upstream socket (`rebind`), so the far end
//! sees the client at a new address mid-connection, as after a NAT rebinding or a network change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a relay does to traffic.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub delay: Duration,
    /// The share of datagrams dropped, each direction (UDP only).
    pub loss: f64,
    /// Datagrams larger than this are dropped, as a path with this MTU less headers would (UDP only).
    pub max_datagram: usize,
}

impl Impairment {
    /// 50 ms each way, 1 % loss, a 1280-byte MTU (1232-byte UDP payloads).
    pub fn tailnet_on_a_bad_day() -> Impairment {
        Impairment { delay: Duration::from_millis(50), loss: 0.01, max_datagram: 1232 }
    }
}

#[derive(Default, Debug)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub too_large: AtomicU64,
    pub bytes: AtomicU64,
}

/// Sends what it is given `delay` after it was given, in order.
#[derive(Clone)]
struct Delayed(mpsc::UnboundedSender<(Instant, Vec<u8>)>);

impl Delayed {
    fn new<F>(delay: Duration, mut send: F) -> Delayed
    where
        F: FnMut(Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((at, data)) = rx.recv().await {
                tokio::time::sleep_until(at + delay).await;
                if !send(data).await {
                    return;
                }
            }
        });
        Delayed(tx)
    }

    /// False once the sending side has stopped.
    fn send(&self, data: Vec<u8>) -> bool {
        self.0.send((Instant::now(), data)).is_ok()
    }
}

/// A UDP relay in front of `upstream`, for one client.
pub struct UdpRelay {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    upstream_socket: Arc<Mutex<Arc<UdpSocket>>>,
    spawn_reader: Arc<dyn Fn(Arc<UdpSocket>) + Send + Sync>,
}

impl UdpRelay {
    pub async fn start(upstream: SocketAddr, impairment: Impairment) -> UdpRelay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("binding the relay"));
        let addr = front.local_addr().expect("the relay's address");
        let counts = Arc::new(Counts::default());
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let first = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("binding the relay's upstream side"));
        let upstream_socket = Arc::new(Mutex::new(first.clone()));

        // Towards the client: what any upstream socket receives, delayed.
        let to_client = {
            let (front, client) = (front.clone(), client.clone());
            Delayed::new(impairment.delay, move |data| {
                let (front, client) = (front.clone(), *client.lock().expect("client"));
                Box::pin(async move {
                    if let Some(client) = client {
                        let _ = front.send_to(&data, client).await;
                    }
                    true
                })
            })
        };
        let spawn_reader: Arc<dyn Fn(Arc<UdpSocket>) + Send + Sync> = {
            let counts = counts.clone();
            Arc::new(move |socket: Arc<UdpSocket>| {
                let (to_client, counts) = (to_client.clone(), counts.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = socket.recv(&mut buf).await {
                        if pass(&counts, n, &impairment) {
                            to_client.send(buf[..n].to_vec());
                        }
                    }
                });
            })
        };
        spawn_reader(first);

        // Towards the hub: through whichever upstream socket is current when it leaves.
        let to_upstream = {
            let upstream_socket = upstream_socket.clone();
            Delayed::new(impairment.delay, move |data| {
                let socket = upstream_socket.lock().expect("upstream").clone();
                Box::pin(async move {
                    let _ = socket.send_to(&data, upstream).await;
                    true
                })
            })
        };
        {
            let (front, counts) = (front.clone(), counts.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().expect("client") = Some(from);
                    if pass(&counts, n, &impairment) {
                        to_upstream.send(buf[..n].to_vec());
                    }
                }
            });
        }
        UdpRelay { addr, counts, upstream_socket, spawn_reader }
    }

    /// From now on the relay sends upstream from a new socket: the hub sees the client move.
    /// The old socket keeps delivering what is still on its way back.
    pub async fn rebind(&self) -> SocketAddr {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("binding a new upstream socket"));
        let addr = socket.local_addr().expect("its address");
        (self.spawn_reader)(socket.clone());
        *self.upstream_socket.lock().expect("upstream") = socket;
        addr
    }
}

fn pass(counts: &Counts, len: usize, impairment: &Impairment) -> bool {
    if len > impairment.max_datagram {
        counts.too_large.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if rand::random::<f64>() < impairment.loss {
        counts.lost.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(len as u64, Ordering::Relaxed);
    true
}

/// A TCP relay in front of `upstream` that delays each direction by `delay`.
pub struct TcpRelay {
    pub addr: SocketAddr,
}

impl TcpRelay {
    pub async fn start(upstream: SocketAddr, delay: Duration) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the relay");
        let addr = listener.local_addr().expect("the relay's address");
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, delay));
                tokio::spawn(pipe(server_read, client_write, delay));
            }
        });
        TcpRelay { addr }
    }
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let to = Arc::new(tokio::sync::Mutex::new(to));
    let sender = {
        let to = to.clone();
        Delayed::new(delay, move |data| {
            let to = to.clone();
            Box::pin(async move { to.lock().await.write_all(&data).await.is_ok() })
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || !sender.send(buf[..n].to_vec()) {
            break;
        }
    }
    // The other side sees the end once what is on its way has arrived.
    tokio::time::sleep(delay + Duration::from_millis(10)).await;
    let _ = to.lock().await.shutdown().await;
}
