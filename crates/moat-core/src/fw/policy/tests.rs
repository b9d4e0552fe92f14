//! The policy parser's tests: every accepted form and every error, located.

use super::read::*;
use super::*;

fn errs(text: &str) -> Vec<String> {
    match parse(text, Path::new("p.yaml")) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn full_example_parses() {
    let tmp = tempfile::Builder::new()
        .prefix("moat-pol-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(
        dir.join("block.txt"),
        "# bad people\n192.0.2.0/24\n\n2001:db8:bad::/48 # v6\n",
    )
    .unwrap();
    let text = r#"
interfaces: [eth0]
default:
  ingress: deny
  egress: allow
rules:
  - name: ssh-office
    direction: ingress
    action: allow
    remote: [203.0.113.0/24, "2001:db8:1::/48", "@office"]
    except: [203.0.113.7/32]
    proto: tcp
    ports: [22, "8000-8099"]
  - name: ping
    direction: ingress
    action: allow
    proto: [icmp, icmpv6]
    icmp_types: [echo-request, 3]
  - name: block
    direction: ingress
    action: deny
    remote: "@blocklist"
sets:
  office: [198.51.100.0/25]
  blocklist: { file: block.txt }
"#;
    let p = parse(text, &dir.join("policy.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.default_ingress, Action::Deny);
    assert_eq!(p.rules.len(), 3);
    assert_eq!(p.rules[0].remote.as_ref().unwrap().len(), 3);
    assert_eq!(p.rules[0].ports, Some(vec![(22, 22), (8000, 8099)]));
    assert_eq!(p.rules[0].line, 7);
    assert_eq!(p.rules[2].remote.as_ref().unwrap().len(), 2);
    assert!(p.rules[1].selects_l4(1, 8 << 8));
    assert!(p.rules[1].selects_l4(58, 128 << 8));
    assert!(!p.rules[1].selects_l4(58, 8 << 8));
    assert_eq!(p.sets["blocklist"], 2);
}

#[test]
fn every_error_is_located_and_reported() {
    let text = "\
rules:
  - name: a
    direction: ingress
    action: allow
    remote: [10.0.0.0/33]
    ports: [0, 70000, \"90-80\"]
    proto: tcp
  - name: a
    direction: sideways
    action: allow
    colour: red
  - name: b
    direction: ingress
    action: allow
    proto: tcp
    icmp_types: [echo-request]
  - name: c
    direction: egress
    action: deny
    proto: icmp
    ports: [22]
  - name: d
    direction: egress
    action: deny
    remote: \"@nope\"
";
    let e = errs(text);
    let want = [
        "p.yaml:5:14: \"10.0.0.0/33\": prefix length must be 0..=32",
        "p.yaml:6:13: port 0 is not a valid port (ports are 1-65535)",
        "p.yaml:6:16: port 70000 is out of range (ports are 1-65535)",
        "p.yaml:6:23: inverted port range \"90-80\" (low end above high end)",
        "p.yaml:8:11: duplicate rule name \"a\" (first used on line 2)",
        "p.yaml:9:16: \"sideways\" is not a direction (expected ingress or egress)",
        "p.yaml:11:5: unknown key \"colour\" in rule",
        "p.yaml:16:17: icmp_types apply to icmp and icmpv6 only",
        "p.yaml:21:12: ports apply to tcp and udp only",
        "p.yaml:25:13: unknown set @nope in remote",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for (got, w) in e.iter().zip(want) {
        assert!(got.starts_with(w), "got {got:?}, want {w:?}");
    }
}

#[test]
fn log_section_and_rule_log_flag() {
    let p = parse(
            "rules:\n  - { name: a, direction: ingress, action: deny, log: true }\n  - { name: b, direction: ingress, action: allow }\nlog: { drops: false, rate: 50, burst: 10, sample: 4, flow_rate: 7 }\n",
            Path::new("p.yaml"),
        )
        .unwrap();
    assert!(p.rules[0].log && !p.rules[1].log);
    assert_eq!(
        p.logging,
        Logging {
            drops: false,
            rate: 50,
            burst: 10,
            sample: 4,
            flow_rate: 7
        }
    );
    assert_eq!(
        parse("rules: []\n", Path::new("p.yaml")).unwrap().logging,
        Logging::default()
    );
    let e = errs(
        "rules:\n  - { name: a, direction: ingress, action: deny, log: yes }\nlog:\n  rate: 0\n  drops: maybe\n  sampel: 3\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with("p.yaml:2:55: \"yes\" is not true or false"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.yaml:4:9: \"0\" is not a whole number"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("p.yaml:5:10: \"maybe\" is not true or false"),
        "{e:?}"
    );
    assert!(
        e[3].starts_with("p.yaml:6:3: unknown key \"sampel\" in log"),
        "{e:?}"
    );
    assert!(errs("log: 5\nrules: []\n")[0].starts_with("p.yaml:1:6: log must be a mapping"));
}

#[test]
fn conntrack_timeouts() {
    let p = parse(
        "conntrack: { tcp_timeout: 2h, udp_timeout: 90s, other_timeout: 30, tcp_time_wait_timeout: 5s, tcp_syn_sent_timeout: 1m }\nrules: []\n",
        Path::new("p.yaml"),
    )
    .unwrap();
    assert_eq!(
        p.timeouts,
        Timeouts {
            tcp: 7200,
            udp: 90,
            other: 30,
            tcp_time_wait: 5,
            tcp_syn_sent: 60,
            ..Timeouts::default()
        }
    );
    let by = p.timeouts.tcp_by_state();
    assert_eq!(by[moat_abi::fw::TCP_ESTABLISHED as usize], 7200);
    assert_eq!(by[moat_abi::fw::TCP_TIME_WAIT as usize], 5);
    assert_eq!(by[moat_abi::fw::TCP_CLOSE as usize], 10);
    assert_eq!(
        parse("rules: []\n", Path::new("p.yaml")).unwrap().timeouts,
        Timeouts::default()
    );
    let e = errs("conntrack:\n  tcp_timeout: 0\n  udp: 5\n");
    assert!(
        e[0].starts_with("p.yaml:2:16: \"0\" is not a duration"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.yaml:3:3: unknown key \"udp\" in conntrack"),
        "{e:?}"
    );
}

#[test]
fn conntrack_max() {
    let p = parse(
        "conntrack: { max: 100_000 }\nrules: []\n",
        Path::new("p.yaml"),
    )
    .unwrap();
    assert_eq!(p.timeouts.max, Some(100_000));
    assert_eq!(
        parse("rules: []\n", Path::new("p.yaml"))
            .unwrap()
            .timeouts
            .max,
        None
    );
    let e = errs("conntrack:\n  max: 10\n");
    assert!(
        e[0].starts_with("p.yaml:2:8: conntrack max \"10\" is not a number of connections between 1024 and 16777216"),
        "{e:?}"
    );
    let e = errs("conntrack: { max: lots }\nrules: []\n");
    assert!(
        e[0].starts_with("p.yaml:1:19: conntrack max \"lots\""),
        "{e:?}"
    );
}

#[test]
fn yaml_syntax_and_top_level_errors() {
    let e = errs("rules: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("p.yaml:2:1: YAML syntax error"), "{e:?}");
    let e = errs("rulez: []\ndefault: {ingress: maybe}\n");
    assert!(
        e[0].starts_with("p.yaml:1:1: unknown key \"rulez\""),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.yaml:2:20: \"maybe\" is not an action"),
        "{e:?}"
    );
    let e = errs("rules: []\nrules: []\n");
    assert!(e[0].contains("duplicate key \"rules\""), "{e:?}");
}

#[test]
fn set_file_errors_name_the_set_file() {
    let tmp = tempfile::Builder::new()
        .prefix("moat-set-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("s.txt"), "10.0.0.0/8\n  10.0.0.1/8\nbanana\n").unwrap();
    let pol = dir.join("p.yaml");
    let text = "sets:\n  s: { file: s.txt }\n  t: { file: missing.txt }\n";
    let e = parse(text, &pol).unwrap_err();
    let e: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert!(
        e[0].starts_with(&format!("{}:3:14: cannot read set file", pol.display())),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(&format!(
            "{}:2:3: \"10.0.0.1/8\" has host bits set",
            dir.join("s.txt").display()
        )),
        "{e:?}"
    );
    assert!(
        e[2].starts_with(&format!(
            "{}:3:1: \"banana\" is not",
            dir.join("s.txt").display()
        )),
        "{e:?}"
    );
}

/// Policies that are not what they look like are refused, each with a
/// location: nothing that is cut short, empty or hidden passes for a policy.
#[test]
fn policies_that_are_not_what_they_look_like_are_refused() {
    let one = |text: &str| -> String {
        let e = parse(text, Path::new("p.yaml")).expect_err(text);
        assert_eq!(e.total(), 1, "{text:?}: {e}");
        e.to_string()
    };
    for empty in ["", "\n\n", "# only a comment\n", "---\n"] {
        assert!(
            one(empty).starts_with("p.yaml:1:1: the policy is empty"),
            "{empty:?}"
        );
    }
    // Defaults alone are fine only with an explicit rules list.
    assert!(
        one("default: { ingress: allow, egress: allow }\n")
            .starts_with("p.yaml:1:1: the policy has no `rules:` key")
    );
    parse(
        "default: { ingress: allow, egress: allow }\nrules: []\n",
        Path::new("p.yaml"),
    )
    .unwrap();
    // A leading `---` is one document; a second one is refused.
    parse("---\nrules: []\n", Path::new("p.yaml")).unwrap();
    assert!(
        one("default: { ingress: deny }\nrules: []\n---\nrules: []\n")
            .starts_with("p.yaml:3:1: a second YAML document")
    );
    assert!(
        one("default: { ingress: deny }\nrules: []\n...\nsets: {}\n")
            .starts_with("p.yaml:3:1: a YAML document end marker")
    );
    // An indented first key: a dedent would end the document early.
    let e = one(
        "  default: { ingress: deny }\nrules:\n  - { name: a, direction: ingress, action: allow }\n",
    );
    assert!(
        e.starts_with("p.yaml:1:3: top-level keys must start in column 1"),
        "{e}"
    );
    // NUL bytes: everything after one would be dropped.
    assert!(
        one("default: { ingress: deny }\nrules: []\x00\nsets: {}\n")
            .starts_with("p.yaml:2:10: the policy contains a NUL byte")
    );
}

#[test]
fn error_output_is_bounded() {
    // A huge value: the message quotes its start only.
    let big = "x".repeat(10 << 20);
    let text = format!("rules:\n  - name: a\n    direction: {big}\n    action: allow\n");
    let e = parse(&text, Path::new("p.yaml")).unwrap_err().to_string();
    assert!(e.len() < 1000, "{} bytes of error", e.len());
    assert!(e.starts_with("p.yaml:3:16: \"xxxx"), "{}", &e[..100]);
    assert!(e.contains("characters)"), "{e}");
    // 200k bad ports: the first errors and a count.
    let ports = vec!["0"; 200_000].join(", ");
    let text = format!(
        "rules:\n  - name: a\n    direction: ingress\n    action: allow\n    proto: tcp\n    ports: [{ports}]\n"
    );
    let e = parse(&text, Path::new("p.yaml")).unwrap_err();
    assert_eq!(e.total(), 200_000);
    assert!(e.0.len() <= MAX_ERRORS_KEPT);
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), MAX_ERRORS_SHOWN + 1, "{shown}");
    assert!(
        shown.ends_with("... and 199980 more error(s) not shown"),
        "{shown}"
    );
}

#[test]
fn policy_and_set_files_must_be_regular_bounded_utf8() {
    let dir = std::env::temp_dir().join(format!("moat-polfiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let msg = |p: &Path| load(p).unwrap_err().to_string();
    // Devices and FIFOs: refused without reading (no hang, no memory).
    assert!(
        msg(Path::new("/dev/null")).contains("must be a regular file, this is a character device")
    );
    assert!(
        msg(Path::new("/dev/zero")).contains("must be a regular file, this is a character device")
    );
    let fifo = dir.join("fifo.yaml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid C string.
    assert_eq!(unsafe { libc_mkfifo(c.as_ptr()) }, 0);
    assert!(msg(&fifo).contains("must be a regular file, this is a FIFO"));
    assert!(msg(&dir).contains("this is a directory"));
    // Not UTF-8: line and column of the bad byte.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, b"rules: []\ndefault: { ingress: d\xffeny }\n").unwrap();
    let m = msg(&bad);
    assert!(
        m.starts_with(&format!(
            "{}:2:22: policy file is not UTF-8 text (byte 0xff)",
            bad.display()
        )),
        "{m}"
    );
    // Too big.
    let huge = dir.join("huge.yaml");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(MAX_POLICY_BYTES + 1).unwrap();
    assert!(msg(&huge).contains("more than the limit"), "{}", msg(&huge));
    // A set file that is a device.
    let pol = dir.join("p.yaml");
    std::fs::write(&pol, "rules: []\nsets:\n  s: { file: /dev/zero }\n").unwrap();
    let m = msg(&pol);
    assert!(
        m.starts_with(&format!(
            "{}:3:14: set file /dev/zero must be a regular file",
            pol.display()
        )),
        "{m}"
    );
}
