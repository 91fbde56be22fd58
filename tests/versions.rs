//! Upgrades across flip versions: a server built with flip as it was at commit a539953
//! (handoff version 1, with no note saying so) upgrades to this build, which upgrades back to
//! it, under load; each side speaks the version the other does. A build that declares only
//! versions this one does not speak is refused before anything starts (`flip-cli`'s tests).

use std::path::{Path, PathBuf};

use flip_suite as support;
use support::load::{AssertLossless, Load, Mode};
use support::*;

/// The `http` example of commit a539953, built once by `tests/support/build-a539953.sh`.
fn a539953_http() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("tests/support/build-a539953.sh"))
        .output()
        .expect("run tests/support/build-a539953.sh");
    assert!(
        out.status.success(),
        "building a539953's http example failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("target/a539953/target/debug/examples/http")
}

/// Puts a copy of `binary` at `path` as a deploy does; its inode.
fn deploy(binary: &Path, path: &Path) -> u64 {
    deploy_bytes(path, &std::fs::read(binary).unwrap())
}

#[test]
fn from_the_a539953_build_to_this_one_and_back_under_load_nothing_is_lost() {
    let old = a539953_http();
    let current = example_path("http");
    let scratch = Scratch::new("versions");
    let app = scratch.path("app");
    let old_file = deploy(&old, &app);
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(scratch, &app, &[("HTTP_ADDR", addr.clone())]);
    let first = server.first_pid;
    assert_eq!(exe_inode(first), old_file);
    let short = Load::start(&addr, 4, Mode::Close);
    let long = Load::start(&addr, 2, Mode::KeepAlive);
    short.wait_for_more(20);
    long.wait_for_more(20);

    let mut pids = vec![first];
    for (round, (binary, what)) in [
        (&current, "this build"),
        (&old, "a539953"),
        (&current, "this build"),
        (&old, "a539953"),
    ]
    .into_iter()
    .enumerate()
    {
        let file = deploy(binary, &app);
        let new = server.upgrade_ok();
        assert_eq!(exe_inode(new), file, "round {round}: {what} serves");
        short.wait_for_more(20);
        long.wait_for_more(20);
        pids.push(new);
    }
    let (short, long) = (short.finish(), long.finish());
    eprintln!(
        "a539953 <-> this build, 4 upgrades: {} + {} answered, {} + {} failed",
        short.answered, long.answered, short.failed, long.failed
    );
    short.assert_lossless_across(&pids);
    long.assert_lossless_across(&pids[..1]);
    assert_eq!(long.failed, 0, "{long:?}");
}
