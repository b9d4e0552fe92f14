//! Seeing what the firewall does: `moat flows`, `moat metrics`, `moat
//! capture` against traffic the test sent (exact packets and bytes), and the
//! event path's sampling and rate limit under a 1,000,000-packet flood.

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use common::{FwRoot, MoatProc, policy_file};
use moat_abi::fw as abi;
use moat_host::{
    netlab::{self, Lab, LabConfig},
    sys::NetnsGuard,
    traffic::EchoServers,
};

const POLICY: &str = "
default: { ingress: deny, egress: allow }
rules:
  - name: dns
    direction: ingress
    action: allow
    proto: udp
    ports: [7001]
  - name: ping
    direction: ingress
    action: allow
    proto: [icmp, icmpv6]
    icmp_types: [echo-request]
    log: true
log: { drops: true, rate: 1000, burst: 1000 }
";

/// Frame size of a UDP/IPv4 datagram with `payload` bytes, from Ethernet on.
fn udp4_frame(payload: usize) -> u64 {
    (14 + 20 + 8 + payload) as u64
}

/// From a: `n` datagrams of `size` bytes from A4:`sport` to B4:`dport`;
/// waits for each echo if `echo`.
fn udp_from_a(lab: &Lab, sport: u16, dport: u16, n: usize, size: usize, echo: bool) {
    let ns = lab.ns_a.clone();
    std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&ns).unwrap();
        let a: IpAddr = netlab::A4.parse().unwrap();
        let b: IpAddr = netlab::B4.parse().unwrap();
        let u = UdpSocket::bind(SocketAddr::new(a, sport)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..n {
            u.send_to(&vec![i as u8; size], SocketAddr::new(b, dport))
                .unwrap();
            if echo {
                let (len, _) = u.recv_from(&mut buf).expect("echo reply");
                assert_eq!(len, size);
            }
        }
    })
    .join()
    .unwrap();
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Parses Prometheus text with an independent parser (the prometheus-parse
/// crate); returns (name, labels, value) for every sample.
fn prometheus_parse(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{text}"));
    // Every sample line must have been understood (none silently skipped).
    let sample_lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(scrape.samples.len(), sample_lines, "{text}");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample type {other:?} for {}", s.metric),
            };
            let labels: serde_json::Map<String, serde_json::Value> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            (s.metric, serde_json::Value::Object(labels), v)
        })
        .collect()
}

fn sample(s: &[(String, serde_json::Value, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    s.iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .unwrap_or_else(|| {
            panic!(
                "no sample {name} {labels:?} in {:?}",
                s.iter().filter(|x| x.0 == name).collect::<Vec<_>>()
            )
        })
        .2
}

fn http_get(addr: &str, path: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    s.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn flows_metrics_and_capture_match_the_traffic_sent() {
    if !common::privileged("flows_metrics_and_capture_match_the_traffic_sent") {
        return;
    }
    let t = common::tag("obs");
    let lab = Lab::create(&t, &LabConfig::default()).unwrap();
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_b, &[netlab::B4.parse().unwrap()], 7000).unwrap();
    let p = policy_file(&t, POLICY);
    root.apply(&lab, &p);
    std::thread::sleep(Duration::from_millis(200));

    // Known traffic: 5 echoed datagrams of 100 bytes (allowed), 3 of 50 to a
    // closed, denied port.
    udp_from_a(&lab, 40001, 7001, 5, 100, true);
    udp_from_a(&lab, 40002, 9, 3, 50, false);

    // moat flows --json, only flows with a's address: exactly these two.
    let out = root.ok(&["flows", "--json", "--remote", "10.199.0.1/32"]);
    let flows = json_lines(&out);
    assert_eq!(flows.len(), 2, "{out}");
    let allowed = flows.iter().find(|f| f["verdict"] == "allow").expect(&out);
    assert_eq!(allowed["proto"], "udp");
    assert_eq!(allowed["direction"], "ingress");
    assert_eq!(allowed["interface"], lab.if_b.as_str());
    assert_eq!(allowed["local"], netlab::B4);
    assert_eq!(allowed["local_port"], 7001);
    assert_eq!(allowed["remote"], netlab::A4);
    assert_eq!(allowed["remote_port"], 40001);
    assert_eq!(allowed["rule"], "dns");
    // 5 requests in + 5 echoes out.
    assert_eq!(allowed["packets"], 10, "{out}");
    assert_eq!(allowed["bytes"], 10 * udp4_frame(100), "{out}");
    let denied = flows.iter().find(|f| f["verdict"] == "deny").expect(&out);
    assert_eq!(denied["local_port"], 9);
    assert_eq!(denied["remote_port"], 40002);
    assert_eq!(denied["rule"], "(default)");
    assert_eq!(denied["reason"], "drop_default");
    assert_eq!(denied["packets"], 3, "{out}");
    assert_eq!(denied["bytes"], 3 * udp4_frame(50), "{out}");
    // Filters.
    let only_deny = json_lines(&root.ok(&["flows", "--json", "--verdict", "deny", "--port", "9"]));
    assert_eq!(only_deny.len(), 1);
    assert_eq!(only_deny[0]["remote_port"], 40002);
    assert!(json_lines(&root.ok(&["flows", "--json", "--rule", "nosuchrule"])).is_empty());
    let text = root.ok(&["flows", "--remote", "10.199.0.1/32"]);
    assert!(text.contains("2 flows"), "{text}");
    assert!(
        text.contains("dns") && text.contains("drop_default"),
        "{text}"
    );

    // moat metrics: scraped over HTTP, parsed by the Prometheus parser.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let listen = format!("127.0.0.1:{port}");
    let mut m = MoatProc::spawn_env(
        &["metrics", "--listen", &listen, "--duration", "30s"],
        &root.env(),
    );
    m.wait_stderr("serving Prometheus metrics", Duration::from_secs(10));
    let text = http_get(&listen, "/metrics");
    let s = prometheus_parse(&text);
    m.signal(libc::SIGTERM);
    let (ok, _, err) = m.finish();
    assert!(ok, "{err}");
    let rule = |n: &str, what: &str| sample(&s, what, &[("rule", n)]);
    assert_eq!(rule("dns", "moat_rule_packets_total"), 10.0);
    assert_eq!(
        rule("dns", "moat_rule_bytes_total"),
        (10 * udp4_frame(100)) as f64
    );
    assert_eq!(rule("(default)", "moat_rule_packets_total"), 3.0);
    assert_eq!(
        sample(
            &s,
            "moat_packets_total",
            &[("verdict", "drop"), ("reason", "default")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &s,
            "moat_bytes_total",
            &[("verdict", "drop"), ("reason", "default")]
        ),
        (3 * udp4_frame(50)) as f64
    );
    assert_eq!(
        sample(
            &s,
            "moat_packets_total",
            &[("verdict", "pass"), ("reason", "rule")]
        ),
        1.0,
        "the first request opens the connection"
    );
    assert_eq!(
        sample(
            &s,
            "moat_packets_total",
            &[("verdict", "pass"), ("reason", "established")]
        ),
        9.0
    );
    let iface = |dir: &str, verdict: &str, what: &str| {
        sample(
            &s,
            what,
            &[
                ("interface", lab.if_b.as_str()),
                ("direction", dir),
                ("verdict", verdict),
            ],
        )
    };
    assert_eq!(
        iface("ingress", "drop", "moat_interface_packets_total"),
        3.0
    );
    assert_eq!(
        iface("ingress", "drop", "moat_interface_bytes_total"),
        (3 * udp4_frame(50)) as f64
    );
    // Passed: the 5 requests in and 5 echoes out, plus ARP and neighbour discovery.
    assert!(iface("ingress", "pass", "moat_interface_packets_total") >= 5.0);
    assert!(iface("egress", "pass", "moat_interface_packets_total") >= 5.0);
    assert_eq!(iface("egress", "drop", "moat_interface_packets_total"), 0.0);
    // The one tracked exchange went both ways: assured, none left new.
    assert_eq!(
        sample(&s, "moat_conntrack_entries", &[("table", "assured")]),
        1.0
    );
    assert_eq!(
        sample(&s, "moat_conntrack_entries", &[("table", "new")]),
        0.0
    );
    assert_eq!(
        sample(&s, "moat_conntrack_evicted_total", &[("table", "new")]),
        0.0
    );
    assert_eq!(
        sample(&s, "moat_map_entries", &[("map", abi::MAP_FLOWS)]),
        1.0
    );
    let ct_max = f64::from(moat_host::fw::pins::default_ct_max());
    assert_eq!(
        sample(&s, "moat_conntrack_max", &[("table", "assured")]),
        ct_max
    );
    assert_eq!(
        sample(
            &s,
            "moat_map_pressure_ratio",
            &[("map", abi::MAP_CT_ASSURED)]
        ),
        1.0 / ct_max
    );
    // The three drops are events (log.drops), none lost.
    assert_eq!(
        sample(&s, "moat_events_total", &[("outcome", "emitted")]),
        3.0
    );
    assert_eq!(sample(&s, "moat_events_lost_total", &[]), 0.0);

    // moat capture: the three dropped packets, as pcap.
    let pcap = std::env::temp_dir().join(format!("moat-{t}.pcap"));
    let (ok, _, err) = MoatProc::spawn_env(
        &[
            "capture",
            "--verdict",
            "deny",
            "--count",
            "3",
            "-w",
            pcap.to_str().unwrap(),
            "--duration",
            "20s",
        ],
        &root.env(),
    )
    .finish();
    assert!(ok, "{err}");
    assert!(err.contains("3 packets written"), "{err}");
    // Read back with an independent pcap reader (the pcap-file crate) and
    // decoded here: Ethernet / IPv4 / UDP 10.199.0.1:40002 -> 10.199.0.2:9, 50 bytes.
    let file = std::fs::File::open(&pcap).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(file).expect("a pcap file");
    assert_eq!(
        r.header().datalink,
        pcap_file::DataLink::ETHERNET,
        "link type Ethernet"
    );
    let mut got = Vec::new();
    while let Some(p) = r.next_packet() {
        got.push(p.unwrap().data.into_owned());
    }
    let _ = std::fs::remove_file(&pcap);
    assert_eq!(got.len(), 3, "three packets in the pcap");
    for f in &got {
        assert_eq!(&f[12..14], &[0x08, 0x00], "IPv4");
        let ip = &f[14..];
        assert_eq!(ip[9], 17, "UDP");
        assert_eq!(&ip[12..16], &[10, 199, 0, 1]);
        assert_eq!(&ip[16..20], &[10, 199, 0, 2]);
        let udp = &ip[(ip[0] as usize & 0xF) * 4..];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 40002);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 9);
        assert_eq!(
            u16::from_be_bytes([udp[4], udp[5]]),
            8 + 50,
            "50 bytes of payload"
        );
    }

    // moat flows --follow: a new drop shows up as an event while it runs.
    let f = MoatProc::spawn_env(
        &[
            "flows",
            "--follow",
            "--json",
            "--port",
            "9",
            "--duration",
            "6s",
        ],
        &root.env(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    udp_from_a(&lab, 40003, 9, 1, 20, false);
    let (ok, out, err) = {
        f.signal(0);
        f.finish()
    };
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    let ev: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "drop").collect();
    assert_eq!(ev.len(), 1, "{out}");
    assert_eq!(ev[0]["src_port"], 40003);
    assert_eq!(ev[0]["dst_port"], 9);
    assert_eq!(ev[0]["packet_len"], udp4_frame(20));
    assert_eq!(ev[0]["reason"], "drop_default");
    assert!(
        lines
            .iter()
            .any(|l| l["verdict"] == "deny" && l["remote_port"] == 40003),
        "the new denied flow is listed: {out}"
    );
}

/// A flood of 1,000,000 denied packets (BPF_PROG_TEST_RUN): events stay
/// within the rate, and emitted + sampled out + rate limited + lost equals
/// the packets seen, with sampling, with the limit, and with a full ring.
#[test]
fn a_flood_of_denied_packets_stays_within_the_event_rate_and_every_packet_is_accounted() {
    if !common::privileged("a_flood_of_denied_packets_stays_within_the_event_rate") {
        return;
    }
    use aya::{TestRun, TestRunOptions};
    moat_host::sys::ensure_bpffs().unwrap();
    const N: u32 = 1_000_000;
    let frame = moat_core::fw::frame_between(
        "192.0.2.7".parse().unwrap(),
        "198.51.100.1".parse().unwrap(),
        17,
        5000,
        9,
    );
    for (i, (log, check)) in [
        ("{ rate: 1000, burst: 100 }", "rate"),
        (
            "{ rate: 100000000, burst: 100000000, sample: 10 }",
            "sample",
        ),
        ("{ rate: 100000000, burst: 100000000 }", "ring"),
    ]
    .into_iter()
    .enumerate()
    {
        let yaml = format!("default: {{ ingress: deny, egress: allow }}\nrules: []\nlog: {log}\n");
        let p = moat_core::fw::policy::parse(&yaml, std::path::Path::new("flood.yaml")).unwrap();
        let c = moat_core::fw::compile::compile(&p);
        let pins = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/moat-test-flood-{}-{i}",
            std::process::id()
        ));
        let inst = moat_host::fw::instance::FwInstance::load(
            &p,
            &c,
            1,
            &pins,
            &moat_host::loader::LogOpts::default(),
            &mut |_, _, _| {},
        );
        let result = (|| {
            let mut inst = inst?;
            let t = Instant::now();
            let r = inst.xdp()?.test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: N,
                ..Default::default()
            })?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(r.return_value == 1, "XDP_DROP expected");
            Ok::<_, anyhow::Error>((inst.event_stats()?, inst.stats()?, secs))
        })();
        let _ = std::fs::remove_dir_all(&pins);
        let (ev, stats, secs) = result.unwrap();
        let e = |k: u32| ev[k as usize];
        eprintln!("{check}: {ev:?} in {secs:.2} s");
        assert_eq!(stats[abi::STAT_DROP_DEFAULT as usize].packets, u64::from(N));
        assert_eq!(e(abi::EV_SEEN), u64::from(N));
        assert_eq!(
            e(abi::EV_EMITTED) + e(abi::EV_SAMPLED_OUT) + e(abi::EV_RATE_LIMITED) + e(abi::EV_LOST),
            u64::from(N),
            "{ev:?}"
        );
        match check {
            "rate" => {
                // rate 1000/s and burst 100 for the host; the run uses one CPU.
                let bound = (1000.0 * secs + 100.0).ceil() as u64;
                assert!(
                    e(abi::EV_EMITTED) >= 1 && e(abi::EV_EMITTED) <= bound,
                    "{ev:?} > {bound}"
                );
                assert_eq!(e(abi::EV_LOST), 0);
            }
            "sample" => {
                assert_eq!(e(abi::EV_SAMPLED_OUT), u64::from(N) - u64::from(N) / 10);
            }
            _ => {
                // Nobody reads the 1 MiB ring: it fills, the rest is counted lost.
                assert!(e(abi::EV_LOST) > 0, "{ev:?}");
                let per = (std::mem::size_of::<abi::FwEvent>() + 8) as u64;
                assert!(e(abi::EV_EMITTED) <= (1 << 20) / per, "{ev:?}");
            }
        }
    }
}
