//! No root needed: the compiled objects against the ABI mirror (moat-abi),
//! the C header's #defines against the Rust constants, and the committed
//! objects against a fresh build from source.

use std::{collections::BTreeMap, path::Path};

use aya_obj::Object;
use moat_abi::{BPF_OBJ_NAME_MAX, MAPS, PROGRAMS, count, fw, lb, parse, sec};

/// bpf/common/abi.h and every part it includes (abi/*.h), as one text.
fn abi_text() -> String {
    let common = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bpf/common");
    let umbrella = std::fs::read_to_string(common.join("abi.h")).unwrap();
    let mut text = umbrella.clone();
    for line in umbrella.lines() {
        if let Some(inc) = line
            .strip_prefix("#include \"")
            .and_then(|r| r.strip_suffix('"'))
        {
            text.push_str(&std::fs::read_to_string(common.join(inc)).unwrap());
        }
    }
    text
}

fn object(name: &str) -> Object {
    let bytes = moat_ebpf::object(name).unwrap_or_else(|| panic!("object {name} not embedded"));
    Object::parse(bytes).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
}

#[test]
fn map_sizes_match_rust_types() {
    for m in MAPS {
        let obj = object(m.object);
        let map = obj
            .maps
            .get(m.name)
            .unwrap_or_else(|| panic!("map {} missing from {}.bpf.o", m.name, m.object));
        assert_eq!(
            map.key_size() as usize,
            m.key_size,
            "key size of {}",
            m.name
        );
        assert_eq!(
            map.value_size() as usize,
            m.value_size,
            "value size of {}",
            m.name
        );
    }
}

#[test]
fn rust_names_exist_in_objects() {
    for (obj_name, prog) in PROGRAMS {
        let obj = object(obj_name);
        assert!(
            obj.programs.contains_key(*prog),
            "program {prog} missing from {obj_name}.bpf.o (has {:?})",
            obj.programs.keys().collect::<Vec<_>>()
        );
    }
}

#[test]
fn every_object_name_fits_the_kernel_limit() {
    for (name, _) in moat_ebpf::ALL {
        let obj = object(name);
        for p in obj.programs.keys() {
            assert!(
                p.len() <= BPF_OBJ_NAME_MAX,
                "program name {p} > 15 chars in {name}"
            );
        }
        for m in obj.maps.keys() {
            if m.starts_with('.') {
                continue; // .rodata/.bss/.data: named by the loader, not by us
            }
            assert!(
                m.len() <= BPF_OBJ_NAME_MAX,
                "map name {m} > 15 chars in {name}"
            );
        }
    }
}

/// Every `#define` of abi.h (except the include guard) must have a Rust
/// mirror with the same value, and vice versa for the listed ones.
#[test]
fn abi_header_defines_match_rust_constants() {
    let header = abi_text();
    let mut defines = BTreeMap::new();
    for line in header.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (w.next(), w.next()) else {
            continue;
        };
        if name.contains('(') {
            continue; // a function-like helper macro, not an ABI value
        }
        defines.insert(name.to_string(), value.trim_matches('"').to_string());
    }
    let mut rust: Vec<(&str, String)> = vec![
        ("COUNT_PROG_XDP", count::PROG_XDP.into()),
        ("COUNT_MAP_STATS", count::MAP_STATS.into()),
        ("COUNT_CLASS_MAX", count::CLASS_MAX.to_string()),
        ("MOAT_MAX_VLAN_DEPTH", parse::MAX_VLAN_DEPTH.to_string()),
        ("MOAT_MAX_IPV6_EXTHDRS", parse::MAX_IPV6_EXTHDRS.to_string()),
    ];
    rust.extend([
        ("FW_PROG_XDP", fw::PROG_XDP.into()),
        ("FW_PROG_TC", fw::PROG_TC.into()),
        ("FW_MAP_ADDR4", fw::MAP_ADDR4.into()),
        ("FW_MAP_ADDR6", fw::MAP_ADDR6.into()),
        ("FW_MAP_VERDICT", fw::MAP_VERDICT.into()),
        ("FW_MAP_HOST4", fw::MAP_HOST4.into()),
        ("FW_MAP_HOST6", fw::MAP_HOST6.into()),
        ("FW_MAP_PORTS", fw::MAP_PORTS.into()),
        ("FW_MAP_CONFIG", fw::MAP_CONFIG.into()),
        ("FW_MAP_DENSE", fw::MAP_DENSE.into()),
        ("FW_MAP_HOSTBITS", fw::MAP_HOSTBITS.into()),
        ("FW_DENSE_PROTOS", fw::DENSE_PROTOS.to_string()),
        ("FW_DENSE_SLOTS", fw::DENSE_SLOTS.to_string()),
        ("FW_HAS2_DENSE", fw::HAS2_DENSE.to_string()),
        ("FW_HAS2_HOSTBITS", fw::HAS2_HOSTBITS.to_string()),
        ("FW_MAP_CT", fw::MAP_CT.into()),
        ("FW_MAP_CT_ASSURED", fw::MAP_CT_ASSURED.into()),
        ("FW_FLOW_SLOTS", fw::FLOW_SLOTS.to_string()),
        ("FW_LINE_SLOTS", fw::LINE_SLOTS.to_string()),
        ("FW_MAP_FRAG", fw::MAP_FRAG.into()),
        ("FW_MAP_RULE_STATS", fw::MAP_RULE_STATS.into()),
        ("FW_MAP_STATS", fw::MAP_STATS.into()),
        ("FW_MAP_FLOWS", fw::MAP_FLOWS.into()),
        ("FW_MAP_FLOWTAGS", fw::MAP_FLOWTAGS.into()),
        ("FW_MAP_EVENTS", fw::MAP_EVENTS.into()),
        ("FW_MAP_EVSTATE", fw::MAP_EVSTATE.into()),
        ("FW_MAP_EVSTATS", fw::MAP_EVSTATS.into()),
        ("FW_MAP_IFSTATS", fw::MAP_IFSTATS.into()),
        ("FW_MAP_CTSEEN", fw::MAP_CTSEEN.into()),
        ("FW_MAP_GEN", fw::MAP_GEN.into()),
        ("FW_MAP_NEXT", fw::MAP_NEXT.into()),
        ("FW_CTSEEN_SLOTS", fw::CTSEEN_SLOTS.to_string()),
        ("FW_IF_SLOTS", fw::IF_SLOTS.to_string()),
        ("FW_EV_MAX", fw::EV_MAX.to_string()),
        ("FW_EVENT_DROP", fw::EVENT_DROP.to_string()),
        ("FW_EVENT_LOG", fw::EVENT_LOG.to_string()),
        ("FW_EVENT_CAP", fw::EVENT_CAP.to_string()),
        ("FW_FLAG_LOG", fw::FLAG_LOG.to_string()),
        ("FW_TCP_NONE", fw::TCP_NONE.to_string()),
        ("FW_TCP_SYN_SENT", fw::TCP_SYN_SENT.to_string()),
        ("FW_TCP_SYN_RECV", fw::TCP_SYN_RECV.to_string()),
        ("FW_TCP_ESTABLISHED", fw::TCP_ESTABLISHED.to_string()),
        ("FW_TCP_FIN_WAIT", fw::TCP_FIN_WAIT.to_string()),
        ("FW_TCP_CLOSE_WAIT", fw::TCP_CLOSE_WAIT.to_string()),
        ("FW_TCP_LAST_ACK", fw::TCP_LAST_ACK.to_string()),
        ("FW_TCP_TIME_WAIT", fw::TCP_TIME_WAIT.to_string()),
        ("FW_TCP_CLOSE", fw::TCP_CLOSE.to_string()),
        ("FW_TCP_STATES", fw::TCP_STATES.to_string()),
        ("FW_TCP_TIMEOUT_SLOTS", fw::TCP_TIMEOUT_SLOTS.to_string()),
        ("FW_PIN_DIR", fw::PIN_DIR.into()),
        ("FW_STAT_MAX", fw::STAT_MAX.to_string()),
        ("FW_DIR_INGRESS", fw::DIR_INGRESS.to_string()),
        ("FW_DIR_EGRESS", fw::DIR_EGRESS.to_string()),
        ("FW_ACTION_ALLOW", fw::ACTION_ALLOW.to_string()),
        ("FW_ACTION_DENY", fw::ACTION_DENY.to_string()),
        ("FW_PROTO_OTHER", fw::PROTO_OTHER.to_string()),
        ("FW_RULE_DEFAULT", fw::RULE_DEFAULT.to_string()),
        ("FW_HAS_ADDR4", fw::HAS_ADDR4.to_string()),
        ("FW_HAS_ADDR6", fw::HAS_ADDR6.to_string()),
        ("FW_HAS_HOST4", fw::HAS_HOST4.to_string()),
        ("FW_HAS_HOST6", fw::HAS_HOST6.to_string()),
        ("FW_HAS_PORT_EXACT", fw::HAS_PORT_EXACT.to_string()),
        ("FW_HAS_PORT_ANY", fw::HAS_PORT_ANY.to_string()),
        ("FW_HAS_VERDICT", fw::HAS_VERDICT.to_string()),
        ("FW_HAS_BLOCK", fw::HAS_BLOCK.to_string()),
    ]);
    rust.extend([
        ("LB_PROG_XDP", lb::PROG_XDP.into()),
        ("LB_PIN_DIR", lb::PIN_DIR.into()),
        ("LB_MAP_VIPS", lb::MAP_VIPS.into()),
        ("LB_MAP_MAGLEV", lb::MAP_MAGLEV.into()),
        ("LB_MAP_BACKENDS", lb::MAP_BACKENDS.into()),
        ("LB_MAP_SVCS", lb::MAP_SVCS.into()),
        ("LB_MAP_CT", lb::MAP_CT.into()),
        ("LB_MAP_REV", lb::MAP_REV.into()),
        ("LB_MAP_STATS", lb::MAP_STATS.into()),
        ("LB_MAP_BSTATS", lb::MAP_BSTATS.into()),
        ("LB_MAP_SSTATS", lb::MAP_SSTATS.into()),
        ("LB_MAP_CONFIG", lb::MAP_CONFIG.into()),
        ("LB_MAP_BACK", lb::MAP_BACK.into()),
        ("LB_MAP_IFACES", lb::MAP_IFACES.into()),
        ("LB_IF_SLOTS", lb::IF_SLOTS.to_string()),
        ("LB_CLOSING_SECS", lb::CLOSING_SECS.to_string()),
        ("LB_BACK_AMBIG", lb::BACK_AMBIG.to_string()),
        ("LB_BF_REV", lb::BF_REV.to_string()),
        ("LB_BF_RESET_DOWN", lb::BF_RESET_DOWN.to_string()),
        ("LB_MAX_BACKENDS", lb::MAX_BACKENDS.to_string()),
        ("LB_MAX_SERVICES", lb::MAX_SERVICES.to_string()),
        ("LB_NONE", format!("0x{:X}", lb::NONE)),
        ("LB_MODE_NAT", lb::MODE_NAT.to_string()),
        ("LB_MODE_DSR", lb::MODE_DSR.to_string()),
        ("LB_VIP_ECHO", lb::VIP_ECHO.to_string()),
        ("LB_HASH_SRC", lb::HASH_SRC.to_string()),
        ("LB_HASH_SPORT", lb::HASH_SPORT.to_string()),
        ("LB_HASH_DST", lb::HASH_DST.to_string()),
        ("LB_HASH_DPORT", lb::HASH_DPORT.to_string()),
        ("LB_HASH_PROTO", lb::HASH_PROTO.to_string()),
        ("LB_B_EMPTY", lb::B_EMPTY.to_string()),
        ("LB_B_UP", lb::B_UP.to_string()),
        ("LB_B_DOWN", lb::B_DOWN.to_string()),
        ("LB_B_DRAIN", lb::B_DRAIN.to_string()),
        ("LB_STAT_MAX", lb::STAT_MAX.to_string()),
        ("SEC_PROG_EXEC", sec::PROG_EXEC.into()),
        ("SEC_PROG_FORK", sec::PROG_FORK.into()),
        ("SEC_PROG_EXIT", sec::PROG_EXIT.into()),
        ("SEC_PROG_CONNECT4", sec::PROG_CONNECT4.into()),
        ("SEC_PROG_CONNECT6", sec::PROG_CONNECT6.into()),
        ("SEC_PROG_CONNECT_TP", sec::PROG_CONNECT_TP.into()),
        ("SEC_PROG_SETID", sec::PROG_SETID.into()),
        ("SEC_PROG_PTRACE", sec::PROG_PTRACE.into()),
        ("SEC_PROG_OPEN", sec::PROG_OPEN.into()),
        ("SEC_PROG_BIND4", sec::PROG_BIND4.into()),
        ("SEC_PROG_BIND6", sec::PROG_BIND6.into()),
        ("SEC_PROG_BIND_TP", sec::PROG_BIND_TP.into()),
        ("SEC_MAP_PORTS", sec::MAP_PORTS.into()),
        ("SEC_MAP_EXITED", sec::MAP_EXITED.into()),
        ("SEC_EXITED_MAX", sec::EXITED_MAX.to_string()),
        ("SEC_PORTS_MAX", sec::PORTS_MAX.to_string()),
        ("SEC_HOOK_LISTEN", sec::HOOK_LISTEN.to_string()),
        ("SEC_EV_LISTEN", sec::EV_LISTEN.to_string()),
        ("SEC_OP_LISTEN", sec::OP_LISTEN.to_string()),
        ("SEC_OP_LISTEN_TP", sec::OP_LISTEN_TP.to_string()),
        ("SEC_MAP_PATHS", sec::MAP_PATHS.into()),
        ("SEC_MAP_PKEY", sec::MAP_PKEY.into()),
        ("SEC_PATHS_MAX", sec::PATHS_MAX.to_string()),
        ("SEC_HOOK_OPEN", sec::HOOK_OPEN.to_string()),
        ("SEC_CF_OPEN", sec::CF_OPEN.to_string()),
        ("SEC_CF_CONNECT", sec::CF_CONNECT.to_string()),
        ("SEC_MAP_GUARD", sec::MAP_GUARD.into()),
        ("SEC_MAP_FILES", sec::MAP_FILES.into()),
        ("SEC_MAP_NET4", sec::MAP_NET4.into()),
        ("SEC_MAP_NET6", sec::MAP_NET6.into()),
        ("SEC_MAP_COUNTS", sec::MAP_COUNTS.into()),
        ("SEC_RULES_MAX", sec::RULES_MAX.to_string()),
        ("SEC_FILES_MAX", sec::FILES_MAX.to_string()),
        ("SEC_NETS_MAX", sec::NETS_MAX.to_string()),
        ("SEC_DIR_DEPTH", sec::DIR_DEPTH.to_string()),
        ("SEC_HOOK_CONNECT", sec::HOOK_CONNECT.to_string()),
        ("SEC_HOOK_SETID", sec::HOOK_SETID.to_string()),
        ("SEC_HOOK_PTRACE", sec::HOOK_PTRACE.to_string()),
        ("SEC_EV_CONNECT", sec::EV_CONNECT.to_string()),
        ("SEC_EV_SETID", sec::EV_SETID.to_string()),
        ("SEC_EV_PTRACE", sec::EV_PTRACE.to_string()),
        ("SEC_EV_OPEN", sec::EV_OPEN.to_string()),
        ("SEC_OP_EXEC", sec::OP_EXEC.to_string()),
        ("SEC_OP_CONNECT", sec::OP_CONNECT.to_string()),
        ("SEC_OP_CONNECT_TP", sec::OP_CONNECT_TP.to_string()),
        ("SEC_OP_SETID", sec::OP_SETID.to_string()),
        ("SEC_OP_PTRACE", sec::OP_PTRACE.to_string()),
        ("SEC_OP_MAX", sec::OP_MAX.to_string()),
        ("SEC_ACT_LOG", sec::ACT_LOG.to_string()),
        ("SEC_ACT_DENY", sec::ACT_DENY.to_string()),
        ("SEC_ACT_KILL", sec::ACT_KILL.to_string()),
        ("SEC_CF_GUARD", sec::CF_GUARD.to_string()),
        ("SEC_MAP_PROCS", sec::MAP_PROCS.into()),
        ("SEC_MAP_EVENTS", sec::MAP_EVENTS.into()),
        ("SEC_MAP_STATS", sec::MAP_STATS.into()),
        ("SEC_MAP_CONFIG", sec::MAP_CONFIG.into()),
        ("SEC_MAP_BINS", sec::MAP_BINS.into()),
        ("SEC_MAP_CGROUPS", sec::MAP_CGROUPS.into()),
        ("SEC_MAP_SCRATCH", sec::MAP_SCRATCH.into()),
        ("SEC_PROCS_MAX", sec::PROCS_MAX.to_string()),
        ("SEC_PATH_MAX", sec::PATH_MAX.to_string()),
        ("SEC_ARGS_MAX", sec::ARGS_MAX.to_string()),
        ("SEC_XID_TICK_NS", format!("{}ULL", sec::XID_TICK_NS)),
        ("SEC_HOOK_EXEC", sec::HOOK_EXEC.to_string()),
        ("SEC_HOOK_EXIT", sec::HOOK_EXIT.to_string()),
        ("SEC_HOOK_FORK", sec::HOOK_FORK.to_string()),
        ("SEC_HOOK_MAX", sec::HOOK_MAX.to_string()),
        ("SEC_EV_EXEC", sec::EV_EXEC.to_string()),
        ("SEC_EV_EXIT", sec::EV_EXIT.to_string()),
        ("SEC_CF_EXEC", sec::CF_EXEC.to_string()),
        ("SEC_CF_EXIT", sec::CF_EXIT.to_string()),
        ("SEC_CF_BINARY", sec::CF_BINARY.to_string()),
        ("SEC_CF_CGROUP", sec::CF_CGROUP.to_string()),
        ("SEC_EF_ARGS_TRUNC", sec::EF_ARGS_TRUNC.to_string()),
        ("SEC_EF_NO_PARENT", sec::EF_NO_PARENT.to_string()),
        ("SEC_EF_MEMFD", sec::EF_MEMFD.to_string()),
        ("SEC_EF_TTY", sec::EF_TTY.to_string()),
    ]);
    for (i, n) in lb::STAT_NAMES.iter().enumerate() {
        rust.push((
            Box::leak(format!("LB_STAT_{}", n.to_uppercase()).into_boxed_str()),
            i.to_string(),
        ));
    }
    for (i, n) in fw::EV_NAMES.iter().enumerate() {
        rust.push((
            Box::leak(format!("FW_EV_{}", n.to_uppercase()).into_boxed_str()),
            i.to_string(),
        ));
    }
    for (i, n) in fw::STAT_NAMES.iter().enumerate() {
        rust.push((
            Box::leak(format!("FW_STAT_{}", n.to_uppercase()).into_boxed_str()),
            i.to_string(),
        ));
    }
    for (i, n) in count::CLASS_NAMES.iter().enumerate() {
        rust.push((
            Box::leak(format!("COUNT_CLASS_{}", n.to_uppercase()).into_boxed_str()),
            i.to_string(),
        ));
    }
    for (name, value) in &rust {
        assert_eq!(
            defines.get(*name).map(String::as_str),
            Some(value.as_str()),
            "abi.h #define {name} must equal the Rust constant {value}"
        );
    }
    for name in defines.keys() {
        if name == "MOAT_ABI_H" {
            continue;
        }
        assert!(
            rust.iter().any(|(n, _)| n == name),
            "abi.h defines {name} but moat-abi has no mirror of it (add it to this test too)"
        );
    }
}

/// When this build compiled the objects from source, they must equal the
/// committed ones (rebuild with `MOAT_EBPF_UPDATE=1 cargo build -p moat-ebpf`).
#[test]
fn committed_objects_are_fresh() {
    if !moat_ebpf::BUILT_FROM_SOURCE {
        if std::env::var("MOAT_EBPF_REQUIRE_CLANG").as_deref() == Ok("1") {
            panic!("MOAT_EBPF_REQUIRE_CLANG=1 but the objects were not built from source");
        }
        eprintln!("SKIP committed_objects_are_fresh: built without clang, nothing to compare");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("objects");
    let mut stale = Vec::new();
    for (name, built) in moat_ebpf::ALL {
        let file = dir.join(format!("{name}.bpf.o"));
        match std::fs::read(&file) {
            Ok(committed) if committed == *built => {}
            Ok(_) => stale.push(format!("{} differs from the source build", file.display())),
            Err(e) => stale.push(format!("{}: {e}", file.display())),
        }
    }
    let committed_count = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        committed_count,
        moat_ebpf::ALL.len(),
        "objects/ holds files with no bpf/**/*.bpf.c source"
    );
    assert!(
        stale.is_empty(),
        "committed BPF objects are stale:\n  {}\nrun: MOAT_EBPF_UPDATE=1 cargo build -p moat-ebpf",
        stale.join("\n  ")
    );
}

/// Struct layouts (name -> (size, [(member, byte offset)])) from the .BTF
/// section of an object, read here from the format's definition (a header,
/// then types of 12 bytes plus kind-specific trailing data, then strings).
fn btf_structs(elf: &[u8]) -> BTreeMap<String, (usize, Vec<(String, usize)>)> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf).expect("an ELF object");
    let sec = file.section_by_name(".BTF").expect("a .BTF section (-g)");
    let b = sec.data().unwrap();
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0xEB9F, "BTF magic");
    let hdr_len = u32_at(4) as usize;
    let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
    let str_off = u32_at(16) as usize;
    let types = hdr_len + type_off;
    let strs = hdr_len + str_off;
    let name = |off: u32| -> String {
        let s = &b[strs + off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap()]).into_owned()
    };
    let mut out = BTreeMap::new();
    let mut at = types;
    while at < types + type_len {
        let (name_off, info, size) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31;
        at += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,             // int, var, decl_tag
            3 => 12,                      // array
            4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
            6 | 13 => 8 * vlen,           // enum, func_proto
            _ => 0,
        };
        if kind == 4 && name_off != 0 {
            let members = (0..vlen)
                .map(|i| {
                    let m = at + 12 * i;
                    let off = u32_at(m + 8);
                    // With kflag set, the low 24 bits are the bit offset.
                    let bits = if kflag == 1 { off & 0xff_ffff } else { off };
                    (name(u32_at(m)), bits as usize / 8)
                })
                .collect();
            out.insert(name(name_off), (size as usize, members));
        }
        at += extra;
    }
    out
}

/// Every struct of the ABI has, in the compiled objects' BTF, the size and
/// the fields (names, order and byte offsets) of its Rust mirror: a field
/// reordered or resized on one side only fails here.
#[test]
fn struct_layouts_match_the_btf_of_the_objects() {
    let mut btf = BTreeMap::new();
    for (name, _) in moat_ebpf::ALL {
        btf.extend(btf_structs(moat_ebpf::object(name).unwrap()));
    }
    let header = abi_text();
    for l in moat_abi::LAYOUTS {
        let Some((size, members)) = btf.get(l.c_name) else {
            // Not in BTF (a ring-buffer record): abi.h must pin every
            // field's offset with the Rust value (the compiler checks it).
            for (f, off) in l.fields {
                let line = format!(
                    "_Static_assert(MOAT_OFFSET_OF({}, {f}) == {off}, ",
                    l.c_name
                );
                assert!(
                    header.contains(&line),
                    "struct {} is not in the objects' BTF, and abi.h lacks `{line}`",
                    l.c_name
                );
            }
            continue;
        };
        assert_eq!(*size, l.size, "size of struct {}", l.c_name);
        let rust: Vec<(String, usize)> = l
            .fields
            .iter()
            .map(|(n, o)| ((*n).to_string(), *o))
            .collect();
        assert_eq!(
            members, &rust,
            "fields (name, byte offset) of struct {} in C vs Rust",
            l.c_name
        );
    }
    // And the test itself can fail: a swapped pair is noticed.
    let (_, m) = &btf["fw_verdict"];
    assert_ne!(m[1].1, m[2].1);
}
