//! CIDR prefixes of both families.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// A prefix with its host bits zero. Ordered by family, then address, then length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

impl Cidr {
    /// Parses `1.2.3.4`, `1.2.3.0/24`, `2001:db8::/32`. Host bits must be zero.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        let c = Cidr::new(ip, len);
        if c.network() != ip {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}?)",
                Cidr::new(ip, len)
            ));
        }
        Ok(c)
    }

    /// The prefix of `ip` with `len` bits (host bits cleared).
    pub fn new(ip: IpAddr, len: u8) -> Cidr {
        match ip {
            IpAddr::V4(a) => Cidr::V4(u32::from(a) & mask32(len), len),
            IpAddr::V6(a) => Cidr::V6(u128::from(a) & mask128(len), len),
        }
    }

    pub fn prefix_len(&self) -> u8 {
        match *self {
            Cidr::V4(_, l) | Cidr::V6(_, l) => l,
        }
    }

    pub fn is_v4(&self) -> bool {
        matches!(self, Cidr::V4(..))
    }

    pub fn network(&self) -> IpAddr {
        match *self {
            Cidr::V4(a, _) => IpAddr::V4(Ipv4Addr::from(a)),
            Cidr::V6(a, _) => IpAddr::V6(Ipv6Addr::from(a)),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4(n, l), IpAddr::V4(a)) => u32::from(a) & mask32(l) == n,
            (Cidr::V6(n, l), IpAddr::V6(a)) => u128::from(a) & mask128(l) == n,
            _ => false,
        }
    }

    /// True if `other` lies inside `self` (same family).
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix_len() >= self.prefix_len() && self.contains(other.network())
    }

    /// The address bytes in network order (4 or 16).
    pub fn octets(&self) -> Vec<u8> {
        match *self {
            Cidr::V4(a, _) => a.to_be_bytes().to_vec(),
            Cidr::V6(a, _) => a.to_be_bytes().to_vec(),
        }
    }

    pub fn any_v4() -> Cidr {
        Cidr::V4(0, 0)
    }

    pub fn any_v6() -> Cidr {
        Cidr::V6(0, 0)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len())
    }
}

pub fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

pub fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.0".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(Cidr::parse("192.0.2.7").unwrap(), Cidr::V4(0xC000_0207, 32));
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("did you mean 10.0.0.0/8")
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(v6.covers(&Cidr::parse("2001:db8:1::/48").unwrap()));
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap(), Cidr::any_v4());
    }
}
