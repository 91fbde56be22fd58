//! The standby process (`FLIP_STANDBY=1`): started ahead of time by the serving process, used by
//! the next upgrade while it is still what an upgrade would start, and never left behind.

use flip_suite as support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::signal::Signal;
use support::load::{AssertLossless, Load, Mode};
use support::*;

/// Starts the `http` example (or a copy of it at `program`) with a standby.
fn server_with_standby(scratch: Scratch, program: &Path) -> (Server, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(
        scratch,
        program,
        &[("HTTP_ADDR", addr.clone()), ("FLIP_STANDBY", "1".into())],
    );
    (server, addr)
}

/// Waits until `parent` has exactly one live child, its standby, started and waiting: the
/// server logged it, which it does once `posix_spawn` returned. (Before that, the successor may
/// still be inside `vfork`, where stopping it would stop the server too.)
fn standby_of(server: &Server, parent: u32) -> u32 {
    wait_for(&format!("a standby process of {parent}"), DEADLINE, || {
        let live: Vec<u32> = children_of(parent)
            .into_iter()
            .filter(|&p| alive(p))
            .collect();
        match live.as_slice() {
            [one]
                if server
                    .log()
                    .contains(&format!("started a standby process pid={one}")) =>
            {
                Some(*one)
            }
            _ => None,
        }
    })
}

/// Device and inode of the file a process runs.
fn running_file(pid: u32) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).expect("/proc/<pid>/exe");
    (m.dev(), m.ino())
}

fn file_identity(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).expect("metadata");
    (m.dev(), m.ino())
}

/// Pids whose prepared pid file (`.<name>.<pid>.tmp`) lies beside the server's pid file.
fn prepared_pid_files(server: &Server) -> Vec<u32> {
    let name = server
        .pid_file
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let dir = server.pid_file.parent().expect("a directory");
    let mut pids: Vec<u32> = std::fs::read_dir(dir)
        .expect("the pid file's directory")
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let rest = file.strip_prefix(&format!(".{name}."))?;
            rest.strip_suffix(".tmp")?.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Puts a new copy of `from` at `to` the way deployments do: write aside, then rename over.
fn deploy(from: &Path, to: &Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).expect("copy the binary");
    std::fs::rename(&aside, to).expect("rename over the binary");
}

#[test]
fn each_upgrade_hands_over_to_the_standby_started_ahead_of_time_and_loses_nothing() {
    let (server, addr) = server_with_standby(Scratch::new("standby-load"), &example_path("http"));
    let load = Load::start(&addr, 4, Mode::Close);
    let mut generations = vec![server.first_pid];
    for _ in 0..5 {
        let serving = *generations.last().expect("a generation");
        let standby = standby_of(&server, serving);
        load.wait_for_more(50);
        let new = server.upgrade_ok();
        assert_eq!(
            new, standby,
            "the upgrade used the standby process, not a new one"
        );
        generations.push(new);
    }
    load.wait_for_more(50);
    load.finish().assert_lossless_across(&generations);
    // The last generation keeps a standby of its own, and only one; only that one has its
    // pid file prepared, waiting to be put in place.
    let last = *generations.last().expect("a generation");
    let standby = standby_of(&server, last);
    wait_for("only the standby's prepared pid file", DEADLINE, || {
        (prepared_pid_files(&server) == vec![standby]).then_some(())
    });
}

#[test]
fn a_binary_replaced_on_disk_makes_the_standby_stale_and_the_upgrade_runs_the_new_one() {
    let scratch = Scratch::new("standby-deploy");
    let program = scratch.path("app");
    std::fs::copy(example_path("http"), &program).expect("copy the binary");
    let (server, _addr) = server_with_standby(scratch, &program);
    let old = server.first_pid;
    let first_standby = standby_of(&server, old);
    assert_eq!(running_file(first_standby), file_identity(&program));

    // A new release lands: within the periodic check the standby is replaced by one of it.
    deploy(&example_path("http"), &program);
    let release = file_identity(&program);
    let second_standby = wait_for("a standby of the new binary", DEADLINE, || {
        let s = standby_of(&server, old);
        (s != first_standby && running_file(s) == release).then_some(s)
    });
    assert!(!alive(first_standby), "the stale standby was killed");
    let new = server.upgrade_ok();
    assert_eq!(new, second_standby);
    assert_eq!(running_file(new), release);

    // Deployed and upgraded at once, before any check: the stale standby is not used.
    let stale = standby_of(&server, new);
    deploy(&example_path("http"), &program);
    let release = file_identity(&program);
    let newest = server.upgrade_ok();
    assert_ne!(newest, stale, "a stale standby must not take over");
    assert_eq!(
        running_file(newest),
        release,
        "the upgrade runs the new file"
    );
    wait_exit(stale, DEADLINE);
    // The standbys let go left no prepared pid file behind.
    let standby = standby_of(&server, newest);
    wait_for("only the standby's prepared pid file", DEADLINE, || {
        (prepared_pid_files(&server) == vec![standby]).then_some(())
    });
}

/// Points the `current` link in `dir` at `release`, atomically, as release tools switch it.
fn switch_current(dir: &Path, release: &str) {
    let staged = dir.join("current.new");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(release, &staged).expect("a new link");
    std::fs::rename(&staged, dir.join("current")).expect("rename over current");
}

#[test]
fn a_switched_release_link_is_noticed_when_it_happens_and_the_next_upgrade_uses_its_standby() {
    let scratch = Scratch::new("standby-link");
    for release in ["release-1", "release-2"] {
        std::fs::create_dir_all(scratch.path(release)).expect("a release directory");
        std::fs::copy(example_path("http"), scratch.path(release).join("app"))
            .expect("copy the binary");
    }
    let dir = scratch.path("");
    switch_current(&dir, "release-1");
    let (server, _addr) = server_with_standby(scratch, &dir.join("current/app"));
    let old = server.first_pid;
    let first_standby = standby_of(&server, old);
    assert_eq!(
        running_file(first_standby),
        file_identity(&dir.join("release-1/app"))
    );
    assert!(
        !server.log().contains("the binary changed on disk"),
        "nothing changed yet"
    );

    switch_current(&dir, "release-2");
    let release = file_identity(&dir.join("release-2/app"));
    // Seen through the watch on the binary's directories, not the periodic check, which
    // says nothing of it.
    wait_for("the watch to see the switch", DEADLINE, || {
        server
            .log()
            .contains("the binary changed on disk")
            .then_some(())
    });
    let second_standby = wait_for("a standby of the new release", DEADLINE, || {
        let s = standby_of(&server, old);
        (s != first_standby && running_file(s) == release).then_some(s)
    });
    wait_exit(first_standby, DEADLINE);
    let new = server.upgrade_ok();
    assert_eq!(
        new, second_standby,
        "the upgrade used the new release's standby"
    );
    assert_eq!(running_file(new), release);

    // The successor watches the path through the release it runs: switching back is seen
    // too.
    let third = standby_of(&server, new);
    switch_current(&dir, "release-1");
    let back = file_identity(&dir.join("release-1/app"));
    wait_for(
        "the successor's watch to see the switch back",
        DEADLINE,
        || (server.log().matches("the binary changed on disk").count() == 2).then_some(()),
    );
    let fourth = wait_for("a standby of the previous release", DEADLINE, || {
        let s = standby_of(&server, new);
        (s != third && running_file(s) == back).then_some(s)
    });
    assert_eq!(server.upgrade_ok(), fourth);
}

#[test]
fn with_max_draining_the_standby_is_started_while_the_parent_drains_and_the_next_upgrade_uses_it() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "standby-draining",
        &example_path("http"),
        &[
            ("HTTP_ADDR", addr.clone()),
            ("FLIP_STANDBY", "1".into()),
            ("FLIP_MAX_DRAINING", "2".into()),
        ],
    );
    let first = server.first_pid;
    // A connection of the first process (its answer says so), then a request on it that keeps
    // that process draining for far longer than this test.
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    std::io::Write::write_all(&mut slow, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains(&format!("hello from {first}")) {
        let n = std::io::Read::read(&mut slow, &mut buf).expect("the first answer");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    std::io::Write::write_all(&mut slow, b"GET /sleep/60000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send the slow request");
    let second = server.upgrade().expect("the first upgrade");
    let standby = standby_of(&server, second);
    assert!(
        alive(first),
        "the standby of {second} started while its predecessor {first} still drains"
    );
    let third = server
        .upgrade()
        .expect("an upgrade while the first process drains");
    assert_eq!(
        third, standby,
        "the upgrade during the drain used the standby"
    );
    assert!(alive(first), "the first process still drains its request");
    wait_for("both upgrades logged", DEADLINE, || {
        (server.log().matches("upgrade succeeded").count() == 2).then_some(())
    });
    assert_eq!(
        server.log().matches("started=standby").count(),
        2,
        "both upgrades went through a standby; log:\n{}",
        server.log()
    );
    drop(slow);
}

#[test]
fn a_dead_standby_is_replaced_by_a_fresh_start_at_upgrade() {
    let (server, _addr) = server_with_standby(Scratch::new("standby-dead"), &example_path("http"));
    let old = server.first_pid;
    let standby = standby_of(&server, old);
    signal(standby, Signal::SIGKILL);
    let new = server.upgrade_ok();
    assert_ne!(new, standby);
    assert!(alive(new));
    assert!(
        server
            .log()
            .contains("started=fresh: the standby had exited"),
        "the predecessor says why it started afresh; log:\n{}",
        server.log()
    );
}

#[test]
fn a_standby_that_dies_after_the_handoff_is_replaced_by_a_fresh_start_in_the_same_upgrade() {
    let scratch = Scratch::new("standby-dies");
    let fail_once = scratch.path("fail-once");
    let server = Server::start_in(
        scratch,
        &std::path::PathBuf::from(env!("CARGO_BIN_EXE_flip-bootserver")),
        &[
            ("TB_HTTP", format!("127.0.0.1:{}", free_port())),
            ("BOOT_STANDBY", "1".into()),
            ("TB_FAIL_ONCE", fail_once.display().to_string()),
        ],
    );
    let old = server.first_pid;
    let standby = standby_of(&server, old);
    // The standby takes the handoff, then a starter fails: it exits before it is ready. (A
    // stopped standby no longer serves for this: it is not handed over to.)
    std::fs::write(&fail_once, "").unwrap();
    signal(old, Signal::SIGHUP);
    let new = wait_for("a successor in the pid file", DEADLINE, || {
        server.pid().filter(|&p| p != old)
    });
    assert_ne!(new, standby);
    server.wait_pid_file(new);
    wait_exit(old, DEADLINE);
    assert!(
        server
            .log()
            .contains("the standby process ended before it was ready; starting afresh"),
        "log:\n{}",
        server.log()
    );
}

#[test]
fn a_standby_never_outlives_the_process_that_started_it() {
    // Stopped by SIGTERM: the server kills and reaps its standby before exiting.
    let (server, _addr) = server_with_standby(Scratch::new("standby-term"), &example_path("http"));
    let pid = server.first_pid;
    let standby = standby_of(&server, pid);
    signal(pid, Signal::SIGTERM);
    assert_eq!(exit_code(pid, DEADLINE), 0);
    wait_exit(standby, DEADLINE);

    // Killed outright: the standby reads the end of the handoff pipe and exits by itself,
    // quietly and with success.
    let (server, _addr) = server_with_standby(Scratch::new("standby-kill"), &example_path("http"));
    let pid = server.first_pid;
    let standby = standby_of(&server, pid);
    signal(pid, Signal::SIGKILL);
    assert_eq!(exit_code(pid, DEADLINE), 128 + Signal::SIGKILL as i32);
    // Re-parented to this test process, the subreaper, so its exit code is ours to read.
    assert_eq!(exit_code(standby, DEADLINE), 0, "log:\n{}", server.log());
    assert!(!server.log().contains("ERROR"), "log:\n{}", server.log());
}

#[test]
fn the_standby_is_on_by_default_and_flip_standby_0_turns_it_off() {
    // No FLIP_STANDBY: `#[flip::main]` keeps a standby, and the upgrade hands over to it.
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "standby-default",
        &example_path("http"),
        &[("HTTP_ADDR", addr)],
    );
    let standby = standby_of(&server, server.first_pid);
    assert_eq!(
        server.upgrade_ok(),
        standby,
        "the default upgrade used the standby"
    );
    assert!(
        server.log().contains("started=standby"),
        "log:\n{}",
        server.log()
    );
    drop(server);

    // FLIP_STANDBY=0: each upgrade starts its process at SIGHUP, none is started ahead.
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "standby-off",
        &example_path("http"),
        &[("HTTP_ADDR", addr), ("FLIP_STANDBY", "0".into())],
    );
    let mut serving = server.first_pid;
    for _ in 0..2 {
        let ahead = children_of(serving);
        let new = server.upgrade_ok();
        assert!(!ahead.contains(&new), "{new} was started before the SIGHUP");
        wait_exit(serving, DEADLINE);
        serving = new;
    }
    assert!(
        !server.log().contains("started a standby process"),
        "log:\n{}",
        server.log()
    );
    assert_eq!(
        server
            .log()
            .matches("started=fresh: no standby waited")
            .count(),
        2,
        "log:\n{}",
        server.log()
    );
}
