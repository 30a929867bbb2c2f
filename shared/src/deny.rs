//! Deny lists of networks (SSRF): where webhooks (`webhooks.deny_networks`)
//! and legacy bots' delivery addresses (`security.bot_deny_networks`) may
//! not point.
//!
//! An IPv6 address can carry an IPv4 address inside it, and the network
//! stack (or a NAT64 gateway, a 6to4 relay) delivers to that IPv4 address.
//! An address is refused when it, or any IPv4 address it embeds, is inside
//! a denied network, so `[::ffff:127.0.0.1]`, `[::127.0.0.1]`,
//! `[::ffff:0:127.0.0.1]` and `[64:ff9b::7f00:1]` are all 127.0.0.1.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed deny list, with the setting it came from (for messages).
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    networks: Vec<IpNet>,
    setting: &'static str,
}

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {address} is in a denied network ({network}); see {setting}")]
pub struct Denied {
    pub address: IpAddr,
    pub network: IpNet,
    pub setting: &'static str,
}

impl DenyList {
    /// Parses `items` (CIDR networks; blanks are skipped); `setting` names
    /// the configuration key in errors.
    pub fn parse(setting: &'static str, items: &[String]) -> Result<DenyList, String> {
        let networks = items
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse::<IpNet>()
                    .map_err(|e| format!("{setting}: {s:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(DenyList { networks, setting })
    }

    /// Refuses `ip` when it or an IPv4 address embedded in it is denied.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6),
            IpAddr::V4(_) => Vec::new(),
        };
        for address in std::iter::once(ip).chain(embedded.into_iter().map(IpAddr::V4)) {
            if let Some(network) = self.networks.iter().find(|n| n.contains(&address)) {
                return Err(Denied {
                    address,
                    network: *network,
                    setting: self.setting,
                });
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// The IPv4 addresses an IPv6 address stands for, in each form that gets
/// traffic to an IPv4 host:
/// * IPv4-mapped `::ffff:a.b.c.d` (RFC 4291);
/// * IPv4-compatible `::a.b.c.d` (deprecated, still routed by some stacks;
///   `::` and `::1` are IPv6's own and excluded);
/// * IPv4-translated `::ffff:0:a.b.c.d` (RFC 2765/SIIT);
/// * NAT64 `64:ff9b::a.b.c.d` and the local-use `64:ff9b:1::/48` (RFC 6052,
///   RFC 8215; the /96 embedding, the one gateways use);
/// * 6to4 `2002:AABB:CCDD::/48` (RFC 3056);
/// * Teredo `2001:0::/32`: the server's address, and the client's (stored
///   inverted) (RFC 4380).
pub fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mut out = Vec::new();
    match s {
        // Mapped.
        [0, 0, 0, 0, 0, 0xffff, _, _] => out.push(low),
        // Translated.
        [0, 0, 0, 0, 0xffff, 0, _, _] => out.push(low),
        // Compatible, but not :: or ::1.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => out.push(low),
        // NAT64, well-known and local-use prefixes.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, _, _, _, _, _] => out.push(low),
        // 6to4.
        [0x2002, a, b, ..] => out.push(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        // Teredo: server in segments 2-3, client inverted in 6-7.
        [0x2001, 0, a, b, ..] => {
            out.push(Ipv4Addr::new(
                (a >> 8) as u8,
                a as u8,
                (b >> 8) as u8,
                b as u8,
            ));
            out.push(Ipv4Addr::from(!u32::from(low)));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> DenyList {
        DenyList::parse(
            "test.deny",
            &items.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .expect("networks")
    }

    #[test]
    fn every_ipv4_in_ipv6_spelling_of_a_denied_address_is_denied() {
        let deny = list(&["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16"]);
        // (spelling, denied?)
        let table: &[(&str, bool)] = &[
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:7f00:1", true),
            ("::127.0.0.1", true),
            ("::7f00:1", true),
            ("::ffff:0:127.0.0.1", true),
            ("::ffff:0:7f00:1", true),
            ("64:ff9b::127.0.0.1", true),
            ("64:ff9b::7f00:1", true),
            ("64:ff9b:1::7f00:1", true),
            ("64:ff9b:1:abcd::a00:1", true),
            ("2002:7f00:1::", true),
            ("2002:a9fe:a9fe::1", true),
            ("2001:0:7f00:1::", true),
            // Teredo client 10.0.0.1, stored inverted: f5ff:fffe.
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:10.1.2.3", true),
            // Allowed: public IPv4 in every form, and IPv6's own.
            ("93.184.216.34", false),
            ("::ffff:93.184.216.34", false),
            ("::93.184.216.34", false),
            ("::ffff:0:93.184.216.34", false),
            ("64:ff9b::93.184.216.34", false),
            ("2002:5db8:d822::", false),
            ("::1", false),
            ("::", false),
            ("2606:2800:220:1:248:1893:25c8:1946", false),
        ];
        for (spelling, denied) in table {
            let ip: IpAddr = spelling.parse().expect(spelling);
            assert_eq!(deny.check(ip).is_err(), *denied, "{spelling}");
        }
    }

    #[test]
    fn ipv6_loopback_and_unspecified_are_denied_by_their_own_networks() {
        let deny = list(&["::1/128", "::/128"]);
        assert!(deny.check("::1".parse().expect("ip")).is_err());
        assert!(deny.check("::".parse().expect("ip")).is_err());
        assert!(deny.check("::2".parse().expect("ip")).is_ok());
    }

    #[test]
    fn a_refusal_names_the_address_the_network_and_the_setting() {
        let deny = list(&["127.0.0.0/8"]);
        let e = deny
            .check("::ffff:0:127.0.0.1".parse().expect("ip"))
            .expect_err("denied");
        assert_eq!(e.address, "127.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            e.to_string(),
            "address 127.0.0.1 is in a denied network (127.0.0.0/8); see test.deny"
        );
    }

    #[test]
    fn bad_networks_are_refused_with_the_setting_named() {
        let e = DenyList::parse("x.deny", &["300.0.0.0/8".into()]).expect_err("bad");
        assert!(e.starts_with("x.deny: "), "{e}");
        assert!(
            DenyList::parse("x.deny", &[" ".into()])
                .expect("blank")
                .is_empty()
        );
    }
}
