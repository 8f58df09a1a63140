//! Where webhooks may go. With `webhooks.block_private_addresses`, the
//! server refuses to connect to loopback, private, link-local and other
//! non-public addresses, so a channel admin cannot point a webhook at the
//! internal network. The check runs on the addresses a name resolves to,
//! just before connecting (a name that resolves differently later cannot
//! slip through), and on IP literals, which skip resolution.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use actix_tls::connect::Resolve;
use futures_util::future::LocalBoxFuture;

/// Whether `ip` is an ordinary public address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        // 100.64.0.0/10, carrier-grade NAT (shared address space).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24, IETF protocol assignments.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (18..20).contains(&b))
        // 240.0.0.0/4, reserved.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7, unique local.
        || (first & 0xfe00) == 0xfc00
        // fe80::/10, link-local.
        || (first & 0xffc0) == 0xfe80
        // 2001:db8::/32, documentation.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // 64:ff9b:1::/48, local-use NAT64.
        || (first == 0x0064 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1))
}

/// Why a URL's host may not be posted to, if it may not: only IP literals
/// can be judged without resolving.
pub fn refuse_literal(host: &str, block_private: bool) -> Option<String> {
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    (block_private && !is_public(ip)).then(|| format!("{ip} is not a public address"))
}

/// The system resolver, keeping only public addresses when asked to.
pub struct GuardedResolver {
    /// Drop non-public addresses (`webhooks.block_private_addresses`).
    pub block_private: bool,
}

impl Resolve for GuardedResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        let target = format!("{host}:{port}");
        let block_private = self.block_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                actix_rt::task::spawn_blocking(move || target.to_socket_addrs())
                    .await
                    .map_err(|err| Box::new(err) as Box<dyn StdError>)??
                    .collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|addr| !block_private || is_public(addr.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(format!("{host} resolves only to non-public addresses").into());
            }
            Ok(allowed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "198.18.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literals_are_refused_only_when_blocking() {
        assert!(refuse_literal("127.0.0.1", true).is_some());
        assert!(refuse_literal("[::1]", true).is_some());
        assert!(refuse_literal("10.0.0.8", true).is_some());
        assert_eq!(refuse_literal("127.0.0.1", false), None);
        assert_eq!(refuse_literal("example.com", true), None);
        assert_eq!(refuse_literal("1.1.1.1", true), None);
    }

    /// The resolver drops loopback answers when blocking: `localhost` is
    /// looked up (no connection is made) and refused.
    #[actix::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        let guarded = GuardedResolver {
            block_private: true,
        };
        assert!(guarded.lookup("localhost", 80).await.is_err());
        let open = GuardedResolver {
            block_private: false,
        };
        let addrs = open.lookup("localhost", 80).await.unwrap();
        assert!(addrs.iter().all(|addr| addr.ip().is_loopback()));
    }
}
