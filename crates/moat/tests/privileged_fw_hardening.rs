//! The firewall as an attacker and an unlucky operator try it: directories
//! someone else made, applies that fail half-way or run at once, a damaged,
//! missing, read-only or full state directory, and traffic right after
//! detach. Each test reproduces a hole found on an earlier main.

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{FwRoot, MoatProc, apply_args, in_ns, ping_ok, policy_file, policy_file_as};
use moat_host::netlab::{self, Lab, LabConfig};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lab(prefix: &str) -> Lab {
    Lab::create(&common::tag(prefix), &LabConfig::default()).expect("creating lab")
}

/// TCP echo on B4:port and UDP echo on B4:port+1 in namespace `ns`, one
/// thread per connection and no idle timeout (connections live as long as
/// the test needs). Stopped on drop.
struct Echo {
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start(ns: &str, port: u16) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = in_ns(ns, move || {
            let t = TcpListener::bind(SocketAddr::new(ip(netlab::B4), port)).unwrap();
            let u = UdpSocket::bind(SocketAddr::new(ip(netlab::B4), port + 1)).unwrap();
            (t, u)
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let s = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || {
                            c.set_nonblocking(false).unwrap();
                            c.set_read_timeout(Some(Duration::from_millis(100)))
                                .unwrap();
                            let mut buf = [0u8; 256];
                            while !s.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let s = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        Echo { stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection from namespace `ns` kept open across applies.
struct Conn(TcpStream);

impl Conn {
    fn open(ns: &str, port: u16) -> Conn {
        let s = in_ns(ns, move || {
            TcpStream::connect_timeout(
                &SocketAddr::new(ip(netlab::B4), port),
                Duration::from_secs(1),
            )
            .unwrap()
        });
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        Conn(s)
    }
    /// One echo round trip.
    fn round(&mut self) -> bool {
        let mut b = [0u8; 4];
        self.0.write_all(b"ping").is_ok() && self.0.read_exact(&mut b).is_ok() && &b == b"ping"
    }
}

fn udp_ok(ns: &str, port: u16) -> bool {
    in_ns(ns, move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        u.send_to(b"ping", SocketAddr::new(ip(netlab::B4), port))
            .unwrap();
        let mut buf = [0u8; 16];
        matches!(u.recv_from(&mut buf), Ok((4, _)))
    })
}

const ALLOW_7000: &str = "
default: { ingress: deny, egress: allow }
rules:
  - name: web
    direction: ingress
    action: allow
    proto: tcp
    ports: [7000]
";

const DENY_ALL: &str = "default: { ingress: deny, egress: allow }\nrules: []\n";

fn generation_of(out: &str) -> u32 {
    let rest = out
        .split("(generation ")
        .nth(1)
        .unwrap_or_else(|| panic!("no generation in {out:?}"));
    rest.split(')').next().unwrap().parse().unwrap()
}

#[test]
fn directories_someone_else_made_are_refused_and_ours_are_private() {
    if !common::privileged("directories_someone_else_made_are_refused_and_ours_are_private") {
        return;
    }
    let t = common::tag("dirs");
    let lab = lab("dirs");
    let root = FwRoot::new(&t);
    let pol = policy_file(&t, ALLOW_7000);
    let args = apply_args(&pol, &lab, &[]);

    // An unprivileged user made the pin root first (bpffs is world-writable).
    std::fs::create_dir(&root.pin_root).unwrap();
    std::fs::set_permissions(&root.pin_root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&root.pin_root, Some(65534), Some(65534)).unwrap();
    let (ok, _, err) = root.moat(&args);
    assert!(!ok, "apply must refuse a pin directory owned by uid 65534");
    assert!(
        err.contains(&format!("refusing to use {}", root.pin_root))
            && err.contains("not owned by root")
            && err.contains("uid 65534")
            && err.contains("mode 0755"),
        "the refusal names path, owner and mode: {err}"
    );
    assert!(!lab.b_has_xdp().unwrap(), "nothing was attached");

    // Root's, but anyone may write to it (no sticky bit).
    std::os::unix::fs::chown(&root.pin_root, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&root.pin_root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, _, err) = root.moat(&args);
    assert!(!ok && err.contains("others can write to it"), "{err}");

    // A symbolic link to somewhere else.
    std::fs::remove_dir(&root.pin_root).unwrap();
    let elsewhere = format!("/sys/fs/bpf/moat-elsewhere-{t}");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &root.pin_root).unwrap();
    let (ok, _, err) = root.moat(&args);
    std::fs::remove_file(&root.pin_root).unwrap();
    std::fs::remove_dir(&elsewhere).unwrap();
    assert!(!ok && err.contains("symbolic link"), "{err}");

    // The state directory too.
    std::fs::create_dir_all(&root.state_root).unwrap();
    std::os::unix::fs::chown(&root.state_root, Some(65534), Some(65534)).unwrap();
    let (ok, _, err) = root.moat(&args);
    assert!(
        !ok,
        "apply must refuse a state directory owned by uid 65534"
    );
    assert!(
        err.contains(&format!("refusing to use {}", root.state_root)),
        "{err}"
    );
    assert!(!lab.b_has_xdp().unwrap(), "nothing stays attached");
    std::fs::remove_dir(&root.state_root).unwrap();

    // Made by moat: root's, closed to others; the state file unreadable to others.
    root.ok(&args);
    for d in [
        PathBuf::from(&root.pin_root),
        Path::new(&root.pin_root).join("fw"),
        Path::new(&root.pin_root).join("fw/links"),
        PathBuf::from(&root.state_root),
        Path::new(&root.state_root).join("fw"),
    ] {
        let md = std::fs::metadata(&d).unwrap();
        assert_eq!(md.uid(), 0, "{} owned by root", d.display());
        assert_eq!(md.mode() & 0o077, 0, "{} closed to others", d.display());
    }
    let sf = std::fs::metadata(Path::new(&root.state_root).join("fw/state.json")).unwrap();
    assert_eq!(sf.mode() & 0o077, 0, "state.json is not readable by others");
}

#[test]
fn a_failed_apply_rolls_back_and_never_reuses_its_generation() {
    if !common::privileged("a_failed_apply_rolls_back_and_never_reuses_its_generation") {
        return;
    }
    let t = common::tag("roll");
    let lab = lab("roll");
    let root = FwRoot::new(&t);
    let _echo = Echo::start(&lab.ns_b, 7000);
    // A second interface in b that another XDP program holds: attaching
    // the firewall there fails after the first interface was switched.
    netlab::ip(&[
        "-n", &lab.ns_b, "link", "add", "x1", "type", "veth", "peer", "name", "x2",
    ])
    .unwrap();
    for d in ["x1", "x2"] {
        netlab::ip(&["-n", &lab.ns_b, "link", "set", d, "up"]).unwrap();
    }
    let allow = policy_file(&t, ALLOW_7000);
    let out = root.ok(&apply_args(&allow, &lab, &[]));
    assert_eq!(generation_of(&out), 1);
    let mut conn = Conn::open(&lab.ns_a, 7000);
    assert!(conn.round(), "the connection works under the first policy");

    let mut holder = MoatProc::spawn(&[
        "count",
        "-i",
        "x1",
        "--netns",
        &lab.ns_b,
        "--duration",
        "60s",
    ]);
    holder.wait_stderr("attached to x1", Duration::from_secs(20));
    let (ok, _, err) = root.moat(&apply_args(&allow, &lab, &["-i", "x1"]));
    holder.signal(libc::SIGINT);
    let _ = holder.finish();
    assert!(!ok, "the apply over x1 must fail");
    assert!(
        err.contains("rolled back")
            && err.contains(&format!("{}: previous policy restored", lab.if_b))
            && err.contains("generation 2 is spent"),
        "the failure says what was rolled back: {err}"
    );
    let st = root.status();
    assert_eq!(
        st["generation"], 1,
        "the kernel runs the old generation again: {st}"
    );
    assert!(conn.round(), "the connection still works (old policy)");

    // A deny now must cut the connection: its generation is new (3), not
    // the failed apply's 2, so the connection is re-checked.
    let deny = policy_file_as(&t, "deny.yaml", DENY_ALL);
    let out = root.ok(&apply_args(&deny, &lab, &[]));
    assert_eq!(generation_of(&out), 3, "generation 2 is never reused");
    assert!(!conn.round(), "the deny cuts the live connection");
}

#[test]
fn concurrent_applies_run_one_at_a_time_with_distinct_generations() {
    if !common::privileged("concurrent_applies_run_one_at_a_time_with_distinct_generations") {
        return;
    }
    let t = common::tag("conc");
    let lab = lab("conc");
    let root = FwRoot::new(&t);
    let pols: Vec<PathBuf> = (0..4)
        .map(|i| {
            let dir = common::policy_dir(&t).join(i.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("policy.yaml");
            std::fs::write(&p, ALLOW_7000.replace("7000", &(7000 + i).to_string())).unwrap();
            p
        })
        .collect();
    let procs: Vec<MoatProc> = pols
        .iter()
        .map(|p| MoatProc::spawn_env(&apply_args(p, &lab, &[]), &root.env()))
        .collect();
    let mut gens = Vec::new();
    for p in procs {
        let (ok, out, err) = p.finish();
        assert!(ok, "every apply succeeds (they wait for each other): {err}");
        gens.push(generation_of(&out));
    }
    gens.sort_unstable();
    assert_eq!(gens, vec![1, 2, 3, 4], "each apply got its own generation");
    let st = root.status();
    assert_eq!(st["generation"], 4, "{st}");
    assert_eq!(st["state_file"], "ok", "{st}");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Mount(String);

impl Mount {
    fn tmpfs(at: &str, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o700)).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                at,
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mounting tmpfs on {at}");
        Mount(at.to_string())
    }
    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}"), &self.0])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The state file and the record of the applied file are
                // expected; anything else (a temporary file) is a leftover.
                .filter(|n| n != "state.json" && n != "source.json")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn state_damage_never_locks_the_operator_out() {
    if !common::privileged("state_damage_never_locks_the_operator_out") {
        return;
    }
    let t = common::tag("dmg");
    let lab = lab("dmg");
    let root = FwRoot::new(&t);
    let _echo = Echo::start(&lab.ns_b, 7000);
    let allow = policy_file(&t, ALLOW_7000);
    let args = apply_args(&allow, &lab, &[]);
    root.ok(&args);
    let state_file = Path::new(&root.state_root).join("fw/state.json");

    // Deleted: status still reports what runs, and the firewall still filters.
    std::fs::remove_file(&state_file).unwrap();
    let st = root.status();
    assert_eq!(st["attached"], true, "{st}");
    assert_eq!(st["generation"], 1, "{st}");
    assert_eq!(st["state_file"], "missing", "{st}");
    assert!(!udp_ok(&lab.ns_a, 7001), "default deny still holds");
    let (ok, out, _) = root.moat(&["fw", "status"]);
    assert!(
        ok && out.contains("generation 1") && out.contains(&lab.if_b),
        "{out}"
    );

    // Apply works without it (and writes a new one).
    let out = root.ok(&args);
    assert_eq!(generation_of(&out), 2);
    assert_eq!(root.status()["state_file"], "ok");

    // Truncated: status, apply and detach all work.
    let text = std::fs::read(&state_file).unwrap();
    std::fs::write(&state_file, &text[..text.len() / 2]).unwrap();
    let st = root.status();
    assert_eq!(st["generation"], 2, "{st}");
    assert!(
        st["state_file"].as_str().unwrap().starts_with("damaged"),
        "{st}"
    );
    let (ok, _, err) = root.moat(&args);
    assert!(ok, "apply over a damaged state file: {err}");
    assert!(err.contains("state file is damaged"), "{err}");
    std::fs::write(&state_file, b"{\"generation\": ").unwrap();
    root.ok(&["fw", "detach"]);
    assert!(!lab.b_has_xdp().unwrap(), "detach removed the XDP program");
    assert!(
        !Path::new(&root.pin_root).join("fw").exists(),
        "detach removed every pin"
    );
    assert!(udp_ok(&lab.ns_a, 7001), "traffic flows after detach");
}

#[test]
fn a_read_only_or_full_state_directory_changes_nothing() {
    if !common::privileged("a_read_only_or_full_state_directory_changes_nothing") {
        return;
    }
    let t = common::tag("rofs");
    let lab = lab("rofs");
    let root = FwRoot::new(&t);
    let _echo = Echo::start(&lab.ns_b, 7000);
    let mount = Mount::tmpfs(&root.state_root, "256k");
    let allow = policy_file(&t, ALLOW_7000);
    let deny = policy_file_as(&t, "deny.yaml", DENY_ALL);
    root.ok(&apply_args(&allow, &lab, &[]));
    let state_dir = Path::new(&root.state_root).join("fw");
    assert!(Conn::open(&lab.ns_a, 7000).round());

    // Read-only /run: the apply fails before anything changes.
    mount.remount("ro");
    let (ok, _, err) = root.moat(&apply_args(&deny, &lab, &[]));
    assert!(!ok, "apply on a read-only state directory must fail");
    assert!(
        err.contains("Read-only file system") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(root.status()["generation"], 1, "the old policy runs");
    assert!(
        Conn::open(&lab.ns_a, 7000).round(),
        "and still allows its port"
    );
    mount.remount("rw");
    assert!(
        leftovers(&state_dir).is_empty(),
        "{:?}",
        leftovers(&state_dir)
    );

    // Full /run: the same.
    let fill = Path::new(&root.state_root).join("fill");
    let mut f = std::fs::File::create(&fill).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let (ok, _, err) = root.moat(&apply_args(&deny, &lab, &[]));
    assert!(!ok, "apply on a full state directory must fail");
    assert!(
        err.contains("No space left on device") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(root.status()["generation"], 1, "the old policy runs");
    assert!(Conn::open(&lab.ns_a, 7000).round());
    assert!(
        leftovers(&state_dir).is_empty(),
        "{:?}",
        leftovers(&state_dir)
    );

    // Detach works even on a read-only /run (the state file stays, ignored).
    mount.remount("ro");
    let (ok, _, err) = root.moat(&["fw", "detach"]);
    assert!(ok, "{err}");
    assert!(!lab.b_has_xdp().unwrap());
    let st = root.status();
    assert_eq!(st["attached"], false, "{st}");
    mount.remount("rw");
    std::fs::remove_file(&fill).unwrap();
}

/// A UDP client in namespace `ns`, ready before it is needed: `fire` sends
/// one datagram at once and says whether its echo came back.
struct ReadyUdp(UdpSocket);

impl ReadyUdp {
    fn new(ns: &str) -> ReadyUdp {
        let u = in_ns(ns, || UdpSocket::bind("0.0.0.0:0").unwrap());
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        ReadyUdp(u)
    }
    fn fire(&self, port: u16, tag: u8) -> bool {
        self.0
            .send_to(&[tag; 4], SocketAddr::new(ip(netlab::B4), port))
            .unwrap();
        let mut buf = [0u8; 16];
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match self.0.recv_from(&mut buf) {
                Ok((4, _)) if buf[0] == tag => return true,
                Ok(_) => continue, // a late echo of an earlier datagram
                Err(_) => return false,
            }
        }
        false
    }
}

#[test]
fn detach_means_detached_at_once() {
    if !common::privileged("detach_means_detached_at_once") {
        return;
    }
    let t = common::tag("det");
    let lab = lab("det");
    let root = FwRoot::new(&t);
    let _echo = Echo::start(&lab.ns_b, 7000);
    let pol = policy_file(&t, ALLOW_7000);
    let udp = ReadyUdp::new(&lab.ns_a);
    for round in 0..5u8 {
        root.ok(&apply_args(&pol, &lab, &[]));
        assert!(!udp.fire(7001, 100 + round), "round {round}: UDP denied");
        assert!(
            !ping_ok(&lab.ns_a, ip(netlab::B4)),
            "round {round}: ping denied"
        );
        root.ok(&["fw", "detach"]);
        // The very first datagram after detach returns, sent at once from a
        // socket made beforehand, must get through.
        assert!(
            udp.fire(7001, round),
            "round {round}: the first UDP datagram right after detach was dropped"
        );
        assert!(
            ping_ok(&lab.ns_a, ip(netlab::B4)),
            "round {round}: the first ping right after detach was dropped"
        );
        assert!(!lab.b_has_xdp().unwrap());
    }
}

#[test]
fn policies_that_are_not_what_they_look_like_change_nothing() {
    if !common::privileged("policies_that_are_not_what_they_look_like_change_nothing") {
        return;
    }
    let t = common::tag("pol");
    let lab = lab("pol");
    let root = FwRoot::new(&t);
    let _echo = Echo::start(&lab.ns_b, 7000);
    let good = policy_file(&t, ALLOW_7000);
    root.ok(&apply_args(&good, &lab, &[]));
    let fifo = common::policy_dir(&t).join("fifo.yaml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let forms: Vec<(PathBuf, &str)> = vec![
        (policy_file_as(&t, "empty.yaml", ""), "the policy is empty"),
        (
            policy_file_as(&t, "comments.yaml", "# nothing here\n"),
            "the policy is empty",
        ),
        (PathBuf::from("/dev/null"), "must be a regular file"),
        (fifo, "must be a regular file, this is a FIFO"),
        (
            policy_file_as(
                &t,
                "two.yaml",
                &format!("{DENY_ALL}---\ndefault: {{ ingress: allow }}\nrules: []\n"),
            ),
            "a second YAML document",
        ),
        (
            policy_file_as(&t, "nul.yaml", "default: { ingress: allow }\nrules: []\0\n"),
            "NUL byte",
        ),
        (
            policy_file_as(
                &t,
                "cut.yaml",
                "default: { ingress: allow, egress: allow }\n",
            ),
            "no `rules:` key",
        ),
    ];
    for (pol, why) in &forms {
        for cmd in ["check", "apply"] {
            let args = if cmd == "check" {
                vec!["fw", "check", "-f", pol.to_str().unwrap()]
            } else {
                apply_args(pol, &lab, &[])
            };
            let t0 = Instant::now();
            let (ok, _, err) = root.moat(&args);
            assert!(!ok, "{cmd} {} must be refused", pol.display());
            assert!(
                err.contains(why) && err.contains("nothing was changed"),
                "{cmd} {}: {err}",
                pol.display()
            );
            assert!(t0.elapsed() < Duration::from_secs(10), "no hang");
        }
    }
    // Past the memory budget: refused with the rule that makes it big.
    let mut big = String::from("default: { ingress: deny }\nrules:\n");
    for i in 0..200 {
        big.push_str(&format!(
            "  - {{ name: h{i}, direction: ingress, action: deny, remote: [10.9.0.{}/32], proto: tcp, ports: [22] }}\n",
            i + 1
        ));
    }
    let ports: Vec<String> = (0..200).map(|i| (1000 + 2 * i).to_string()).collect();
    big.push_str(&format!(
        "  - {{ name: many-ports, direction: ingress, action: allow, proto: tcp, ports: [{}] }}\n",
        ports.join(", ")
    ));
    let bigp = policy_file_as(&t, "big.yaml", &big);
    let (ok, _, err) = root.moat(&[
        "fw",
        "check",
        "-f",
        bigp.to_str().unwrap(),
        "--memory-budget",
        "1MiB",
    ]);
    assert!(
        !ok && err.contains("more than the budget") && err.contains("\"many-ports\""),
        "{err}"
    );
    let (ok, _, err) = root.moat(&apply_args(&bigp, &lab, &["--memory-budget", "1MiB"]));
    assert!(
        !ok && err.contains("more than the budget") && err.contains("nothing was changed"),
        "{err}"
    );
    root.ok(&["fw", "check", "-f", bigp.to_str().unwrap()]);

    let st = root.status();
    assert_eq!(
        st["generation"], 1,
        "the running firewall is untouched: {st}"
    );
    assert!(!udp_ok(&lab.ns_a, 7001), "still default deny");
    assert!(Conn::open(&lab.ns_a, 7000).round(), "still allows 7000");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// One scrape; the time it took.
fn scrape(addr: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    (s, t0.elapsed())
}

#[test]
fn the_metrics_endpoint_cannot_be_stalled_by_a_local_user() {
    if !common::privileged("the_metrics_endpoint_cannot_be_stalled_by_a_local_user") {
        return;
    }
    let t = common::tag("mx");
    let lab = lab("mx");
    let root = FwRoot::new(&t);
    root.ok(&apply_args(&policy_file(&t, ALLOW_7000), &lab, &[]));
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let mut m = MoatProc::spawn_env(
        &["metrics", "--listen", &addr, "--duration", "60s"],
        &root.env(),
    );
    m.wait_stderr("serving Prometheus metrics", Duration::from_secs(10));
    let pid = m.child.id();
    let (body, _) = scrape(&addr);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");

    // Five idle connections and a slowloris (one header byte every 200 ms).
    let idle: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let a2 = addr.clone();
    let slow = std::thread::spawn(move || {
        let mut c = TcpStream::connect(&a2).unwrap();
        let t0 = Instant::now();
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
        while !s2.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
            if c.write_all(b"a").is_err() {
                return Some(t0.elapsed()); // the server hung up on us
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    });
    // A 200 MB header line.
    let a3 = addr.clone();
    let huge = std::thread::spawn(move || {
        let mut c = TcpStream::connect(&a3).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nX-Huge: ");
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 200 << 20 {
            if c.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    // Scrapes still answer at once, while all of the above is going on.
    for _ in 0..3 {
        let (body, took) = scrape(&addr);
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("moat_policy_generation 1"), "{body}");
        assert!(
            took < Duration::from_secs(3),
            "a scrape took {took:?} with idle, slow and huge clients connected"
        );
    }
    let sent = huge.join().unwrap();
    assert!(
        sent < 32 << 20,
        "the server hung up on the 200 MB header early (accepted {sent} bytes)"
    );
    assert!(
        rss_kb(pid) < 100_000,
        "the server's memory stays small: {} kB",
        rss_kb(pid)
    );
    let hung_up = slow.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(
        hung_up.is_some_and(|d| d < Duration::from_secs(15)),
        "the slowloris client is cut off by the header timeout: {hung_up:?}"
    );
    drop(idle);
    m.signal(libc::SIGINT);
    let (ok, _, err) = m.finish();
    assert!(ok, "{err}");
}
