//! The small matchers rule conditions use: client_id globs and CIDR blocks.
//! Neither allocates to match: a decision runs them on every request.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A glob over client_ids: `*` any run of characters, `?` exactly one.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// Any text is a glob; there is nothing to refuse.
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_owned())
    }

    /// Whether `text` matches the whole pattern. Linear in practice: the
    /// classic two-pointer walk that backtracks only to the last `*`, over
    /// byte offsets into both strings, a character at a time.
    pub fn matches(&self, text: &str) -> bool {
        let pattern = self.0.as_str();
        let (mut p, mut t) = (0, 0);
        // After the last `*`: where the pattern resumes, and where in the text that `*` stops.
        let mut star: Option<(usize, usize)> = None;
        while let Some(c) = text[t..].chars().next() {
            match pattern[p..].chars().next() {
                Some('*') => {
                    p += 1;
                    star = Some((p, t));
                }
                Some(q) if q == '?' || q == c => {
                    p += q.len_utf8();
                    t += c.len_utf8();
                }
                _ => match star {
                    // The last `*` takes one more character; the pattern resumes after it.
                    Some((resume, stop)) => {
                        let stop = stop + text[stop..].chars().next().map_or(0, char::len_utf8);
                        (p, t) = (resume, stop);
                        star = Some((resume, stop));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].bytes().all(|b| b == b'*')
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.0)
    }
}

/// An IPv4 or IPv6 block such as `10.0.0.0/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

/// Why a topic filter or a CIDR block of a rule is refused; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

impl FromStr for Cidr {
    type Err = PatternError;

    /// The address by the standard library's strict parser (no leading zeros in
    /// an octet, which could be read as octal), the prefix as plain digits.
    fn from_str(s: &str) -> Result<Cidr, PatternError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let address: IpAddr =
            addr.parse().map_err(|_| PatternError(format!("{s:?} is not an IP address or CIDR block")))?;
        let host = IpNet::from(address);
        let Some(prefix) = prefix else {
            return Ok(Cidr(host));
        };
        let max = host.max_prefix_len();
        let bad_prefix = || PatternError(format!("{s:?} has a prefix length that is not 0..={max}"));
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_prefix());
        }
        let prefix = prefix.parse::<u8>().map_err(|_| bad_prefix())?;
        IpNet::new(address, prefix).map(Cidr).map_err(|_| bad_prefix())
    }
}

impl Cidr {
    /// Whether `ip` lies in the block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// as dual-stack sockets report IPv4 peers) is compared as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_ids() {
        let g = Glob::new("curl-*");
        assert!(g.matches("curl-x") && g.matches("curl-") && !g.matches("xcurl-x") && !g.matches("curl"));
        let g = Glob::new("dev-??-*-end");
        assert!(g.matches("dev-01-abc-end") && g.matches("dev-01--end") && !g.matches("dev-1-abc-end"));
        assert!(Glob::new("*").matches("") && Glob::new("**a").matches("a") && !Glob::new("").matches("a"));
        assert!(Glob::new("a*b*c").matches("aXbYbZc") && !Glob::new("a*b*c").matches("aXbYbZ"));
    }

    #[test]
    fn a_star_in_the_pattern_stays_a_wildcard_when_the_text_has_a_star_too() {
        assert!(Glob::new("a*b").matches("a*xb") && Glob::new("*").matches("**") && Glob::new("a*").matches("a*"));
    }

    #[test]
    fn globs_count_characters_not_bytes() {
        assert!(Glob::new("caf?").matches("café") && Glob::new("?-*").matches("é-ü") && !Glob::new("??").matches("é"));
        assert!(Glob::new("*é").matches("ééé") && Glob::new("é*é").matches("éxé") && !Glob::new("é*é").matches("é"));
    }

    #[test]
    fn cidr_edges() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.0.0.0".parse().unwrap()) && c.contains("10.255.255.255".parse().unwrap()));
        assert!(!c.contains("11.0.0.0".parse().unwrap()) && !c.contains("9.255.255.255".parse().unwrap()));
        let c: Cidr = "192.168.1.128/25".parse().unwrap();
        assert!(c.contains("192.168.1.128".parse().unwrap()) && !c.contains("192.168.1.127".parse().unwrap()));
        let c: Cidr = "203.0.113.7".parse().unwrap();
        assert!(c.contains("203.0.113.7".parse().unwrap()) && !c.contains("203.0.113.8".parse().unwrap()));
        assert!(c.contains("::ffff:203.0.113.7".parse().unwrap()), "IPv4-mapped IPv6 counts as IPv4");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()) && !all.contains("2001:db8::1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()) && !v6.contains("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for s in
            ["10.0.0.0/33", "10.0.0/8", "::/129", "10.0.0.0/", "10.0.0.0/+8", "x", "", "010.0.0.0/8", "10.0.0.0/8/8"]
        {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
    }
}
