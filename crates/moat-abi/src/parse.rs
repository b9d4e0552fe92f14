//! Parser limits shared with `bpf/common/parse.h`.

/// 802.1Q/802.1ad tags skipped before the ethertype is read.
pub const MAX_VLAN_DEPTH: usize = 8;
/// IPv6 extension headers walked before giving up.
pub const MAX_IPV6_EXTHDRS: usize = 8;
