//! `moat-bench`: run the benchmarks and write the report.
//!
//! ```sh
//! cargo run --release -p moat-bench -- report     # everything: docs/benchmarks.md + SVGs
//! cargo run --release -p moat-bench -- live       # one part, printed only
//! ```

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use moat_bench::{
    live::{Filter, LiveOpts},
    report, updates,
};

#[derive(Parser)]
#[command(
    name = "moat-bench",
    about = "moat's benchmarks, side by side with its peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct CostArgs {
    /// Rule counts / set sizes for the program-cost runs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10,100,1000,10000,100000,1000000"
    )]
    cost_sizes: Vec<usize>,
    /// Repetitions per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value = "1000000")]
    repeat: u32,
    /// Rounds per program-cost configuration.
    #[arg(long, default_value = "5")]
    cost_rounds: usize,
}

#[derive(Args, Clone)]
struct LiveArgs {
    /// Rule counts for the live runs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,100,1000,10000,100000,1000000"
    )]
    live_sizes: Vec<usize>,
    /// Frames the generator sends per measurement: 2.5M is about half a
    /// second at the ceiling (with 1M, a quarter second, one report's per-round
    /// ratios of one filter at one N spanned 0.71-0.86, and the ceiling
    /// measured 4.2-4.6M/s against 4.8-5.8M/s with 2.5M on the same day).
    #[arg(long, default_value = "2500000")]
    packets: u32,
    /// Interleaved rounds per N (median and spread reported).
    #[arg(long, default_value = "7")]
    live_rounds: usize,
    /// A tool whose rules take longer than this to install is not tried at larger N.
    #[arg(long, default_value = "120")]
    max_install_secs: f64,
    /// Filters to compare (the XDP-drop ceiling is always measured): any of
    /// none, moat, moat-blocklist, xdp-filter, iptables-legacy, iptables-nft, nft-linear, nft-set.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,moat,moat-blocklist,xdp-filter,iptables-legacy,iptables-nft,nft-linear,nft-set"
    )]
    filters: Vec<String>,
    /// Longest generator run per measurement, seconds (slow filters slow the generator).
    #[arg(long, default_value = "2")]
    max_secs: f64,
}

#[derive(Args, Clone)]
struct UpdateArgs {
    /// Blocklist sizes whose apply time is measured.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    update_sizes: Vec<usize>,
    /// Applies under traffic.
    #[arg(long, default_value = "100")]
    applies: usize,
}

#[derive(Args, Clone)]
struct LifeArgs {
    /// Whole TCP connections per measurement.
    #[arg(long, default_value = "3000")]
    conns: usize,
    /// Interleaved rounds.
    #[arg(long, default_value = "5")]
    life_rounds: usize,
}

#[derive(Args, Clone)]
struct LbArgs {
    /// Frames per forwarding measurement.
    #[arg(long, default_value = "1000000")]
    lb_packets: u32,
    /// Interleaved rounds (forwarding, program cost, requests).
    #[arg(long, default_value = "5")]
    lb_rounds: usize,
    /// Parts to run: any of cost, live, requests (disruption is computed, always shown).
    #[arg(long, value_delimiter = ',', default_value = "cost,live,requests")]
    lb_parts: Vec<String>,
    /// Seconds of requests per measurement.
    #[arg(long, default_value = "2")]
    lb_request_secs: f64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything below, then writes the report (markdown + two SVG plots).
    Report {
        #[command(flatten)]
        cost: CostArgs,
        #[command(flatten)]
        live: LiveArgs,
        #[command(flatten)]
        updates: UpdateArgs,
        #[command(flatten)]
        life: LifeArgs,
        #[command(flatten)]
        lb: LbArgs,
        #[command(flatten)]
        sec: SecArgs,
        /// Markdown report to write (the SVGs go next to it).
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
    },
    /// Per-packet cost of moat's program, xdp-filter's and XDP drop (BPF_PROG_TEST_RUN).
    ProgCost {
        #[command(flatten)]
        cost: CostArgs,
    },
    /// Live traffic through a veth pair: packets per second each filter drops.
    Live {
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Policy apply times and packets lost while policies are swapped under traffic.
    Updates {
        #[command(flatten)]
        updates: UpdateArgs,
    },
    /// Whole TCP connections per second through moat and nf_conntrack.
    TcpLife {
        #[command(flatten)]
        life: LifeArgs,
    },
    /// The load balancer: forwarding rate, program cost, requests, Maglev disruption.
    Lb {
        #[command(flatten)]
        lb: LbArgs,
    },
    /// One loop of the runtime security benchmark (run by `sec` in a fresh process).
    #[command(hide = true)]
    SecWork { work: String, n: usize, port: u16 },
    /// Runtime security: overhead of moat watch and auditd on openat, connect, fork+exec loops.
    Sec {
        #[command(flatten)]
        sec: SecArgs,
    },
}

/// Ring buffer sizes of the exec storms, and processes per storm.
const SEC_RINGS: [u32; 4] = [8 << 10, 64 << 10, 1 << 20, 4 << 20];
const SEC_STORM: usize = 10_000;

#[derive(Args, Clone)]
struct SecArgs {
    /// Interleaved rounds of the runtime security overhead loops.
    #[arg(long, default_value = "5")]
    sec_rounds: usize,
    /// `sec` only: also write the section (with the machine and the bars) to this file.
    #[arg(long, value_name = "FILE")]
    sec_out: Option<PathBuf>,
}

struct LbRun {
    live: Vec<moat_bench::lb::LiveLb>,
    cost: Vec<moat_bench::lb::CostLb>,
    reqs: Vec<(&'static str, Vec<f64>)>,
    dis: Vec<(u32, usize, f64)>,
}

fn run_lb(a: &LbArgs) -> Result<LbRun> {
    let stop = moat_host::sys::stop_flag()?;
    let say = |s: &str| eprintln!("{s}");
    let on = |part: &str| a.lb_parts.iter().any(|p| p == part);
    for p in &a.lb_parts {
        if !["cost", "live", "requests"].contains(&p.as_str()) {
            anyhow::bail!("--lb-parts: unknown part {p:?} (cost, live, requests)");
        }
    }
    Ok(LbRun {
        dis: moat_bench::lb::disruption(),
        cost: if on("cost") {
            moat_bench::lb::prog_cost(a.lb_rounds, say)?
        } else {
            vec![]
        },
        live: if on("live") {
            moat_bench::lb::live(a.lb_packets, a.lb_rounds, &stop, say)?
        } else {
            vec![]
        },
        reqs: if on("requests") {
            moat_bench::lb::requests(a.lb_request_secs, a.lb_rounds, say)?
        } else {
            vec![]
        },
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!(
        "{cpu}, {cores} cores, {mem} GiB, Linux {}, JIT {}",
        kernel.trim(),
        moat_host::sys::jit_status()
    )
}

fn cost_opts(a: &CostArgs) -> Result<moat_bench::Opts> {
    if a.cost_sizes.is_empty() || a.cost_rounds == 0 || a.repeat == 0 {
        bail!("--cost-sizes, --cost-rounds and --repeat must not be empty or zero");
    }
    Ok(moat_bench::Opts {
        sizes: a.cost_sizes.clone(),
        repeat: a.repeat,
        rounds: a.cost_rounds,
        xdp_filter: true,
    })
}

fn run_cost(o: &moat_bench::Opts) -> Result<Vec<moat_bench::Sample>> {
    let pins = PathBuf::from(format!("/sys/fs/bpf/moat-bench-{}", std::process::id()));
    let samples = moat_bench::prog_cost(o, &pins, |s| eprintln!("{s}"));
    let _ = std::fs::remove_dir_all(&pins);
    samples
}

fn live_opts(a: &LiveArgs) -> Result<LiveOpts> {
    if a.live_sizes.is_empty() || a.live_rounds == 0 || a.packets == 0 {
        bail!("--live-sizes, --live-rounds and --packets must not be empty or zero");
    }
    Ok(LiveOpts {
        sizes: a.live_sizes.clone(),
        packets: a.packets,
        rounds: a.live_rounds,
        filters: a
            .filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>>>()?,
        max_install_secs: a.max_install_secs,
        max_secs: a.max_secs,
        stop: moat_host::sys::stop_flag()?,
    })
}

fn run_updates(a: &UpdateArgs) -> Result<(Vec<updates::ApplyTime>, updates::UnderTraffic)> {
    let tag = format!("up{}", std::process::id() % 100_000);
    let times = updates::apply_times(&a.update_sizes, &tag, |s| eprintln!("{s}"))?;
    eprintln!("{} applies under traffic...", a.applies);
    let traffic = updates::under_traffic(a.applies, 1000, &format!("{tag}t"))?;
    Ok((times, traffic))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    moat_host::sys::require_privileges("moat-bench")?;
    moat_host::sys::ensure_bpffs()?;
    match cli.cmd {
        Cmd::ProgCost { cost } => {
            let o = cost_opts(&cost)?;
            let samples = run_cost(&o)?;
            println!("{}", moat_bench::markdown(&samples, &o.sizes, &o));
        }
        Cmd::Live { live } => {
            let o = live_opts(&live)?;
            let (res, skipped) = moat_bench::live::run_all(&o, |s| eprintln!("{s}"))?;
            println!("{}", report::live_markdown(&res, &o.sizes));
            for s in skipped {
                println!("not run: {s}");
            }
        }
        Cmd::Updates { updates } => {
            let (times, traffic) = run_updates(&updates)?;
            println!("{}", report::updates_markdown(&times, Some(&traffic)));
        }
        Cmd::Lb { lb } => {
            let r = run_lb(&lb)?;
            println!(
                "{}",
                moat_bench::lb::markdown(&r.live, &r.cost, &r.reqs, &r.dis)
            );
            println!(
                "{}",
                report::bars_markdown(&moat_bench::lb::bars(&r.live, &r.cost, &r.dis))
            );
        }
        Cmd::SecWork { work, n, port } => {
            let w = moat_bench::sec::Work::parse(&work)
                .ok_or_else(|| anyhow::anyhow!("unknown work {work}"))?;
            // One CPU for the loop (the reader or auditd gets the other).
            // SAFETY: a zeroed cpu_set_t with CPU 0 set, for this process.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            moat_bench::sec::run_work(w, n / 10, port); // warm up
            println!("{}", moat_bench::sec::run_work(w, n, port));
        }
        Cmd::Sec { sec } => {
            let t0 = std::time::Instant::now();
            let r = moat_bench::sec::overhead(sec.sec_rounds, |s| eprintln!("{s}"))?;
            let storms = moat_bench::sec::exec_rate(&SEC_RINGS, SEC_STORM, |s| eprintln!("{s}"))?;
            let body = format!(
                "{}\n{}",
                moat_bench::sec::markdown(&r, sec.sec_rounds),
                moat_bench::sec::exec_rate_markdown(&storms)
            );
            let bars = report::bars_markdown(&moat_bench::sec::bars(&r));
            println!("{body}\n{bars}");
            if let Some(out) = &sec.sec_out {
                std::fs::write(
                    out,
                    format!(
                        "# Benchmarks: runtime security\n\nGenerated by `moat-bench sec --sec-out {}` in {:.1} min \
                         (do not edit by hand; `moat-bench report` includes the same section).\n\n\
                         Machine: {}\n\n## The bars\n\n{bars}\n{body}",
                        out.display(),
                        t0.elapsed().as_secs_f64() / 60.0,
                        machine()
                    ),
                )?;
                println!("wrote {}", out.display());
            }
        }
        Cmd::TcpLife { life } => {
            let r = moat_bench::tcplife::run(life.conns, life.life_rounds, |s| eprintln!("{s}"))?;
            println!("{}", report::life_markdown(&r));
        }
        Cmd::Report {
            cost,
            live,
            updates,
            life,
            lb,
            sec,
            out,
        } => {
            let (co, lo) = (cost_opts(&cost)?, live_opts(&live)?);
            let t0 = std::time::Instant::now();
            let samples = run_cost(&co)?;
            let (res, skipped) = moat_bench::live::run_all(&lo, |s| eprintln!("{s}"))?;
            let (times, traffic) = run_updates(&updates)?;
            let lives =
                moat_bench::tcplife::run(life.conns, life.life_rounds, |s| eprintln!("{s}"))?;
            let lbr = run_lb(&lb)?;
            let secr = moat_bench::sec::overhead(sec.sec_rounds, |s| eprintln!("{s}"))?;
            let storms = moat_bench::sec::exec_rate(&SEC_RINGS, SEC_STORM, |s| eprintln!("{s}"))?;
            let dir = out.parent().map(PathBuf::from).unwrap_or_default();
            let (cost_svg, live_svg) = ("benchmarks-prog-cost.svg", "benchmarks-live.svg");
            std::fs::write(dir.join(cost_svg), moat_bench::svg(&samples, &co.sizes))?;
            std::fs::write(dir.join(live_svg), report::live_svg(&res))?;
            let mut bars = report::bars(&samples, &res, Some(&traffic));
            bars.extend(moat_bench::lb::bars(&lbr.live, &lbr.cost, &lbr.dis));
            bars.extend(moat_bench::sec::bars(&secr));
            let mut md = document(
                &co,
                &lo,
                &samples,
                &res,
                &skipped,
                &times,
                &traffic,
                &bars,
                (&lives, &life),
                &lbr,
                t0.elapsed(),
            );
            md.push_str(&moat_bench::sec::markdown(&secr, sec.sec_rounds));
            md.push_str(&format!(
                "\n{}",
                moat_bench::sec::exec_rate_markdown(&storms)
            ));
            std::fs::write(&out, md)?;
            println!("{}", report::bars_markdown(&bars));
            println!("wrote {}, {cost_svg} and {live_svg}", out.display());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn document(
    co: &moat_bench::Opts,
    lo: &LiveOpts,
    samples: &[moat_bench::Sample],
    res: &[moat_bench::live::LiveResult],
    skipped: &[String],
    times: &[updates::ApplyTime],
    traffic: &updates::UnderTraffic,
    bars: &[report::Bar],
    (lives, life): (&[moat_bench::tcplife::LifeResult], &LifeArgs),
    lbr: &LbRun,
    took: std::time::Duration,
) -> String {
    let mut md = format!(
        "# Benchmarks\n\nGenerated by `cargo run --release -p moat-bench -- report` in {:.0} min \
         (do not edit by hand; every number below comes from that one run).\n\n\
         Machine: {}\n\n## The bars\n\n{}\n",
        took.as_secs_f64() / 60.0,
        machine(),
        report::bars_markdown(bars)
    );
    md.push_str(&format!(
        "## Program cost against rule count\n\n\
         Each configuration loads the real program with its rules and runs one frame through it with \
         BPF_PROG_TEST_RUN (the kernel times the repetitions). \
         `rules`: N moat rules, each allowing one TCP port from one /32 (/128); the packet comes from one of \
         those addresses to a port its rule does not allow, so every lookup runs and the default denies it; \
         `established`: to the allowed port (the first run opens the connection, the rest hit conntrack); \
         `new, allowed (single runs)`: {single} distinct packets to the allowed port, each opening a new \
         connection (a conntrack insert), each run once, the sizes interleaved packet by packet, median per round (a single run includes the kernel \
         timer's own cost: compare with the floor measured the same way). \
         `blocklist`: a set of N addresses denied both ways whatever the port (moat drops them before any \
         conntrack work); the packet comes from a listed address. \
         `xdp-filter`: xdp-tools' xdp-filter (stateless, default variant) with the same N addresses denied as \
         sources, same packet. The floor is an XDP program that only returns XDP_DROP.\n\n{}\n\
         ![ns per packet against N](benchmarks-prog-cost.svg)\n\n",
        moat_bench::markdown(samples, &co.sizes, co),
        single = moat_bench::SINGLE_RUNS
    ));
    md.push_str(&format!(
        "## Live traffic\n\n\
         Two network namespaces joined by a veth pair. The generator (an XDP program run with \
         BPF_PROG_TEST_RUN in live-frames mode) sends {} UDP frames per measurement (for at most {} s: generator \
         and receiver share one CPU, so a slow filter slows the generator) out of a's end, each from a \
         new source address (10.199.0.0/16) and port, to b's port 9; b runs one filter and we count what it \
         dropped while the generator ran. With N rules, N - 1 rules that do not match the traffic (other \
         source addresses) come before the one that does; moat gets the same N - 1 addresses in one deny \
         rule plus the matching rule, nftables-set and xdp-filter get them as set/map entries. All \
         configurations of one N are installed side by side and measured in {} interleaved rounds \
         (A B C … A B C …), each measurement between two of the XDP-drop ceiling. Cells: median packets per \
         second (min–max over the rounds) and, in bold, the median ratio to the mean of the two ceiling \
         measurements around it. The generator's thread is pinned \
         to one CPU while it sends, and veth delivers a redirected frame on the sending CPU, so generator \
         and receiver share that CPU: the ceiling is the generator's own limit.\n\n{}\n",
        lo.packets,
        lo.max_secs,
        lo.rounds,
        report::live_markdown(res, &lo.sizes)
    ));
    for s in skipped {
        md.push_str(&format!("Not run: {s}.\n"));
    }
    md.push_str(&format!(
        "\n![packets per second against N](benchmarks-live.svg)\n\nSeconds to install the rules:\n\n{}\n",
        report::install_markdown(res, &lo.sizes)
    ));
    md.push_str(&format!(
        "## Policy updates\n\n`moat fw apply` (parse, compile, load, fill the maps, swap the program \
         atomically) of a policy with a blocklist of N addresses, on a veth in a lab namespace:\n\n{}\n",
        report::updates_markdown(times, Some(traffic))
    ));
    md.push_str(&format!(
        "\n## A TCP connection's whole life\n\nA client in namespace a opens {} connections one after \
         another to a server in b (connect, one request, one reply, the server closes, the client closes: \
         SYN to FIN), through each stateful firewall on b: moat (ingress allows tcp 7000, default deny, \
         TCP tracked by state) and nf_conntrack with the equivalent nftables ruleset \
         (`ct state established,related accept`, `tcp dport 7000 accept`, policy drop); each on its own \
         lab, {} interleaved rounds. Whole connections per second, median (min–max):\n\n{}\n",
        life.conns,
        life.life_rounds,
        report::life_markdown(lives)
    ));
    md.push_str(&format!(
        "\n## Load balancer\n\nA client namespace, the balancer's namespace and three backend namespaces, each \
         backend one veth away (moat-host's LbLab). The peers that run on this kernel: nftables DNAT \
         (`numgen random` and `jhash` maps), iptables DNAT (`statistic`), and kernel forwarding with no \
         balancer (to one backend's address) as the ceiling of the kernel path; IPVS is not in this \
         kernel (no CONFIG_IP_VS), so it is not measured. The generator (live-frames XDP in the client \
         namespace, the whole header written every frame) floods UDP to the VIP for at most 2 s; an XDP \
         drop program on each backend's interface counts what arrived.\n\n{}\n",
        moat_bench::lb::markdown(&lbr.live, &lbr.cost, &lbr.reqs, &lbr.dis)
    ));
    md
}
