//! Throwaway labs: two network namespaces joined by a veth pair. Used by
//! `moat demo` and by the privileged tests. Never touches the host's own
//! interfaces; dropping a [`Lab`] deletes both namespaces (and with them the
//! veth pair and anything attached to it).

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Addresses of the two ends (when the lab has addresses).
pub const A4: &str = "10.199.0.1";
pub const B4: &str = "10.199.0.2";
pub const A6: &str = "fd00:199::1";
pub const B6: &str = "fd00:199::2";

/// How to set a lab up.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Give the ends IPv4/IPv6 addresses (A4/A6 on a, B4/B6 on b).
    pub addresses: bool,
    /// Disable IPv6 in both namespaces (no NDP/MLD chatter), for exact counts.
    pub ipv6: bool,
    /// Enable GRO on the b end (needed to receive XDP-redirected frames).
    pub gro: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            addresses: true,
            ipv6: true,
            gro: false,
        }
    }
}

/// Two namespaces `ns_a`, `ns_b`; veth `if_a` in a, `if_b` in b.
#[derive(Debug)]
pub struct Lab {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    pub mac_a: [u8; 6],
    pub mac_b: [u8; 6],
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ip(&[
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        &format!("echo {value} > {path}"),
    ])
    .map(|_| ())
}

impl Lab {
    /// Creates `moat-TAG-a` and `moat-TAG-b` joined by veth `mTAGa`/`mTAGb`.
    /// `tag` must be at most 12 characters of [a-z0-9].
    pub fn create(tag: &str, cfg: &LabConfig) -> Result<Lab> {
        if tag.is_empty() || tag.len() > 12 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("lab tag {tag:?} must be 1-12 letters or digits");
        }
        let mut lab = Lab {
            ns_a: format!("moat-{tag}-a"),
            ns_b: format!("moat-{tag}-b"),
            if_a: format!("m{tag}a"),
            if_b: format!("m{tag}b"),
            mac_a: [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x0a],
            mac_b: [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x0b],
        };
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &lab.ns_a])?;
        if let Err(e) = ip(&["netns", "add", &lab.ns_b]) {
            // ns_b may be taken by someone else: do not delete it in Drop.
            let _ = ip(&["netns", "del", &lab.ns_a]);
            lab.ns_a.clear();
            lab.ns_b.clear();
            return Err(e);
        }
        lab.setup(cfg)?;
        if cfg.addresses {
            lab.wait_ready(cfg.ipv6)?;
        }
        Ok(lab)
    }

    /// Waits until a→b works end to end: a TCP connect to a closed port on b
    /// gets its refusal (the first seconds after link-up, neighbour
    /// resolution can stall). At most 5 s.
    fn wait_ready(&self, ipv6: bool) -> Result<()> {
        let _ns = crate::sys::NetnsGuard::enter(&self.ns_a)?;
        let mut targets = vec![B4];
        if ipv6 {
            targets.push(B6);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for t in targets {
            let addr = std::net::SocketAddr::new(t.parse()?, 9);
            loop {
                match std::net::TcpStream::connect_timeout(
                    &addr,
                    std::time::Duration::from_millis(200),
                ) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Err(e) if std::time::Instant::now() > deadline => {
                        bail!("lab link {} -> {t} not ready after 5s: {e}", self.if_a)
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }

    fn setup(&mut self, cfg: &LabConfig) -> Result<()> {
        for ns in [&self.ns_a, &self.ns_b] {
            let v = if cfg.ipv6 { "0" } else { "1" };
            sysctl_in(ns, "net.ipv6.conf.all.disable_ipv6", v)?;
            sysctl_in(ns, "net.ipv6.conf.default.disable_ipv6", v)?;
        }
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let (mac_a, mac_b) = (mac(self.mac_a), mac(self.mac_b));
        ip(&[
            "link", "add", &self.if_a, "netns", &self.ns_a, "address", &mac_a, "type", "veth",
            "peer", "name", &self.if_b, "netns", &self.ns_b, "address", &mac_b,
        ])?;
        if cfg.addresses {
            let mut addrs = vec![
                (&self.ns_a, &self.if_a, format!("{A4}/24")),
                (&self.ns_b, &self.if_b, format!("{B4}/24")),
            ];
            if cfg.ipv6 {
                addrs.push((&self.ns_a, &self.if_a, format!("{A6}/64")));
                addrs.push((&self.ns_b, &self.if_b, format!("{B6}/64")));
            }
            for (ns, dev, addr) in addrs {
                // nodad: the address is usable at once (IPv4 ignores the flag).
                ip(&["-n", ns, "addr", "add", &addr, "dev", dev, "nodad"])?;
            }
        }
        if cfg.gro {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", &self.ns_b, "ethtool", "-K", &self.if_b, "gro", "on",
                ])
                .output();
        }
        for (ns, dev) in [(&self.ns_a, &self.if_a), (&self.ns_b, &self.if_b)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Does interface `if_b` currently have an XDP program?
    pub fn b_has_xdp(&self) -> Result<bool> {
        let out = ip(&["-n", &self.ns_b, "-d", "link", "show", "dev", &self.if_b])?;
        Ok(out.contains("prog/xdp"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            if !ns.is_empty() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

/// Deletes `moat-demo<PID>-{a,b}` namespaces left by demo runs that died
/// without cleaning up (killed with SIGKILL); live runs are left alone.
pub fn reap_stale_demos() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("moat-demo") else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(pid) = pid.parse::<u32>()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A load balancer lab: a client namespace, the balancer's namespace and
/// `backends` backend namespaces, each joined to the balancer by its own
/// veth pair (so every backend is one L2 hop away: NAT and DSR both work).
///
/// ```text
/// moat-TAG-c  eth0 10.198.0.1 fd00:198::1 ── cli 10.198.0.2 fd00:198::2   moat-TAG-l
///                                             beN 10.197.N.1 fd00:197:N::1 ── eth0 10.197.N.2 fd00:197:N::2  moat-TAG-sN
/// ```
/// The client routes the VIP range (10.200.0.0/24, fd00:200::/64) to the
/// balancer; backends route everything through it; the balancer forwards.
/// TX checksum offload is off on the senders (XDP-forwarded frames must
/// carry full checksums) and GRO is on at the receivers of redirected frames.
#[derive(Debug)]
pub struct LbLab {
    pub ns_c: String,
    pub ns_l: String,
    pub ns_s: Vec<String>,
}

pub const LB_CLIENT4: &str = "10.198.0.1";
pub const LB_CLIENT6: &str = "fd00:198::1";

impl LbLab {
    pub fn backend4(n: usize) -> std::net::IpAddr {
        format!("10.197.{n}.2").parse().unwrap()
    }
    pub fn backend6(n: usize) -> std::net::IpAddr {
        format!("fd00:197:{n}::2").parse().unwrap()
    }
    /// The balancer's interfaces (client side first).
    pub fn lb_ifaces(&self) -> Vec<String> {
        let mut v = vec!["cli".to_string()];
        v.extend((1..=self.ns_s.len()).map(|n| format!("be{n}")));
        v
    }

    pub fn create(tag: &str, backends: usize) -> Result<LbLab> {
        if tag.is_empty() || tag.len() > 12 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("lab tag {tag:?} must be 1-12 letters or digits");
        }
        if !(1..=9).contains(&backends) {
            bail!("1 to 9 backends");
        }
        let mut lab = LbLab {
            ns_c: String::new(),
            ns_l: String::new(),
            ns_s: Vec::new(),
        };
        // Each namespace is recorded as soon as it exists: Drop removes it.
        let c = format!("moat-{tag}-c");
        ip(&["netns", "add", &c])?;
        lab.ns_c = c;
        let l = format!("moat-{tag}-l");
        ip(&["netns", "add", &l])?;
        lab.ns_l = l;
        for n in 1..=backends {
            let s = format!("moat-{tag}-s{n}");
            ip(&["netns", "add", &s])?;
            lab.ns_s.push(s);
        }
        lab.setup()?;
        Ok(lab)
    }

    fn setup(&self) -> Result<()> {
        let (c, l) = (&self.ns_c, &self.ns_l);
        let mut all = vec![c.clone(), l.clone()];
        all.extend(self.ns_s.iter().cloned());
        for ns in &all {
            sysctl_in(ns, "net.ipv6.conf.all.disable_ipv6", "0")?;
            sysctl_in(ns, "net.ipv6.conf.default.accept_dad", "0")?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        sysctl_in(l, "net.ipv4.ip_forward", "1")?;
        // Clients open many short connections: reuse TIME_WAIT ports.
        sysctl_in(c, "net.ipv4.tcp_tw_reuse", "1")?;
        sysctl_in(c, "net.ipv4.ip_local_port_range", "\"10000 65000\"")?;
        sysctl_in(l, "net.ipv6.conf.all.forwarding", "1")?;
        ip(&[
            "link", "add", "eth0", "netns", c, "type", "veth", "peer", "name", "cli", "netns", l,
        ])?;
        ip(&["-n", c, "addr", "add", "10.198.0.1/24", "dev", "eth0"])?;
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            "fd00:198::1/64",
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", l, "addr", "add", "10.198.0.2/24", "dev", "cli"])?;
        ip(&[
            "-n",
            l,
            "addr",
            "add",
            "fd00:198::2/64",
            "dev",
            "cli",
            "nodad",
        ])?;
        let mut links = vec![
            (c.clone(), "eth0".to_string()),
            (l.clone(), "cli".to_string()),
        ];
        for (i, s) in self.ns_s.iter().enumerate() {
            let n = i + 1;
            let be = format!("be{n}");
            ip(&[
                "link", "add", &be, "netns", l, "type", "veth", "peer", "name", "eth0", "netns", s,
            ])?;
            ip(&[
                "-n",
                l,
                "addr",
                "add",
                &format!("10.197.{n}.1/24"),
                "dev",
                &be,
            ])?;
            ip(&[
                "-n",
                l,
                "addr",
                "add",
                &format!("fd00:197:{n}::1/64"),
                "dev",
                &be,
                "nodad",
            ])?;
            ip(&[
                "-n",
                s,
                "addr",
                "add",
                &format!("10.197.{n}.2/24"),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                s,
                "addr",
                "add",
                &format!("fd00:197:{n}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            links.push((l.clone(), be));
            links.push((s.clone(), "eth0".to_string()));
        }
        for (ns, dev) in &links {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&[
            "-n",
            c,
            "route",
            "add",
            "10.200.0.0/24",
            "via",
            "10.198.0.2",
        ])?;
        ip(&[
            "-n",
            c,
            "route",
            "add",
            "10.197.0.0/16",
            "via",
            "10.198.0.2",
        ])?;
        ip(&[
            "-n",
            c,
            "-6",
            "route",
            "add",
            "fd00:200::/64",
            "via",
            "fd00:198::2",
        ])?;
        ip(&[
            "-n",
            c,
            "-6",
            "route",
            "add",
            "fd00:197::/32",
            "via",
            "fd00:198::2",
        ])?;
        for (i, s) in self.ns_s.iter().enumerate() {
            let n = i + 1;
            ip(&[
                "-n",
                s,
                "route",
                "add",
                "default",
                "via",
                &format!("10.197.{n}.1"),
            ])?;
            ip(&[
                "-n",
                s,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:197:{n}::1"),
            ])?;
        }
        // After link up (GRO set before stays off in NAPI): full checksums
        // from the senders, GRO at every end that receives redirected frames.
        for (ns, dev) in &links {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "gro", "on",
                ])
                .output();
        }
        Ok(())
    }

    /// Puts `vip` on the loopback of every backend (DSR: they answer from it).
    pub fn vip_on_backends(&self, vip: &str) -> Result<()> {
        for s in &self.ns_s {
            let plen = if vip.contains(':') { "128" } else { "32" };
            ip(&[
                "-n",
                s,
                "addr",
                "add",
                &format!("{vip}/{plen}"),
                "dev",
                "lo",
            ])?;
        }
        Ok(())
    }
}

impl Drop for LbLab {
    fn drop(&mut self) {
        let mut all = vec![self.ns_c.clone(), self.ns_l.clone()];
        all.extend(self.ns_s.iter().cloned());
        for ns in all {
            if !ns.is_empty() {
                let _ = ip(&["netns", "del", &ns]);
            }
        }
    }
}
