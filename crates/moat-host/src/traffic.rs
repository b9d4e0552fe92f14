//! Bounded traffic for the demo and the tests: crafted frames through an
//! AF_PACKET socket, and real TCP/UDP/ICMP through sockets. Every sender is
//! bounded in packets; none sends anywhere but inside a lab's namespaces.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use moat_core::packet;
use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::NetnsGuard;

/// Sends each frame once, as is, out of `iface` in namespace `netns`.
/// Returns the number of frames sent (all of them, or an error).
pub fn send_frames(netns: &str, iface: &str, frames: &[Vec<u8>]) -> Result<usize> {
    let _ns = NetnsGuard::enter(netns)?;
    let ifindex = ifindex(iface)?;
    // SAFETY: plain socket(2) call; the fd is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    for (i, f) in frames.iter().enumerate() {
        // SAFETY: zeroed sockaddr_ll is valid; fields are filled below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        if let Some(dst) = f.get(..6) {
            sll.sll_addr[..6].copy_from_slice(dst);
        }
        // SAFETY: buffer and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 || n as usize != f.len() {
            bail!(
                "sending frame {i} ({} bytes) on {iface}: {}",
                f.len(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(frames.len())
}

/// Interface index of `name` in the current thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: c is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {name}");
    }
    Ok(i)
}

/// TCP and UDP echo servers inside a namespace, on `port` (TCP) and
/// `port + 1` (UDP), for both address families. Stopped on drop.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    pub fn start(netns: &str, addrs: &[IpAddr], port: u16) -> Result<EchoServers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let _ns = NetnsGuard::enter(netns)?;
        for a in addrs {
            let tcp = TcpListener::bind(SocketAddr::new(*a, port))
                .with_context(|| format!("binding TCP {a}:{port}"))?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind(SocketAddr::new(*a, port + 1))
                .with_context(|| format!("binding UDP {a}:{}", port + 1))?;
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            let s = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || tcp_echo(tcp, &s)));
            let s = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || udp_echo(udp, &s)));
        }
        Ok(EchoServers { stop, threads })
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_echo(l: TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn udp_echo(u: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    }
}

/// What one round of [`client_round`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundStats {
    pub tcp_connections: u32,
    pub udp_datagrams: u32,
    pub pings: u32,
}

/// One bounded round of client traffic from the current namespace to `dst`:
/// a TCP connection carrying 1 KiB each way, 4 UDP datagrams, one ICMP echo.
pub fn client_round(dst: IpAddr, port: u16, seq: u16) -> Result<RoundStats> {
    let mut st = RoundStats::default();
    let t = Duration::from_millis(500);
    let mut c = TcpStream::connect_timeout(&SocketAddr::new(dst, port), t)
        .with_context(|| format!("TCP connect to {dst}:{port}"))?;
    c.set_read_timeout(Some(t))?;
    let msg = [0x6du8; 1024];
    c.write_all(&msg)?;
    let mut got = 0;
    let mut buf = [0u8; 1024];
    while got < msg.len() {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    drop(c);
    st.tcp_connections += 1;

    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let u = UdpSocket::bind(bind)?;
    u.set_read_timeout(Some(Duration::from_millis(200)))?;
    for i in 0..4u8 {
        u.send_to(&[i; 200], SocketAddr::new(dst, port + 1))?;
        let _ = u.recv_from(&mut buf);
        st.udp_datagrams += 1;
    }

    ping(dst, seq)?;
    st.pings += 1;
    Ok(st)
}

/// Sends one ICMP/ICMPv6 echo request to `dst` through a raw socket.
pub fn ping(dst: IpAddr, seq: u16) -> Result<()> {
    let id = (std::process::id() & 0xFFFF) as u16;
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    let payload = [0x61u8; 56];
    let (sock, msg) = match dst {
        IpAddr::V4(_) => (
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?,
            packet::icmpv4(8, 0, rest, &payload),
        ),
        IpAddr::V6(d) => (
            Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?,
            // The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets.
            packet::icmpv6(Ipv6Addr::UNSPECIFIED, d, 128, 0, rest, &payload),
        ),
    };
    sock.send_to(&msg, &SocketAddr::new(dst, 0).into())
        .with_context(|| format!("ping {dst}"))?;
    Ok(())
}

/// Allowed traffic that notices every loss: per destination, one long TCP
/// connection and a UDP socket exchange numbered messages in lockstep with
/// [`EchoServers`] (TCP on `port`, UDP on `port + 1`), 2 ms apart, each
/// reply checked. Bounded: at most 200,000 exchanges per destination.
pub struct Lockstep {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl Lockstep {
    /// Starts one client thread per destination, inside `netns`.
    pub fn start(netns: &str, dsts: &[IpAddr], port: u16) -> Result<Lockstep> {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut threads = Vec::new();
        for &dst in dsts {
            let (ns, stop, sent, lost) =
                (netns.to_string(), stop.clone(), sent.clone(), lost.clone());
            threads.push(std::thread::spawn(move || -> Result<()> {
                let _g = NetnsGuard::enter(&ns)?;
                let mut tcp =
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(1))
                        .with_context(|| format!("connecting to {dst}:{port}"))?;
                tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
                let bind: SocketAddr = if dst.is_ipv6() {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let u = UdpSocket::bind(bind)?;
                u.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut seq = 0u32;
                while !stop.load(Ordering::Relaxed) && seq < 200_000 {
                    seq += 1;
                    let msg = seq.to_be_bytes();
                    let mut b = [0u8; 4];
                    let tcp_ok =
                        tcp.write_all(&msg).is_ok() && tcp.read_exact(&mut b).is_ok() && b == msg;
                    u.send_to(&msg, SocketAddr::new(dst, port + 1))?;
                    let udp_ok = matches!(u.recv_from(&mut b), Ok((4, _))) && b == msg;
                    sent.fetch_add(2, Ordering::Relaxed);
                    lost.fetch_add(u64::from(!tcp_ok) + u64::from(!udp_ok), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(())
            }));
        }
        Ok(Lockstep {
            stop,
            sent,
            lost,
            threads,
        })
    }

    /// Stops the clients; returns (messages exchanged, messages lost).
    pub fn finish(mut self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        Ok((
            self.sent.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
        ))
    }
}

impl Drop for Lockstep {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Backends that say who they are: in network namespace `netns`, a TCP
/// server on `[::]:port` (IPv4 too) that answers every line it reads with
/// `name` and a newline (an HTTP GET gets `200 OK` with `name` as the body,
/// and the connection closes), and a UDP server on `[::]:port` that answers
/// every datagram with `name`. For load balancer labs and benchmarks.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn dual_stack(ty: Type, port: u16) -> Result<Socket> {
    let s = Socket::new(Domain::IPV6, ty, None)?;
    s.set_only_v6(false)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())
        .with_context(|| format!("binding [::]:{port}"))?;
    Ok(s)
}

impl NameServer {
    pub fn start(netns: &str, name: &str, port: u16) -> Result<NameServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let _ns = NetnsGuard::enter(netns)?;
        let tcp = dual_stack(Type::STREAM, port)?;
        tcp.listen(1024)?;
        let tcp: TcpListener = tcp.into();
        tcp.set_nonblocking(true)?;
        let udp: UdpSocket = dual_stack(Type::DGRAM, port)?.into();
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut threads = Vec::new();
        let (s, n) = (Arc::clone(&stop), name.to_string());
        threads.push(std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((c, _)) => {
                        let (s2, n2) = (Arc::clone(&s), n.clone());
                        conns.push(std::thread::spawn(move || name_conn(c, &n2, &s2)));
                        conns.retain(|t| !t.is_finished());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for t in conns {
                let _ = t.join();
            }
        }));
        let (s, n) = (Arc::clone(&stop), name.to_string());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(n.as_bytes(), from);
                }
            }
        }));
        Ok(NameServer { stop, threads })
    }
}

fn name_conn(mut c: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = name.as_bytes().to_vec();
    reply.push(b'\n');
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if buf[..n].starts_with(b"GET ") => {
                // Enough HTTP for a client that sends one request.
                let body = name.as_bytes();
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(head.as_bytes());
                let _ = c.write_all(body);
                return;
            }
            Ok(n) => {
                let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                for _ in 0..lines {
                    if c.write_all(&reply).is_err() {
                        return;
                    }
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One request to a [`NameServer`] through `to`: connect, send a line, read
/// the name (a fresh connection each time). From the calling thread's netns.
pub fn ask_name(to: SocketAddr, timeout: Duration) -> Result<String> {
    let mut c =
        TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting {to}"))?;
    c.set_read_timeout(Some(timeout))?;
    c.set_nodelay(true)?;
    c.write_all(b"who\n")?;
    let mut out = Vec::new();
    let mut b = [0u8; 64];
    while !out.ends_with(b"\n") {
        let n = c
            .read(&mut b)
            .with_context(|| format!("reading from {to}"))?;
        if n == 0 {
            bail!("{to} closed before answering");
        }
        out.extend_from_slice(&b[..n]);
    }
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}
