//! The firewall's pure logic: the policy language ([`policy`]), the compiler
//! that turns a policy into BPF map entries ([`compile`]), and the reference
//! classifier that states the semantics naively, rule by rule ([`reference`]).
//! The compiler and the reference share no code but the policy model.

pub mod addr;
pub mod compile;
pub mod policy;
pub mod random;
pub mod reference;

pub use addr::Cidr;
pub use policy::{Action, Dir, Policy, PolicyError, Proto, Rule};

/// A new connection's first packet, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub dir: Dir,
    /// The peer: source on ingress, destination on egress.
    pub remote: std::net::IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// tcp/udp: destination port; icmp/icmpv6: type << 8 | code; else 0.
    pub port: u16,
}

/// A verdict and the rule that decided it (`None`: the direction's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Index into `Policy::rules`.
    pub rule: Option<usize>,
}
