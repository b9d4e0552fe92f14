//! The firewall's real BPF programs against the reference classifier:
//! random policies (moat-core::fw::random), random first packets, verdict
//! and deciding rule compared for every packet through BPF_PROG_TEST_RUN.
//! CI: 300 policies x 350 packets. By hand: MOAT_SEED, MOAT_POLICIES,
//! MOAT_PACKETS.

mod common;

use std::path::{Path, PathBuf};

use moat_core::fw::{
    Action, Decision, Flow, Policy, compile::compile, frame_for, policy, random, reference,
};
use moat_host::{
    fw::instance::{FwInstance, Sizes},
    loader::LogOpts,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the BPF program decided for one flow.
fn bpf_decision(
    p: &Policy,
    pins: &Path,
    generation: u32,
    flow: &Flow,
    sport: u16,
) -> (bool, Option<u32>) {
    let c = compile(p);
    let mut inst = FwInstance::load(
        p,
        &c,
        generation,
        pins,
        &LogOpts::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    inst.clear_state().unwrap();
    let r = inst.run(flow.dir, &frame_for(flow, sport)).unwrap();
    (r.passed, r.rule)
}

fn agrees(want: &Decision, passed: bool, rule: Option<u32>) -> bool {
    passed == (want.action == Action::Allow) && rule == Some(want.rule.map_or(0, |r| r as u32 + 1))
}

/// Removes rules while the mismatch persists; returns the smallest policy.
fn minimize(mut p: Policy, pins: &Path, flow: &Flow, sport: u16) -> Policy {
    let mut i = 0;
    while i < p.rules.len() {
        let mut q = p.clone();
        q.rules.remove(i);
        let want = reference::decide(&q, flow);
        let (passed, rule) = bpf_decision(&q, pins, 1, flow, sport);
        if !agrees(&want, passed, rule) {
            p = q;
        } else {
            i += 1;
        }
    }
    p
}

#[test]
fn bpf_verdicts_equal_reference_on_random_policies() {
    if !common::privileged("bpf_verdicts_equal_reference_on_random_policies") {
        return;
    }
    moat_host::sys::ensure_bpffs().unwrap();
    let seed = env("MOAT_SEED", 0x66_77);
    let policies = env("MOAT_POLICIES", 300);
    let packets = env("MOAT_PACKETS", 350);
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/moat-difftest-{}",
        std::process::id()
    )));
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut total = 0u64;
    let (mut allowed, mut denied, mut by_rule) = (0u64, 0u64, 0u64);
    // One instance, refilled per policy (loading costs a verification).
    let empty = policy::parse("rules: []", Path::new("empty.yaml")).unwrap();
    let cap = Sizes {
        addr4: 4096,
        addr6: 4096,
        host4: 4096,
        host6: 4096,
        verdict: 65536,
        ports: 65536,
        rules: 64,
        dense: moat_abi::fw::DENSE_SLOTS,
        hostbits: 1024,
    };
    let mut inst = FwInstance::load_with_capacity(
        &empty,
        &compile(&empty),
        1,
        &pins.0,
        &LogOpts::default(),
        &mut |_, _, _| {},
        &cap,
    )
    .unwrap_or_else(|e| panic!("loading fw: {e:#}"));
    for n in 0..policies {
        let yaml = random::policy_yaml(&mut rng);
        let p = policy::parse(&yaml, Path::new("random.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let c = compile(&p);
        inst.refill(&p, &c, n as u32 + 2)
            .unwrap_or_else(|e| panic!("filling policy {n}: {e:#}\n{yaml}"));
        inst.clear_state().unwrap();
        for _ in 0..packets {
            let flow = random::flow(&mut rng);
            let sport: u16 = rng.gen_range(1024..=65535);
            let want = reference::decide(&p, &flow);
            let r = inst.run(flow.dir, &frame_for(&flow, sport)).unwrap();
            if !agrees(&want, r.passed, r.rule) {
                let min = minimize(p.clone(), &pins.0, &flow, sport);
                panic!(
                    "mismatch (seed {seed}, policy {n}): reference {:?} (rule {:?}), BPF passed={} rule id {:?} reason {:?}\n\
                     flow: {flow:?} sport {sport}\nminimal policy: default ingress {:?} egress {:?}\n{:#?}\nfull policy:\n{yaml}",
                    want.action,
                    want.rule.map(|i| &p.rules[i].name),
                    r.passed,
                    r.rule,
                    r.reason.map(|i| moat_abi::fw::STAT_NAMES[i as usize]),
                    min.default_ingress,
                    min.default_egress,
                    min.rules
                );
            }
            if r.passed {
                allowed += 1;
                inst.clear_state().unwrap();
            } else {
                denied += 1;
            }
            if want.rule.is_some() {
                by_rule += 1;
            }
            total += 1;
        }
    }
    eprintln!(
        "{total} packets over {policies} policies agreed (seed {seed}): {allowed} allowed, {denied} denied, {by_rule} decided by a rule"
    );
    assert!(
        allowed > total / 10 && denied > total / 10,
        "the generator must exercise both verdicts"
    );
    assert!(
        by_rule > total / 10,
        "the generator must exercise rules, not only defaults"
    );
}
