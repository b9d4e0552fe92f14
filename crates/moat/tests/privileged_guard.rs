//! `moat guard` on the real kernel with real processes: opens denied (the
//! file is not read), logged (one event names it) and killed (SIGKILL);
//! connects denied outside the allowed networks; an exec denied (its side
//! effect does not happen) and an exec killed by its lineage; setuid and
//! ptrace killed at the syscall; a storm counted exactly per rule; `guard
//! test` reporting without enforcing; `guard detach` leaving no program or
//! pin. Every rule names the test's own cgroup v2 directory, so the host
//! and the other tests are not affected; everything is removed on drop.

mod common;

use std::{
    os::unix::process::ExitStatusExt,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use common::{Cgroup, GuardRoot, privileged, prog_loaded, tag};
use serde_json::Value;

fn run(o: std::io::Result<Output>) -> Output {
    o.expect("spawning a test process")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn events(root: &GuardRoot) -> Vec<Value> {
    std::fs::read_to_string(Path::new(&root.state_root).join("guard/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until an event of `rule` satisfying `f` is in the log.
fn wait_event(root: &GuardRoot, rule: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(e) = events(root).into_iter().find(|e| e["rule"] == rule && f(e)) {
            return e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no event of rule {rule}; events: {:?}",
            events(root)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(root: &GuardRoot) -> Value {
    serde_json::from_str(&root.ok(&["guard", "status", "--json"])).expect("status JSON")
}

fn rule_count(st: &Value, rule: &str, what: &str) -> u64 {
    st["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in {st}"))[what]
        .as_u64()
        .unwrap()
}

#[test]
fn opens_are_denied_logged_and_killed_inside_the_cgroup_only() {
    if !privileged("opens_are_denied_logged_and_killed_inside_the_cgroup_only") {
        return;
    }
    let t = tag("go");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let d = root.dir.clone();
    let secret = d.join("secret");
    std::fs::write(&secret, "the secret\n").unwrap();
    let killme = d.join("killme");
    std::fs::write(&killme, "k\n").unwrap();
    let wfile = d.join("wfile");
    std::fs::write(&wfile, "w\n").unwrap();
    std::fs::create_dir_all(d.join("logged")).unwrap();
    std::fs::write(d.join("logged/a"), "a\n").unwrap();
    let cgs = cg.0.display().to_string();
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:
  - name: secret-deny
    on: open
    match: {{ path: [{s}], cgroup: {cgs} }}
    action: deny
  - name: killme
    on: open
    match: {{ path: [{k}], cgroup: {cgs} }}
    action: kill
  - name: no-write
    on: open
    match: {{ path: [{w}], access: write, cgroup: {cgs} }}
    action: deny
  - name: logged
    on: open
    match: {{ path: [\"{l}/\"], cgroup: {cgs} }}
    action: log
",
            s = secret.display(),
            k = killme.display(),
            w = wfile.display(),
            l = d.join("logged").display(),
        ),
    );
    let ps = policy.display().to_string();
    // guard test: reports, enforces nothing (cat prints the secret).
    let (ok, out, err) = root.moat(&[
        "guard",
        "test",
        "-f",
        &ps,
        "--",
        "cat",
        &secret.display().to_string(),
    ]);
    assert!(ok, "guard test: {out}{err}");
    assert!(out.contains("the secret"), "{out}");
    assert!(out.contains("WOULD DENY secret-deny"), "{out}");

    let out = root.ok(&["guard", "apply", "-f", &ps]);
    assert!(out.contains("fanotify FAN_OPEN_PERM"), "{out}");
    // Deny: EPERM and the content is not read.
    let o = run(cg.command("cat", &[&secret.display().to_string()]).output());
    assert!(!o.status.success());
    assert!(text(&o).contains("Operation not permitted"), "{}", text(&o));
    assert!(!text(&o).contains("the secret"));
    let e = wait_event(&root, "secret-deny", |_| true);
    assert_eq!(e["action"], "deny");
    assert_eq!(e["event"], "open");
    assert_eq!(e["path"], secret.display().to_string());
    assert_eq!(e["binary"], "/usr/bin/cat");
    // Outside the cgroup: unaffected.
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "the secret\n");
    // Kill: SIGKILL at the open.
    let o = run(cg.command("cat", &[&killme.display().to_string()]).output());
    assert_eq!(o.status.signal(), Some(9), "{:?} {}", o.status, text(&o));
    assert!(!text(&o).contains("k\n"));
    // Access: reading the write-guarded file works, appending does not.
    let o = run(cg.command("cat", &[&wfile.display().to_string()]).output());
    assert!(o.status.success(), "{}", text(&o));
    let o = run(cg
        .command("sh", &["-c", &format!("echo more >> {}", wfile.display())])
        .output());
    assert!(!o.status.success(), "append under no-write succeeded");
    assert_eq!(std::fs::read_to_string(&wfile).unwrap(), "w\n");
    // Log: the read succeeds, one event names the file; a directory made
    // after apply is covered after the next rescan (every second).
    let o = run(cg
        .command("cat", &[&d.join("logged/a").display().to_string()])
        .output());
    assert!(o.status.success() && text(&o).contains("a\n"));
    wait_event(&root, "logged", |e| {
        e["path"] == d.join("logged/a").display().to_string() && e["action"] == "log"
    });
    std::fs::create_dir_all(d.join("logged/new")).unwrap();
    std::fs::write(d.join("logged/new/b"), "b\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let o = run(cg
        .command("cat", &[&d.join("logged/new/b").display().to_string()])
        .output());
    assert!(o.status.success());
    wait_event(&root, "logged", |e| {
        e["path"] == d.join("logged/new/b").display().to_string()
    });
    // Counts from the kernel map the enforcer pinned.
    let st = status(&root);
    assert_eq!(st["running"], true);
    assert_eq!(rule_count(&st, "secret-deny", "matched"), 1);
    assert_eq!(rule_count(&st, "killme", "matched"), 1);
    assert_eq!(rule_count(&st, "no-write", "matched"), 1);
    assert_eq!(rule_count(&st, "logged", "matched"), 2);
    // Detach: the enforcer, its programs and its pins go.
    let ids: Vec<u32> = st["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| common::prog_id(p.as_str().unwrap()))
        .collect();
    assert!(!ids.is_empty());
    let pins = Path::new(&root.pin_root).join("guard");
    assert!(pins.read_dir().unwrap().next().is_some());
    root.ok(&["guard", "detach"]);
    let t0 = Instant::now();
    while ids.iter().any(|i| prog_loaded(*i)) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ids.iter().all(|i| !prog_loaded(*i)),
        "programs left after detach"
    );
    assert!(
        pins.read_dir()
            .map(|mut r| r.next().is_none())
            .unwrap_or(true)
    );
    let o = run(cg.command("cat", &[&secret.display().to_string()]).output());
    assert!(o.status.success(), "still denied after detach");
    assert_eq!(status(&root)["running"], false);
}

#[test]
fn connects_are_denied_outside_the_allowed_networks() {
    if !privileged("connects_are_denied_outside_the_allowed_networks") {
        return;
    }
    let t = tag("gc");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:
  - name: egress
    on: connect
    match: {{ cgroup: {}, remote_not: [127.0.0.0/8, \"::1\"] }}
    action: deny
",
            cg.0.display()
        ),
    );
    root.ok(&["guard", "apply", "-f", &policy.display().to_string()]);
    let bash = |dst: &str| format!("timeout 2 bash -c 'echo hi > /dev/tcp/{dst}'");
    // Inside the allowed network: the connection is made.
    let o = run(cg
        .command("sh", &["-c", &bash(&format!("127.0.0.1/{port}"))])
        .output());
    assert!(o.status.success(), "loopback denied: {}", text(&o));
    let (_s, _) = l.accept().unwrap();
    // Outside: EPERM, and an event names the remote.
    let o = run(cg.command("sh", &["-c", &bash("10.255.255.1/80")]).output());
    assert!(text(&o).contains("Operation not permitted"), "{}", text(&o));
    let e = wait_event(&root, "egress", |_| true);
    assert_eq!(e["remote"], "10.255.255.1");
    assert_eq!(e["port"], 80);
    assert_eq!(e["action"], "deny");
    // A process outside the cgroup is not affected (no EPERM).
    let o = run(std::process::Command::new("sh")
        .args(["-c", &bash("10.255.255.1/80")])
        .output());
    assert!(
        !text(&o).contains("Operation not permitted"),
        "{}",
        text(&o)
    );
    let st = status(&root);
    assert_eq!(rule_count(&st, "egress", "matched"), 1);
}

#[test]
fn execs_are_denied_by_directory_and_killed_by_lineage() {
    if !privileged("execs_are_denied_by_directory_and_killed_by_lineage") {
        return;
    }
    let t = tag("ge");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let d = root.dir.clone();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = d.join("ran");
    let script = bin.join("mk");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A shell of its own (a copy: another inode) as the ancestor to match.
    let mysh = d.join("mysh");
    std::fs::copy("/bin/dash", &mysh).unwrap();
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:
  - name: no-exec-from-bin
    on: exec
    match: {{ binary: [\"{b}/\"], cgroup: {c} }}
    action: deny
  - name: no-sleep-under-mysh
    on: exec
    match: {{ binary: [/usr/bin/sleep], ancestor: [{m}], cgroup: {c} }}
    action: kill
",
            b = bin.display(),
            m = mysh.display(),
            c = cg.0.display()
        ),
    );
    root.ok(&["guard", "apply", "-f", &policy.display().to_string()]);
    // Deny: the exec fails with EPERM and the script's side effect is absent.
    let direct = cg.command(&script.display().to_string(), &[]).output();
    assert_eq!(
        direct.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EPERM),
        "{direct:?}"
    );
    let o2 = run(cg
        .command("sh", &["-c", &format!("{}; echo rc=$?", script.display())])
        .output());
    assert!(
        text(&o2).contains("Permission denied") || text(&o2).contains("not permitted"),
        "{}",
        text(&o2)
    );
    assert!(!marker.exists(), "the denied script ran");
    let e = wait_event(&root, "no-exec-from-bin", |_| true);
    assert_eq!(e["action"], "deny");
    assert_eq!(e["path"], script.display().to_string());
    // Outside the cgroup it runs.
    let o = run(std::process::Command::new(&script).output());
    assert!(o.status.success(), "{}", text(&o));
    assert!(marker.exists());
    // Kill by lineage: sleep under mysh dies, sleep under sh does not.
    let t0 = Instant::now();
    let o = run(cg
        .command(&mysh.display().to_string(), &["-c", "sleep 5; echo rc=$?"])
        .output());
    assert!(text(&o).contains("rc=137"), "{}", text(&o));
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "sleep was not killed"
    );
    let e = wait_event(&root, "no-sleep-under-mysh", |_| true);
    assert_eq!(e["action"], "kill");
    assert_eq!(e["binary"], "/usr/bin/sleep");
    assert!(
        e["ancestors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["binary"] == mysh.display().to_string()),
        "{e}"
    );
    let o = run(cg.command("sh", &["-c", "sleep 0.1; echo rc=$?"]).output());
    assert!(text(&o).contains("rc=0"), "{}", text(&o));
    let st = status(&root);
    assert_eq!(rule_count(&st, "no-sleep-under-mysh", "matched"), 1);
    // Two denied tries: the direct exec and the one through sh.
    assert_eq!(rule_count(&st, "no-exec-from-bin", "matched"), 2);
}

#[test]
fn setuid_and_ptrace_are_killed_at_the_syscall() {
    if !privileged("setuid_and_ptrace_are_killed_at_the_syscall") {
        return;
    }
    let t = tag("gs");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let c = cg.0.display().to_string();
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:
  - name: no-setuid
    on: setuid
    match: {{ cgroup: {c} }}
    action: kill
  - name: no-ptrace
    on: ptrace
    match: {{ cgroup: {c} }}
    action: kill
"
        ),
    );
    root.ok(&["guard", "apply", "-f", &policy.display().to_string()]);
    // perl's $< = 0 calls setreuid; syscall(101, 16, ...) is PTRACE_ATTACH.
    let o = run(cg
        .command("perl", &["-e", "$< = 0; print \"after\\n\""])
        .output());
    assert_eq!(o.status.signal(), Some(9), "{}", text(&o));
    assert!(!text(&o).contains("after"));
    let mut victim = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let o = run(cg
        .command(
            "perl",
            &[
                "-e",
                &format!(
                    "syscall(101, 16, {}, 0, 0); print \"after\\n\"",
                    victim.id()
                ),
            ],
        )
        .output());
    assert_eq!(o.status.signal(), Some(9), "{}", text(&o));
    let _ = victim.kill();
    let _ = victim.wait();
    let e = wait_event(&root, "no-ptrace", |_| true);
    assert_eq!(e["syscall"], 16);
    assert_eq!(e["action"], "kill");
    wait_event(&root, "no-setuid", |e| e["action"] == "kill");
    // Outside the cgroup, the same calls return.
    let o = run(std::process::Command::new("perl")
        .args(["-e", "$< = 0; print \"after\\n\""])
        .output());
    assert!(text(&o).contains("after"));
}

#[test]
fn an_exec_storm_is_counted_exactly_per_rule() {
    if !privileged("an_exec_storm_is_counted_exactly_per_rule") {
        return;
    }
    const N: usize = 20_000;
    let t = tag("gx");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let tru = root.dir.join("true");
    std::fs::copy("/bin/true", &tru).unwrap();
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:
  - name: storm
    on: exec
    match: {{ binary: [{}], cgroup: {} }}
    action: log
",
            tru.display(),
            cg.0.display()
        ),
    );
    // A small ring: the enforcer's reader cannot keep up, losses are counted.
    root.ok(&[
        "guard",
        "apply",
        "-f",
        &policy.display().to_string(),
        "--ring-size",
        "8192",
    ]);
    let t0 = Instant::now();
    let o = run(cg
        .command(
            "sh",
            &[
                "-c",
                &format!(
                    "i=0; while [ $i -lt {N} ]; do {}; i=$((i+1)); done",
                    tru.display()
                ),
            ],
        )
        .output());
    assert!(o.status.success(), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(300));
    let st = status(&root);
    assert_eq!(rule_count(&st, "storm", "matched"), N as u64);
    let (ev, lost) = (
        rule_count(&st, "storm", "events"),
        rule_count(&st, "storm", "lost"),
    );
    assert_eq!(ev + lost, N as u64, "events {ev} + lost {lost}");
    // Every written event reaches the log (give the reader a moment).
    let t0 = Instant::now();
    while (events(&root).len() as u64) < ev && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(events(&root).len() as u64, ev);
}

/// Every file of the rule pack passes `guard check` (no privileges needed).
#[test]
fn the_rule_pack_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guard");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let o = run(std::process::Command::new(common::moat_bin())
            .args(["guard", "check", "-f"])
            .arg(e.path())
            .output());
        assert!(o.status.success(), "{}: {}", e.path().display(), text(&o));
        n += 1;
    }
    assert!(n >= 2);
}

/// The rule pack's detections fire on what they name (under `guard test`:
/// the throwaway cgroup, log-only, nothing is stopped).
#[test]
fn the_rule_pack_detects_what_it_names() {
    if !privileged("the_rule_pack_detects_what_it_names") {
        return;
    }
    let t = tag("gp");
    let root = GuardRoot::new(&t);
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guard/falco-like.yaml");
    let tmpbin = format!("/tmp/moat-guard-pack-{t}");
    let etcfile = format!("/etc/moat-pack-{t}");
    let memfd = "my $n = \"x\"; my $fd = syscall(319, $n, 0); open(my $o, \">&=$fd\") or die; \
                 open(my $i, \"<:raw\", \"/bin/true\") or die; my $d = do { local $/; <$i> }; \
                 print $o $d; $o->flush; exec \"/proc/self/fd/$fd\"";
    let script = format!(
        "cat /etc/shadow > /dev/null; cp /bin/true {tmpbin}; {tmpbin}; rm -f {tmpbin}; \
         perl -e '$< = 0'; sleep 3 & perl -e 'syscall(101, 16, '$!', 0, 0)'; kill $! 2>/dev/null; \
         echo x > {etcfile}; rm -f {etcfile}; perl -e '{memfd}'; true"
    );
    let (_, out, err) = root.moat(&[
        "guard",
        "test",
        "--json",
        "-f",
        &pack.display().to_string(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let _ = std::fs::remove_file(&tmpbin);
    let _ = std::fs::remove_file(&etcfile);
    let evs: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let has = |rule: &str| evs.iter().any(|e| e["rule"] == rule);
    assert!(has("read-sensitive-files"), "{out}{err}");
    assert!(
        evs.iter()
            .any(|e| e["rule"] == "exec-from-tmp" && e["binary"] == tmpbin.as_str()),
        "{out}{err}"
    );
    assert!(has("unexpected-setuid"), "{out}{err}");
    assert!(has("ptrace-attach"), "{out}{err}");
    assert!(
        evs.iter()
            .any(|e| e["rule"] == "write-below-etc" && e["path"] == etcfile.as_str()),
        "{out}{err}"
    );
    assert!(
        evs.iter().any(|e| e["rule"] == "fileless-exec"
            && e["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "memfd_or_deleted"))),
        "{out}{err}"
    );
    // Nothing outside the throwaway cgroup: every event's pid was ours.
    assert!(evs.iter().all(|e| e["action"] == "log"), "{out}");
}

/// The pack's lineage, terminal and network detections: a shell whose ancestor is
/// a network service (the pack's list, with this test's stand-in for nginx
/// put first: a copy of bash at a path of its own), and curl connecting to
/// an address outside the private ranges (203.0.113.7, on the loopback of a
/// namespace this test makes, so nothing leaves the machine), and a shell
/// with a terminal (script(1) gives it one; the guard test's cgroup stands
/// in for the service's) while the shells without one are not reported.
#[test]
fn the_rule_pack_sees_a_shell_under_a_network_service_and_an_unexpected_outbound_connect() {
    if !privileged(
        "the_rule_pack_sees_a_shell_under_a_network_service_and_an_unexpected_outbound_connect",
    ) {
        return;
    }
    let t = tag("go");
    let root = GuardRoot::new(&t);
    let pack = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guard/falco-like.yaml"),
    )
    .unwrap();
    let nginx = root.dir.join("nginx");
    std::fs::copy("/usr/bin/bash", &nginx).unwrap();
    let list = "ancestor: [/usr/sbin/nginx,";
    assert!(pack.contains(list), "the pack's ancestor list moved");
    let policy = root.file(
        "pack.yaml",
        &pack.replace(
            list,
            &format!("ancestor: [{},", nginx.display()).replacen(',', ", /usr/sbin/nginx,", 1),
        ),
    );
    let ns = format!("moat-{t}");
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let _ns = Ns(ns.clone());
    for a in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", "203.0.113.7/32", "dev", "lo"],
    ] {
        let st = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(&a)
            .status()
            .unwrap();
        assert!(st.success(), "ip -n {ns} {a:?}");
    }
    let script = format!(
        "{nginx} -c 'sh -c true'; ip netns exec {ns} curl -s -m 2 http://203.0.113.7:9/ ; \
         curl -s -m 2 http://127.0.0.1:9/ ; SHELL=/bin/sh script -qec 'sh -c true' /dev/null; true",
        nginx = nginx.display()
    );
    let (_, out, err) = root.moat(&[
        "guard",
        "test",
        "--json",
        "-f",
        &policy.display().to_string(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let evs: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let shell = evs
        .iter()
        .find(|e| e["rule"] == "shell-from-network-service")
        .unwrap_or_else(|| panic!("no shell-from-network-service event:\n{out}{err}"));
    assert_eq!(shell["binary"], "/usr/bin/sh", "{shell}");
    let conns: Vec<&Value> = evs
        .iter()
        .filter(|e| e["rule"] == "unexpected-outbound")
        .collect();
    assert_eq!(
        conns.len(),
        1,
        "one unexpected connect (not the one to 127.0.0.1):\n{out}{err}"
    );
    assert_eq!(conns[0]["remote"], "203.0.113.7", "{}", conns[0]);
    assert_eq!(conns[0]["binary"], "/usr/bin/curl", "{}", conns[0]);
    let term: Vec<&Value> = evs
        .iter()
        .filter(|e| e["rule"] == "terminal-shell-in-service")
        .collect();
    assert!(
        !term.is_empty(),
        "no terminal-shell-in-service event:\n{out}{err}"
    );
    for e in &term {
        assert!(
            e["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "tty")),
            "a shell without a terminal reported: {e}"
        );
    }
}

/// Guard events also appear in `moat watch --json`, naming the rule and
/// the action (source "guard").
#[test]
fn guard_events_appear_in_watch() {
    if !privileged("guard_events_appear_in_watch") {
        return;
    }
    let t = tag("gw");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let secret = root.dir.join("secret");
    std::fs::write(&secret, "s\n").unwrap();
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:\n  - name: watched-deny\n    on: open\n    match: {{ path: [{}], cgroup: {} }}\n    action: deny\n",
            secret.display(),
            cg.0.display()
        ),
    );
    root.ok(&["guard", "apply", "-f", &policy.display().to_string()]);
    let watch = common::MoatProc::spawn_env(
        &[
            "watch",
            "--json",
            "--exec",
            "--binary",
            "/nonexistent",
            "--duration",
            "4",
        ],
        &root.env(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let o = run(cg.command("cat", &[&secret.display().to_string()]).output());
    assert!(!o.status.success());
    let (ok, out, err) = watch.finish();
    assert!(ok, "{out}{err}");
    let g: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["source"] == "guard")
        .collect();
    assert_eq!(g.len(), 1, "{out}");
    assert_eq!(g[0]["rule"], "watched-deny");
    assert_eq!(g[0]["action"], "deny");
    assert_eq!(g[0]["path"], secret.display().to_string());
}

/// listen: a bind of a guarded port fails with EPERM (nothing listens) or
/// the process is killed at bind(2); other ports and other cgroups bind.
#[test]
fn listens_are_denied_or_killed_at_bind() {
    if !privileged("listens_are_denied_or_killed_at_bind") {
        return;
    }
    let t = tag("gl");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (pd, pk, po) = (free(), free(), free());
    let c = cg.0.display().to_string();
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:
  - name: no-listen
    on: listen
    match: {{ port: [{pd}], cgroup: {c} }}
    action: deny
  - name: kill-listen
    on: listen
    match: {{ port: [{pk}], cgroup: {c} }}
    action: kill
"
        ),
    );
    root.ok(&["guard", "apply", "-f", &policy.display().to_string()]);
    let listen = |port: u16| {
        format!(
            "IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => {port}, Listen => 1, ReuseAddr => 1) or die \"bind: $!\\n\"; print \"listening\\n\""
        )
    };
    let perl = |port: u16| ["-MIO::Socket::INET".to_string(), "-e".into(), listen(port)];
    let args = |port: u16| perl(port);
    let a = args(pd);
    let o = run(cg.command("perl", &[&a[0], &a[1], &a[2]]).output());
    assert!(text(&o).contains("Operation not permitted"), "{}", text(&o));
    assert!(!text(&o).contains("listening"));
    let a = args(pk);
    let o = run(cg.command("perl", &[&a[0], &a[1], &a[2]]).output());
    assert_eq!(o.status.signal(), Some(9), "{}", text(&o));
    let a = args(po);
    let o = run(cg.command("perl", &[&a[0], &a[1], &a[2]]).output());
    assert!(text(&o).contains("listening"), "other port: {}", text(&o));
    // Outside the cgroup the guarded port binds.
    let l = std::net::TcpListener::bind(("127.0.0.1", pd));
    assert!(l.is_ok(), "{l:?}");
    let e = wait_event(&root, "no-listen", |_| true);
    assert_eq!(e["event"], "listen");
    assert_eq!(e["port"], pd);
    assert_eq!(e["local"], "127.0.0.1");
    let st = status(&root);
    assert_eq!(rule_count(&st, "no-listen", "matched"), 1);
    assert_eq!(rule_count(&st, "kill-listen", "matched"), 1);
}

/// While a guard runs, `moat ps` prints the kernel's table: an exec without
/// a fork (`sh -c 'exec sleep'`) shows the image it replaced as its parent,
/// which /proc cannot tell.
#[test]
fn ps_prints_the_kernel_table_while_a_guard_runs() {
    if !privileged("ps_prints_the_kernel_table_while_a_guard_runs") {
        return;
    }
    let t = tag("gq");
    let root = GuardRoot::new(&t);
    let cg = Cgroup::new(&t);
    let policy = root.file(
        "guard.yaml",
        &format!(
            "rules:\n  - name: quiet\n    on: ptrace\n    match: {{ cgroup: {} }}\n    action: log\n",
            cg.0.display()
        ),
    );
    root.ok(&["guard", "apply", "-f", &policy.display().to_string()]);
    let mut child = std::process::Command::new("sh")
        .args(["-c", "exec sleep 5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let find = |out: &str| -> Value {
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in ps: {out}"))
    };
    let k = find(&root.ok(&["ps", "--json"]));
    assert!(
        k["source"].as_str().unwrap().starts_with("kernel table"),
        "{k}"
    );
    assert!(k["binary"].as_str().unwrap().ends_with("/sleep"), "{k}");
    assert_eq!(k["ppid"], std::process::id());
    // The parent image is the sh this sleep replaced: same pid, other exec id.
    let parent = k["parent_exec_id"].as_str().unwrap().to_string();
    assert!(parent.starts_with(&format!("{pid}:")), "{k}");
    assert_ne!(parent, k["exec_id"].as_str().unwrap(), "{k}");
    root.ok(&["guard", "detach"]);
    let p = find(&root.ok(&["ps", "--json"]));
    // Not the enforcer's any more: /proc, or the table of another moat
    // (this file's other tests run watches and guard tests alongside).
    let src = p["source"].as_str().unwrap();
    assert!(
        src == "/proc" || src.starts_with("kernel table (map id "),
        "{p}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// An open rule over the enforcer's own state (or /proc, /sys) is refused:
/// the enforcer would wait on its own permission events. Nothing starts.
#[test]
fn open_rules_over_the_enforcers_own_files_are_refused() {
    if !privileged("open_rules_over_the_enforcers_own_files_are_refused") {
        return;
    }
    let t = tag("gr");
    let root = GuardRoot::new(&t);
    let policy = root.file(
        "guard.yaml",
        "rules:\n  - name: all-of-run\n    on: open\n    match: { path: [\"/run/\"] }\n    action: log\n",
    );
    let (ok, out, err) = root.moat(&["guard", "apply", "-f", &policy.display().to_string()]);
    assert!(!ok, "applied: {out}");
    assert!(err.contains("keeps its state"), "{err}");
    assert!(err.contains("guard.yaml:2:"), "{err}");
    assert_eq!(status(&root)["running"], false);
    let policy = root.file(
        "proc.yaml",
        "rules:\n  - name: p\n    on: open\n    match: { path: [/proc/self/status] }\n    action: log\n",
    );
    let (ok, _, err) = root.moat(&["guard", "check", "-f", &policy.display().to_string()]);
    assert!(!ok && err.contains("would wait on itself"), "{err}");
}
