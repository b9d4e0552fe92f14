//! A flood of one-sided new flows cannot evict this host's own connections:
//! with a conntrack table of 4,096 entries, at least 500,000 new UDP flows
//! of two packets each (from a new source address and port, to an allowed
//! port; a second packet is what makes an LRU keep an entry as long as ours) go through
//! the firewall while an outbound and an inbound TCP connection of the host
//! keep exchanging data, and a third (outbound) connection sits idle. All
//! are assured (seen both ways), so they live in fw_ct_assured, which the
//! flood never inserts into: every exchange is answered, the idle
//! connection's server can still push data to us after the flood (with one
//! shared LRU its entry is evicted and the push dropped as drop_default),
//! and the evictions the flood caused are counted.

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{TestRun, TestRunAttrs, TestRunOptions, programs::Xdp};
use common::{FwRoot, in_ns, policy_file};
use moat_core::packet::{ETH_P_IP, IPPROTO_UDP, Ips, ethernet, ipv4, udp};
use moat_host::{
    loader::{self, LogOpts},
    netlab::{self, Lab, LabConfig},
    sys::NetnsGuard,
    traffic::EchoServers,
};

const FLOOD_FLOWS: u64 = 500_000;
/// Packets per flood flow.
const PER_FLOW: u64 = 2;

/// A server in `ns` at `at` that sends "hello\n" when it accepts and
/// "push\n" once `go` is set (without being asked: the peer speaks first).
fn push_server(ns: &str, at: SocketAddr, go: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let l = in_ns(ns, move || std::net::TcpListener::bind(at).unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"hello\n").unwrap();
        let t0 = Instant::now();
        while !go.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = s.write_all(b"push\n");
        // Keep the socket until the client has read.
        std::thread::sleep(Duration::from_secs(3));
    })
}

/// An echo server in `ns` at `at` for one connection, with no idle limit
/// (EchoServers closes a connection idle for 500 ms).
fn patient_echo(ns: &str, at: SocketAddr) -> std::thread::JoinHandle<()> {
    let l = in_ns(ns, move || std::net::TcpListener::bind(at).unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 256];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

fn connect(ns: &str, to: SocketAddr) -> TcpStream {
    in_ns(ns, move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    })
}

/// One message out and its echo back; false if it did not come back whole.
fn exchange(s: &mut TcpStream, seq: u64) -> bool {
    let msg = format!("exchange {seq:>12}\n");
    if s.write_all(msg.as_bytes()).is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).is_ok() && back == msg.as_bytes()
}

#[test]
fn a_flood_of_new_flows_cannot_evict_assured_connections() {
    if !common::privileged("a_flood_of_new_flows_cannot_evict_assured_connections") {
        return;
    }
    let t = common::tag("flood");
    let lab = Lab::create(&t, &LabConfig::default()).expect("creating lab");
    let root = FwRoot::new(&t);
    let policy = policy_file(
        &t,
        "default: { ingress: deny, egress: allow }\nconntrack: { max: 4096 }\nrules:\n  - { name: flood-port, direction: ingress, action: allow, proto: udp, ports: [9000] }\n  - { name: web, direction: ingress, action: allow, proto: tcp, ports: [8080] }\n",
    );
    root.apply(&lab, &policy);
    let (a4, b4): (IpAddr, IpAddr) = (netlab::A4.parse().unwrap(), netlab::B4.parse().unwrap());
    // The peer's server (this host connects out) and this host's server.
    let _peer = EchoServers::start(&lab.ns_a, &[a4], 5555).unwrap();
    let _ours = EchoServers::start(&lab.ns_b, &[b4], 8080).unwrap();
    let mut outbound = connect(&lab.ns_b, SocketAddr::new(a4, 5555));
    let mut inbound = connect(&lab.ns_a, SocketAddr::new(b4, 8080));
    assert!(exchange(&mut outbound, 0) && exchange(&mut inbound, 0));
    let go = Arc::new(AtomicBool::new(false));
    let pusher = push_server(&lab.ns_a, SocketAddr::new(a4, 5556), Arc::clone(&go));
    let mut idle = connect(&lab.ns_b, SocketAddr::new(a4, 5556));
    let mut hello = [0u8; 6];
    idle.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello\n");
    let before = root.status();
    assert!(
        before["conntrack"]["assured_entries"].as_u64().unwrap() >= 2,
        "both connections are assured: {}",
        before["conntrack"]
    );

    // The flood, from a's end (live frames out of a's veth end), on a thread.
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let (ns_a, if_a, mac_a, mac_b) = (lab.ns_a.clone(), lab.if_a.clone(), lab.mac_a, lab.mac_b);
        let done = Arc::clone(&done);
        std::thread::spawn(move || -> u64 {
            let log = LogOpts::default();
            let mut bpf = loader::open(moat_ebpf::testdata::GEN, &log).unwrap();
            loader::load_xdp(&mut bpf, "gen2_xdp", &log).unwrap();
            let prog: &mut Xdp = bpf.program_mut("gen2_xdp").unwrap().try_into().unwrap();
            let (a, b) = (netlab::A4.parse().unwrap(), netlab::B4.parse().unwrap());
            let frame = ethernet(
                mac_b,
                mac_a,
                &[],
                ETH_P_IP,
                &ipv4(
                    a,
                    b,
                    IPPROTO_UDP,
                    &udp(Ips::V4(a, b), 1024, 9000, &[0u8; 18]),
                ),
            );
            let _g = NetnsGuard::enter(&ns_a).unwrap();
            let ifindex = moat_host::traffic::ifindex(&if_a).unwrap();
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
            let t0 = Instant::now();
            let mut sent = 0u64;
            // 3x the flows asked for at most (veth may drop some under
            // load), for at most 30 s.
            while sent < 3 * PER_FLOW * FLOOD_FLOWS && t0.elapsed() < Duration::from_secs(30) {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                loader::test_run_retrying(|| {
                    prog.test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ctx_in: Some(&ctx),
                        repeat: 50_000,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..Default::default()
                    })
                })
                .expect("live-frames BPF_PROG_TEST_RUN");
                sent += 50_000;
            }
            sent
        })
    };
    // Meanwhile both connections keep talking; the flood stops once the
    // firewall has admitted enough new flows.
    let t0 = Instant::now();
    let (mut answered, mut failed) = (0u64, Vec::new());
    let flood_rule = |s: &serde_json::Value| {
        s["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == "flood-port")
            .map_or(0, |r| r["packets"].as_u64().unwrap())
    };
    let mut seq = 1;
    while !flood.is_finished() {
        for (name, s) in [("outbound", &mut outbound), ("inbound", &mut inbound)] {
            if exchange(s, seq) {
                answered += 1;
            } else {
                failed.push(format!("{name} exchange {seq} at {:?}", t0.elapsed()));
            }
        }
        seq += 1;
        if seq % 25 == 0 && flood_rule(&root.status()) >= PER_FLOW * FLOOD_FLOWS {
            done.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = flood.join().unwrap();
    // After the flood: the connections still talk.
    for (name, s) in [("outbound", &mut outbound), ("inbound", &mut inbound)] {
        if !exchange(s, seq) {
            failed.push(format!("{name} exchange after the flood"));
        }
    }
    // The idle connection's server speaks first after the flood.
    go.store(true, Ordering::Relaxed);
    let mut push = [0u8; 5];
    let pushed = idle.read_exact(&mut push).is_ok() && &push == b"push\n";
    pusher.join().unwrap();
    let st = root.status();
    let ct = &st["conntrack"];
    let admitted = flood_rule(&st);
    eprintln!(
        "flood: {sent} frames sent, {admitted} admitted by flood-port; {answered} exchanges answered; conntrack {ct}"
    );
    assert!(failed.is_empty(), "exchanges lost: {failed:?}");
    assert!(
        pushed,
        "the idle connection's server could not push after the flood (its entry was evicted?): {ct}"
    );
    assert!(
        answered >= 20,
        "the connections exchanged during the flood ({answered})"
    );
    // (flood-port counts packets: two per flow)
    assert!(
        admitted >= PER_FLOW * FLOOD_FLOWS,
        "at least {FLOOD_FLOWS} new flows went through the firewall ({admitted} packets of {sent} sent)"
    );
    let n = |k: &str| ct[k].as_u64().unwrap();
    assert_eq!(n("new_max"), 4096);
    assert_eq!(n("assured_max"), 4096);
    assert!(
        n("evicted_new") >= n("inserted") - 2 * 4096 && n("inserted") >= FLOOD_FLOWS,
        "the flood's evictions are counted: {ct}"
    );
    assert_eq!(
        n("evicted_assured"),
        0,
        "no assured entry was evicted: {ct}"
    );
    assert!(n("assured_entries") >= 3, "{ct}");
    // The flood's one-sided flows were never assured.
    assert!(n("assured") < 100, "{ct}");
}

/// `conntrack: { max }` changes resize the pinned tables at the next apply,
/// live connections carried over: the connection keeps talking, and the
/// ingress default (deny) would drop the server's replies if its entry had
/// been lost.
#[test]
fn resizing_the_conntrack_tables_keeps_live_connections() {
    if !common::privileged("resizing_the_conntrack_tables_keeps_live_connections") {
        return;
    }
    let t = common::tag("ctrsz");
    let lab = Lab::create(&t, &LabConfig::default()).expect("creating lab");
    let root = FwRoot::new(&t);
    let policy = |max: u32| {
        common::policy_file_as(
            &t,
            &format!("p{max}.yaml"),
            &format!(
                "default: {{ ingress: deny, egress: allow }}\nconntrack: {{ max: {max} }}\nrules: []\n"
            ),
        )
    };
    root.apply(&lab, &policy(4096));
    let a4: IpAddr = netlab::A4.parse().unwrap();
    let echo = patient_echo(&lab.ns_a, SocketAddr::new(a4, 5555));
    let go = Arc::new(AtomicBool::new(false));
    let pusher = push_server(&lab.ns_a, SocketAddr::new(a4, 5556), Arc::clone(&go));
    let mut conn = connect(&lab.ns_b, SocketAddr::new(a4, 5555));
    let mut idle = connect(&lab.ns_b, SocketAddr::new(a4, 5556));
    let mut hello = [0u8; 6];
    idle.read_exact(&mut hello).unwrap();
    assert!(exchange(&mut conn, 1));
    let st = root.status();
    assert_eq!(st["conntrack"]["assured_max"], 4096);
    let (ok, out, err) = root.moat(&common::apply_args(&policy(16384), &lab, &[]));
    assert!(ok, "{out}\n{err}");
    let st = root.status();
    assert_eq!(st["conntrack"]["assured_max"], 16384, "{}", st["conntrack"]);
    assert_eq!(st["conntrack"]["new_max"], 16384);
    assert!(
        st["conntrack"]["assured_entries"].as_u64().unwrap() >= 2,
        "connections carried over: {}",
        st["conntrack"]
    );
    assert!(exchange(&mut conn, 2), "the live connection still talks");
    // The idle one: its server speaks first, so only the carried-over entry
    // lets the data in.
    go.store(true, Ordering::Relaxed);
    let mut push = [0u8; 5];
    assert!(
        idle.read_exact(&mut push).is_ok() && &push == b"push\n",
        "the server's push after the resize came through"
    );
    pusher.join().unwrap();
    // And back down again.
    root.apply(&lab, &policy(4096));
    assert_eq!(root.status()["conntrack"]["assured_max"], 4096);
    assert!(exchange(&mut conn, 3));
    drop(conn);
    echo.join().unwrap();
}
