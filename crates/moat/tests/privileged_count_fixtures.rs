//! BPF_PROG_TEST_RUN on the real counter object: packet fixtures as data,
//! then random frames checked against the reference model in moat-core.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{Ebpf, TestRun, TestRunOptions, maps::PerCpuArray, programs::Xdp};
use moat_abi::count::*;
use moat_core::{
    classify::{class_name, classify},
    counters::Counts,
    packet::*,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const XDP_PASS: u32 = 2;

const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

struct Fixture {
    what: &'static str,
    frame: Vec<u8>,
    class: u32,
}

fn fx(what: &'static str, frame: Vec<u8>, class: u32) -> Fixture {
    Fixture { what, frame, class }
}

fn v4(proto: u8, l4: &[u8]) -> Vec<u8> {
    eth(ETH_P_IP, &ipv4(A4, B4, proto, l4))
}

fn v6(next: u8, rest: &[u8]) -> Vec<u8> {
    eth(ETH_P_IPV6, &ipv6(A6, B6, next, rest))
}

fn fixtures() -> Vec<Fixture> {
    let ips4 = Ips::V4(A4, B4);
    let ips6 = Ips::V6(A6, B6);
    let tcp4 = tcp(ips4, 40000, 22, TCP_SYN, 1, 0, &[]);
    let udp4 = udp(ips4, 5353, 53, b"query");
    let tcp6 = tcp(ips6, 40000, 443, TCP_SYN, 1, 0, &[]);
    let udp6 = udp(ips6, 5353, 53, b"query");
    let echo6 = icmpv6(A6, B6, 128, 0, [0, 1, 0, 1], &[0; 8]);
    let ns6 = icmpv6(A6, B6, 135, 0, [0; 4], &B6.octets());
    let opts = |n: usize| V4Opts {
        options: vec![1; n],
        ..Default::default()
    };
    let frag_later = V4Opts {
        frag_offset: 185,
        dont_fragment: false,
        ..Default::default()
    };

    let mut ihl_small = v4(IPPROTO_TCP, &tcp4);
    ihl_small[14] = 0x44; // IHL 4 (16 bytes): invalid
    let mut wrong_version = v4(IPPROTO_UDP, &udp4);
    wrong_version[14] = 0x65; // says IPv6 in an IPv4 ethertype
    let mut v6_wrong_version = v6(IPPROTO_UDP, &udp6);
    v6_wrong_version[14] = 0x40;

    // 8 extension headers then TCP: walked; 9 then TCP: too deep.
    let chain = |n: usize, upper: u8, l4: &[u8]| {
        let mut rest = l4.to_vec();
        let mut next = upper;
        for _ in 0..n {
            rest = ipv6_ext(next, &[], &rest);
            next = IPPROTO_DSTOPTS;
        }
        v6(next, &rest)
    };

    vec![
        fx("ipv4 tcp syn", v4(IPPROTO_TCP, &tcp4), CLASS_IPV4_TCP),
        fx("ipv4 udp", v4(IPPROTO_UDP, &udp4), CLASS_IPV4_UDP),
        fx(
            "ipv4 icmp echo",
            v4(IPPROTO_ICMP, &icmpv4(8, 0, [0, 1, 0, 1], &[0; 56])),
            CLASS_IPV4_ICMP,
        ),
        fx("ipv4 gre", v4(IPPROTO_GRE, &[0; 8]), CLASS_IPV4_OTHER),
        fx("ipv4 sctp", v4(IPPROTO_SCTP, &[0; 12]), CLASS_IPV4_OTHER),
        fx(
            "ipv4 tcp, 4 bytes of options",
            eth(ETH_P_IP, &ipv4_with(A4, B4, IPPROTO_TCP, &opts(4), &tcp4)),
            CLASS_IPV4_TCP,
        ),
        fx(
            "ipv4 udp, 40 bytes of options",
            eth(ETH_P_IP, &ipv4_with(A4, B4, IPPROTO_UDP, &opts(40), &udp4)),
            CLASS_IPV4_UDP,
        ),
        fx(
            "ipv4 options cut short",
            eth(ETH_P_IP, &ipv4_with(A4, B4, IPPROTO_TCP, &opts(40), &[]))[..14 + 30].to_vec(),
            CLASS_IPV4_OTHER,
        ),
        fx(
            "ipv4 header cut at 12 bytes",
            v4(IPPROTO_TCP, &tcp4)[..14 + 12].to_vec(),
            CLASS_IPV4_OTHER,
        ),
        fx(
            "ipv4 header only, no tcp header",
            v4(IPPROTO_TCP, &[]),
            CLASS_IPV4_TCP,
        ),
        fx("ipv4 ihl 4", ihl_small, CLASS_IPV4_OTHER),
        fx("ipv4 ethertype, version 6", wrong_version, CLASS_IPV4_OTHER),
        fx(
            "ipv4 non-first fragment of tcp",
            eth(
                ETH_P_IP,
                &ipv4_with(A4, B4, IPPROTO_TCP, &frag_later, &[0; 64]),
            ),
            CLASS_IPV4_TCP,
        ),
        fx(
            "ipv4 full-size tcp (1514 bytes)",
            v4(IPPROTO_TCP, &tcp(ips4, 1, 2, TCP_ACK, 1, 1, &[7; 1460])),
            CLASS_IPV4_TCP,
        ),
        fx("ipv6 tcp syn", v6(IPPROTO_TCP, &tcp6), CLASS_IPV6_TCP),
        fx("ipv6 udp", v6(IPPROTO_UDP, &udp6), CLASS_IPV6_UDP),
        fx(
            "ipv6 icmpv6 echo",
            v6(IPPROTO_ICMPV6, &echo6),
            CLASS_IPV6_ICMP,
        ),
        fx(
            "ipv6 neighbour solicitation",
            v6(IPPROTO_ICMPV6, &ns6),
            CLASS_IPV6_ICMP,
        ),
        fx(
            "ipv6 hop-by-hop + udp",
            v6(
                IPPROTO_HOPOPTS,
                &ipv6_ext(IPPROTO_UDP, &[5, 2, 0, 0], &udp6),
            ),
            CLASS_IPV6_UDP,
        ),
        fx(
            "ipv6 routing + tcp",
            v6(
                IPPROTO_ROUTING,
                &ipv6_ext(IPPROTO_TCP, &[0, 0, 0, 0, 0, 0], &tcp6),
            ),
            CLASS_IPV6_TCP,
        ),
        fx(
            "ipv6 first fragment + icmpv6",
            v6(
                IPPROTO_FRAGMENT,
                &ipv6_frag(IPPROTO_ICMPV6, 0, true, 7, &echo6),
            ),
            CLASS_IPV6_ICMP,
        ),
        fx(
            "ipv6 non-first fragment of tcp",
            v6(
                IPPROTO_FRAGMENT,
                &ipv6_frag(IPPROTO_TCP, 100, false, 7, &[0; 32]),
            ),
            CLASS_IPV6_TCP,
        ),
        fx(
            "ipv6 non-first fragment, next dstopts",
            v6(
                IPPROTO_FRAGMENT,
                &ipv6_frag(IPPROTO_DSTOPTS, 100, false, 7, &[0; 32]),
            ),
            CLASS_IPV6_OTHER,
        ),
        fx(
            "ipv6 hbh+dstopts+routing+frag+ah + udp",
            v6(
                IPPROTO_HOPOPTS,
                &ipv6_ext(
                    IPPROTO_DSTOPTS,
                    &[],
                    &ipv6_ext(
                        IPPROTO_ROUTING,
                        &[],
                        &ipv6_ext(
                            IPPROTO_FRAGMENT,
                            &[],
                            &ipv6_frag(IPPROTO_AH, 0, false, 1, &ipv6_ah(IPPROTO_UDP, 3, &udp6)),
                        ),
                    ),
                ),
            ),
            CLASS_IPV6_UDP,
        ),
        fx(
            "ipv6 8 extension headers + tcp",
            chain(8, IPPROTO_TCP, &tcp6),
            CLASS_IPV6_TCP,
        ),
        fx(
            "ipv6 9 extension headers + tcp",
            chain(9, IPPROTO_TCP, &tcp6),
            CLASS_IPV6_OTHER,
        ),
        fx("ipv6 esp", v6(IPPROTO_ESP, &[0; 16]), CLASS_IPV6_OTHER),
        fx(
            "ipv6 no next header",
            v6(IPPROTO_NONE, &[]),
            CLASS_IPV6_OTHER,
        ),
        fx(
            "ipv6 header cut at 30 bytes",
            v6(IPPROTO_TCP, &tcp6)[..14 + 30].to_vec(),
            CLASS_IPV6_OTHER,
        ),
        fx(
            "ipv6 hop-by-hop cut short",
            v6(IPPROTO_HOPOPTS, &ipv6_ext(IPPROTO_UDP, &[], &udp6))[..14 + 40 + 5].to_vec(),
            CLASS_IPV6_OTHER,
        ),
        fx(
            "ipv6 ethertype, version 4",
            v6_wrong_version,
            CLASS_IPV6_OTHER,
        ),
        fx(
            "arp request",
            eth(ETH_P_ARP, &arp_request(MAC_SRC, A4, B4)),
            CLASS_ARP,
        ),
        fx(
            "arp in 802.1Q",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021Q, 5)],
                ETH_P_ARP,
                &arp_request(MAC_SRC, A4, B4),
            ),
            CLASS_ARP,
        ),
        fx(
            "802.1Q ipv4 tcp",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021Q, 100)],
                ETH_P_IP,
                &ipv4(A4, B4, IPPROTO_TCP, &tcp4),
            ),
            CLASS_IPV4_TCP,
        ),
        fx(
            "QinQ ipv6 udp",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
                ETH_P_IPV6,
                &ipv6(A6, B6, IPPROTO_UDP, &udp6),
            ),
            CLASS_IPV6_UDP,
        ),
        fx(
            "QinQ (8100 outer) ipv4 icmp",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021Q, 10), (ETH_P_8021Q, 20)],
                ETH_P_IP,
                &ipv4(A4, B4, IPPROTO_ICMP, &icmpv4(8, 0, [0; 4], &[])),
            ),
            CLASS_IPV4_ICMP,
        ),
        fx(
            "three VLAN tags (Linux delivers the IPv4 inside)",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
                ETH_P_IP,
                &ipv4(A4, B4, IPPROTO_TCP, &tcp4),
            ),
            CLASS_IPV4_TCP,
        ),
        fx(
            "eight VID-0 tags, ipv6 udp",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021Q, 0); 8],
                ETH_P_IPV6,
                &ipv6(A6, B6, IPPROTO_UDP, &udp(Ips::V6(A6, B6), 1, 2, &[])),
            ),
            CLASS_IPV6_UDP,
        ),
        fx(
            "nine VLAN tags: deeper than the parser follows",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021AD, 0); 9],
                ETH_P_IP,
                &ipv4(A4, B4, IPPROTO_TCP, &tcp4),
            ),
            CLASS_VLAN_TOO_DEEP,
        ),
        fx(
            "802.1Q tag cut short",
            ethernet(MAC_DST, MAC_SRC, &[(ETH_P_8021Q, 100)], ETH_P_IP, &[])[..16].to_vec(),
            CLASS_OTHER,
        ),
        fx(
            "802.1Q ipv4 header cut",
            ethernet(
                MAC_DST,
                MAC_SRC,
                &[(ETH_P_8021Q, 100)],
                ETH_P_IP,
                &ipv4(A4, B4, IPPROTO_TCP, &tcp4),
            )[..18 + 19]
                .to_vec(),
            CLASS_IPV4_OTHER,
        ),
        fx(
            "ethernet header only, ipv4 ethertype",
            eth(ETH_P_IP, &[]),
            CLASS_IPV4_OTHER,
        ),
        fx(
            "ethernet header only, ipv6 ethertype",
            eth(ETH_P_IPV6, &[]),
            CLASS_IPV6_OTHER,
        ),
        fx("lldp", eth(0x88CC, &[0; 46]), CLASS_OTHER),
        fx("802.3 length field", eth(0x002E, &[0; 46]), CLASS_OTHER),
        fx("runt: 13 bytes", vec![0xff; 13], CLASS_OTHER),
        fx("runt: 1 byte", vec![0x45], CLASS_OTHER),
    ]
}

struct Harness {
    bpf: Ebpf,
}

impl Harness {
    fn new() -> Harness {
        let log = moat_host::loader::LogOpts {
            verbose: 2,
            verifier_log: None,
        };
        let mut bpf = moat_host::loader::open(moat_ebpf::COUNT, &log).expect("open count object");
        moat_host::loader::load_xdp(&mut bpf, PROG_XDP, &log).unwrap_or_else(|e| panic!("{e}"));
        Harness { bpf }
    }

    fn counts(&self) -> Counts {
        let arr: PerCpuArray<_, CountValue> =
            PerCpuArray::try_from(self.bpf.map(MAP_STATS).unwrap()).unwrap();
        Counts::from_percpu(
            (0..CLASS_MAX).map(|c| arr.get(&c, 0).unwrap().iter().copied().collect::<Vec<_>>()),
        )
    }

    /// Runs one frame; returns (XDP verdict, output frame) or the errno.
    fn run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), i32> {
        let prog: &mut Xdp = self.bpf.program_mut(PROG_XDP).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        });
        match r {
            Ok(r) => {
                out.truncate(r.data_size_out as usize);
                Ok((r.return_value, out))
            }
            Err(aya::programs::ProgramError::SyscallError(e)) => {
                Err(e.io_error.raw_os_error().unwrap_or(-1))
            }
            Err(e) => panic!("test_run: {e}"),
        }
    }

    /// Runs a frame and returns the class whose counter moved (exactly one
    /// packet, exactly the frame's bytes), or None if the kernel refused it.
    fn class_of(&mut self, frame: &[u8]) -> Option<u32> {
        let before = self.counts();
        let (verdict, out) = match self.run(frame) {
            Ok(v) => v,
            Err(errno) => {
                let after = self.counts();
                assert_eq!(before, after, "a refused frame must not be counted");
                assert!(
                    frame.len() < 14,
                    "kernel refused a {}-byte frame: errno {errno}",
                    frame.len()
                );
                return None;
            }
        };
        assert_eq!(
            verdict,
            XDP_PASS,
            "counter must pass every frame:\n{}",
            hex(frame)
        );
        assert_eq!(out, frame, "counter must not change the frame");
        let d = self.counts().since(&before);
        let moved: Vec<usize> = (0..CLASS_MAX as usize)
            .filter(|&c| d.0[c].packets != 0)
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "exactly one class must move, got {moved:?}:\n{}",
            hex(frame)
        );
        let c = moved[0];
        assert_eq!(d.0[c].packets, 1);
        assert_eq!(
            d.0[c].bytes,
            frame.len() as u64,
            "bytes counted for:\n{}",
            hex(frame)
        );
        Some(c as u32)
    }
}

#[test]
fn fixtures_classify_count_and_pass() {
    if !common::privileged("fixtures_classify_count_and_pass") {
        return;
    }
    let mut h = Harness::new();
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    for f in fixtures() {
        // The model must agree with the fixture table too.
        assert_eq!(
            classify(&f.frame),
            f.class,
            "reference model disagrees on fixture '{}'",
            f.what
        );
        match h.class_of(&f.frame) {
            Some(c) if c == f.class => {}
            Some(c) => failures.push(format!(
                "{}: expected {}, BPF said {}\n{}",
                f.what,
                class_name(f.class),
                class_name(c),
                hex(&f.frame)
            )),
            None => refused.push(f.what),
        }
    }
    assert!(
        failures.is_empty(),
        "fixture mismatches:\n{}",
        failures.join("\n")
    );
    // Runts below 14 bytes never reach XDP on a real interface; the kernel's
    // test runner refuses them (EINVAL), which class_of checked. Anything else
    // refused is a failure.
    for r in &refused {
        assert!(r.starts_with("runt"), "kernel refused fixture {r}");
    }
    eprintln!(
        "{} fixtures passed ({} runts refused by BPF_PROG_TEST_RUN)",
        fixtures().len(),
        refused.len()
    );
}

/// Random frames, structured and mangled: the BPF parser and the reference
/// model must agree on every one.
#[test]
fn random_frames_match_reference_model() {
    if !common::privileged("random_frames_match_reference_model") {
        return;
    }
    let seed: u64 = std::env::var("MOAT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d6f6174);
    let n: usize = std::env::var("MOAT_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut h = Harness::new();
    let base = fixtures();
    let mut checked = 0;
    let mut seen = [0usize; CLASS_MAX as usize];
    for i in 0..n {
        let mut f = if rng.gen_bool(0.5) {
            random_frame(&mut rng)
        } else {
            base[rng.gen_range(0..base.len())].frame.clone()
        };
        // Mangle: flip bytes in the headers, cut the frame.
        for _ in 0..rng.gen_range(0..3) {
            if !f.is_empty() {
                let at = rng.gen_range(0..f.len().min(120));
                f[at] = rng.r#gen();
            }
        }
        if rng.gen_bool(0.3) && f.len() > 14 {
            let cut = rng.gen_range(14..=f.len());
            f.truncate(cut);
        }
        let want = classify(&f);
        if let Some(got) = h.class_of(&f) {
            assert_eq!(
                got,
                want,
                "frame {i} (seed {seed}): BPF says {}, model says {}\n{}",
                class_name(got),
                class_name(want),
                hex(&f)
            );
            checked += 1;
            seen[got as usize] += 1;
        }
    }
    let dist: Vec<String> = seen
        .iter()
        .enumerate()
        .map(|(c, k)| format!("{}={k}", class_name(c as u32)))
        .collect();
    eprintln!(
        "{checked} random frames agreed (seed {seed}): {}",
        dist.join(" ")
    );
    assert!(checked > n * 9 / 10);
    assert!(
        seen.iter().all(|&k| k > 0),
        "the generator must reach every class: {dist:?}"
    );
}

fn random_frame(rng: &mut SmallRng) -> Vec<u8> {
    let vlans: Vec<(u16, u16)> = (0..rng.gen_range(0..=10))
        .map(|_| {
            (
                if rng.gen_bool(0.5) {
                    ETH_P_8021Q
                } else {
                    ETH_P_8021AD
                },
                rng.gen_range(0..4096),
            )
        })
        .collect();
    let l4_protos = [
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_ICMP,
        IPPROTO_ICMPV6,
        IPPROTO_GRE,
        IPPROTO_ESP,
        IPPROTO_NONE,
    ];
    let exts = [
        IPPROTO_HOPOPTS,
        IPPROTO_ROUTING,
        IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT,
        IPPROTO_AH,
        135,
        139,
        140,
    ];
    let l4: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.r#gen()).collect();
    let (ethertype, payload) = match rng.gen_range(0..5) {
        0 => {
            let o = V4Opts {
                options: vec![1; 4 * rng.gen_range(0..=10)],
                frag_offset: if rng.gen_bool(0.2) { 10 } else { 0 },
                ..Default::default()
            };
            (
                ETH_P_IP,
                ipv4_with(
                    A4,
                    B4,
                    l4_protos[rng.gen_range(0..l4_protos.len())],
                    &o,
                    &l4,
                ),
            )
        }
        1 | 2 => {
            let mut rest = l4;
            let mut next = l4_protos[rng.gen_range(0..l4_protos.len())];
            for _ in 0..rng.gen_range(0..=10) {
                let e = exts[rng.gen_range(0..exts.len())];
                rest = match e {
                    IPPROTO_FRAGMENT => ipv6_frag(
                        next,
                        if rng.gen_bool(0.3) {
                            rng.gen_range(1..8191)
                        } else {
                            0
                        },
                        rng.r#gen(),
                        rng.r#gen(),
                        &rest,
                    ),
                    IPPROTO_AH => ipv6_ah(next, rng.gen_range(0..6), &rest),
                    _ => {
                        let body: Vec<u8> = vec![0; rng.gen_range(0..30)];
                        ipv6_ext(next, &body, &rest)
                    }
                };
                next = e;
            }
            (ETH_P_IPV6, ipv6(A6, B6, next, &rest))
        }
        3 => (ETH_P_ARP, arp_request(MAC_SRC, A4, B4)),
        _ => (rng.r#gen(), l4),
    };
    ethernet(MAC_DST, MAC_SRC, &vlans, ethertype, &payload)
}
