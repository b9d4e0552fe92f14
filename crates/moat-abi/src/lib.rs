//! Rust mirror of `bpf/common/abi.h`.
//!
//! Every struct that crosses the kernel/user boundary is declared here with the
//! same field names, `#[repr(C)]` and explicit padding. Every program and map
//! name exists once here and once in C. The test `abi_matches_objects` in
//! `moat-ebpf` checks this file against the compiled objects.

/// Longest name the kernel keeps for a program or a map (it cuts the rest).
pub const BPF_OBJ_NAME_MAX: usize = 15;

pub mod count;

pub mod fw;

pub mod lb;

pub mod parse;
pub mod sec;

/// Layout of one struct crossing the kernel/user boundary: its C name, size
/// and every field with its byte offset, in declaration order. Checked
/// against the BTF of the compiled objects (moat-ebpf's objects test), so a
/// reordered, resized or missing field fails without root.
pub struct StructLayout {
    pub c_name: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize)],
}

macro_rules! layout {
    ($c:literal, $t:ty, [$($f:ident),* $(,)?]) => {
        StructLayout {
            c_name: $c,
            size: core::mem::size_of::<$t>(),
            fields: &[$((stringify!($f), core::mem::offset_of!($t, $f))),*],
        }
    };
}

pub const LAYOUTS: &[StructLayout] = &[
    layout!("count_value", count::CountValue, [packets, bytes]),
    layout!("fw_addr4_key", fw::FwAddr4Key, [prefixlen, addr]),
    layout!("fw_addr6_key", fw::FwAddr6Key, [prefixlen, addr]),
    layout!(
        "fw_class",
        fw::FwClass,
        [class_id, block_rule, block_flags, pad]
    ),
    layout!(
        "fw_verdict_key",
        fw::FwVerdictKey,
        [prefixlen, class_id, dir, proto, port]
    ),
    layout!(
        "fw_port_key",
        fw::FwPortKey,
        [class_id, dir, proto, plen, pad, port, pad2]
    ),
    layout!("fw_verdict", fw::FwVerdict, [rule, action, flags, pad]),
    layout!(
        "fw_config",
        fw::FwConfig,
        [
            generation,
            default_ingress,
            default_egress,
            maps,
            pad,
            timeout_tcp,
            timeout_udp,
            timeout_other,
            ev_sample,
            ev_cost_ns,
            ev_cap_ns,
            flow_cost_ns,
            flow_cap_ns,
            log_drops,
            pad2,
            tcp_timeouts,
            any4,
            any6,
            dense_class,
            hostbits_mask,
            maps2,
            pad3
        ]
    ),
    layout!(
        "fw_ct_key",
        fw::FwCtKey,
        [local, remote, lport, rport, proto, family, pad]
    ),
    layout!(
        "fw_ct_val",
        fw::FwCtVal,
        [
            first_seen_ns,
            last_seen_ns,
            packets,
            bytes,
            generation,
            rule,
            port0,
            dir0,
            flags,
            ifindex,
            tcp_state,
            replied,
            pad
        ]
    ),
    layout!("fw_flow_slot", fw::FwFlowSlot, [key, val]),
    layout!("fw_line", fw::FwLine, [slot]),
    layout!(
        "fw_flow_val",
        fw::FwFlowVal,
        [
            first_seen_ns,
            last_seen_ns,
            packets,
            bytes,
            rule,
            ifindex,
            reason,
            dir,
            pad
        ]
    ),
    layout!("fw_bucket", fw::FwBucket, [last_ns, credit_ns]),
    layout!(
        "fw_evstate",
        fw::FwEvstate,
        [ev, flow, seq, clock_jiffies, clock_ns, handoff]
    ),
    layout!(
        "fw_event",
        fw::FwEvent,
        [
            ts_ns, ifindex, rule, pkt_len, cap_len, kind, reason, dir, pad, data
        ]
    ),
    layout!(
        "fw_frag_key",
        fw::FwFragKey,
        [src, dst, id, proto, family, pad]
    ),
    layout!("lb_vip_key", lb::LbVipKey, [addr, port, proto, family]),
    layout!(
        "lb_vip",
        lb::LbVip,
        [svc, table_off, mode, hash, flags, pad]
    ),
    layout!(
        "lb_backend",
        lb::LbBackend,
        [addr, port, family, state, svc, weight, flags]
    ),
    layout!(
        "lb_svc",
        lb::LbSvc,
        [name, vip, port, proto, family, mode, hash, used, pad]
    ),
    layout!(
        "lb_ct_key",
        lb::LbCtKey,
        [client, vip, cport, vport, proto, family, pad]
    ),
    layout!("lb_bcount", lb::LbBcount, [packets, bytes, conns, pad]),
    layout!(
        "lb_ct_val",
        lb::LbCtVal,
        [last_ns, slot, svc, backend, bport, closing, pad]
    ),
    layout!(
        "lb_rev_key",
        lb::LbRevKey,
        [backend, client, bport, cport, proto, family, pad]
    ),
    layout!("lb_rev_val", lb::LbRevVal, [vip, vport, pad]),
    layout!("lb_back", lb::LbBack, [vip, vport, flags, pad, svc]),
    layout!("sec_xid", sec::SecXid, [ns, pid, pad]),
    layout!(
        "sec_proc",
        sec::SecProc,
        [
            xid, parent, ppid, uid, gid, flags, cgroup, bin, notbin, anc, selfanc, comm, binary
        ]
    ),
    layout!("sec_inode", sec::SecInode, [ino, dev, pad]),
    layout!("sec_path_key", sec::SecPathKey, [prefixlen, path]),
    layout!("sec_masks", sec::SecMasks, [bin, notbin, anc, pad]),
    layout!("sec_net4_key", sec::SecNet4Key, [prefixlen, addr]),
    layout!("sec_net6_key", sec::SecNet6Key, [prefixlen, addr]),
    layout!("sec_net", sec::SecNet, [remote, remote_not]),
    layout!(
        "sec_guard",
        sec::SecGuard,
        [
            op,
            need_bin,
            need_anc,
            need_cg,
            need_memfd,
            need_tty,
            need_remote,
            need_port,
            deny,
            kill,
            cg_id,
            cg_level
        ]
    ),
    layout!(
        "sec_rule_stat",
        sec::SecRuleStat,
        [matched, acted, events, lost]
    ),
    layout!("sec_stat", sec::SecStat, [seen, matched, lost, pad]),
    layout!("sec_config", sec::SecConfig, [flags, pad]),
    layout!(
        "sec_event",
        sec::SecEvent,
        [
            kind, pid, tid, ppid, xid, parent, ktime, cgroup, uid, gid, exit_code, signal,
            args_len, flags, comm, binary, args, rule, action, family, port, addr, arg0, arg1
        ]
    ),
    layout!(
        "lb_config",
        lb::LbConfig,
        [table_size, generation, udp_idle_ns, tcp_idle_ns]
    ),
];

/// Every (kind, name, key size, value size) the objects must contain.
/// Programs have no sizes.
pub struct MapAbi {
    pub object: &'static str,
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
}

/// Every map shared with userspace.
pub const MAPS: &[MapAbi] = &[
    map::<count::CountKey, count::CountValue>("count", count::MAP_STATS),
    map::<fw::FwAddr4Key, fw::FwClass>("fw", fw::MAP_ADDR4),
    map::<fw::FwAddr6Key, fw::FwClass>("fw", fw::MAP_ADDR6),
    map::<fw::FwVerdictKey, fw::FwVerdict>("fw", fw::MAP_VERDICT),
    map::<[u8; 4], fw::FwClass>("fw", fw::MAP_HOST4),
    map::<[u8; 16], fw::FwClass>("fw", fw::MAP_HOST6),
    map::<fw::FwPortKey, fw::FwVerdict>("fw", fw::MAP_PORTS),
    map::<u32, fw::FwConfig>("fw", fw::MAP_CONFIG),
    map::<u32, u64>("fw", fw::MAP_DENSE),
    map::<u32, u64>("fw", fw::MAP_HOSTBITS),
    map::<fw::FwCtKey, fw::FwCtVal>("fw", fw::MAP_CT),
    map::<fw::FwCtKey, fw::FwCtVal>("fw", fw::MAP_CT_ASSURED),
    map::<fw::FwFragKey, u32>("fw", fw::MAP_FRAG),
    map::<u32, count::CountValue>("fw", fw::MAP_RULE_STATS),
    map::<u32, count::CountValue>("fw", fw::MAP_STATS),
    map::<u32, fw::FwFlowSlot>("fw", fw::MAP_FLOWS),
    map::<u32, fw::FwLine>("fw", fw::MAP_FLOWTAGS),
    map::<(), ()>("fw", fw::MAP_EVENTS),
    map::<u32, fw::FwEvstate>("fw", fw::MAP_EVSTATE),
    map::<u32, u64>("fw", fw::MAP_EVSTATS),
    map::<u32, count::CountValue>("fw", fw::MAP_IFSTATS),
    map::<u32, fw::FwLine>("fw", fw::MAP_CTSEEN),
    map::<u32, u64>("fw", fw::MAP_GEN),
    map::<u32, u32>("fw", fw::MAP_NEXT),
    map::<lb::LbVipKey, lb::LbVip>("lb", lb::MAP_VIPS),
    map::<u32, u32>("lb", lb::MAP_MAGLEV),
    map::<u32, lb::LbBackend>("lb", lb::MAP_BACKENDS),
    map::<u32, lb::LbSvc>("lb", lb::MAP_SVCS),
    map::<lb::LbCtKey, lb::LbCtVal>("lb", lb::MAP_CT),
    map::<lb::LbRevKey, lb::LbRevVal>("lb", lb::MAP_REV),
    map::<u32, count::CountValue>("lb", lb::MAP_STATS),
    map::<u32, lb::LbBcount>("lb", lb::MAP_BSTATS),
    map::<u32, count::CountValue>("lb", lb::MAP_SSTATS),
    map::<u32, lb::LbConfig>("lb", lb::MAP_CONFIG),
    map::<lb::LbVipKey, lb::LbBack>("lb", lb::MAP_BACK),
    map::<u32, u32>("lb", lb::MAP_IFACES),
    map::<u32, sec::SecProc>("sec", sec::MAP_PROCS),
    map::<(), ()>("sec", sec::MAP_EVENTS),
    map::<u32, sec::SecStat>("sec", sec::MAP_STATS),
    map::<u32, sec::SecConfig>("sec", sec::MAP_CONFIG),
    map::<[u8; sec::PATH_MAX], u8>("sec", sec::MAP_BINS),
    map::<u32, u32>("sec", sec::MAP_CGROUPS),
    map::<u32, sec::SecProc>("sec", sec::MAP_SCRATCH),
    map::<u32, sec::SecGuard>("sec", sec::MAP_GUARD),
    map::<sec::SecInode, sec::SecMasks>("sec", sec::MAP_FILES),
    map::<sec::SecNet4Key, sec::SecNet>("sec", sec::MAP_NET4),
    map::<sec::SecNet6Key, sec::SecNet>("sec", sec::MAP_NET6),
    map::<u32, sec::SecRuleStat>("sec", sec::MAP_COUNTS),
    map::<sec::SecPathKey, u8>("sec", sec::MAP_PATHS),
    map::<u32, u64>("sec", sec::MAP_PORTS),
    map::<sec::SecXid, sec::SecProc>("sec", sec::MAP_EXITED),
    map::<u32, sec::SecPathKey>("sec", sec::MAP_PKEY),
];

const fn map<K, V>(object: &'static str, name: &'static str) -> MapAbi {
    MapAbi {
        object,
        name,
        key_size: core::mem::size_of::<K>(),
        value_size: core::mem::size_of::<V>(),
    }
}

/// Every program userspace loads: (object, program name).
pub const PROGRAMS: &[(&str, &str)] = &[
    ("count", count::PROG_XDP),
    ("fw", fw::PROG_XDP),
    ("fw", fw::PROG_TC),
    ("lb", lb::PROG_XDP),
    ("sec", sec::PROG_EXEC),
    ("sec", sec::PROG_FORK),
    ("sec", sec::PROG_EXIT),
    ("sec", sec::PROG_CONNECT4),
    ("sec", sec::PROG_CONNECT6),
    ("sec", sec::PROG_CONNECT_TP),
    ("sec", sec::PROG_SETID),
    ("sec", sec::PROG_PTRACE),
    ("sec", sec::PROG_OPEN),
    ("sec", sec::PROG_BIND4),
    ("sec", sec::PROG_BIND6),
    ("sec", sec::PROG_BIND_TP),
];

#[cfg(feature = "aya")]
mod pod {
    use super::{count::CountValue, fw::*, lb::*, sec::*};
    // SAFETY (all below): #[repr(C)] structs of integer fields and byte
    // arrays with explicit padding fields, so no implicit padding; every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for CountValue {}
    unsafe impl aya::Pod for FwAddr4Key {}
    unsafe impl aya::Pod for FwAddr6Key {}
    unsafe impl aya::Pod for FwClass {}
    unsafe impl aya::Pod for FwVerdictKey {}
    unsafe impl aya::Pod for FwVerdict {}
    unsafe impl aya::Pod for FwPortKey {}
    unsafe impl aya::Pod for FwConfig {}
    unsafe impl aya::Pod for FwCtKey {}
    unsafe impl aya::Pod for FwCtVal {}
    unsafe impl aya::Pod for FwFlowSlot {}
    unsafe impl aya::Pod for FwLine {}
    unsafe impl aya::Pod for FwFragKey {}
    unsafe impl aya::Pod for FwFlowVal {}
    unsafe impl aya::Pod for FwEvstate {}
    unsafe impl aya::Pod for LbVipKey {}
    unsafe impl aya::Pod for LbVip {}
    unsafe impl aya::Pod for LbBackend {}
    unsafe impl aya::Pod for LbSvc {}
    unsafe impl aya::Pod for LbCtKey {}
    unsafe impl aya::Pod for LbCtVal {}
    unsafe impl aya::Pod for LbBcount {}
    unsafe impl aya::Pod for SecXid {}
    unsafe impl aya::Pod for SecProc {}
    unsafe impl aya::Pod for SecStat {}
    unsafe impl aya::Pod for SecConfig {}
    unsafe impl aya::Pod for SecInode {}
    unsafe impl aya::Pod for SecPathKey {}
    unsafe impl aya::Pod for SecMasks {}
    unsafe impl aya::Pod for SecNet {}
    unsafe impl aya::Pod for SecGuard {}
    unsafe impl aya::Pod for SecRuleStat {}
    unsafe impl aya::Pod for LbRevKey {}
    unsafe impl aya::Pod for LbRevVal {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for LbBack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_kernel_limit() {
        for m in MAPS {
            assert!(m.name.len() <= BPF_OBJ_NAME_MAX, "{}", m.name);
        }
        for (_, p) in PROGRAMS {
            assert!(p.len() <= BPF_OBJ_NAME_MAX, "{p}");
        }
    }

    #[test]
    fn fw_layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<fw::FwAddr4Key>(), 8);
        assert_eq!(size_of::<fw::FwAddr6Key>(), 20);
        assert_eq!(size_of::<fw::FwVerdictKey>(), 12);
        assert_eq!(size_of::<fw::FwVerdict>(), 8);
        assert_eq!(size_of::<fw::FwPortKey>(), 12);
        assert_eq!(size_of::<fw::FwConfig>(), 176);
        assert_eq!(size_of::<fw::FwClass>(), 16);
        assert_eq!(core::mem::offset_of!(fw::FwConfig, tcp_timeouts), 64);
        assert_eq!(core::mem::offset_of!(fw::FwConfig, ev_cost_ns), 24);
        assert_eq!(size_of::<fw::FwFlowVal>(), 48);
        assert_eq!(size_of::<fw::FwEvstate>(), 72);
        assert_eq!(size_of::<fw::FwEvent>(), 32 + fw::EVENT_CAP);
        assert_eq!(core::mem::offset_of!(fw::FwEvent, data), 32);
        assert_eq!(core::mem::offset_of!(fw::FwCtVal, ifindex), 44);
        assert_eq!(fw::EV_NAMES.len(), fw::EV_MAX as usize);
        assert_eq!(size_of::<fw::FwCtKey>(), 40);
        assert_eq!(size_of::<fw::FwCtVal>(), 56);
        assert_eq!(core::mem::offset_of!(fw::FwCtVal, tcp_state), 48);
        assert_eq!(size_of::<fw::FwFragKey>(), 40);
        assert_eq!(core::mem::offset_of!(fw::FwCtVal, port0), 40);
        assert_eq!(fw::STAT_NAMES.len(), fw::STAT_MAX as usize);
    }

    #[test]
    fn lb_layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<lb::LbVipKey>(), 20);
        assert_eq!(size_of::<lb::LbVip>(), 16);
        assert_eq!(size_of::<lb::LbBackend>(), 32);
        assert_eq!(size_of::<lb::LbSvc>(), 56);
        assert_eq!(size_of::<lb::LbCtKey>(), 40);
        assert_eq!(size_of::<lb::LbCtVal>(), 40);
        assert_eq!(size_of::<lb::LbBcount>(), 32);
        assert_eq!(size_of::<lb::LbRevKey>(), 40);
        assert_eq!(size_of::<lb::LbRevVal>(), 24);
        assert_eq!(size_of::<lb::LbConfig>(), 24);
        assert_eq!(size_of::<lb::LbBack>(), 24);
        assert_eq!(lb::STAT_NAMES.len(), lb::STAT_MAX as usize);
    }

    #[test]
    fn sec_layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<sec::SecXid>(), 16);
        assert_eq!(size_of::<sec::SecProc>(), 16 + 16 + 16 + 8 + 32 + 16 + 256);
        assert_eq!(size_of::<sec::SecInode>(), 16);
        assert_eq!(size_of::<sec::SecNet4Key>(), 8);
        assert_eq!(size_of::<sec::SecNet6Key>(), 20);
        assert_eq!(size_of::<sec::SecGuard>(), 8 * 16 + 8 * 64 + 4 * 64);
        assert_eq!(size_of::<sec::SecStat>(), 32);
        assert_eq!(
            size_of::<sec::SecEvent>(),
            16 + 32 + 16 + 8 + 8 + 8 + 16 + 256 + 512 + 48
        );
        assert_eq!(sec::HOOK_NAMES.len(), sec::HOOK_MAX as usize);
    }

    #[test]
    fn count_value_layout() {
        assert_eq!(core::mem::size_of::<count::CountValue>(), 16);
        assert_eq!(core::mem::offset_of!(count::CountValue, packets), 0);
        assert_eq!(core::mem::offset_of!(count::CountValue, bytes), 8);
        assert_eq!(count::CLASS_NAMES.len(), count::CLASS_MAX as usize);
    }
}
