//! What identifies a socket or file across an upgrade.

use std::fmt;

/// The kind of object behind a registry key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A listening stream socket: `tcp`, `tcp4`, `tcp6`, `unix`.
    Listener,
    /// A datagram socket: `udp`, `udp4`, `udp6`, `unixgram`.
    Packet,
    /// Any file registered by name.
    File,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::Packet => "packet",
            Kind::File => "file",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Kind> {
        match s {
            "listener" => Some(Kind::Listener),
            "packet" => Some(Kind::Packet),
            "file" => Some(Kind::File),
            _ => None,
        }
    }

    /// Whether `network` names a network of this kind.
    pub(crate) fn accepts(self, network: &str) -> bool {
        match self {
            Kind::Listener => matches!(
                network,
                "tcp" | "tcp4" | "tcp6" | "unix" | ACTIVATED_NETWORK
            ),
            Kind::Packet => matches!(network, "udp" | "udp4" | "udp6" | "unixgram"),
            Kind::File => network == FILE_NETWORK,
        }
    }
}

/// The network of a listener systemd passed, asked for by its name (`FileDescriptorName=`):
/// the key's address is that name.
pub(crate) const ACTIVATED_NETWORK: &str = "systemd";

/// The network name stored for files, which have none.
pub(crate) const FILE_NETWORK: &str = "file";

/// Identifies one socket or file: (kind, network, address).
///
/// For TCP and UDP the address is the canonical form of the bound address (`127.0.0.1:8080`,
/// `[::1]:8080`), so `localhost:8080` and `127.0.0.1:8080` are one key and a socket bound to
/// port 0 is keyed by the port it got. For unix sockets it is the path as given; for files, the
/// name they were registered under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// What it is.
    pub kind: Kind,
    /// `tcp`, `tcp4`, `tcp6`, `unix`, `udp`, `udp4`, `udp6`, `unixgram`, `file`, or `systemd`
    /// (a listener systemd passed, by name).
    pub network: String,
    /// The canonical address, path or name.
    pub address: String,
}

impl Key {
    pub(crate) fn new(kind: Kind, network: &str, address: &str) -> Key {
        Key {
            kind,
            network: network.to_owned(),
            address: address.to_owned(),
        }
    }

    /// Whether the address is a filesystem path (unix sockets).
    pub(crate) fn is_unix_path(&self) -> bool {
        matches!(self.network.as_str(), "unix" | "unixgram")
    }

    /// The name of a socket in a service manager's fd store (`FDNAME=`): the key, with `%`,
    /// `:` (systemd's separator in `LISTEN_FDNAMES`) and anything but printable ASCII
    /// percent-encoded. `None` for a file, or when the name would pass systemd's 255 bytes.
    pub(crate) fn store_name(&self) -> Option<String> {
        if self.kind == Kind::File {
            return None;
        }
        let name = crate::percent::encode(&self.to_string(), |c| {
            c == '%' || c == ':' || !(' '..='~').contains(&c)
        });
        (name.len() <= 255).then_some(name)
    }
}

/// Whether `name` is a name systemd accepts in `FDNAME=`: at most 255 bytes of printable ASCII
/// without `:`.
pub(crate) fn is_store_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b':')
}

/// `listener tcp 127.0.0.1:8080`, `packet udp [::1]:53`; a file by its name alone, `file state`.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::File => write!(f, "file {}", self.address),
            kind => write!(f, "{} {} {}", kind.as_str(), self.network, self.address),
        }
    }
}

#[cfg(test)]
mod store_name_tests {
    use super::*;

    #[test]
    fn store_names_are_names_systemd_accepts_and_files_have_none() {
        let tcp = Key::new(Kind::Listener, "tcp", "[::1]:8080");
        let name = tcp.store_name().unwrap();
        assert_eq!(name, "listener tcp [%3A%3A1]%3A8080");
        assert!(is_store_name(&name));
        let odd = Key::new(Kind::Listener, "unix", "/run/ünï:x%.sock");
        assert!(is_store_name(&odd.store_name().unwrap()));
        assert_eq!(
            Key::new(Kind::File, FILE_NETWORK, "state").store_name(),
            None
        );
        let long = Key::new(Kind::Listener, "unix", &"a".repeat(300));
        assert_eq!(long.store_name(), None);
        for bad in ["", "a:b", "tab\there", "é"] {
            assert!(!is_store_name(bad), "{bad:?}");
        }
    }
}
