//! Who may open a session: the client's address (behind trusted proxies,
//! from `X-Forwarded-For`), at most `max_sessions` open sessions per
//! address, and new sessions per address at most at `connect_rate` a second
//! in bursts of `connect_burst`. A refused handshake is answered 429 before
//! any session exists, so a flood costs the server no more than the refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_http::RequestHead;
use parking_lot::Mutex;

use crate::metrics::{Limit, METRICS};
use crate::rate_limit::TokenBucket;

/// The per-address limits; 0 turns one off.
#[derive(Clone, Debug, Default)]
pub struct AddressLimits {
    /// Open sessions per client address.
    pub max_sessions: usize,
    /// New sessions per second per client address.
    pub connect_rate: u32,
    /// New sessions at once per client address, above the rate.
    pub connect_burst: u32,
    /// Peers whose `X-Forwarded-For` names the client (IP or CIDR).
    pub trusted_proxies: Vec<IpNet>,
}

/// An address range: an IP and how many leading bits must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `::1` or `127.0.0.1` (a single address).
    ///
    /// # Errors
    /// Anything else, as a sentence.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("{text:?} has a bad prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            IpAddr::V6(v6) => u128::from(v6),
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        // IPv4 sits in the top 32 bits, so one mask of `prefix` top bits
        // serves both families.
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        bits(ip) & mask == bits(self.addr) & mask
    }
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_sessions` are open from this address.
    TooManySessions,
    /// New sessions come faster than `connect_rate`.
    TooFast,
}

impl Refusal {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::TooManySessions => {
                "too many connections from this address (limits.max_sockets_per_address)"
            }
            Refusal::TooFast => {
                "connecting too fast from this address (limits.connect_rate_per_address); retry later"
            }
        }
    }
}

/// One client address: its open sessions and its connect bucket.
struct Entry {
    sessions: usize,
    bucket: TokenBucket,
    /// When the bucket would be full again; an entry without sessions
    /// after that is the same as no entry.
    idle_from: Instant,
}

/// Admission of new sessions; see the module documentation.
pub struct Admission {
    limits: AddressLimits,
    addresses: Mutex<HashMap<IpAddr, Entry>>,
    /// Forget idle entries when the table grows past this.
    sweep_at: Mutex<usize>,
}

/// One session's place in its address's count, given back when dropped.
pub struct AddressTicket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for AddressTicket {
    fn drop(&mut self) {
        let mut addresses = self.admission.addresses.lock();
        if let Some(entry) = addresses.get_mut(&self.ip) {
            entry.sessions = entry.sessions.saturating_sub(1);
        }
    }
}

/// Entries kept before the first sweep of idle ones.
const FIRST_SWEEP: usize = 1024;

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: AddressLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            addresses: Mutex::new(HashMap::new()),
            sweep_at: Mutex::new(FIRST_SWEEP),
        })
    }

    /// No limits (the conformance server).
    pub fn unlimited() -> Arc<Admission> {
        Admission::new(AddressLimits::default())
    }

    fn is_unlimited(&self) -> bool {
        self.limits.max_sessions == 0 && self.limits.connect_rate == 0
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted
    /// proxy, the right-most `X-Forwarded-For` entry that is not one.
    pub fn client_ip(&self, head: &RequestHead) -> Option<IpAddr> {
        let peer = head.peer_addr?.ip();
        let trusted = |ip: IpAddr| {
            self.limits
                .trusted_proxies
                .iter()
                .any(|net| net.contains(ip))
        };
        if !trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for value in head.headers().get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return Some(peer);
            };
            for hop in value.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) if trusted(ip) => client = ip,
                    Ok(ip) => return Some(ip),
                    // A forged or broken header: the proxy is who we know.
                    Err(_) => return Some(peer),
                }
            }
        }
        Some(client)
    }

    /// Admits a new session from `head`'s client, or says why not. The
    /// ticket counts the session until it is dropped (with the session).
    ///
    /// # Errors
    /// The [`Refusal`], counted in `/metrics`.
    pub fn admit(self: &Arc<Self>, head: &RequestHead) -> Result<Option<AddressTicket>, Refusal> {
        if self.is_unlimited() {
            return Ok(None);
        }
        let Some(ip) = self.client_ip(head) else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut addresses = self.addresses.lock();
        self.sweep(&mut addresses, now);
        let limits = &self.limits;
        let entry = addresses.entry(ip).or_insert_with(|| Entry {
            sessions: 0,
            bucket: TokenBucket::new(limits.connect_rate, limits.connect_burst),
            idle_from: now,
        });
        if limits.max_sessions > 0 && entry.sessions >= limits.max_sessions {
            METRICS.refused(Limit::SocketsPerAddress);
            return Err(Refusal::TooManySessions);
        }
        if !entry.bucket.try_take() {
            METRICS.refused(Limit::ConnectRate);
            return Err(Refusal::TooFast);
        }
        entry.sessions += 1;
        if limits.connect_rate > 0 {
            // Time for a whole burst to flow back in.
            let refill = f64::from(limits.connect_burst.max(1)) / f64::from(limits.connect_rate);
            entry.idle_from = now + std::time::Duration::from_secs_f64(refill);
        }
        Ok(Some(AddressTicket {
            admission: self.clone(),
            ip,
        }))
    }

    /// Forgets addresses without sessions whose bucket is full again, once
    /// the table has doubled since the last sweep: memory follows the
    /// addresses that are connected or connecting, at O(1) amortized.
    fn sweep(&self, addresses: &mut HashMap<IpAddr, Entry>, now: Instant) {
        let mut sweep_at = self.sweep_at.lock();
        if addresses.len() < *sweep_at {
            return;
        }
        addresses.retain(|_, entry| entry.sessions > 0 || entry.idle_from > now);
        *sweep_at = (addresses.len() * 2).max(FIRST_SWEEP);
    }

    /// Addresses tracked now (for tests and inspection).
    pub fn tracked(&self) -> usize {
        self.addresses.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::header::{HeaderName, HeaderValue};

    fn head(peer: &str, forwarded: Option<&str>) -> RequestHead {
        let mut head = RequestHead::default();
        head.peer_addr = Some(format!("{peer}:5000").parse().unwrap());
        if let Some(forwarded) = forwarded {
            head.headers_mut().insert(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(forwarded).unwrap(),
            );
        }
        head
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| IpNet::parse(net).unwrap()).collect()
    }

    #[test]
    fn ranges_parse_and_match() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(!IpNet::parse("fd00::/8")
            .unwrap()
            .contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let admission = Admission::new(AddressLimits {
            max_sessions: 1,
            trusted_proxies: nets(&["127.0.0.0/8", "10.0.0.0/8"]),
            ..AddressLimits::default()
        });
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        // A client that is not a proxy cannot choose its address.
        assert_eq!(
            admission.client_ip(&head("203.0.113.9", Some("1.2.3.4"))),
            ip("203.0.113.9")
        );
        // Behind proxies: the right-most hop that is not one.
        assert_eq!(
            admission.client_ip(&head("127.0.0.1", Some("1.2.3.4, 10.0.0.7"))),
            ip("1.2.3.4")
        );
        assert_eq!(
            admission.client_ip(&head("127.0.0.1", Some("6.6.6.6, 1.2.3.4"))),
            ip("1.2.3.4"),
            "a client's own X-Forwarded-For entries come first and are not believed"
        );
        assert_eq!(
            admission.client_ip(&head("127.0.0.1", None)),
            ip("127.0.0.1")
        );
        assert_eq!(
            admission.client_ip(&head("127.0.0.1", Some("garbage"))),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn sessions_and_connects_are_bounded_per_address_and_given_back() {
        let admission = Admission::new(AddressLimits {
            max_sessions: 2,
            connect_rate: 1,
            connect_burst: 3,
            trusted_proxies: Vec::new(),
        });
        let a = head("192.0.2.1", None);
        let first = admission.admit(&a).unwrap();
        let second = admission.admit(&a).unwrap();
        assert_eq!(admission.admit(&a).err(), Some(Refusal::TooManySessions));
        // Another address is counted apart.
        let other = admission.admit(&head("192.0.2.2", None)).unwrap();
        drop(first);
        // A session closed gives its place back; the burst (3) is spent.
        let third = admission.admit(&a).unwrap();
        drop((second, third));
        assert_eq!(admission.admit(&a).err(), Some(Refusal::TooFast));
        drop(other);
        assert_eq!(admission.tracked(), 2);
    }
}
