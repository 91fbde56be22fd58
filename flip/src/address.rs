//! Turning the addresses given to the registry into socket addresses.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::{Error, Repr};

pub(crate) fn address_error(network: &str, address: &str, reason: impl Into<String>) -> Error {
    Error::from(Repr::Address {
        network: network.to_owned(),
        address: address.to_owned(),
        reason: reason.into(),
    })
}

/// Turns `host:port` into one socket address fitting the network (`tcp4` wants IPv4, `tcp6`
/// IPv6, `tcp` either, preferring IPv4 when a name resolves to both). An empty host means every
/// interface: `0.0.0.0` for `tcp`/`tcp4`, `[::]` for `tcp6`.
pub(crate) fn resolve_inet(network: &str, address: &str) -> Result<SocketAddr, Error> {
    let want_v4 = network.ends_with('4');
    let want_v6 = network.ends_with('6');
    let candidates: Vec<SocketAddr> = if let Ok(addr) = address.parse::<SocketAddr>() {
        vec![addr]
    } else if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| address_error(network, address, "the port is not a number 0-65535"))?;
        let host = if want_v6 { "[::]" } else { "0.0.0.0" };
        vec![
            format!("{host}:{port}")
                .parse()
                .map_err(|_| address_error(network, address, "cannot build a wildcard address"))?,
        ]
    } else {
        if !address.contains(':') {
            return Err(address_error(network, address, "expected host:port"));
        }
        address
            .to_socket_addrs()
            .map_err(|e| address_error(network, address, format!("cannot resolve: {e}")))?
            .collect()
    };
    let fits = |a: &SocketAddr| (!want_v4 || a.is_ipv4()) && (!want_v6 || a.is_ipv6());
    candidates
        .iter()
        .find(|a| fits(a) && (want_v6 || a.is_ipv4()))
        .or_else(|| candidates.iter().find(|a| fits(a)))
        .copied()
        .ok_or_else(|| address_error(network, address, format!("no address fits {network}")))
}
