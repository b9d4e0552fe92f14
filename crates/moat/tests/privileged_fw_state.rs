//! Connection-tracking state through BPF_PROG_TEST_RUN on a private
//! firewall instance: replies of tracked connections, and expiry of idle
//! entries (an idle entry must not keep a door open).

mod common;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::HashMap as BpfHashMap;
use moat_abi::fw::{self as abi, FwCtKey, FwCtVal};
use moat_core::fw::{Dir, compile::compile, frame_between, policy};
use moat_host::{fw::instance::FwInstance, loader::LogOpts};

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private firewall instance of `yaml` with empty state; its pins go
/// with the returned guard.
fn private_instance(name: &str, yaml: &str) -> (PinDir, FwInstance) {
    moat_host::sys::ensure_bpffs().unwrap();
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/moat-{name}-{}",
        std::process::id()
    )));
    let p = policy::parse(yaml, Path::new("state.yaml")).unwrap();
    let mut inst = FwInstance::load(
        &p,
        &compile(&p),
        1,
        &pins.0,
        &LogOpts::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    inst.clear_state().unwrap();
    (pins, inst)
}

/// Moves every conntrack entry's last-seen stamp `secs` into the past.
fn age_conntrack(inst: &mut FwInstance, secs: u64) -> usize {
    let mut n = 0;
    for t in moat_host::fw::instance::CT_TABLES {
        let mut ct: BpfHashMap<_, FwCtKey, FwCtVal> =
            BpfHashMap::try_from(inst.bpf.map_mut(t).unwrap()).unwrap();
        let entries: Vec<(FwCtKey, FwCtVal)> = ct.iter().filter_map(Result::ok).collect();
        for (k, mut v) in entries.iter().copied() {
            v.last_seen_ns = v
                .last_seen_ns
                .checked_sub(secs * 1_000_000_000)
                .expect("the machine has been up longer than the timeout");
            ct.insert(k, v, 0).unwrap();
        }
        n += entries.len();
    }
    n
}

#[test]
fn idle_connections_expire_and_replies_are_judged_again() {
    if !common::privileged("idle_connections_expire_and_replies_are_judged_again") {
        return;
    }
    let (_pins, mut inst) = private_instance(
        "ctstate",
        "default: { ingress: deny, egress: allow }\nconntrack: { udp_timeout: 20s, tcp_timeout: 1m, tcp_syn_sent_timeout: 1m }\nrules: []\n",
    );
    let local: IpAddr = "100.64.0.1".parse().unwrap();
    let remote: IpAddr = "192.0.2.9".parse().unwrap();
    // Timeouts below the uptime of any machine that got this far (the stamps
    // are moved into the past on the monotonic clock, which starts at boot).
    for (proto, timeout) in [(17u8, 20u64), (6, 60)] {
        let out = frame_between(local, remote, proto, 40000, 53);
        let reply = frame_between(remote, local, proto, 53, 40000);
        let reason =
            |r: moat_host::fw::instance::RunResult| abi::STAT_NAMES[r.reason.unwrap() as usize];
        assert!(
            inst.run(Dir::Egress, &out).unwrap().passed,
            "egress allowed by default"
        );
        let key = inst.ct_keys().unwrap()[0];
        assert!(
            !inst.ct_get(&key).unwrap().unwrap().1,
            "one-sided: not assured yet"
        );
        let r = inst.run(Dir::Ingress, &reply).unwrap();
        assert!(
            r.passed && reason(r) == "pass_established",
            "the reply of a tracked connection passes"
        );
        let (v, assured) = inst.ct_get(&key).unwrap().unwrap();
        assert_eq!(v.replied, 1);
        // UDP seen both ways is assured; a TCP connection only once its
        // handshake is through (here: a SYN answered by a bare segment).
        assert_eq!(
            assured,
            proto == 17,
            "assured after the reply (proto {proto}, state {})",
            v.tcp_state
        );
        assert_eq!(inst.ct_entries().unwrap(), 1, "moved, not copied");
        // The presence filter counts the entry in the slot Rust computes for
        // its key, and in no other (the reply did not count it again).
        let seen = inst.ct_keys_seen().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, 1, "fw_ctseen slot of the tracked connection");
        assert_eq!(inst.ctseen_nonzero().unwrap(), 1);
        // Idle for a bit less than the timeout: still tracked.
        assert_eq!(age_conntrack(&mut inst, timeout - 10), 1);
        let r = inst.run(Dir::Ingress, &reply).unwrap();
        assert!(
            r.passed,
            "within the timeout the entry holds (proto {proto})"
        );
        // Idle for longer than the timeout: forgotten, the reply is a first packet.
        assert_eq!(age_conntrack(&mut inst, timeout + 10), 1);
        let expired_before = inst.stats().unwrap()[abi::STAT_CT_EXPIRED as usize].packets;
        let r = inst.run(Dir::Ingress, &reply).unwrap();
        assert!(
            !r.passed && reason(r) == "drop_default",
            "an expired entry must not let the reply in (proto {proto})"
        );
        assert_eq!(
            inst.stats().unwrap()[abi::STAT_CT_EXPIRED as usize].packets,
            expired_before + 1
        );
        assert_eq!(age_conntrack(&mut inst, 0), 0, "the expired entry is gone");
        assert_eq!(
            inst.ctseen_nonzero().unwrap(),
            0,
            "deleting the entry brought its presence slot back to 0"
        );
        inst.clear_state().unwrap();
    }
}

/// The TCP state of the only conntrack entry (None if there is none).
fn tcp_state(inst: &mut FwInstance) -> Option<&'static str> {
    let all: Vec<FwCtVal> = inst
        .ct_keys()
        .unwrap()
        .iter()
        .filter_map(|k| inst.ct_get(k).unwrap())
        .map(|(v, _)| v)
        .collect();
    assert!(all.len() <= 1, "{} entries", all.len());
    all.first()
        .map(|v| abi::TCP_STATE_NAMES[v.tcp_state as usize])
}

/// A whole TCP connection's life through the real programs: states follow
/// SYN, SYN+ACK, ACK, FIN, FIN, ACK; the closed tuple admits nothing, so the
/// peer reusing it in the other direction (the port-reuse hole of loose
/// tracking) is judged by the policy and denied; RST closes at once; a
/// TIME_WAIT entry expires with its own timeout.
#[test]
fn tcp_states_follow_the_connection_and_a_closed_tuple_admits_nothing() {
    use moat_core::packet::*;
    use std::net::Ipv4Addr;
    if !common::privileged("tcp_states_follow_the_connection_and_a_closed_tuple_admits_nothing") {
        return;
    }
    let (_pins, mut inst) = private_instance(
        "tcpstate",
        "default: { ingress: deny, egress: allow }\nconntrack: { tcp_time_wait_timeout: 20s }\nrules: []\n",
    );
    let local = Ipv4Addr::new(100, 64, 0, 1);
    let remote = Ipv4Addr::new(192, 0, 2, 9);
    let out = |flags: u8| {
        eth(
            ETH_P_IP,
            &ipv4(
                local,
                remote,
                IPPROTO_TCP,
                &tcp(Ips::V4(local, remote), 46000, 5555, flags, 1, 1, &[]),
            ),
        )
    };
    let inn = |flags: u8| {
        eth(
            ETH_P_IP,
            &ipv4(
                remote,
                local,
                IPPROTO_TCP,
                &tcp(Ips::V4(remote, local), 5555, 46000, flags, 1, 1, &[]),
            ),
        )
    };
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    let reason =
        |r: moat_host::fw::instance::RunResult| abi::STAT_NAMES[r.reason.unwrap() as usize];
    // (what, direction, frame, passes, state after)
    type Step<'a> = (&'a str, Dir, Vec<u8>, bool, Option<&'a str>);
    let steps: [Step; 8] = [
        ("our SYN", Dir::Egress, out(TCP_SYN), true, Some("syn_sent")),
        (
            "their SYN+ACK",
            Dir::Ingress,
            inn(TCP_SYN | ACK),
            true,
            Some("syn_recv"),
        ),
        ("our ACK", Dir::Egress, out(ACK), true, Some("established")),
        (
            "data from them",
            Dir::Ingress,
            inn(ACK),
            true,
            Some("established"),
        ),
        (
            "our FIN",
            Dir::Egress,
            out(FIN | ACK),
            true,
            Some("fin_wait"),
        ),
        (
            "their FIN",
            Dir::Ingress,
            inn(FIN | ACK),
            true,
            Some("last_ack"),
        ),
        (
            "our last ACK",
            Dir::Egress,
            out(ACK),
            true,
            Some("time_wait"),
        ),
        // The peer opens a new connection on the closed tuple, the other way
        // round: judged as new, and the ingress default denies it.
        (
            "their SYN on the closed tuple",
            Dir::Ingress,
            inn(TCP_SYN),
            false,
            None,
        ),
    ];
    for (what, dir, frame, pass, state) in steps {
        let r = inst.run(dir, &frame).unwrap();
        assert_eq!(r.passed, pass, "{what}: {}", reason(r));
        assert_eq!(tcp_state(&mut inst), state, "state after {what}");
    }
    // RST closes; a closed tuple admits nothing either (not even our ACK,
    // which is judged as new and picked up only because egress allows it).
    inst.clear_state().unwrap();
    assert!(inst.run(Dir::Egress, &out(TCP_SYN)).unwrap().passed);
    assert!(inst.run(Dir::Ingress, &inn(TCP_SYN | ACK)).unwrap().passed);
    assert!(inst.run(Dir::Ingress, &inn(RST)).unwrap().passed);
    assert_eq!(tcp_state(&mut inst), Some("close"));
    let r = inst.run(Dir::Ingress, &inn(ACK)).unwrap();
    assert!(
        !r.passed && reason(r) == "drop_default",
        "after RST their packets are new: {}",
        reason(r)
    );
    assert_eq!(tcp_state(&mut inst), None, "the closed entry is forgotten");
    // A connection picked up mid-stream (no SYN seen) starts established,
    // and only where the policy allows it as new.
    let r = inst.run(Dir::Egress, &out(ACK)).unwrap();
    assert!(r.passed);
    assert_eq!(tcp_state(&mut inst), Some("established"));
    inst.clear_state().unwrap();
    let r = inst.run(Dir::Ingress, &inn(ACK)).unwrap();
    assert!(
        !r.passed,
        "an ingress mid-stream packet the policy denies is not picked up"
    );
    // TIME_WAIT expires with its own timeout (20 s here), not the 5 days of established.
    inst.clear_state().unwrap();
    for f in [
        out(TCP_SYN),
        inn(TCP_SYN | ACK),
        out(ACK),
        out(FIN | ACK),
        inn(FIN | ACK),
        out(ACK),
    ] {
        let dir = if f[26..30] == local.octets() {
            Dir::Egress
        } else {
            Dir::Ingress
        };
        assert!(inst.run(dir, &f).unwrap().passed);
    }
    assert_eq!(tcp_state(&mut inst), Some("time_wait"));
    age_conntrack(&mut inst, 25);
    let r = inst.run(Dir::Ingress, &inn(ACK)).unwrap();
    assert!(
        !r.passed,
        "after its TIME_WAIT timeout the tuple is forgotten: {}",
        reason(r)
    );
}
