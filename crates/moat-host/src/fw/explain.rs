//! `moat fw explain` as an operation: one packet through the real BPF program
//! (BPF_PROG_TEST_RUN on a private instance, so live state is not touched)
//! and through the reference model.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use moat_abi::fw as abi;
use moat_core::fw::{Decision, Dir, Flow, Policy, encode::RuleId, flowspec::FlowSpec, reference};

use super::{
    apply::load_policy,
    instance::FwInstance,
    state::{Paths, read_state_file},
};
use crate::{loader::LogOpts, sys};

/// What the BPF program and the reference model said about one packet.
#[derive(Clone, Debug)]
pub struct ExplainReport {
    pub policy_path: PathBuf,
    pub policy: Policy,
    pub dir: Dir,
    pub flow: Flow,
    /// The program that ran (fw_xdp or fw_tc_egress).
    pub program: &'static str,
    pub bpf_passed: bool,
    /// The rule whose counter moved: Some(None) = the default; None = none moved.
    pub bpf_rule: Option<Option<usize>>,
    /// The FW_STAT_* reason name, "?" if no reason counter moved.
    pub bpf_reason: &'static str,
    pub return_value: u32,
    pub reference: Decision,
}

impl ExplainReport {
    pub fn agree(&self) -> bool {
        self.bpf_passed == (self.reference.action == moat_core::fw::Action::Allow)
            && self.bpf_rule == Some(self.reference.rule)
    }
}

/// Explains `spec` under `policy` (default: the applied policy's file).
pub fn explain_at(
    paths: &Paths,
    policy: Option<&Path>,
    spec: &FlowSpec,
    egress: bool,
    log: &LogOpts,
) -> Result<ExplainReport> {
    let policy_path = match policy {
        Some(p) => p.to_path_buf(),
        None => read_state_file(paths)
            .state()
            .map(|s| s.policy.clone())
            .ok_or_else(|| anyhow!("no policy applied: give -f POLICY"))?,
    };
    let (p, c) = load_policy(&policy_path)?;
    sys::require_privileges("moat fw explain (it runs the BPF program)")?;
    sys::ensure_bpffs()?;
    let dir = if egress { Dir::Egress } else { Dir::Ingress };
    let flow = Flow {
        dir,
        remote: if egress { spec.dst } else { spec.src },
        proto: spec.proto,
        port: spec.port,
    };
    let reference = reference::decide(&p, &flow);

    // A private instance: its own conntrack, removed afterwards.
    let pin_root = paths
        .pins
        .parent()
        .unwrap_or(Path::new("/sys/fs/bpf"))
        .to_path_buf();
    let private = pin_root.join(format!("explain-{}", std::process::id()));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            if let Some(parent) = self.0.parent() {
                let _ = std::fs::remove_dir(parent); // only if empty
            }
        }
    }
    let _cleanup = Cleanup(private.clone());
    let mut inst = FwInstance::load(&p, &c, 1, &private, log, &mut |_, _, _| {})?;
    let frame = moat_core::fw::frame_between(spec.src, spec.dst, spec.proto, spec.sport, spec.port);
    let r = inst.run(dir, &frame)?;
    Ok(ExplainReport {
        policy_path,
        policy: p,
        dir,
        flow,
        program: if egress { abi::PROG_TC } else { abi::PROG_XDP },
        bpf_passed: r.passed,
        bpf_rule: r.rule.map(|id| RuleId(id).rule_index()),
        bpf_reason: r.reason.map_or("?", |i| abi::STAT_NAMES[i as usize]),
        return_value: r.return_value,
        reference,
    })
}
