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

/// Moves every conntrack entry's last-seen stamp `secs` into the past.
fn age_conntrack(inst: &mut FwInstance, secs: u64) -> usize {
    let mut ct: BpfHashMap<_, FwCtKey, FwCtVal> =
        BpfHashMap::try_from(inst.bpf.map_mut(abi::MAP_CT).unwrap()).unwrap();
    let entries: Vec<(FwCtKey, FwCtVal)> = ct.iter().filter_map(Result::ok).collect();
    for (k, mut v) in entries.iter().copied() {
        v.last_seen_ns = v
            .last_seen_ns
            .checked_sub(secs * 1_000_000_000)
            .expect("the machine has been up longer than the timeout");
        ct.insert(k, v, 0).unwrap();
    }
    entries.len()
}

#[test]
fn idle_connections_expire_and_replies_are_judged_again() {
    if !common::privileged("idle_connections_expire_and_replies_are_judged_again") {
        return;
    }
    moat_host::sys::ensure_bpffs().unwrap();
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/moat-ctstate-{}",
        std::process::id()
    )));
    let p = policy::parse(
        "default: { ingress: deny, egress: allow }\nconntrack: { udp_timeout: 20s, tcp_timeout: 1m }\nrules: []\n",
        Path::new("ct.yaml"),
    )
    .unwrap();
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
        let r = inst.run(Dir::Ingress, &reply).unwrap();
        assert!(
            r.passed && reason(r) == "pass_established",
            "the reply of a tracked connection passes"
        );
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
