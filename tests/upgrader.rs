//! The upgrader with real processes, real signals and real sockets.

use flip_suite as support;

use std::path::Path;

use nix::sys::signal::Signal;
use support::*;

fn testserver() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_flip-testserver"))
}

/// The test server on a TCP listener and a unix socket (`s.sock` in its scratch directory).
fn tcp_and_unix_server(name: &str) -> (Server, String, std::path::PathBuf) {
    let scratch = Scratch::new(name);
    let unix = scratch.path("s.sock");
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(
        scratch,
        &testserver(),
        &[
            ("TS_TCP", tcp.clone()),
            ("TS_UNIX", unix.display().to_string()),
        ],
    );
    (server, tcp, unix)
}

#[test]
fn every_kind_of_socket_and_file_reaches_the_new_process() {
    let scratch = Scratch::new("kinds");
    let tcp = format!("127.0.0.1:{}", free_port());
    let tcp6 = format!("[::1]:{}", free_port());
    let udp = format!("127.0.0.1:{}", free_port());
    let unix = scratch.path("stream.sock");
    let unixgram = scratch.path("dgram.sock");
    let me = scratch.path("client.sock");
    let file = scratch.path("state.log");
    let env = [
        ("TS_TCP", tcp.clone()),
        ("TS_TCP6", tcp6.clone()),
        ("TS_UDP", udp.clone()),
        ("TS_UNIX", unix.display().to_string()),
        ("TS_UNIXGRAM", unixgram.display().to_string()),
        ("TS_FILE", file.display().to_string()),
    ];
    let server = Server::start_in(scratch, &testserver(), &env);
    let old = server.first_pid;
    let answers = |pid: u32| {
        assert_eq!(tcp_pid(&tcp), Some(pid), "tcp");
        assert_eq!(tcp_pid(&tcp6), Some(pid), "tcp6");
        assert_eq!(udp_pid(&udp), Some(pid), "udp");
        assert_eq!(unix_pid(&unix), Some(pid), "unix");
        assert_eq!(unixgram_pid(&unixgram, &me), Some(pid), "unixgram");
    };
    answers(old);

    let new = server.upgrade_ok();
    assert_ne!(new, old);
    assert_eq!(server.pid(), Some(new), "the pid file names the successor");
    assert!(!alive(old), "the predecessor exited");
    // Every socket, the unix socket paths included, now serves in the successor.
    answers(new);
    server.wait_event(0, &format!("file {new} inherited"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{old}\n{new}\n"),
        "both generations wrote through the one handed-over file"
    );

    let newer = server.upgrade_ok();
    answers(newer);
}

#[test]
fn failed_upgrades_leave_the_old_process_serving() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "failures",
        &testserver(),
        &[
            ("TS_TCP", tcp.clone()),
            ("TS_UPGRADE_TIMEOUT_MS", "1500".into()),
        ],
    );
    let old = server.first_pid;
    for (behaviour, expected) in [
        ("crash", "successor-exited exit code 3"),
        ("exit0", "successor-exited exit code 0"),
        ("hang", "timeout "),
    ] {
        server.set_behaviour(behaviour);
        let reason = server.upgrade().expect_err(behaviour);
        assert!(reason.starts_with(expected), "{behaviour}: {reason}");
        if let Some(child) = reason.strip_prefix("timeout ") {
            // The successor that never became ready was killed and reaped: no zombie.
            let proc_dir = format!("/proc/{child}");
            wait_for("the timed-out child to be reaped", DEADLINE, || {
                (!Path::new(&proc_dir).exists()).then_some(())
            });
        }
        assert_eq!(server.pid(), Some(old), "{behaviour}: pid file unchanged");
        assert_eq!(tcp_pid(&tcp), Some(old), "{behaviour}: old process serves");
        assert!(
            children_of(old).is_empty(),
            "{behaviour}: no child left behind"
        );
    }
    server.set_behaviour("ok");
    let new = server.upgrade_ok();
    assert_eq!(tcp_pid(&tcp), Some(new));
}

#[test]
fn a_concurrent_upgrade_is_refused() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start("concurrent", &testserver(), &[("TS_TCP", tcp.clone())]);
    let old = server.first_pid;
    server.set_behaviour("hang");
    signal(old, Signal::SIGHUP);
    let hanging = wait_for("the successor to start", DEADLINE, || {
        children_of(old).first().copied()
    });
    assert_eq!(server.upgrade(), Err("in-progress".into()));
    assert_eq!(tcp_pid(&tcp), Some(old));
    // End the stuck upgrade: it fails, and the next one succeeds.
    signal(hanging, Signal::SIGKILL);
    server.wait_event(
        0,
        &format!("upgrade-failed {old} successor-exited killed by signal 9"),
    );
    server.set_behaviour("ok");
    let new = server.upgrade_ok();
    assert_eq!(tcp_pid(&tcp), Some(new));
}

#[test]
fn an_upgrade_is_refused_while_the_parent_is_alive() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "predecessor-alive",
        &testserver(),
        &[("TS_TCP", tcp.clone()), ("TS_LINGER_MS", "600000".into())],
    );
    let old = server.first_pid;
    let new = server.upgrade().expect("first upgrade");
    server.wait_pid_file(new);
    // The predecessor stops accepting once told; it lingers, as if draining.
    server.wait_event(0, &format!("upgraded {old} {new}"));
    assert!(alive(old), "the predecessor lingers, as if draining");
    assert_eq!(server.upgrade(), Err("predecessor-alive".into()));
    assert_eq!(tcp_pid(&tcp), Some(new));
    signal(old, Signal::SIGKILL);
    wait_exit(old, DEADLINE);
    let newer = server
        .upgrade()
        .expect("upgrade once the predecessor is gone");
    server.wait_event(0, &format!("upgraded {new} {newer}"));
    assert_eq!(tcp_pid(&tcp), Some(newer));
}

#[test]
fn inherited_sockets_nobody_claimed_are_closed_at_ready() {
    let (server, tcp, unix) = tcp_and_unix_server("unclaimed");
    let inode = unix_socket_inode(&unix).expect("the unix listener in /proc/net/unix");
    server.set_behaviour("skip-unix");
    let new = server.upgrade_ok();
    let needle = format!("socket:[{inode}]");
    assert!(
        !fd_links(new).iter().any(|(_, t)| *t == needle),
        "the successor still holds the unclaimed socket: {:?}",
        fd_links(new)
    );
    assert!(!unix.exists(), "the unclaimed socket's path was removed");
    assert_eq!(tcp_pid(&tcp), Some(new), "the claimed socket serves");
}

#[test]
fn processes_spawned_by_the_server_inherit_neither_fds_nor_the_marker() {
    let (server, _, _) = tcp_and_unix_server("leaks");
    let old = server.first_pid;
    let assert_clean = |spawner: u32| {
        let from = server.events().len();
        signal(spawner, Signal::SIGUSR1);
        let (_, line) = server.wait_event(from, &format!("spawned {spawner} "));
        let child: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // `sleep` opens its own files (libc, locale) while it starts; a leaked descriptor would
        // stay for its whole life, so wait until only stdio is left.
        let settled = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut fds = fd_links(child);
        while fds.len() != 3 && std::time::Instant::now() < settled {
            std::thread::park_timeout(std::time::Duration::from_millis(5));
            fds = fd_links(child);
        }
        assert_eq!(
            fds.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "spawned process {child} has extra descriptors: {fds:?}"
        );
        let env = environ(child);
        assert!(
            !env.iter().any(|v| v.starts_with("FLIP_HANDOFF=")),
            "spawned process {child} inherited the handoff marker"
        );
        signal(child, Signal::SIGKILL);
    };

    // While an upgrade is in flight, the predecessor spawns something.
    server.set_behaviour("hang");
    signal(old, Signal::SIGHUP);
    let hanging = wait_for("the successor to start", DEADLINE, || {
        children_of(old)
            .into_iter()
            .find(|&p| environ(p).iter().any(|v| v.starts_with("FLIP_HANDOFF=")))
    });
    // The checks can fail: the process being upgraded to does get the marker and the sockets.
    assert!(
        fd_links(hanging)
            .iter()
            .any(|(_, t)| t.starts_with("socket:"))
    );
    assert_clean(old);

    signal(hanging, Signal::SIGKILL);
    server.wait_event(0, &format!("upgrade-failed {old} successor-exited"));
    server.set_behaviour("ok");
    let new = server.upgrade_ok();
    // The successor was started with the marker, consumed it, and passes it on to nobody.
    assert!(environ(new).iter().any(|v| v.starts_with("FLIP_HANDOFF=")));
    assert_clean(new);
}

#[test]
fn descriptor_count_is_the_same_after_20_upgrades_as_after_1() {
    let (server, tcp, unix) = tcp_and_unix_server("fd-count");
    let first = server.upgrade_ok();
    // A descriptor that leaks per upgrade stays; a passing one (the event log, written as the
    // server becomes ready) does not.
    let count_after_one = settled_fd_count(first);
    let after_one = fd_links(first);
    let mut last = first;
    for _ in 1..20 {
        last = server.upgrade_ok();
    }
    assert_eq!(
        settled_fd_count(last),
        count_after_one,
        "after 1 upgrade: {after_one:?}\nafter 20: {:?}",
        fd_links(last)
    );
    assert_eq!(tcp_pid(&tcp), Some(last));
    assert_eq!(unix_pid(&unix), Some(last));
}

#[test]
fn a_bad_handoff_is_a_clear_error() {
    init();
    for (marker, expected) in [
        ("garbage", "malformed FLIP_HANDOFF marker"),
        (
            "1:3:12345:00000000000000000000000000000000",
            "was not made for this process",
        ),
        (
            "1:999:12345:00000000000000000000000000000000",
            "fd 999 is not open",
        ),
    ] {
        let out = std::process::Command::new(testserver())
            .env("FLIP_HANDOFF", marker)
            .env_remove("TS_EVENTS")
            .output()
            .expect("run testserver");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{marker}: {stderr}");
        assert!(stderr.contains(expected), "{marker}: {stderr}");
        assert!(!stderr.contains("panicked"), "{marker}: {stderr}");
    }
}

#[test]
fn the_new_process_starts_in_the_directory_of_the_first_start() {
    let scratch = Scratch::new("cwd");
    let tcp = format!("127.0.0.1:{}", free_port());
    let start_dir = scratch.0.clone();
    let mut cmd_env = vec![("TS_TCP", tcp.clone()), ("TS_CHDIR", "/".to_owned())];
    cmd_env.push(("PWD", start_dir.display().to_string()));
    let server = Server::start_in(scratch, &testserver(), &cmd_env);
    let old = server.first_pid;
    wait_for("the server to leave its directory", DEADLINE, || {
        (std::fs::read_link(format!("/proc/{old}/cwd")).ok()? == Path::new("/")).then_some(())
    });
    let new = server.upgrade_ok();
    let (_, line) = server.wait_event(0, &format!("cwd {new} "));
    let start = std::env::current_dir().unwrap();
    assert_eq!(line, format!("cwd {new} {}", start.display()));
}

#[test]
fn an_early_sighup_does_not_kill_a_starting_process() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start("early-hup", &testserver(), &[("TS_TCP", tcp.clone())]);
    let old = server.first_pid;
    server.set_behaviour("slow");
    let from = server.events().len();
    signal(old, Signal::SIGHUP);
    let child = wait_for("the successor to start", DEADLINE, || {
        children_of(old).first().copied()
    });
    // The successor sleeps before installing its handler: these arrive while SIGHUP's default
    // action would still kill it.
    for _ in 0..5 {
        signal(child, Signal::SIGHUP);
    }
    server.set_behaviour("ok");
    let (_, line) = server.wait_event(from, &format!("upgraded {old} "));
    assert_eq!(line, format!("upgraded {old} {child}"));
    wait_exit(old, DEADLINE);
    // The pending SIGHUP reached the successor's handler once it was ready; whatever came of it
    // (refused while the predecessor lived, or a further upgrade), the server keeps serving.
    let serving = wait_for("a serving process", DEADLINE, || {
        let pid = server.pid()?;
        (tcp_pid(&tcp) == Some(pid)).then_some(pid)
    });
    assert!(serving == child || server.all_pids().contains(&serving));
    assert!(
        !server.events().iter().any(|l| l.starts_with("error")),
        "{:?}",
        server.events()
    );
}

#[test]
fn stop_cancels_an_upgrade_in_flight() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start("stop", &testserver(), &[("TS_TCP", tcp.clone())]);
    let old = server.first_pid;
    server.set_behaviour("hang");
    signal(old, Signal::SIGHUP);
    let child = wait_for("the successor to start", DEADLINE, || {
        children_of(old).first().copied()
    });
    signal(old, Signal::SIGUSR2);
    server.wait_event(0, &format!("upgrade-failed {old} terminating"));
    let proc_dir = format!("/proc/{child}");
    wait_for(
        "the cancelled child to be killed and reaped",
        DEADLINE,
        || (!Path::new(&proc_dir).exists()).then_some(()),
    );
    server.wait_event(0, &format!("exiting {old}"));
    wait_exit(old, DEADLINE);
}

#[test]
fn the_binary_at_the_start_path_is_resolved_at_upgrade_time() {
    let scratch = Scratch::new("replaced");
    let tcp = format!("127.0.0.1:{}", free_port());
    // A deployment layout: releases side by side, `current` pointing at one of them.
    for release in ["release-1", "release-2", "release-3"] {
        std::fs::create_dir(scratch.path(release)).unwrap();
        std::fs::copy(testserver(), scratch.path(release).join("server")).unwrap();
    }
    std::os::unix::fs::symlink("release-1", scratch.path("current")).unwrap();
    let start_path = scratch.path("current").join("server");
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let release = |n: &str| scratch.path(n).join("server").canonicalize().unwrap();
    let r1 = release("release-1");
    let r2 = release("release-2");
    let r3 = release("release-3");
    let events = scratch.path("events");
    let server = Server::start_in(scratch, &start_path, &[("TS_TCP", tcp.clone())]);
    assert_eq!(exe_of(server.first_pid), r1);

    // Switch `current` to release 2 (atomically, as deploy tools do): the upgrade runs it.
    let dir = events.parent().unwrap();
    std::os::unix::fs::symlink("release-2", dir.join("current.new")).unwrap();
    std::fs::rename(dir.join("current.new"), dir.join("current")).unwrap();
    let second = server.upgrade_ok();
    assert_eq!(exe_of(second), r2);

    // Replace the binary in place (a new file renamed over the path): the new file runs.
    std::fs::rename(&r3, dir.join("release-2").join("server")).unwrap();
    let third = server.upgrade_ok();
    use std::os::unix::fs::MetadataExt;
    let running = std::fs::metadata(format!("/proc/{third}/exe"))
        .unwrap()
        .ino();
    let at_path = std::fs::metadata(&r2).unwrap().ino();
    assert_eq!(
        running, at_path,
        "the file now at the path runs, not the replaced one"
    );
    assert_eq!(exe_of(third), r2);
    assert_eq!(tcp_pid(&tcp), Some(third));
}
