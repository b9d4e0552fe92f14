//! TCP tracked by state with real connections between two namespaces: the
//! states show in `moat flows --json`, and after this host's connection from
//! port 46000 to the peer's 5555 has closed, the peer cannot use the closed
//! tuple the other way round (5555 -> our 46000) unless the policy allows it.

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::{FwRoot, in_ns, policy_file, policy_file_as};
use moat_host::netlab::{self, Lab, LabConfig};
use socket2::{Domain, Socket, Type};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP socket in namespace `ns` bound to `at` with SO_REUSEADDR.
fn bound(ns: &str, at: SocketAddr) -> Socket {
    in_ns(ns, move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&at.into()).unwrap();
        s
    })
}

fn listen(ns: &str, at: SocketAddr) -> TcpListener {
    let s = bound(ns, at);
    s.listen(8).unwrap();
    let l: TcpListener = s.into();
    l.set_nonblocking(true).unwrap();
    l
}

/// Connects from `from` to `to`; the stream, or None within a second.
fn connect(ns: &str, from: SocketAddr, to: SocketAddr) -> Option<TcpStream> {
    let s = bound(ns, from);
    s.connect_timeout(&to.into(), Duration::from_secs(1)).ok()?;
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    Some(t)
}

fn accept(l: &TcpListener) -> TcpStream {
    for _ in 0..100 {
        if let Ok((s, _)) = l.accept() {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no connection to accept");
}

fn state_of(root: &FwRoot, local_port: u16, remote_port: u16) -> Option<String> {
    let out = root.ok(&["flows", "--json"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|f| f["local_port"] == local_port && f["remote_port"] == remote_port)
        .and_then(|f| f["tcp_state"].as_str().map(str::to_string))
}

#[test]
fn tcp_states_show_and_a_closed_tuple_cannot_be_reused_backwards() {
    if !common::privileged("tcp_states_show_and_a_closed_tuple_cannot_be_reused_backwards") {
        return;
    }
    let t = common::tag("tcp");
    let lab = Lab::create(&t, &LabConfig::default()).expect("creating lab");
    let root = FwRoot::new(&t);
    let deny_in = policy_file(&t, "default: { ingress: deny, egress: allow }\nrules: []\n");
    let apply = |p: &std::path::Path| root.apply(&lab, p);
    apply(&deny_in);
    let a = |port| SocketAddr::new(ip(netlab::A4), port);
    let b = |port| SocketAddr::new(ip(netlab::B4), port);

    // Our (b's) outbound connection 46000 -> a:5555: allowed, tracked.
    let server = listen(&lab.ns_a, a(5555));
    let mut ours = connect(&lab.ns_b, b(46000), a(5555)).expect("egress is allowed");
    let mut theirs = accept(&server);
    ours.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    theirs.read_exact(&mut buf).unwrap();
    theirs.write_all(b"pong").unwrap();
    ours.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    assert_eq!(
        state_of(&root, 46000, 5555).as_deref(),
        Some("established"),
        "moat flows shows the TCP state"
    );
    // Close it: we close first (FIN), they answer (FIN), we ACK.
    drop(ours);
    let mut rest = Vec::new();
    let _ = theirs.read_to_end(&mut rest);
    drop(theirs);
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        state_of(&root, 46000, 5555).as_deref(),
        Some("time_wait"),
        "after both FINs and the last ACK"
    );

    // The peer now opens 5555 -> our 46000, where we listen: the closed
    // tuple admits nothing, and the policy denies ingress.
    let ours_listen = listen(&lab.ns_b, b(46000));
    assert!(
        connect(&lab.ns_a, a(5555), b(46000)).is_none(),
        "a new inbound connection on the closed tuple must be denied"
    );
    // Control: where the policy allows it, the very same connection works
    // (so the refusal above was the firewall's).
    let allow = policy_file_as(
        &t,
        "allow.yaml",
        "default: { ingress: deny, egress: allow }\nrules:\n  - { name: back, direction: ingress, action: allow, proto: tcp, ports: [46000] }\n",
    );
    apply(&allow);
    let c = connect(&lab.ns_a, a(5555), b(46000));
    assert!(c.is_some(), "allowed by the policy, the connection is made");
    drop(accept(&ours_listen));
}

/// Connections open before the firewall came up are picked up (as
/// established) only where the policy allows them as new connections.
#[test]
fn connections_open_before_apply_are_picked_up_only_where_allowed() {
    if !common::privileged("connections_open_before_apply_are_picked_up_only_where_allowed") {
        return;
    }
    let t = common::tag("pick");
    let lab = Lab::create(&t, &LabConfig::default()).expect("creating lab");
    let root = FwRoot::new(&t);
    let a = |port| SocketAddr::new(ip(netlab::A4), port);
    let b = |port| SocketAddr::new(ip(netlab::B4), port);
    let l_ok = listen(&lab.ns_b, b(7000));
    let l_no = listen(&lab.ns_b, b(7100));
    let mut c_ok = connect(&lab.ns_a, a(41000), b(7000)).unwrap();
    let mut c_no = connect(&lab.ns_a, a(41001), b(7100)).unwrap();
    let mut s_ok = accept(&l_ok);
    let mut s_no = accept(&l_no);
    let round = |c: &mut TcpStream, s: &mut TcpStream| -> bool {
        let mut buf = [0u8; 4];
        c.write_all(b"ping").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && s.write_all(b"pong").is_ok()
            && c.read_exact(&mut buf).is_ok()
    };
    assert!(
        round(&mut c_ok, &mut s_ok) && round(&mut c_no, &mut s_no),
        "both work before"
    );
    let pol = policy_file(
        &t,
        "default: { ingress: deny, egress: allow }\nrules:\n  - { name: web, direction: ingress, action: allow, proto: tcp, ports: [7000] }\n",
    );
    root.apply(&lab, &pol);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        round(&mut c_ok, &mut s_ok),
        "the allowed connection is picked up mid-stream"
    );
    assert_eq!(
        state_of(&root, 7000, 41000).as_deref(),
        Some("established"),
        "picked up as established"
    );
    assert!(
        !round(&mut c_no, &mut s_no),
        "the one the policy denies is not"
    );
    assert_eq!(state_of(&root, 7100, 41001), None, "and not tracked");
}
