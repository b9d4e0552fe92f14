//! The load balancer with real clients and servers: a client namespace, the
//! balancer's namespace and three backend namespaces (each answering with
//! its own name over TCP and UDP), driven through the `moat lb` CLI.
//! Spread within 10% of the weights over 3000 connections; NAT with a port
//! remap, IPv6, UDP, DSR with the VIP on the backends' loopback, ICMP echo;
//! a long-lived stream that survives drain, weight 0 and removal of other
//! backends and its own drain; plan; 100 applies under ≥ 10,000 requests
//! with none failed; detach. Everything is removed, also on failure.

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{LbRoot, in_ns, ping_ok};
use moat_host::{
    netlab::LbLab,
    sys::NetnsGuard,
    traffic::{NameServer, ask_name},
};

const T: Duration = Duration::from_secs(2);

fn config(weights: [u32; 3], present: [bool; 3]) -> String {
    let mut web = String::new();
    let mut web6 = String::new();
    let mut dns = String::new();
    let mut dsr = String::new();
    for n in 1..=3 {
        if !present[n - 1] {
            continue;
        }
        let w = weights[n - 1];
        web.push_str(&format!(
            "      - {{ address: 10.197.{n}.2, port: 8080, weight: {w} }}\n"
        ));
        web6.push_str(&format!(
            "      - {{ address: \"fd00:197:{n}::2\", port: 8080 }}\n"
        ));
        dns.push_str(&format!(
            "      - {{ address: 10.197.{n}.2, port: 8080 }}\n"
        ));
        dsr.push_str(&format!("      - 10.197.{n}.2\n"));
    }
    format!(
        "services:
  - name: web
    vip: 10.200.0.10
    port: 80
    proto: tcp
    backends:
{web}  - name: web6
    vip: \"fd00:200::10\"
    port: 80
    proto: tcp
    backends:
{web6}  - name: dns
    vip: 10.200.0.10
    port: 53
    proto: udp
    backends:
{dns}  - name: direct
    vip: 10.200.0.11
    port: 8080
    proto: tcp
    mode: dsr
    backends:
{dsr}"
    )
}

fn vip_web() -> SocketAddr {
    "10.200.0.10:80".parse().unwrap()
}

/// `n` fresh connections from the client namespace: name -> count, failures.
fn spread(ns: &str, to: SocketAddr, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    in_ns(ns, move || {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut failed = Vec::new();
        for _ in 0..n {
            match ask_name(to, T) {
                Ok(name) => *seen.entry(name).or_default() += 1,
                Err(e) => {
                    failed.push(format!("{e:#}"));
                    // Bounded: a broken balancer fails the test, not the CI clock.
                    if failed.len() >= 20 {
                        break;
                    }
                }
            }
        }
        (seen, failed)
    })
}

/// A long-lived connection through the VIP, kept in the client namespace.
struct Stream {
    c: TcpStream,
}

impl Stream {
    fn open(ns: &str) -> Stream {
        let ns = ns.to_string();
        let c = std::thread::spawn(move || {
            let _g = NetnsGuard::enter(&ns).unwrap();
            TcpStream::connect_timeout(&vip_web(), T).unwrap()
        })
        .join()
        .unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        Stream { c }
    }
    /// One exchange; the backend's name.
    fn ask(&mut self) -> String {
        self.c.write_all(b"again\n").expect("stream write");
        let mut out = Vec::new();
        let mut b = [0u8; 64];
        while !out.ends_with(b"\n") {
            let n = self
                .c
                .read(&mut b)
                .expect("stream read (the stream stalled)");
            assert!(n > 0, "the stream was closed");
            out.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&out).trim().to_string()
    }
}

#[test]
fn lb_netns_end_to_end() {
    if !common::privileged("lb_netns_end_to_end") {
        return;
    }
    let tag = common::tag("lbn");
    let lab = LbLab::create(&tag, 3).expect("lab");
    lab.vip_on_backends("10.200.0.11").unwrap();
    let _servers: Vec<NameServer> = lab
        .ns_s
        .iter()
        .enumerate()
        .map(|(i, ns)| NameServer::start(ns, &format!("be{}", i + 1), 8080).unwrap())
        .collect();
    // XDP_TX on a veth reaches the peer only if the peer runs XDP (a fact
    // of veth, not of a NIC): the echo replies need a pass-through program
    // on the client's end.
    let _peer = moat_host::count::Counter::attach(
        "eth0",
        moat_host::count::Mode::Native,
        Some(&lab.ns_c),
        &moat_host::loader::LogOpts::default(),
    )
    .unwrap();
    let root = LbRoot::new(&tag);
    let ifaces = lab.lb_ifaces();
    let apply = |file: &std::path::Path| {
        let mut args = vec!["lb", "apply", "-f", file.to_str().unwrap()];
        for i in &ifaces {
            args.push("-i");
            args.push(i);
        }
        args.push("--netns");
        args.push(&lab.ns_l);
        root.ok(&args)
    };
    let c = lab.ns_c.clone();

    // 1. Spread: weights 1, 1, 2 over 3000 new connections, within 10%.
    let f = root.file("lb.yaml", &config([1, 1, 2], [true; 3]));
    let out = apply(&f);
    assert!(out.contains("4 services"), "{out}");
    let (seen, failed) = spread(&c, vip_web(), 3000);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    for (name, want) in [("be1", 750.0), ("be2", 750.0), ("be3", 1500.0)] {
        let got = *seen.get(name).unwrap_or(&0) as f64;
        assert!(
            (got - want).abs() <= 0.1 * want,
            "{name}: {got} connections, expected {want} ± 10% ({seen:?})"
        );
    }
    let st = root.status();
    let web = &st["services"][0];
    assert_eq!(web["name"], "web");
    let total: u64 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["connections_total"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3000, "status counts every new connection: {st}");
    let generation = st["generation"].as_u64().unwrap();

    // `moat flows` shows each balanced connection with its backend.
    let flows = root.ok(&["flows", "--json", "--port", "80"]);
    let web_flows: Vec<serde_json::Value> = flows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "balanced" && v["service"] == "web")
        .collect();
    // One entry per client port: the client may reuse a port whose last
    // connection is in TIME_WAIT (tcp_tw_reuse), which is the same
    // connection key again, so there can be fewer entries than connections.
    let entries = root.status()["conntrack_entries"].as_u64().unwrap() as usize;
    assert_eq!(
        web_flows.len(),
        entries,
        "moat flows lists every tracked connection"
    );
    assert!(
        (2500..=3000).contains(&entries),
        "{entries} tracked connections for 3000 made"
    );
    for (n, want) in [(1, 0.25), (2, 0.25), (3, 0.5)] {
        let got = web_flows
            .iter()
            .filter(|v| v["backend"] == format!("10.197.{n}.2:8080"))
            .count() as f64
            / entries as f64;
        assert!(
            (got - want).abs() <= 0.1 * want + 0.02,
            "backend {n}: {got} of the flows, expected {want}"
        );
    }
    // Metrics on the shared endpoint.
    let port = 20000 + (std::process::id() % 20000) as u16 + 1;
    let listen = format!("127.0.0.1:{port}");
    let mut m = common::MoatProc::spawn_env(
        &["metrics", "--listen", &listen, "--duration", "30s"],
        &root.env(),
    );
    m.wait_stderr("serving Prometheus metrics", Duration::from_secs(10));
    let text = {
        let mut c = TcpStream::connect(&listen).unwrap();
        write!(
            c,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut t = String::new();
        c.read_to_string(&mut t).unwrap();
        assert!(t.starts_with("HTTP/1.1 200"), "{t}");
        t
    };
    m.signal(libc::SIGTERM);
    let _ = m.finish();
    let sample = |name: &str, backend: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains("service=\"web\"")
                    && l.contains(&format!("backend=\"{backend}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} {backend} not in metrics:\n{text}"))
    };
    assert_eq!(
        sample("moat_lb_connections_total", "10.197.3.2:8080"),
        seen["be3"] as f64
    );
    assert_eq!(sample("moat_lb_backend_up", "10.197.1.2:8080"), 1.0);
    assert!(sample("moat_lb_packets_total", "10.197.1.2:8080") > 0.0);

    // A broken file changes nothing that runs.
    let broken = root.file(
        "broken.yaml",
        &config([1, 1, 2], [true; 3]).replace("port: 53", "port: 70000"),
    );
    let (ok, _, err) = root.moat(&[
        "lb",
        "apply",
        "-f",
        broken.to_str().unwrap(),
        "-i",
        "cli",
        "--netns",
        &lab.ns_l,
    ]);
    assert!(!ok, "a broken config was applied");
    assert!(
        err.contains("broken.yaml:") && err.contains("70000"),
        "{err}"
    );
    assert_eq!(root.status()["generation"].as_u64().unwrap(), generation);
    let (_, failed) = spread(&c, vip_web(), 50);
    assert!(failed.is_empty(), "after a refused apply: {failed:?}");

    // HTTP through the VIP: every answer a 200 from one of the backends.
    let bodies = in_ns(&c, || {
        let mut names = Vec::new();
        for _ in 0..30 {
            let mut s = TcpStream::connect_timeout(&vip_web(), T).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
            names.push(r.rsplit("\r\n\r\n").next().unwrap().to_string());
        }
        names
    });
    assert!(bodies.iter().all(|b| b.starts_with("be")), "{bodies:?}");

    // 2. IPv6 NAT, UDP, DSR, ICMP echo.
    let (seen6, failed6) = spread(&c, "[fd00:200::10]:80".parse().unwrap(), 100);
    assert!(failed6.is_empty(), "IPv6: {failed6:?}");
    assert!(seen6.len() >= 2, "IPv6 connections spread: {seen6:?}");
    let udp_names = in_ns(&c, || {
        let mut names = Vec::new();
        for _ in 0..50 {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.send_to(b"q", "10.200.0.10:53").unwrap();
            let mut b = [0u8; 64];
            let (n, from) = s.recv_from(&mut b).expect("UDP answer through the VIP");
            assert_eq!(from, "10.200.0.10:53".parse::<SocketAddr>().unwrap());
            names.push(String::from_utf8_lossy(&b[..n]).to_string());
        }
        names
    });
    assert!(udp_names.iter().all(|n| n.starts_with("be")));
    let (seend, faild) = spread(&c, "10.200.0.11:8080".parse().unwrap(), 100);
    assert!(faild.is_empty(), "DSR: {faild:?}");
    assert!(seend.len() >= 2, "DSR spread: {seend:?}");
    assert!(
        ping_ok(&c, "10.200.0.10".parse::<IpAddr>().unwrap()),
        "echo to the VIP"
    );

    // 3. A long-lived stream; others drained, weighted 0, removed; then its own drain.
    let mut s = Stream::open(&c);
    let mine = s.ask();
    let n_mine: usize = mine[2..].parse().unwrap();
    let others: Vec<usize> = (1..=3).filter(|n| *n != n_mine).collect();
    let (o1, o2) = (others[0], others[1]);
    root.ok(&[
        "lb",
        "backend",
        "web",
        &format!("10.197.{o1}.2:8080"),
        "drain",
    ]);
    assert_eq!(s.ask(), mine);
    let (seen, failed) = spread(&c, vip_web(), 200);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        !seen.contains_key(&format!("be{o1}")),
        "a drained backend got new connections: {seen:?}"
    );
    // Weight 0 for the other one: only the stream's backend takes new ones.
    let mut w = [1, 1, 2];
    w[o2 - 1] = 0;
    let f = root.file("w0.yaml", &config(w, [true; 3]));
    apply(&f);
    assert_eq!(s.ask(), mine);
    let (seen, failed) = spread(&c, vip_web(), 100);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        seen.len(),
        1,
        "weight 0 and drain leave one backend: {seen:?}"
    );
    assert!(seen.contains_key(&mine));
    // The plan of removing the stream's backend moves its connection.
    let mut present = [true; 3];
    present[n_mine - 1] = false;
    let gone = root.file("gone.yaml", &config([1, 1, 2], present));
    let plan: serde_json::Value =
        serde_json::from_str(&root.ok(&["lb", "plan", "-f", gone.to_str().unwrap(), "--json"]))
            .unwrap();
    let pw = &plan["services"][0];
    assert_eq!(pw["service"], "web");
    assert!(pw["connections_moved"].as_u64().unwrap() >= 1, "{plan}");
    assert!(
        pw["table_moved"].as_f64().unwrap() > 0.9,
        "all of the table moves: {plan}"
    );
    // Removing another backend from the file keeps the stream.
    let mut present = [true; 3];
    present[o1 - 1] = false;
    let f = root.file("rm.yaml", &config(w, present));
    apply(&f);
    assert_eq!(s.ask(), mine);
    // Another backend is added back (o1: a new slot) and o2 weighted again:
    // the stream keeps its backend.
    let mut w2 = w;
    w2[o2 - 1] = 1;
    let f = root.file("back.yaml", &config(w2, [true; 3]));
    apply(&f);
    assert_eq!(
        s.ask(),
        mine,
        "a stream survives another backend being added"
    );
    // `down` (what failed health checks set): no new connections for it,
    // its existing ones stay.
    root.ok(&[
        "lb",
        "backend",
        "web",
        &format!("10.197.{o2}.2:8080"),
        "down",
    ]);
    let (seen, failed) = spread(&c, vip_web(), 100);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        !seen.contains_key(&format!("be{o2}")),
        "a down backend got new connections: {seen:?}"
    );
    root.ok(&["lb", "backend", "web", &format!("10.197.{o2}.2:8080"), "up"]);
    // Its own drain: it keeps going, new connections go to the others.
    root.ok(&[
        "lb",
        "backend",
        "web",
        &format!("10.197.{n_mine}.2:8080"),
        "drain",
    ]);
    for _ in 0..5 {
        assert_eq!(s.ask(), mine, "a drained backend keeps its connections");
    }
    let (seen, failed) = spread(&c, vip_web(), 100);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        !seen.contains_key(&mine),
        "a drained backend got new connections: {seen:?}"
    );
    assert!(
        seen.contains_key(&format!("be{o1}")),
        "the re-added backend takes new connections: {seen:?}"
    );
    let st = root.status();
    let b = st["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == format!("10.197.{n_mine}.2:8080"))
        .unwrap()
        .clone();
    assert_eq!(b["state"], "drain");
    assert!(b["connections"].as_u64().unwrap() >= 1, "{b}");
    root.ok(&["lb", "backend", "web", &format!("10.197.{n_mine}.2"), "up"]);
    drop(s);

    // 4. 100 applies while requests run: none may fail.
    let f_a = root.file("a.yaml", &config([1, 1, 2], [true; 3]));
    let f_b = root.file("b.yaml", &config([2, 1, 1], [true; 3]));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (c, stop, ok, bad) = (c.clone(), stop.clone(), ok.clone(), bad.clone());
            std::thread::spawn(move || {
                let _g = NetnsGuard::enter(&c).unwrap();
                let mut errs = Vec::new();
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(240) {
                    match ask_name(vip_web(), T) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errs.push(format!("{e:#}"));
                            if errs.len() >= 20 {
                                break;
                            }
                            bad.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errs
            })
        })
        .collect();
    let t0 = Instant::now();
    for i in 0..100 {
        apply(if i % 2 == 0 { &f_b } else { &f_a });
    }
    // Keep going until the bar's 10,000 requests were made.
    while ok.load(Ordering::Relaxed) + bad.load(Ordering::Relaxed) < 10_000
        && t0.elapsed() < Duration::from_secs(200)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let errs: Vec<String> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let (n_ok, n_bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!(
        "100 applies in {:.1?}: {n_ok} requests answered, {n_bad} failed",
        t0.elapsed()
    );
    assert_eq!(
        n_bad,
        0,
        "failed requests during applies: {:?}",
        &errs[..errs.len().min(5)]
    );
    assert!(n_ok >= 10_000, "{n_ok} requests");

    // 5. Detach: the VIP answers no more, the pins are gone.
    root.ok(&["lb", "detach"]);
    let r = in_ns(&c, || {
        ask_name(vip_web(), Duration::from_millis(500)).is_err()
    });
    assert!(r, "the VIP still answers after detach");
    assert!(
        !std::path::Path::new(&root.pin_root).join("lb").exists(),
        "pins left after detach"
    );
    drop(root);
    drop(lab);
}

/// One request from source address `src` (bound), like `ask_name`.
fn ask_from(src: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&to.into(), timeout)?;
    let mut c: TcpStream = s.into();
    c.set_read_timeout(Some(timeout))?;
    c.write_all(b"who\n")?;
    let mut out = Vec::new();
    let mut b = [0u8; 64];
    while !out.ends_with(b"\n") {
        let n = c.read(&mut b)?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        out.extend_from_slice(&b[..n]);
    }
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// `n` requests from `src` in the client namespace: (answered, failed).
fn tries(ns: &str, src: &str, n: usize, timeout: Duration) -> (usize, usize) {
    let src: IpAddr = src.parse().unwrap();
    in_ns(ns, move || {
        let mut ok = 0;
        for _ in 0..n {
            if ask_from(src, vip_web(), timeout).is_ok() {
                ok += 1;
            }
        }
        (ok, n - ok)
    })
}

/// The firewall and the balancer on one interface, in both orders: the
/// firewall's policy applies to the VIP's clients (a blocked client never
/// reaches a backend), each can be re-applied and detached while the other
/// keeps running, and the hook never goes dark.
#[test]
fn firewall_and_balancer_share_an_interface() {
    if !common::privileged("firewall_and_balancer_share_an_interface") {
        return;
    }
    let tag = common::tag("lbfw");
    let lab = LbLab::create(&tag, 2).expect("lab");
    moat_host::netlab::ip(&[
        "-n",
        &lab.ns_c,
        "addr",
        "add",
        "10.198.0.3/24",
        "dev",
        "eth0",
    ])
    .unwrap();
    let _servers: Vec<NameServer> = lab
        .ns_s
        .iter()
        .enumerate()
        .map(|(i, ns)| NameServer::start(ns, &format!("be{}", i + 1), 8080).unwrap())
        .collect();
    let root = LbRoot::new(&tag);
    let c = lab.ns_c.clone();
    let l = lab.ns_l.clone();
    let policy = root.file(
        "policy.yaml",
        "default: { ingress: allow, egress: allow }\nrules:\n  - { name: blocked, direction: ingress, action: deny, remote: [10.198.0.3/32] }\n",
    );
    let lb = root.file("lb.yaml", &config_two([1, 1]));
    let lb2 = root.file("lb2.yaml", &config_two([2, 1]));
    let fw_apply = || {
        root.ok(&[
            "fw",
            "apply",
            "-q",
            "-f",
            policy.to_str().unwrap(),
            "-i",
            "cli",
            "--netns",
            &l,
        ])
    };
    let lb_apply = |f: &std::path::Path| {
        root.ok(&[
            "lb",
            "apply",
            "-f",
            f.to_str().unwrap(),
            "-i",
            "cli",
            "-i",
            "be1",
            "-i",
            "be2",
            "--netns",
            &l,
        ])
    };
    let short = Duration::from_millis(300);

    // A: the firewall first, then the balancer behind it.
    fw_apply();
    let out = lb_apply(&lb);
    assert!(out.contains("cli (after the firewall)"), "{out}");
    assert_eq!(
        tries(&c, "10.198.0.1", 100, T),
        (100, 0),
        "allowed client through fw + lb"
    );
    assert_eq!(
        tries(&c, "10.198.0.3", 3, short).0,
        0,
        "a blocked client reached a backend"
    );
    let st = root.status();
    assert!(
        st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().contains("after the firewall")),
        "{st}"
    );
    // Neither re-apply breaks the chain.
    fw_apply();
    assert_eq!(
        tries(&c, "10.198.0.1", 50, T),
        (50, 0),
        "after a firewall re-apply"
    );
    lb_apply(&lb2);
    assert_eq!(
        tries(&c, "10.198.0.1", 50, T),
        (50, 0),
        "after a balancer re-apply"
    );
    assert_eq!(tries(&c, "10.198.0.3", 3, short).0, 0);
    // The firewall leaves: the hook goes back to the balancer alone.
    let mut stream = Stream::open(&c);
    let mine = stream.ask();
    root.ok(&["fw", "detach"]);
    assert_eq!(
        stream.ask(),
        mine,
        "a stream through the VIP survives the firewall's detach"
    );
    assert_eq!(
        tries(&c, "10.198.0.3", 20, T),
        (20, 0),
        "no firewall: every client is balanced"
    );
    let st = root.status();
    assert!(
        st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| !i.as_str().unwrap().contains("after the firewall")),
        "{st}"
    );

    // B: the balancer first, then the firewall takes the hook over.
    fw_apply();
    assert_eq!(
        stream.ask(),
        mine,
        "a stream survives the firewall's arrival"
    );
    assert_eq!(
        tries(&c, "10.198.0.3", 3, short).0,
        0,
        "blocked again once the firewall is back"
    );
    assert_eq!(tries(&c, "10.198.0.1", 50, T), (50, 0));
    drop(stream);
    // The firewall moves to another interface: cli goes back to the
    // balancer alone, be1's balancer link moves to the firewall.
    root.ok(&[
        "fw",
        "apply",
        "-q",
        "-f",
        policy.to_str().unwrap(),
        "-i",
        "be1",
        "--netns",
        &l,
    ]);
    assert_eq!(
        tries(&c, "10.198.0.3", 5, T),
        (5, 0),
        "cli is the balancer's alone again"
    );
    assert_eq!(
        tries(&c, "10.198.0.1", 20, T),
        (20, 0),
        "replies through be1's firewall are balanced"
    );
    // The balancer leaves: the firewall runs alone (the VIP is gone).
    root.ok(&["lb", "detach"]);
    assert_eq!(
        tries(&c, "10.198.0.1", 3, short).0,
        0,
        "the VIP answers without a balancer"
    );
    assert!(
        common::ping_ok(&c, "10.198.0.2".parse().unwrap()),
        "the firewall passes what its policy allows"
    );
    let fw: serde_json::Value =
        serde_json::from_str(&root.ok(&["fw", "status", "--json"])).unwrap();
    assert!(fw["interfaces"].to_string().contains("be1"), "{fw}");
    root.ok(&["fw", "detach"]);
    assert!(!std::path::Path::new(&root.pin_root).join("lb").exists());
    drop(root);
    drop(lab);
}

fn config_two(weights: [u32; 2]) -> String {
    format!(
        "services:\n  - name: web\n    vip: 10.200.0.10\n    port: 80\n    proto: tcp\n    backends:\n      - {{ address: 10.197.1.2, port: 8080, weight: {} }}\n      - {{ address: 10.197.2.2, port: 8080, weight: {} }}\n",
        weights[0], weights[1]
    )
}
