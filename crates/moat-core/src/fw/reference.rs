//! The reference classifier: the policy's semantics stated naively, rule by
//! rule, with no precomputation. It exists to be obviously right; the
//! compiler and the BPF program are tested against it.
//!
//! A first packet is denied if any deny rule selects it, else allowed if any
//! allow rule selects it, else given its direction's default. The deciding
//! rule is the first such rule in file order.

use super::{Decision, Flow, policy::Action, policy::Policy, policy::Rule};

/// Does `rule` select `flow`?
pub fn selects(rule: &Rule, flow: &Flow) -> bool {
    if rule.direction != flow.dir {
        return false;
    }
    let in_remote = match &rule.remote {
        None => true,
        Some(list) => list.iter().any(|c| c.contains(flow.remote)),
    };
    if !in_remote || rule.except.iter().any(|c| c.contains(flow.remote)) {
        return false;
    }
    rule.selects_l4(flow.proto, flow.port)
}

/// The verdict for a connection's first packet.
pub fn decide(policy: &Policy, flow: &Flow) -> Decision {
    for wanted in [Action::Deny, Action::Allow] {
        for (i, r) in policy.rules.iter().enumerate() {
            if r.action == wanted && selects(r, flow) {
                return Decision {
                    action: wanted,
                    rule: Some(i),
                };
            }
        }
    }
    Decision {
        action: policy.default_for(flow.dir),
        rule: None,
    }
}
