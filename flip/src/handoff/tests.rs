//! The wire format against good, truncated, mutated and arbitrary input.

use std::collections::HashSet;
use std::ffi::OsStr;

use super::*;
use crate::error::HandoffError;
use crate::key::{Key, Kind};
use crate::sys::fd::FileId;

fn sample() -> Manifest {
    Manifest {
        token: Token([7; 16]),
        parent_pid: 42,
        ready_fd: 4,
        alive_fd: 5,
        entries: vec![
            Entry {
                key: Key::new(Kind::Listener, "tcp", "127.0.0.1:8080"),
                fd: 6,
                file: FileId { dev: 8, ino: 99 },
            },
            Entry {
                key: Key::new(Kind::Listener, "unix", "/tmp/a b%c\u{e9}.sock"),
                fd: 7,
                file: FileId { dev: 8, ino: 100 },
            },
            Entry {
                key: Key::new(Kind::File, "file", "state"),
                fd: 8,
                file: FileId { dev: 1, ino: 2 },
            },
        ],
    }
}

#[test]
fn manifest_round_trips() {
    let m = sample();
    let text = m.encode();
    assert!(text.contains("/tmp/a%20b%25c%C3%A9.sock"), "{text}");
    assert_eq!(Manifest::decode(text.as_bytes()).unwrap(), m);
}

#[test]
fn marker_round_trips() {
    let m = Marker {
        version: 2,
        control_fd: 3,
        pipe_inode: 12345,
        token: Token::generate().unwrap(),
    };
    assert_eq!(Marker::decode(OsStr::new(&m.encode())).unwrap(), m);
}

#[test]
fn bad_markers_are_rejected() {
    for bad in [
        "",
        "1",
        "1:3",
        "1:3:7",
        "3:3:7:00000000000000000000000000000000",
        "0:3:7:00000000000000000000000000000000",
        "+2:3:7:00000000000000000000000000000000",
        "1:2:7:00000000000000000000000000000000",
        "1:-3:7:00000000000000000000000000000000",
        "1:3:-7:00000000000000000000000000000000",
        "1:3:+7:00000000000000000000000000000000",
        "1:3:7:0000",
        "1:3:7:zz000000000000000000000000000000",
        "1:3:7:00000000000000000000000000000000:x",
        "1:99999999999:7:00000000000000000000000000000000",
    ] {
        assert!(Marker::decode(OsStr::new(bad)).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn every_truncation_is_rejected() {
    let text = sample().encode();
    for cut in 0..text.len() {
        let err = Manifest::decode(&text.as_bytes()[..cut]);
        assert!(err.is_err(), "truncated at {cut} accepted");
    }
}

#[test]
fn duplicates_and_bad_fields_are_rejected() {
    let good = sample().encode();
    let cases = [
        good.replace("entry file file state 8", "entry file file state 7"),
        good.replace("ready 4", "ready 5"),
        good.replace("unix /tmp", "tcp /tmp"),
        good.replace("127.0.0.1:8080", "127.0.0.1:0"),
        good.replace("127.0.0.1:8080", "localhost:8080"),
        good.replace("state", "%"),
        good.replace("listener tcp", "socket tcp"),
        good.replace(" 6 8 99", " 2 8 99"),
        good.replace(" 6 8 99", " 6 x 99"),
        good.replace("parent 42", "parent 0"),
        good.replace("end\n", "end\nentry\n"),
        good.replace("%20", "%2z"),
        good.replace("%C3%A9", "%C3"),
        good.replace("flip-handoff/1", "flip-handoff/2"),
        format!("{good}{good}"),
    ];
    for case in cases {
        assert!(
            Manifest::decode(case.as_bytes()).is_err(),
            "accepted:\n{case}"
        );
    }
    // A repeat is named with the line where it appears the second time (the entries start at
    // line 6).
    let mut twice = sample();
    twice.entries.push(twice.entries[0].clone());
    twice.entries[3].fd = 9;
    let err = Manifest::decode(twice.encode().as_bytes()).unwrap_err();
    assert!(
        matches!(&err, HandoffError::Manifest { line: 9, reason } if reason.contains("appears twice")),
        "{err:?}"
    );
    let mut twice = sample();
    twice.entries[2].fd = 6;
    twice.entries[1].fd = 5;
    let err = Manifest::decode(twice.encode().as_bytes()).unwrap_err();
    assert!(
        matches!(&err, HandoffError::Manifest { line: 7, reason } if reason == "fd 5 appears twice"),
        "{err:?}"
    );
}

#[test]
fn huge_manifest_is_rejected_before_parsing() {
    let big = vec![b'a'; MAX_MANIFEST_BYTES + 1];
    assert!(matches!(
        Manifest::decode(&big),
        Err(HandoffError::Manifest { line: 0, .. })
    ));
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn entry() -> impl Strategy<Value = Entry> {
        let inet = (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| {
            let addr = std::net::SocketAddr::from((ip, port)).to_string();
            (Kind::Listener, "tcp".to_owned(), addr)
        });
        let unix = "[^\\x00]{1,40}".prop_map(|p| (Kind::Listener, "unix".to_owned(), p));
        let file = "[^\\x00]{1,20}".prop_map(|n| (Kind::File, "file".to_owned(), n));
        (
            prop_oneof![inet, unix, file],
            6..1000i32,
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|((kind, network, address), fd, dev, ino)| Entry {
                key: Key::new(kind, &network, &address),
                fd,
                file: FileId { dev, ino },
            })
    }

    fn manifest() -> impl Strategy<Value = Manifest> {
        (
            any::<[u8; 16]>(),
            1u32..,
            proptest::collection::vec(entry(), 0..8),
        )
            .prop_map(|(token, parent_pid, mut entries)| {
                // Distinct keys and descriptor numbers, as a real registry has.
                let mut keys = HashSet::new();
                entries.retain(|e| keys.insert(e.key.clone()));
                for (i, e) in (0..).zip(entries.iter_mut()) {
                    e.fd = 6 + i;
                }
                Manifest {
                    token: Token(token),
                    parent_pid,
                    ready_fd: 4,
                    alive_fd: 5,
                    entries,
                }
            })
    }

    proptest! {
        #[test]
        fn any_bytes_are_an_error_or_a_manifest_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Manifest::decode(&bytes);
        }

        #[test]
        fn any_marker_text_is_an_error_or_a_marker(text in ".{0,80}") {
            let _ = Marker::decode(OsStr::new(&text));
        }

        #[test]
        fn manifests_round_trip(m in manifest()) {
            prop_assert_eq!(Manifest::decode(m.encode().as_bytes()).unwrap(), m);
        }

        #[test]
        fn a_mutated_manifest_decodes_consistently_or_fails(
            m in manifest(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0..3u8,
        ) {
            let mut bytes = m.encode().into_bytes();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
            if let Ok(decoded) = Manifest::decode(&bytes) {
                // Whatever is accepted is well formed: it encodes and decodes to itself.
                prop_assert_eq!(Manifest::decode(decoded.encode().as_bytes()).unwrap(), decoded);
            }
        }
    }
}
