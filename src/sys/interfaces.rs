//! This host's own addresses, from `getifaddrs`: the outbox refuses to call them, so a
//! client cannot use the courier to reach a service bound to one of this host's interfaces.

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;

/// Every IPv4 and IPv6 address of every interface (empty if they cannot be read, which the
/// caller logs: the loopback and private ranges are still refused by class).
pub fn own_addresses() -> nix::Result<Vec<IpAddr>> {
    let mut all = Vec::new();
    for ifa in getifaddrs()? {
        let Some(address) = ifa.address else { continue };
        if let Some(v4) = address.as_sockaddr_in() {
            all.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            all.push(IpAddr::V6(v6.ip()));
        }
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_include_loopback() {
        let all = own_addresses().unwrap();
        assert!(all.contains(&IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)), "{all:?}");
    }
}
