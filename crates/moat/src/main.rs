//! moat — one program that makes a Linux host's networking and security
//! programmable with eBPF. This file is the command line only.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use moat::{
    count, demo,
    fw::{cmd, observe},
};
use moat_host::{count::Mode, fw::observe::FlowFilter, loader::LogOpts};

#[derive(Parser)]
#[command(
    name = "moat",
    version,
    about = "eBPF networking and security for one Linux host"
)]
struct Cli {
    /// Show more of the kernel verifier's log on load failures (-vv: all of it).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Write the whole verifier log to FILE when the kernel rejects a program.
    #[arg(long, value_name = "FILE", global = true)]
    verifier_log: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Count packets per protocol class with an XDP program (passes everything).
    Count {
        /// Interface to attach to.
        #[arg(short, long, value_name = "IFACE")]
        interface: String,
        /// Seconds between reports.
        #[arg(long, default_value = "1", value_parser = parse_secs)]
        interval: Duration,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long, value_parser = parse_secs)]
        duration: Option<Duration>,
        /// One JSON object per line per interval, and a last line with totals ("final": true).
        #[arg(long)]
        json: bool,
        /// XDP mode: native (in the driver) or skb (generic, works everywhere).
        #[arg(long, value_enum, default_value = "native")]
        mode: Mode,
        /// Attach inside the network namespace /run/netns/NAME.
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
    /// The stateful L3/L4 firewall: XDP ingress + TC egress, policy in YAML.
    #[command(subcommand)]
    Fw(FwCmd),
    /// The L4 load balancer at XDP: Maglev, connection affinity, drain, NAT or DSR.
    #[command(subcommand)]
    Lb(LbCmd),
    /// The firewall's flows (allowed connections and denied flows), one line each.
    Flows {
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Keep going: print drop/log events and new flows as they happen.
        #[arg(long)]
        follow: bool,
        /// Only flows whose remote address is in CIDR.
        #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
        remote: Option<moat_core::fw::Cidr>,
        /// Only flows with this port on either side.
        #[arg(long, value_name = "N")]
        port: Option<u16>,
        /// Only allowed or only denied flows.
        #[arg(long, value_parser = ["allow", "deny"])]
        verdict: Option<String>,
        /// Only flows decided by this rule ("(default)" for the defaults).
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Only flows on this interface.
        #[arg(long, value_name = "IF")]
        iface: Option<String>,
        /// With --follow: stop after this long (e.g. 10s).
        #[arg(long, value_parser = parse_secs)]
        duration: Option<Duration>,
    },
    /// A live terminal view: verdict rates, rule hits, top talkers, top denied sources.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value = "1", value_parser = parse_secs)]
        interval: Duration,
    },
    /// Serve Prometheus metrics (text exposition) over HTTP at /metrics.
    Metrics {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9466")]
        listen: String,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_secs)]
        duration: Option<Duration>,
    },
    /// Write the frames of drop/log events (first 128 bytes) to a pcap file.
    Capture {
        /// Only dropped (deny) or only logged allowed (allow) packets.
        #[arg(long, value_parser = ["allow", "deny"])]
        verdict: Option<String>,
        /// Stop after N packets.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// The pcap file to write.
        #[arg(short = 'w', value_name = "FILE.pcap")]
        file: PathBuf,
        /// Stop after this long (default: until Ctrl-C or --count).
        #[arg(long, value_parser = parse_secs)]
        duration: Option<Duration>,
    },
    /// The agent: applies CONFIG_DIR/policy.yaml and lb.yaml, re-applies on change, runs health checks.
    Daemon {
        /// Where policy.yaml (firewall) and lb.yaml (load balancer) live.
        #[arg(long, value_name = "DIR", default_value = moat::daemon::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// The files' interfaces are in network namespace /run/netns/NAME (health checks run there too).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
        /// One JSON object per line (journald-friendly) or plain text.
        #[arg(long, value_enum, default_value = "json")]
        log_format: moat::daemon::LogFormat,
        /// Serve /metrics of every family here ("none": do not).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9466")]
        metrics: String,
        /// Seconds between tries of a file whose apply failed (e.g. its interface is not there yet).
        #[arg(long, default_value = "5", value_parser = parse_secs)]
        retry: Duration,
        /// Stop after this long (default: until SIGINT/SIGTERM).
        #[arg(long, value_parser = parse_secs)]
        duration: Option<Duration>,
        /// Write the systemd unit for this binary and --config-dir into --unit-dir, and exit.
        #[arg(long)]
        install_unit: bool,
        /// Where --install-unit writes moat.service.
        #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Process exec, exit, file-open and connect events with their lineage, filtered in the kernel.
    Watch {
        /// JSON lines instead of text (a last line with totals: "final": true).
        #[arg(long)]
        json: bool,
        /// Exec events (default: exec and exit).
        #[arg(long)]
        exec: bool,
        /// Exit events (exit code, signal).
        #[arg(long)]
        exit: bool,
        /// Only these binaries (absolute, as exec'd).
        #[arg(long, value_name = "PATH")]
        binary: Vec<PathBuf>,
        /// Only processes in this cgroup v2 directory or below.
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// Open events for this absolute path (a trailing / covers everything below it), filtered in the kernel.
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<String>,
        /// Connect events (address, port), filtered in the kernel by --cgroup.
        #[arg(long)]
        connect: bool,
        /// Ring buffer bytes (a power of two; default 4 MiB): smaller loses more under a storm, each loss counted.
        #[arg(long, value_name = "BYTES")]
        ring_size: Option<u32>,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = parse_secs)]
        duration: Option<Duration>,
    },
    /// Runtime security enforcement: rules on exec, open, connect, setuid, ptrace (log, deny, kill).
    #[command(subcommand)]
    Guard(GuardCmd),
    /// Every process with its exec id, parent and binary (--tree: as a tree).
    Ps {
        #[arg(long)]
        tree: bool,
        #[arg(long)]
        json: bool,
    },
    /// Every family at a glance: what runs, its generation, the file in force and who applied it, the agent.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A guided first run: two namespaces, a veth pair, real traffic, live counts; cleans up.
    Demo {
        /// Seconds of traffic.
        #[arg(long, default_value = "5", value_parser = parse_secs)]
        duration: Duration,
        /// JSON lines instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GuardCmd {
    /// Validate a guard policy (no privileges): FILE:LINE:COL errors, each rule's mechanism.
    Check {
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        policy: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Enforce a policy: starts the enforcer, then stops the one it replaces.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        policy: PathBuf,
        /// Ring buffer bytes for events (a power of two; default 4 MiB).
        #[arg(long, value_name = "BYTES")]
        ring_size: Option<u32>,
    },
    /// What is enforced, by which mechanism, and each rule's counts (from the kernel).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop enforcing: the enforcer ends, its programs, links, marks and pins go.
    Detach,
    /// Run CMD in a throwaway cgroup under the policy, log-only: what would be denied or killed.
    Test {
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        policy: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// The enforcer itself (started by apply).
    #[command(hide = true)]
    Run {
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        policy: PathBuf,
        #[arg(long, value_name = "BYTES")]
        ring_size: Option<u32>,
    },
}

#[derive(Subcommand)]
enum FwCmd {
    /// Validate and compile a policy (no privileges): rules, classes, map entries, memory.
    Check {
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        policy: PathBuf,
        #[arg(long)]
        json: bool,
        /// Kernel memory the policy's maps may take (e.g. 512MiB, 4G; default: 1GiB or 1/8 of RAM).
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        memory_budget: Option<u64>,
    },
    /// Validate, compile, attach if needed and replace the running policy atomically.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        policy: PathBuf,
        /// Interfaces to protect (default: the policy's `interfaces:`, else the running ones).
        #[arg(short, long = "interface", value_name = "IFACE")]
        interface: Vec<String>,
        /// The interfaces are in network namespace /run/netns/NAME.
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
        /// XDP mode for new attachments.
        #[arg(long, value_enum, default_value = "native")]
        mode: Mode,
        /// Kernel memory the policy's maps may take (e.g. 512MiB, 4G; default: 1GiB or 1/8 of RAM).
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        memory_budget: Option<u64>,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Interfaces, generation, per-rule hits, drops by reason, conntrack, map fill.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Verdict and deciding rule for one packet, from the BPF program and the reference model.
    Explain {
        /// e.g. "tcp 198.51.100.7:40000 -> 10.0.0.1:22", "icmp A -> B echo-request".
        packet: String,
        /// Policy to explain (default: the applied one).
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        policy: Option<PathBuf>,
        /// The packet leaves the host (source is local, destination is the remote).
        #[arg(long)]
        egress: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove the firewall from IFACE (default: everywhere), with its programs, links and pins.
    Detach {
        #[arg(short, long = "interface", value_name = "IFACE")]
        interface: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LbCmd {
    /// Validate a config (no privileges) and print each backend's share of the Maglev table.
    Check {
        #[arg(short = 'f', long = "file", value_name = "LB.YAML")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Validate, attach if needed and replace the running services atomically.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "LB.YAML")]
        config: PathBuf,
        /// Interfaces where client packets (and NAT replies) arrive (default: the file's `interfaces:`).
        #[arg(short, long = "interface", value_name = "IFACE")]
        interface: Vec<String>,
        /// The interfaces are in network namespace /run/netns/NAME.
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
        /// Generic (skb) XDP for new attachments.
        #[arg(long)]
        skb: bool,
    },
    /// Services, backends (weight, state, table share), packets, bytes, connections.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// What a new config would move: table share and tracked connections per service.
    Plan {
        #[arg(short = 'f', long = "file", value_name = "NEW.YAML")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Set a backend up, down or drain: new connections avoid it, its connections stay.
    Backend {
        service: String,
        /// ADDRESS or ADDRESS:PORT ([v6]:PORT).
        address: String,
        #[arg(value_parser = ["up", "down", "drain"])]
        state: String,
    },
    /// Remove the load balancer everywhere, with its programs, links, pins and connections.
    Detach,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .strip_suffix('s')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 5 or 2.5s)"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e7 {
        return Err(format!("{s:?}: seconds must be > 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() -> ExitCode {
    // Writing to a closed pipe (`moat ... | head`) ends the program quietly.
    // SAFETY: setting a signal disposition to the default, before any thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let log = LogOpts {
        verbose: cli.verbose,
        verifier_log: cli.verifier_log,
    };
    let result = match cli.cmd {
        Cmd::Count {
            interface,
            interval,
            duration,
            json,
            mode,
            netns,
        } => count::run(
            &count::CountOpts {
                iface: interface,
                interval,
                duration,
                json,
                mode,
                netns,
            },
            &log,
        ),
        Cmd::Flows {
            json,
            follow,
            remote,
            port,
            verdict,
            rule,
            iface,
            duration,
        } => observe::flows_cmd(&observe::FlowsOpts {
            json,
            follow,
            duration,
            filter: FlowFilter {
                remote,
                port,
                verdict,
                rule,
                iface,
            },
        }),
        Cmd::Top { interval } => moat::fw::top::top_cmd(interval),
        Cmd::Metrics { listen, duration } => observe::metrics_cmd(&listen, duration),
        Cmd::Capture {
            verdict,
            count,
            file,
            duration,
        } => observe::capture_cmd(&observe::CaptureOpts {
            verdict,
            count,
            file,
            duration,
        }),
        Cmd::Daemon {
            config_dir,
            netns,
            log_format,
            metrics,
            retry,
            duration,
            install_unit,
            unit_dir,
        } => {
            if install_unit {
                moat::daemon::install_unit(&unit_dir, &config_dir).map(|p| {
                    println!(
                        "wrote {}; enable it with: systemctl daemon-reload && systemctl enable --now moat",
                        p.display()
                    )
                })
            } else {
                moat::daemon::run(
                    moat::daemon::DaemonOpts {
                        config_dir,
                        netns,
                        log_format,
                        metrics: (metrics != "none").then_some(metrics),
                        retry,
                        duration,
                    },
                    &log,
                )
            }
        }
        Cmd::Status { json } => moat::status::status(json),
        Cmd::Watch {
            json,
            exec,
            exit,
            binary,
            cgroup,
            files,
            connect,
            ring_size,
            duration,
        } => moat::sec::watch(
            &moat::sec::WatchCmd {
                json,
                exec,
                exit,
                binaries: binary,
                cgroup,
                ring_bytes: ring_size,
                duration,
                files,
                connect,
            },
            &log,
        ),
        Cmd::Ps { tree, json } => moat::sec::ps(tree, json),
        Cmd::Guard(gc) => match gc {
            GuardCmd::Check { policy, json } => moat::guard::check(&policy, json),
            GuardCmd::Apply { policy, ring_size } => moat::guard::apply(&policy, ring_size),
            GuardCmd::Status { json } => moat::guard::status(json),
            GuardCmd::Detach => moat::guard::detach(),
            GuardCmd::Run { policy, ring_size } => moat::guard::run(&policy, ring_size, &log),
            GuardCmd::Test { policy, json, cmd } => {
                match moat::guard::test(&policy, &cmd, json, &log) {
                    Ok(code) => return ExitCode::from(code.clamp(0, 255) as u8),
                    Err(e) => Err(e),
                }
            }
        },
        Cmd::Demo { duration, json } => demo::run(&demo::DemoOpts { duration, json }, &log),
        Cmd::Fw(f) => match f {
            FwCmd::Check {
                policy,
                json,
                memory_budget,
            } => cmd::check(&policy, json, memory_budget),
            FwCmd::Apply {
                policy,
                interface,
                netns,
                mode,
                quiet,
                memory_budget,
            } => cmd::apply(
                &cmd::ApplyOpts {
                    policy,
                    interfaces: interface,
                    netns,
                    mode,
                    quiet,
                    memory_budget,
                },
                &log,
            ),
            FwCmd::Status { json } => cmd::status(json),
            FwCmd::Explain {
                packet,
                policy,
                egress,
                json,
            } => cmd::explain(
                &cmd::ExplainOpts {
                    policy,
                    packet,
                    egress,
                    json,
                },
                &log,
            ),
            FwCmd::Detach { interface } => cmd::detach(&interface),
        },
        Cmd::Lb(l) => match l {
            LbCmd::Check { config, json } => moat::lb::check(&config, json),
            LbCmd::Apply {
                config,
                interface,
                netns,
                skb,
            } => moat::lb::apply(
                &moat_host::lb::apply::ApplyOpts {
                    config,
                    interfaces: interface,
                    netns,
                    skb,
                },
                &log,
            ),
            LbCmd::Status { json } => moat::lb::status(json),
            LbCmd::Plan { config, json } => moat::lb::plan(&config, json),
            LbCmd::Backend {
                service,
                address,
                state,
            } => moat::lb::backend(&service, &address, &state, &log),
            LbCmd::Detach => moat::lb::detach(),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_cidr(s: &str) -> Result<moat_core::fw::Cidr, String> {
    moat_core::fw::Cidr::parse(s)
}

fn size_arg(s: &str) -> Result<u64, String> {
    cmd::parse_size(s).map_err(|e| e.to_string())
}
