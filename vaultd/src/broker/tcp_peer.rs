//! Who is at the other end of a loopback TCP connection. TCP has no
//! SO_PEERCRED, but the kernel lists every socket of the network namespace
//! with the uid that created it (`/proc/net/tcp`, `/proc/net/tcp6`): the
//! caller's socket is the one whose local address is our peer's and whose
//! remote address is ours. That uid is what a token bound to a uid is checked
//! against; the caller is named by its token alone (see SECURITY.md).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the socket at `peer` connected to `local`, if the kernel lists it.
pub(super) fn uid_of(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        find(&text, peer, local)
    })
}

fn find(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (from, to, uid) = (address(fields.get(1)?)?, address(fields.get(2)?)?, fields.get(7)?);
        (same(from, peer) && same(to, local)).then(|| uid.parse().ok()).flatten()
    })
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// `0100007F:1F90`: the address as 32-bit words in host order, then the port.
fn address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_the_uid_of_a_real_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(uid_of(peer, listener.local_addr().unwrap()), Some(me));
        let elsewhere = SocketAddr::new(peer.ip(), peer.port().wrapping_add(1));
        assert_eq!(uid_of(elsewhere, listener.local_addr().unwrap()), None);
    }

    #[test]
    fn parses_both_address_forms() {
        if cfg!(target_endian = "little") {
            assert_eq!(address("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
            assert_eq!(address("00000000000000000000000001000000:0050"), Some("[::1]:80".parse().unwrap()));
        }
        assert_eq!(address("nonsense"), None);
    }
}
