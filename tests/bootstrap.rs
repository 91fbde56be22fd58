//! The Bootstrap and the macros, with real processes built by `#[flip::main]`.

use flip_suite as support;

use nix::sys::signal::Signal;
use support::load::{AssertLossless, Load, Mode};
use support::*;

fn bootserver() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_flip-bootserver"))
}

fn tcp_env() -> (String, Vec<(&'static str, String)>) {
    let tcp = format!("127.0.0.1:{}", free_port());
    (tcp.clone(), vec![("TB_TCP", tcp)])
}

#[test]
fn starters_run_in_the_documented_order() {
    let (_, env) = tcp_env();
    let server = Server::start("order", &bootserver(), &env);
    let pid = server.first_pid;
    // By module path, then by position in the file: `flip_bootserver::tcp` first, then
    // `flip_bootserver::more::unix` and `flip_bootserver::more::failing` in source order.
    let (_, line) = server.wait_event(0, &format!("starters {pid} "));
    assert_eq!(line, format!("starters {pid} tcp,http,unix,failing"));
    let started: Vec<String> = server
        .events()
        .into_iter()
        .filter(|l| l.starts_with("start "))
        .collect();
    assert_eq!(
        started,
        vec![
            format!("start tcp {pid}"),
            format!("start unix {pid}"),
            format!("start failing {pid}")
        ]
    );
}

#[test]
fn a_stale_unix_socket_is_replaced_at_first_boot_and_kept_during_an_upgrade() {
    let scratch = Scratch::new("stale");
    let path = scratch.path("app.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale socket file
    assert!(path.exists());
    let server = Server::start_in(
        scratch,
        &bootserver(),
        &[("TB_UNIX", path.display().to_string())],
    );
    let old = server.first_pid;
    // Binding over an existing path fails: serving there means the stale socket was removed.
    assert_eq!(unix_pid(&path), Some(old));
    assert!(
        server.log().contains("removing a stale unix socket"),
        "{}",
        server.log()
    );
    // A log written to a file carries no colour codes (only a terminal gets them).
    assert!(!server.log().contains('\x1b'), "{:?}", server.log());
    let socket = unix_socket_inode(&path).expect("the listener in /proc/net/unix");

    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    assert_eq!(exit_code(old, DEADLINE), 0);
    assert_eq!(unix_pid(&path), Some(new));
    assert_eq!(
        unix_socket_inode(&path),
        Some(socket),
        "the successor serves the predecessor's very socket: the path was kept, not rebound"
    );
}

#[test]
fn a_runtime_error_stops_at_once() {
    let (_, mut env) = tcp_env();
    env.push(("TB_FAIL_AFTER_MS", "100".into()));
    // A drain would never end: exiting at all shows nothing was drained.
    env.push(("TB_STUCK", "1".into()));
    env.push(("TB_GRACE_MS", "600000".into()));
    let server = Server::start("runtime-error", &bootserver(), &env);
    assert_eq!(exit_code(server.first_pid, DEADLINE), 1);
    assert!(
        server.log().contains("the listener broke"),
        "{}",
        server.log()
    );
}

#[test]
fn sigterm_and_sigint_stop_at_once() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let (tcp, mut env) = tcp_env();
        env.push(("TB_STUCK", "1".into()));
        env.push(("TB_GRACE_MS", "600000".into()));
        // The stop Gitaly's bootstrap makes (the draining stop has tests of its own).
        env.push(("BOOT_STOP", "immediate".into()));
        let server = Server::start("signals", &bootserver(), &env);
        assert_eq!(tcp_pid(&tcp), Some(server.first_pid));
        signal(server.first_pid, sig);
        assert_eq!(exit_code(server.first_pid, DEADLINE), 0, "{sig}");
        assert!(
            server.log().contains(&format!("stopped by {sig}")),
            "{}",
            server.log()
        );
    }
}

#[test]
fn a_graceful_termination_completes() {
    let (tcp, mut env) = tcp_env();
    env.push(("TB_DRAIN_MS", "200".into()));
    let server = Server::start("graceful", &bootserver(), &env);
    let old = server.first_pid;
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    assert_eq!(exit_code(old, DEADLINE), 0);
    assert!(
        server
            .log()
            .contains(&format!("upgraded to pid {new}; drain completed")),
        "{}",
        server.log()
    );
    assert_eq!(tcp_pid(&tcp), Some(new));
}

#[test]
fn a_stuck_drain_is_ended_by_the_grace_period() {
    let (tcp, mut env) = tcp_env();
    env.push(("TB_STUCK", "1".into()));
    env.push(("TB_GRACE_MS", "300".into()));
    let server = Server::start("grace", &bootserver(), &env);
    let old = server.first_pid;
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    assert_eq!(exit_code(old, DEADLINE), 3);
    assert!(
        server.log().contains("grace period expired"),
        "{}",
        server.log()
    );
    assert_eq!(tcp_pid(&tcp), Some(new));
}

#[test]
fn sigterm_during_the_grace_period_forces_the_exit() {
    let (tcp, mut env) = tcp_env();
    env.push(("TB_STUCK", "1".into()));
    env.push(("TB_GRACE_MS", "600000".into()));
    env.push(("BOOT_STOP", "immediate".into()));
    let server = Server::start("forced", &bootserver(), &env);
    let old = server.first_pid;
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    wait_for("the predecessor to start draining", DEADLINE, || {
        server.log().contains("draining").then_some(())
    });
    assert!(alive(old), "a stuck drain keeps the predecessor");
    signal(old, Signal::SIGTERM);
    assert_eq!(exit_code(old, DEADLINE), 3);
    assert!(
        server.log().contains("drain forced to end by SIGTERM"),
        "{}",
        server.log()
    );
    assert_eq!(tcp_pid(&tcp), Some(new));
}

#[test]
fn listener_errors_during_the_grace_period_do_not_end_it() {
    let (_, mut env) = tcp_env();
    env.push(("TB_ERROR_DURING_DRAIN", "1".into()));
    env.push(("TB_DRAIN_MS", "300".into()));
    env.push(("TB_GRACE_MS", "600000".into()));
    let server = Server::start("drain-errors", &bootserver(), &env);
    let old = server.first_pid;
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    assert_eq!(exit_code(old, DEADLINE), 0, "{}", server.log());
    assert!(
        server
            .log()
            .contains(&format!("upgraded to pid {new}; drain completed"))
    );
}

#[test]
fn sighup_with_upgrades_disabled_is_ignored() {
    let (tcp, mut env) = tcp_env();
    env.push(("BOOT_UPGRADES_ENABLED", "off".into()));
    // The prefix is BOOT: this variable belongs to someone else and is not read.
    env.push(("FLIP_UPGRADES_ENABLED", "bogus".into()));
    let server = Server::start("disabled", &bootserver(), &env);
    let pid = server.first_pid;
    for _ in 0..3 {
        signal(pid, Signal::SIGHUP);
    }
    wait_for("the hint in the log", DEADLINE, || {
        server
            .log()
            .contains("SIGHUP ignored: upgrades are disabled")
            .then_some(())
    });
    assert!(alive(pid));
    assert!(children_of(pid).is_empty(), "no new process was started");
    assert_eq!(tcp_pid(&tcp), Some(pid));
    assert_eq!(server.pid(), Some(pid));
}

#[test]
fn bad_environment_values_exit_with_code_2_naming_the_variable() {
    init();
    for (name, value, expected) in [
        (
            "BOOT_UPGRADES_ENABLED",
            "maybe",
            "BOOT_UPGRADES_ENABLED=\"maybe\"",
        ),
        (
            "BOOT_PID_FILE",
            "/nonexistent-dir/x.pid",
            "/nonexistent-dir/x.pid",
        ),
        ("BOOT_PID_FILE", "/", "the path is a directory"),
        (
            "BOOT_UPGRADE_TIMEOUT",
            "soon",
            "BOOT_UPGRADE_TIMEOUT=\"soon\": expected a duration",
        ),
        (
            "BOOT_STOP",
            "gently",
            "BOOT_STOP=\"gently\": expected drain or immediate",
        ),
        // A handoff marker no upgrade made: bad environment, as the README's table says.
        ("FLIP_HANDOFF", "garbage", "malformed FLIP_HANDOFF marker"),
    ] {
        let out = std::process::Command::new(bootserver())
            .env(name, value)
            .env_remove("TS_EVENTS")
            .output()
            .expect("run bootserver");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(expected), "{name}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// How `child` ended, waiting at most `deadline`; `None` (and the successor killed) when it still
/// runs by then.
fn wait_for_exit(
    child: &mut std::process::Child,
    deadline: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_pid_file_path_that_is_a_device_fifo_or_socket_is_refused_and_left_as_it_was() {
    use std::os::unix::fs::FileTypeExt;
    init();
    let scratch = Scratch::new("pidfile-special");
    // A copy of /dev/full (char 1:7) in the scratch directory, so that a regression replaces
    // this node and not the machine's own device.
    let device = scratch.path("full");
    let made = std::process::Command::new("mknod")
        .arg(&device)
        .args(["c", "1", "7"])
        .status()
        .expect("run mknod");
    assert!(made.success(), "mknod needs root (CI runs as root)");
    let fifo = scratch.path("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let socket = scratch.path("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    type Check = fn(&std::fs::FileType) -> bool;
    let cases: [(&std::path::Path, &str, Check); 3] = [
        (&device, "a character device", |t| t.is_char_device()),
        (&fifo, "a FIFO", |t| t.is_fifo()),
        (&socket, "a socket", |t| t.is_socket()),
    ];
    for (path, what, still) in cases {
        let log = scratch.path("log");
        let mut child = std::process::Command::new(bootserver())
            .env("BOOT_PID_FILE", path)
            .env_remove("TS_EVENTS")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run bootserver");
        // A server that takes the path serves on: bounded, then killed.
        let status = wait_for_exit(&mut child, std::time::Duration::from_secs(10));
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{}: {stderr}",
            path.display()
        );
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(what),
            "the error names the path and what it is: {stderr}"
        );
        assert!(stderr.contains("not a regular file"), "{stderr}");
        let kind = std::fs::symlink_metadata(path).unwrap().file_type();
        assert!(still(&kind), "{} was replaced: {kind:?}", path.display());
    }
}

#[test]
fn a_clean_stop_removes_the_pid_file_and_control_socket_only_while_they_are_its_own() {
    for foreign in [false, true] {
        let addr = format!("127.0.0.1:{}", free_port());
        let server = Server::start(
            "stop-cleans",
            &example_path("http"),
            &[("HTTP_ADDR", addr.clone())],
        );
        let control = server.pid_file.with_extension("ctl");
        wait_for("the control socket", DEADLINE, || {
            control.exists().then_some(())
        });
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let other_pid = format!("{}\n", other.id());
        if foreign {
            // Someone else serves now, as far as the pid file says: nothing is ours to remove.
            std::fs::write(&server.pid_file, &other_pid).unwrap();
        }
        signal(server.first_pid, Signal::SIGTERM);
        wait_exit(server.first_pid, DEADLINE);
        if foreign {
            assert_eq!(
                std::fs::read_to_string(&server.pid_file).unwrap(),
                other_pid
            );
            assert!(control.exists(), "another's control socket was removed");
        } else {
            assert!(
                !server.pid_file.exists(),
                "the pid file names a dead pid:\n{}",
                server.log()
            );
            assert!(!control.exists(), "the control socket path stayed behind");
        }
        let _ = other.kill();
        let _ = other.wait();
    }
}

#[test]
fn the_macro_built_example_upgrades_under_load_without_losing_a_request() {
    let scratch = Scratch::new("example-load");
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(
        scratch,
        &example_path("http"),
        &[("HTTP_ADDR", addr.clone()), ("RUST_LOG", "info".into())],
    );
    let load = Load::start(&addr, 4, Mode::Close);
    let mut generations = vec![server.first_pid];
    for _ in 0..5 {
        load.wait_for_more(50);
        generations.push(server.upgrade_ok());
    }
    load.wait_for_more(50);
    load.finish().assert_lossless_across(&generations);
}

#[test]
fn a_new_process_accepts_only_once_ready_so_one_that_never_is_answers_nothing() {
    let scratch = Scratch::new("accept-once-ready");
    let run = scratch.path("run");
    std::fs::create_dir(&run).unwrap();
    let pid_file = run.join("http.pid");
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(
        scratch,
        &example_path("http"),
        &[
            ("HTTP_ADDR", addr.clone()),
            ("FLIP_PID_FILE", pid_file.display().to_string()),
        ],
    );
    let old = server.first_pid;
    let load = Load::start(&addr, 4, Mode::Close);
    load.wait_for_more(50);
    // Each new process starts its servers, then cannot write the pid file: it is never ready.
    std::fs::remove_dir_all(&run).unwrap();
    for attempt in 1..=5 {
        signal(old, Signal::SIGHUP);
        wait_for("the upgrade to fail", DEADLINE, || {
            let failures = server
                .log()
                .matches("upgrade failed; still serving")
                .count();
            (failures >= attempt).then_some(())
        });
        load.wait_for_more(20);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(
        report.pids,
        vec![old],
        "only the predecessor answered: a new one accepts once it is ready"
    );
    assert!(alive(old));
}

#[test]
fn a_storm_of_refused_sighups_logs_a_line_a_second_not_one_each() {
    let (_, mut env) = tcp_env();
    env.push(("BOOT_UPGRADES_ENABLED", "0".into()));
    let server = Server::start("hup-storm", &bootserver(), &env);
    let pid = server.first_pid;
    let ignored = || -> Vec<String> {
        server
            .log()
            .lines()
            .filter(|l| l.contains("SIGHUP ignored"))
            .map(str::to_owned)
            .collect()
    };
    signal(pid, Signal::SIGHUP);
    wait_for("the first SIGHUP to be logged", DEADLINE, || {
        (!ignored().is_empty()).then_some(())
    });
    let started = std::time::Instant::now();
    // A storm, paced so that the signals do not merge while pending.
    let mut sent = 0u64;
    while sent < 50 {
        signal(pid, Signal::SIGHUP);
        sent += 1;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Once a second has passed, the next one is logged with the count of those in between.
    wait_for("a second to pass", DEADLINE, || {
        (started.elapsed() > std::time::Duration::from_millis(1100)).then_some(())
    });
    signal(pid, Signal::SIGHUP);
    let more_of = |line: &str| -> u64 {
        line.split("more_since_last=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    wait_for("a line that counts the storm", DEADLINE, || {
        ignored().iter().any(|l| more_of(l) >= 1).then_some(())
    });
    let lines = ignored();
    assert!(
        lines.len() <= 4,
        "{} lines for {} signals:\n{}",
        lines.len(),
        sent + 2,
        lines.join("\n")
    );
    let counted: u64 = lines.iter().map(|l| more_of(l)).sum();
    assert!(counted >= 1 && counted <= sent + 1, "{counted}: {lines:?}");
    assert!(alive(pid));
}
