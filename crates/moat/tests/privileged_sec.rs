//! `moat watch` with real processes on the real kernel: exec ids that chain
//! through `bash -c 'sh -c "sleep …"'`, exact exit codes and signals, a
//! process that started before moat reported with its real parent, an exec
//! storm where events + lost = processes started exactly, kernel-side
//! filters (cgroup subtree, binaries), and nothing left behind at the end.
//! Each test runs its processes in its own cgroup v2 directory, removed at
//! the end (also on failure).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use common::Cgroup;
use serde_json::Value;

/// `moat watch --json …`, its lines read as they come.
struct Watch {
    child: Child,
    rx: Receiver<Value>,
    seen: Vec<Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        let mut child = Command::new(common::moat_bin())
            .arg("watch")
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (etx, erx) = channel();
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    stderr.lock().unwrap().push_str(&format!("{l}\n"));
                    if l.starts_with("attached") {
                        let _ = etx.send(l);
                    }
                }
            });
        }
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        if erx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!("moat watch did not attach: {}", stderr.lock().unwrap());
        }
        Watch {
            child,
            rx,
            seen: vec![],
            stderr,
        }
    }

    /// Events until `pred` has matched `n` of them (or `timeout`).
    fn collect(
        &mut self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        got.push(v);
                    }
                }
                Err(_) => panic!(
                    "{} of {n} events within {timeout:?}; all so far:\n{}\nstderr: {}",
                    got.len(),
                    self.seen
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr.lock().unwrap()
                ),
            }
        }
        got
    }

    /// SIGTERM, then the last line (totals) and the exit status.
    fn finish(mut self) -> (Value, Vec<Value>) {
        // SAFETY: kill on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut rest = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(v) if v["final"] == true => {
                    let st = self.child.wait().unwrap();
                    assert!(st.success(), "moat watch exit: {st:?}");
                    return (v, rest);
                }
                Ok(v) => rest.push(v),
                Err(_) => panic!("no final line; stderr: {}", self.stderr.lock().unwrap()),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prog_ids(stderr: &str) -> Vec<u32> {
    let l = stderr.lines().find(|l| l.starts_with("attached")).unwrap();
    let ids = l.split("prog ids ").nth(1).unwrap();
    let ids = &ids[..ids.find(')').unwrap()];
    ids.split(", ").map(|x| x.parse().unwrap()).collect()
}

#[test]
fn exec_ids_chain_and_exits_are_exact() {
    if !common::privileged("exec_ids_chain_and_exits_are_exact") {
        return;
    }
    let tag = common::tag("sec");
    let cg = Cgroup::new(&tag);
    // A process that started before moat: its exit names its real parent.
    let mut early = cg.command("/bin/sleep", &["30"]).spawn().unwrap();
    let early_pid = early.id();
    let cgs = cg.0.to_str().unwrap().to_string();
    let mut w = Watch::start(&["--cgroup", &cgs]);
    let ids = prog_ids(&w.stderr.lock().unwrap());
    assert_eq!(ids.len(), 3);

    // bash -c 'sh -c "sleep 0.2"': three execs, each the parent of the next.
    let st = cg
        .command("/bin/bash", &["-c", "sh -c \"sleep 0.2\""])
        .status()
        .unwrap();
    assert!(st.success());
    let execs = w.collect(3, Duration::from_secs(10), |v| v["event"] == "exec");
    let bins: Vec<&str> = execs
        .iter()
        .map(|v| v["binary"].as_str().unwrap())
        .collect();
    assert!(bins[0].ends_with("/bash"), "{bins:?}");
    assert!(bins[1].ends_with("/sh"), "{bins:?}");
    assert!(bins[2].ends_with("/sleep"), "{bins:?}");
    assert_eq!(
        execs[1]["parent_exec_id"], execs[0]["exec_id"],
        "sh's parent is bash"
    );
    assert_eq!(
        execs[2]["parent_exec_id"], execs[1]["exec_id"],
        "sleep's parent is sh"
    );
    assert_eq!(execs[2]["args"], serde_json::json!(["sleep", "0.2"]));
    // The ancestors of sleep name sh, then bash, then this test.
    let anc: Vec<&str> = execs[2]["ancestors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["binary"].as_str().unwrap())
        .collect();
    assert!(
        anc.len() >= 3 && anc[0].ends_with("/sh") && anc[1].ends_with("/bash"),
        "{anc:?}"
    );
    assert_eq!(
        execs[2]["ancestors"][2]["pid"],
        std::process::id(),
        "{anc:?}"
    );
    // bash's ppid is this test process (the kernel's parent).
    assert_eq!(execs[0]["ppid"], std::process::id());

    // Exit codes and signals, exactly.
    let st = cg.command("/bin/sh", &["-c", "exit 7"]).status().unwrap();
    assert_eq!(st.code(), Some(7));
    let e = w.collect(1, Duration::from_secs(10), |v| {
        v["event"] == "exit"
            && v["binary"].as_str().unwrap().ends_with("/sh")
            && v["exit_code"] == 7
    });
    assert_eq!(e[0]["signal"], 0);
    let st = cg
        .command("/bin/sh", &["-c", "kill -KILL $$"])
        .status()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    w.collect(1, Duration::from_secs(10), |v| {
        v["event"] == "exit" && v["signal"] == 9
    });

    // The early process: ended by SIGTERM; its exec id and its parent's are
    // the ones /proc gives, its ppid is this test.
    // SAFETY: kill on our own child.
    unsafe { libc::kill(early_pid as i32, libc::SIGTERM) };
    let _ = early.wait();
    let e = w.collect(1, Duration::from_secs(10), |v| {
        v["event"] == "exit" && v["pid"] == early_pid
    });
    assert_eq!(e[0]["signal"], 15);
    assert_eq!(e[0]["ppid"], std::process::id());
    let parent = e[0]["parent_exec_id"].as_str().unwrap();
    assert!(
        parent.starts_with(&format!("{}:", std::process::id())),
        "{parent}"
    );
    // Nothing outside the cgroup was reported: every event is the early
    // process or a descendant of this test.
    let mine = std::process::id() as u64;
    for v in &w.seen {
        let ours = v["pid"] == early_pid
            || v["ppid"] == mine
            || v["ancestors"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["pid"] == mine));
        assert!(ours, "an event from outside the test's cgroup: {v}");
    }

    let (last, _) = w.finish();
    assert_eq!(last["hooks"]["exec"]["lost"], 0, "{last}");
    assert_eq!(
        last["hooks"]["exec"]["events"], last["hooks"]["exec"]["matched"],
        "{last}"
    );
    // The end of watch leaves no program behind (the kernel frees tracing
    // programs after an RCU grace period: allow it a few seconds).
    let t0 = Instant::now();
    while ids.iter().any(|id| common::prog_loaded(*id)) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in ids {
        assert!(
            !common::prog_loaded(id),
            "program {id} still loaded 10 s after watch ended"
        );
    }
}

#[test]
fn an_exec_storm_is_counted_exactly() {
    if !common::privileged("an_exec_storm_is_counted_exactly") {
        return;
    }
    let tag = common::tag("sst");
    let cg = Cgroup::new(&tag);
    // A copy of true under a unique path: the binary filter matches it only.
    let dir = std::env::temp_dir().join(format!("moat-sec-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let t = dir.join("true");
    std::fs::copy("/bin/true", &t).unwrap();
    let ts = t.to_str().unwrap().to_string();
    let cgs = cg.0.to_str().unwrap().to_string();
    // A small ring (8 KiB: 9 events) so that the storm overflows it: every
    // event is then either read or counted lost, never silently gone.
    let w = Watch::start(&["--cgroup", &cgs, "--binary", &ts, "--ring-size", "8192"]);
    const N: usize = 20_000;
    let t0 = Instant::now();
    let mut storm = cg
        .command(
            "/bin/bash",
            &["-c", &format!("for ((i = 0; i < {N}; i++)); do {ts}; done")],
        )
        .spawn()
        .unwrap();
    // The reader stops for a while mid-storm: the ring fills and the rest
    // of that time's events are lost, each one counted.
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signals to our own child.
    unsafe { libc::kill(w.child.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: as above.
    unsafe { libc::kill(w.child.id() as i32, libc::SIGCONT) };
    assert!(storm.wait().unwrap().success());
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(240),
        "{N} processes took {took:?}"
    );
    // A process of the same binary outside the cgroup is not counted.
    assert!(Command::new(&ts).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let (last, events) = w.finish();
    let count = |kind: &str| events.iter().filter(|v| v["event"] == kind).count() as u64;
    let h = &last["hooks"];
    for kind in ["exec", "exit"] {
        let emitted = h[kind]["events"].as_u64().unwrap();
        let lost = h[kind]["lost"].as_u64().unwrap();
        assert_eq!(
            emitted,
            count(kind),
            "{kind}: events printed = events counted ({last})"
        );
        assert_eq!(
            emitted + lost,
            N as u64,
            "{kind}: events + lost = processes started ({last})"
        );
        assert_eq!(h[kind]["matched"].as_u64().unwrap(), N as u64, "{last}");
    }
    // The loop's bash was filtered out in the kernel (another binary), yet
    // it is named as the parent: ancestors come from the kernel's table.
    let first = events.iter().find(|v| v["event"] == "exec").unwrap();
    assert!(
        first["ancestors"][0]["binary"]
            .as_str()
            .unwrap()
            .ends_with("/bash"),
        "{first}"
    );
    assert!(
        h["exec"]["lost"].as_u64().unwrap() > 0,
        "the reader stopped for 2 s with an 8 KiB ring and nothing was lost? {last}"
    );
    eprintln!("exec storm: {N} processes in {took:?}: {last}");
}

/// While a `moat watch` runs, `moat ps` prints the kernel's table (found by
/// map id: a watch pins nothing): a process started after the watch is in
/// it with the exec id the kernel gave it.
#[test]
fn ps_prints_the_kernel_table_while_a_watch_runs() {
    if !common::privileged("ps_prints_the_kernel_table_while_a_watch_runs") {
        return;
    }
    let mut w = Watch::start(&["--exec", "--binary", "/usr/bin/sleep"]);
    let mut child = Command::new("/usr/bin/sleep").arg("5").spawn().unwrap();
    let exec = w.collect(1, Duration::from_secs(10), |v| {
        v["event"] == "exec" && v["pid"] == child.id()
    });
    let out = Command::new(common::moat_bin())
        .args(["ps", "--json"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = w.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter().all(|r| r["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("kernel table (map id "))),
        "{rows:?}"
    );
    let me = rows
        .iter()
        .find(|r| r["pid"] == child.id())
        .unwrap_or_else(|| panic!("no pid {} in {rows:?}", child.id()));
    assert_eq!(me["binary"], "/usr/bin/sleep");
    assert_eq!(me["exec_id"], exec[0]["exec_id"], "the kernel's exec id");
}

/// `--file` through fanotify marks sees the file opened, however it was
/// named (a path relative to the working directory, a symlink); a path
/// that does not exist yet falls back to the tracepoint, which sees it made.
#[test]
fn watched_files_are_seen_by_relative_paths_and_links_and_when_made_later() {
    if !common::privileged("watched_files_are_seen_by_relative_paths_and_links_and_when_made_later")
    {
        return;
    }
    let tag = common::tag("sr");
    let d = std::env::temp_dir().join(format!("moat-sec-{tag}"));
    std::fs::create_dir_all(d.join("watched/sub")).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(d.clone());
    std::fs::write(d.join("watched/sub/a"), "x\n").unwrap();
    std::os::unix::fs::symlink(d.join("watched/sub/a"), d.join("link")).unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    let mut w = Watch::start(&["--file", &format!("{}/", p("watched"))]);
    assert!(
        w.stderr
            .lock()
            .unwrap()
            .contains("opens through fanotify marks"),
        "{}",
        w.stderr.lock().unwrap()
    );
    let script = format!(
        "cd {sub} && cat a > /dev/null && cat {link} > /dev/null",
        sub = p("watched/sub"),
        link = p("link"),
    );
    assert!(
        Command::new("bash")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success()
    );
    let evs = w.collect(2, Duration::from_secs(10), |v| v["event"] == "open");
    for v in &evs {
        assert_eq!(v["path"], p("watched/sub/a"), "{v}");
        assert_eq!(v["access"], "read", "{v}");
        assert_eq!(v["binary"], "/usr/bin/cat", "{v}");
    }
    let (fin, rest) = w.finish();
    assert!(rest.iter().all(|v| v["event"] != "open"), "{rest:?}");
    assert_eq!(fin["hooks"]["open"]["matched"], 2, "{fin}");
    assert_eq!(fin["hooks"]["open"]["events"], 2, "{fin}");

    let later = p("later");
    let mut w = Watch::start(&["--file", &later]);
    assert!(
        w.stderr
            .lock()
            .unwrap()
            .contains("opens through tp_btf/sys_enter"),
        "{}",
        w.stderr.lock().unwrap()
    );
    assert!(
        Command::new("bash")
            .args(["-c", &format!("echo y > {later}")])
            .status()
            .unwrap()
            .success()
    );
    let evs = w.collect(1, Duration::from_secs(10), |v| v["event"] == "open");
    assert_eq!(evs[0]["path"], later);
    assert_eq!(evs[0]["access"], "write");
    let (fin, _) = w.finish();
    assert_eq!(fin["hooks"]["open"]["matched"], 1, "{fin}");
}

/// `--file` and `--connect`: opens under a watched prefix or of an exact
/// path (with the access mode) and connects, from the test's cgroup only,
/// filtered in the kernel: nothing else is reported or counted.
#[test]
fn file_opens_and_connects_are_filtered_in_the_kernel() {
    if !common::privileged("file_opens_and_connects_are_filtered_in_the_kernel") {
        return;
    }
    let tag = common::tag("sf");
    let cg = Cgroup::new(&tag);
    let d = std::env::temp_dir().join(format!("moat-sec-{tag}"));
    std::fs::create_dir_all(d.join("watched")).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(d.clone());
    for f in ["watched/a", "watched/b", "exact", "exactX", "other"] {
        std::fs::write(d.join(f), "x\n").unwrap();
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let p = |f: &str| d.join(f).display().to_string();
    let cgs = cg.0.display().to_string();
    let mut w = Watch::start(&[
        "--cgroup",
        &cgs,
        "--file",
        &format!("{}/", p("watched")),
        "--file",
        &p("exact"),
        "--connect",
    ]);
    // From outside the cgroup: not reported.
    std::fs::read(d.join("watched/a")).unwrap();
    let script = format!(
        "cat {a} {x} {xx} {o} > /dev/null; echo y >> {b}; echo hi > /dev/tcp/127.0.0.1/{port}",
        a = p("watched/a"),
        x = p("exact"),
        xx = p("exactX"),
        o = p("other"),
        b = p("watched/b"),
    );
    let st = cg.command("bash", &["-c", &script]).status().unwrap();
    assert!(st.success());
    let _ = l.accept().unwrap();
    let evs = w.collect(4, Duration::from_secs(10), |v| {
        v["event"] == "open" || v["event"] == "connect"
    });
    let (fin, rest) = w.finish();
    let all: Vec<&Value> = evs.iter().chain(rest.iter()).collect();
    let open = |path: &str| {
        all.iter()
            .find(|v| v["event"] == "open" && v["path"] == path)
            .unwrap_or_else(|| panic!("no open of {path}: {all:?}"))
    };
    assert_eq!(open(&p("watched/a"))["access"], "read");
    assert_eq!(open(&p("watched/a"))["binary"], "/usr/bin/cat");
    assert_eq!(open(&p("exact"))["access"], "read");
    assert_eq!(open(&p("watched/b"))["access"], "write");
    let c = all
        .iter()
        .find(|v| v["event"] == "connect")
        .expect("a connect event");
    assert_eq!(c["remote"], "127.0.0.1");
    assert_eq!(c["port"], port);
    for v in &all {
        if v["event"] == "open" {
            let path = v["path"].as_str().unwrap();
            assert!(
                path != p("exactX") && path != p("other"),
                "reported an unwatched path: {v}"
            );
            assert_ne!(
                v["pid"],
                std::process::id(),
                "an open from outside the cgroup: {v}"
            );
        }
    }
    assert_eq!(fin["hooks"]["open"]["matched"], 3, "{fin}");
    assert_eq!(fin["hooks"]["open"]["events"], 3, "{fin}");
    assert_eq!(fin["hooks"]["connect"]["matched"], 1, "{fin}");
}
