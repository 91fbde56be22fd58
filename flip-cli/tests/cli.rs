//! The `flip` command against real servers: `upgrade`, `status` and `check` through the
//! control socket, their failures and exit codes, the socket's own robustness, and `check`
//! against a deliberately lossy server.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flip_suite::load::{AssertLossless, Load, Mode};
use flip_suite::*;

fn flip() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flip"))
}

fn run(args: &[&str]) -> Output {
    Command::new(flip()).args(args).output().expect("run flip")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `http` example with its pid file (and so its control socket) in a scratch directory.
fn http_server(name: &str, extra: &[(&str, String)]) -> (Server, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = vec![("HTTP_ADDR", addr.clone())];
    env.extend(extra.iter().cloned());
    let server = Server::start(name, &example_path("http"), &env);
    (server, addr)
}

fn pid_file(server: &Server) -> String {
    server.pid_file.display().to_string()
}

#[test]
fn upgrade_reports_the_new_pid_and_status_the_generation_and_listeners() {
    let (server, addr) = http_server("cli-upgrade", &[]);
    let old = server.first_pid;
    let control = server.pid_file.with_extension("ctl");
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner may use the control socket");

    let load = Load::start(&addr, 2, Mode::KeepAlive);
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let new = server.pid().unwrap();
    assert_ne!(new, old);
    assert!(
        said.starts_with(&format!("upgraded: pid {old} -> {new}, ready after ")),
        "{said}"
    );
    assert!(said.contains("build-id "), "{said}");
    assert!(
        said.lines()
            .next()
            .is_some_and(|l| l.ends_with(" ms (standby)")),
        "the report says the standby took over: {said}"
    );
    wait_exit(old, DEADLINE);
    load.wait_for_more(20);
    load.finish().assert_lossless_across(&[old, new]);

    // The control socket's path works across the upgrade: the successor answers.
    let out = run(&["status", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.starts_with(&format!("pid {new} (generation 2)")),
        "{status}"
    );
    assert!(
        status.contains("holding: file flip.binary-watch"),
        "the watch's inotify instance passed on with the sockets: {status}"
    );
    assert!(
        status.contains(&format!("listening: listener tcp {addr}")),
        "{status}"
    );
    assert!(status.contains("previous generation: exited"), "{status}");

    let out = run(&[
        "status",
        "--socket",
        &control.display().to_string(),
        "--json",
    ]);
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        json.starts_with(&format!("{{\"pid\":{new},\"generation\":2,")),
        "{json}"
    );
}

#[test]
fn a_failed_upgrade_says_why_and_exits_1_and_the_old_process_serves_on() {
    let scratch = Scratch::new("cli-failed");
    // A copy of the example that the test can replace, as a deploy would.
    let app = scratch.path("app");
    std::fs::copy(example_path("http"), &app).unwrap();
    let server = Server::start_in(
        scratch,
        &app,
        &[("HTTP_ADDR", format!("127.0.0.1:{}", free_port()))],
    );
    deploy_script(&app, "#!/bin/sh\necho broken build >&2\nexit 3\n");

    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("upgrade failed"), "{said}");
    assert!(said.contains("exit code 3"), "{said}");
    assert!(
        said.contains("the successor's last lines on stderr:\n  broken build"),
        "{said}"
    );
    assert_eq!(server.pid(), Some(server.first_pid));
    assert!(alive(server.first_pid));
    let status = text(&run(&["status", "--pid-file", &pid_file(&server)]));
    assert!(
        status.contains("upgrades: 0 succeeded, 1 failed"),
        "{status}"
    );
    assert!(status.contains("last upgrade: failed"), "{status}");
}

#[test]
fn an_upgrade_while_the_parent_drains_is_refused_with_exit_2() {
    // Each old process drains for 3 s (a 3 s request in flight), so the next upgrade comes
    // while its predecessor still runs.
    let (server, addr) = http_server("cli-refused", &[]);
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /sleep/3000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("upgrade refused"), "{said}");
    assert!(said.contains("has not exited yet"), "{said}");
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains(&format!("hello from {}", server.first_pid)),
        "{answer}"
    );
}

#[test]
fn no_server_is_exit_2_naming_the_socket() {
    let scratch = Scratch::new("cli-none");
    let pid = scratch.path("nothing.pid").display().to_string();
    let out = run(&["upgrade", "--pid-file", &pid]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("nothing.ctl"), "{}", text(&out));
    let out = run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--pid-file"), "{}", text(&out));
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

fn ask_raw(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = s.write_all(bytes);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn bad_requests_get_an_error_and_a_silent_client_blocks_nobody() {
    let (server, _) = http_server("cli-robust", &[]);
    let socket = server.pid_file.with_extension("ctl");
    // A client that connects and says nothing.
    let _silent = UnixStream::connect(&socket).unwrap();
    let garbage = ask_raw(&socket, b"reboot now\n");
    assert!(garbage.starts_with("error\nreason "), "{garbage:?}");
    let huge = ask_raw(&socket, &vec![b'x'; 100_000]);
    assert!(huge.starts_with("error\n"), "{huge:?}");
    let unknown = ask_raw(&socket, b"flip-control/1 reboot\n");
    assert!(unknown.contains("unknown request"), "{unknown:?}");
    // The server and its control socket are undisturbed.
    let out = run(&["status", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.pid(), Some(server.first_pid));
}

#[test]
fn check_reports_the_http_example_lossless_in_both_modes() {
    let (server, addr) = http_server("cli-check", &[]);
    for mode in ["close", "keepalive"] {
        let plot = server.scratch.path(&format!("{mode}.svg"));
        let out = run(&[
            "check",
            "--pid-file",
            &pid_file(&server),
            "--http",
            &addr,
            "--upgrades",
            "5",
            "--conns",
            "4",
            "--mode",
            mode,
            "--slow-path",
            "/sleep/100",
            "--plot",
            &plot.display().to_string(),
        ]);
        let said = text(&out);
        eprintln!("{mode}: {said}");
        assert!(out.status.success(), "{said}");
        assert!(
            said.starts_with("LOSSLESS: 5 upgrades (0 failed)"),
            "{said}"
        );
        // How each new process was started, as the server said: 5 in all.
        let starts = said
            .lines()
            .find_map(|l| l.strip_prefix("new processes started: "))
            .unwrap_or_else(|| panic!("no starts line: {said}"));
        let counted: usize = starts
            .split(", ")
            .map(|part| {
                let (n, how) = part.split_once(' ').expect("<count> <how>");
                assert!(how == "standby" || how.starts_with("fresh: "), "{part}");
                n.parse::<usize>().expect("a count")
            })
            .sum();
        assert_eq!(counted, 5, "{said}");
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
    }
}

#[test]
fn check_fails_against_a_server_that_rebinds_on_upgrade() {
    let scratch = Scratch::new("cli-lossy");
    let addr = format!("127.0.0.1:{}", free_port());
    let pid_file = scratch.path("lossy.pid");
    let mut lossy = Command::new(workspace_bin("flip-lossyserver"))
        .env("HTTP_ADDR", &addr)
        .env("FLIP_PID_FILE", &pid_file)
        .spawn()
        .unwrap();
    wait_for("the lossy server", DEADLINE, || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let out = run(&[
        "check",
        "--pid-file",
        &pid_file.display().to_string(),
        "--http",
        &addr,
        "--upgrades",
        "10",
        "--conns",
        "8",
        "--signal",
        "--interval-ms",
        "100",
        "--json",
    ]);
    let said = text(&out);
    eprintln!("lossy: {said}");
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("\"lossless\":false"), "{said}");
    let failed: u64 = said
        .split("\"failed\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("a failed count");
    assert!(failed > 0, "{said}");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = lossy.kill();
    let _ = lossy.wait();
}

#[test]
fn check_reports_the_grpc_example_lossless() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "cli-grpc",
        &example_path("grpc"),
        &[("GRPC_ADDR", addr.clone())],
    );
    let out = run(&[
        "check",
        "--pid-file",
        &pid_file(&server),
        "--grpc",
        &addr,
        "--upgrades",
        "5",
        "--conns",
        "4",
    ]);
    let said = text(&out);
    eprintln!("grpc: {said}");
    assert!(out.status.success(), "{said}");
    assert!(
        said.starts_with("LOSSLESS: 5 upgrades (0 failed)"),
        "{said}"
    );
    assert!(said.contains(" 0 failed, "), "{said}");
}

#[test]
fn another_user_is_refused_even_when_the_socket_is_opened_to_everyone() {
    use std::os::unix::process::CommandExt;
    let (server, _) = http_server("cli-peer", &[]);
    let socket = server.pid_file.with_extension("ctl");
    // An operator loosens the permissions (chmod, an ACL, a volume shared with a container
    // of another user): the server still checks who connects.
    for dir in [server.scratch.0.as_path(), socket.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    for request in ["upgrade", "status"] {
        let out = Command::new(flip())
            .args([request, "--socket", &socket.display().to_string()])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run flip as nobody");
        assert!(!out.status.success(), "{request}: {}", text(&out));
        assert!(
            text(&out).contains("permission denied: uid 65534"),
            "{request}: {}",
            text(&out)
        );
    }
    assert_eq!(server.pid(), Some(server.first_pid), "nothing was upgraded");
    // The server's own user still may.
    let out = run(&["status", "--socket", &socket.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_new_process_that_exits_at_once_is_reported_even_while_a_helper_holds_its_pipes() {
    let (server, app) = deployable_http("cli-helper", &[]);
    // A wrapper that leaves a background job behind: it inherits every descriptor, the ready
    // pipe among them, and keeps it open long after the wrapper exited.
    let good = server.scratch.path("app.good");
    std::fs::copy(&app, &good).unwrap();
    deploy_script(&app, "#!/bin/sh\nsleep 120 &\nexit 3\n");

    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("exit code 3"),
        "the exit is what is reported, not a timeout: {}",
        text(&out)
    );
    assert_eq!(server.pid(), Some(server.first_pid));
    // Upgrades are not held up by the helper.
    std::fs::rename(&good, &app).unwrap();
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_upgrade_timeout_is_read_from_the_environment() {
    let scratch = Scratch::new("cli-timeout");
    let app = scratch.path("app");
    std::fs::copy(example_path("http"), &app).unwrap();
    let server = Server::start_in(
        scratch,
        &app,
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("FLIP_UPGRADE_TIMEOUT", "1s".into()),
        ],
    );
    // A new build that never becomes ready.
    deploy_script(&app, "#!/bin/sh\nexec sleep 120\n");
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("was not ready within 1s"),
        "{}",
        text(&out)
    );
    assert_eq!(server.pid(), Some(server.first_pid));
}

#[test]
fn every_command_answers_help_and_output_to_a_closed_pipe_is_no_panic() {
    for command in ["upgrade", "status", "check"] {
        let out = run(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("usage:"),
            "{command}: {}",
            text(&out)
        );
    }
    let (server, _) = http_server("cli-pipe", &[]);
    // `flip status | head -0`: the reader is gone before anything is written.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(flip())
        .args(["status", "--pid-file", &pid_file(&server)])
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_client_timeout_says_what_it_waited_for_and_a_refusal_says_so_once() {
    let (server, app) = deployable_http("cli-client-timeout", &[]);
    deploy_script(&app, "#!/bin/sh\nexec sleep 120\n");
    let out = run(&[
        "upgrade",
        "--pid-file",
        &pid_file(&server),
        "--timeout",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(
            "no answer from the control socket within 1s (waiting for the upgrade's verdict)"
        ),
        "{}",
        text(&out)
    );
    // The upgrade still runs on the server: status says so, and a second is refused, and
    // says so once.
    let status = status_of(&server);
    assert!(status.contains("upgrade in progress for "), "{status}");
    let out = run(&[
        "upgrade",
        "--pid-file",
        &pid_file(&server),
        "--timeout",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        text(&out).matches("upgrade refused").count(),
        1,
        "{}",
        text(&out)
    );
}

/// The `http` example started from a copy at `<scratch>/app`: the path a deploy replaces.
fn deployable_http(name: &str, extra: &[(&str, String)]) -> (Server, PathBuf) {
    let scratch = Scratch::new(name);
    let app = scratch.path("app");
    std::fs::copy(example_path("http"), &app).unwrap();
    let mut env = vec![("HTTP_ADDR", format!("127.0.0.1:{}", free_port()))];
    env.extend(extra.iter().cloned());
    (Server::start_in(scratch, &app, &env), app)
}

/// Deploys a shell script with `text` at `path` as a deploy puts a binary in place: written
/// aside, then renamed over it.
fn deploy_script(path: &Path, text: &str) {
    deploy_bytes(path, text.as_bytes());
}

/// `flip status` of `server`, as text.
fn status_of(server: &Server) -> String {
    text(&run(&["status", "--pid-file", &pid_file(server)]))
}

#[test]
fn a_standby_that_dies_at_start_is_retried_less_and_less_often_and_status_says_why() {
    let (server, app) = deployable_http("cli-standby-dies", &[]);
    let good = server.scratch.path("app.good");
    std::fs::copy(&app, &good).unwrap();
    deploy_script(&app, "#!/bin/sh\nexit 1\n");
    // Dies at 0, retried 1 s after, then 2 s after that.
    let said = wait_for("three standbys in a row to exit", DEADLINE, || {
        let status = status_of(&server);
        status
            .contains("standby: none: 3 in a row exited (exit code 1)")
            .then_some(status)
    });
    assert!(
        !said.contains("standby: pid"),
        "a dead standby is not shown: {said}"
    );
    let log = server.log();
    assert_eq!(
        log.matches("the standby process exited before any upgrade")
            .count(),
        1,
        "said once while it does not change:\n{log}"
    );
    // A good binary again: a standby at once, and the upgrade goes through it.
    std::fs::rename(&good, &app).unwrap();
    wait_for("a standby of the good binary", DEADLINE, || {
        status_of(&server).contains("standby: pid").then_some(())
    });
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(standby)"), "{}", text(&out));
}

#[test]
fn a_build_that_speaks_another_handoff_version_is_reported_with_both_versions_and_not_looped() {
    let scratch = Scratch::new("cli-version");
    let app = scratch.path("app");
    let real = scratch.path("http");
    std::fs::copy(example_path("http"), &app).unwrap();
    std::fs::copy(example_path("http"), &real).unwrap();
    let server = Server::start_in(
        scratch,
        &app,
        &[("HTTP_ADDR", format!("127.0.0.1:{}", free_port()))],
    );
    // What a build of another handoff version sees: a marker of a version it does not speak
    // (here the marker is rewritten to claim version 9 before the real binary reads it).
    deploy_script(
        &app,
        &format!(
            "#!/bin/sh\nFLIP_HANDOFF=\"9${{FLIP_HANDOFF#1}}\" exec {}\n",
            real.display()
        ),
    );
    let said = wait_for("the standby's refusal in status", DEADLINE, || {
        let status = status_of(&server);
        status.contains("refused the handoff").then_some(status)
    });
    assert!(said.contains("none until a new binary lands"), "{said}");
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("speaks handoff version 9; this binary speaks versions 1 to 2"),
        "{}",
        text(&out)
    );
    assert_eq!(server.pid(), Some(server.first_pid));
    // Not looped: no standby was started again for the same binary.
    let log = server.log();
    assert_eq!(
        log.matches("refused the handoff (its log says why").count(),
        1,
        "{log}"
    );
}

/// The standby pid `flip status` shows, once one waits.
fn standby_of(server: &Server) -> u32 {
    wait_for("a standby", DEADLINE, || {
        status_of(server)
            .lines()
            .find_map(|l| l.strip_prefix("standby: pid "))
            .and_then(|p| p.trim().parse().ok())
    })
}

#[test]
fn a_wrapper_script_at_the_deploy_path_is_the_binary_upgrades_start() {
    let scratch = Scratch::new("cli-wrapper");
    let real = scratch.path("http");
    std::fs::copy(example_path("http"), &real).unwrap();
    let app = scratch.path("app");
    let deploy = |n: u32| {
        let new = app.with_extension("new");
        std::fs::write(
            &new,
            format!("#!/bin/sh\nDEPLOY={n} exec {}\n", real.display()),
        )
        .unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&new, &app).unwrap();
    };
    deploy(1);
    let server = Server::start_in(
        scratch,
        &app,
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("FLIP_EXECUTABLE", app.display().to_string()),
        ],
    );
    // The standby is current: the file at the deploy path is what it started from, although
    // it runs the real binary. Two periodic checks later it is still the same one.
    let first_standby = standby_of(&server);
    let since = std::time::Instant::now();
    wait_for("two periodic checks", DEADLINE, || {
        (since.elapsed() > std::time::Duration::from_millis(2500)).then_some(())
    });
    assert_eq!(standby_of(&server), first_standby, "{}", server.log());

    let deployed = |pid: u32, n: u32| environ(pid).contains(&format!("DEPLOY={n}"));
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let second = server.pid().unwrap();
    assert!(deployed(second, 1));
    // A later deploy to the wrapper's path is what the next upgrade starts.
    let before = standby_of(&server);
    deploy(2);
    wait_for("a standby of the new deploy", DEADLINE, || {
        let now = standby_of(&server);
        (now != before && deployed(now, 2)).then_some(())
    });
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let third = server.pid().unwrap();
    assert!(deployed(third, 2), "{:?}", environ(third));
}

#[test]
fn a_stopped_standby_is_not_handed_over_to() {
    let (server, _) = http_server("cli-stopped-standby", &[]);
    let standby = standby_of(&server);
    signal(standby, nix::sys::signal::Signal::SIGSTOP);
    let out = run(&[
        "upgrade",
        "--pid-file",
        &pid_file(&server),
        "--timeout",
        "30",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let new = server.pid().unwrap();
    assert_ne!(new, standby, "the stopped standby took over");
    wait_exit(standby, DEADLINE);
}

#[test]
fn upgrade_waits_for_the_verdict_exit_3_on_a_rollback_and_0_once_committed() {
    let (server, addr) = http_server("cli-verdict", &[("FLIP_PROBATION", "60s".into())]);
    let old = server.first_pid;
    let load = Load::start(&addr, 3, Mode::Close);
    load.wait_for_more(20);
    let upgrade = Command::new(flip())
        .args(["upgrade", "--pid-file", &pid_file(&server)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let new = wait_for("the successor", DEADLINE, || {
        server.pid().filter(|&p| p != old)
    });
    load.wait_for_more(20);
    // Ready, and on probation: `flip upgrade` still waits for the verdict.
    signal(new, nix::sys::signal::Signal::SIGKILL);
    let out = upgrade.wait_with_output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains(&format!("upgrade rolled back: the successor {new} ended"))
            && said.contains(&format!("pid {old} serves on")),
        "{said}"
    );
    server.wait_pid_file(old);
    load.wait_for_more(20);
    let status = status_of(&server);
    assert!(status.contains("1 rolled back"), "{status}");
    assert!(status.contains("last upgrade: rolled back"), "{status}");
    let report = load.finish();
    assert_eq!(report.failures.connect, 0, "nothing refused: {report:?}");
    assert!(
        report.failed <= 3,
        "only requests on the killed process: {report:?}"
    );
    assert!(alive(old));
}

#[test]
fn upgrade_with_a_short_probation_exits_0_once_committed_and_says_so() {
    let (server, addr) = http_server("cli-commit", &[("FLIP_PROBATION", "1s".into())]);
    let old = server.first_pid;
    let load = Load::start(&addr, 2, Mode::KeepAlive);
    load.wait_for_more(10);
    let out = run(&["upgrade", "--pid-file", &pid_file(&server), "--json"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.starts_with("{\"verdict\":\"committed\""), "{said}");
    let after: f64 = said
        .split("\"committed_after_ms\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    // Counted from when the answer was held back, a moment after the window opened.
    assert!(after >= 900.0, "the verdict waits out the window: {said}");
    let new = server.pid().unwrap();
    wait_exit(old, DEADLINE);
    load.wait_for_more(10);
    load.finish().assert_lossless_across(&[old, new]);
}

#[test]
fn rollback_starts_the_previous_build_after_a_deploy_replaced_its_file() {
    use std::os::unix::fs::MetadataExt;
    let scratch = Scratch::new("cli-rollback");
    let app = scratch.path("app");
    std::fs::copy(example_path("http"), &app).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(scratch, &app, &[("HTTP_ADDR", addr.clone())]);
    let v1 = std::fs::metadata(&app).unwrap().ino();
    let first = server.first_pid;

    // A first start has nothing to roll back to: refused, nothing started.
    let out = run(&["rollback", "--pid-file", &pid_file(&server)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("there is no previous build"),
        "{}",
        text(&out)
    );
    assert!(!status_of(&server).contains("previous build:"));

    // v2: another file at the same path (the same program, with bytes appended), renamed over
    // v1's as a deploy does; v1's file is gone from the directory.
    let mut bytes = std::fs::read(example_path("http")).unwrap();
    bytes.extend_from_slice(b"v2");
    let v2 = deploy_bytes(&app, &bytes);
    assert_ne!(v1, v2);

    let load = Load::start(&addr, 3, Mode::KeepAlive);
    load.wait_for_more(10);
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let on_v2 = server.pid().unwrap();
    assert_eq!(exe_inode(on_v2), v2);
    wait_exit(first, DEADLINE);
    let status = status_of(&server);
    assert!(
        status.contains(&format!("previous build: {} (deleted)", app.display())),
        "status names the replaced build: {status}"
    );

    let out = run(&["rollback", "--pid-file", &pid_file(&server)]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.starts_with("rolled back to the previous build: pid "),
        "{said}"
    );
    assert!(
        said.contains("(fresh: a rollback to the previous build)"),
        "{said}"
    );
    let on_v1 = server.pid().unwrap();
    assert_eq!(exe_inode(on_v1), v1, "the new process runs v1's very file");
    wait_exit(on_v2, DEADLINE);
    let status = status_of(&server);
    assert!(
        status.contains(&format!("previous build: {} (build-id", app.display())),
        "v2, still at the path, is the build to go back to: {status}"
    );

    // The rolled-back process upgrades to what is deployed at the path again, not to itself.
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let again = server.pid().unwrap();
    assert_eq!(exe_inode(again), v2);
    wait_exit(on_v1, DEADLINE);
    load.wait_for_more(10);
    load.finish()
        .assert_lossless_across(&[first, on_v2, on_v1, again]);
}

/// A copy of the `http` example whose flip note declares handoff versions `lowest` to
/// `highest` instead of its own.
fn with_declared_versions(from: &Path, to: &Path, lowest: u32, highest: u32) {
    let mut bytes = std::fs::read(from).unwrap();
    // The note: name size 5, description size 8, type 1, "flip", then the two versions.
    let mut note = Vec::new();
    for n in [5u32, 8, 1] {
        note.extend_from_slice(&n.to_le_bytes());
    }
    note.extend_from_slice(b"flip\0\0\0\0");
    let at = bytes
        .windows(note.len())
        .position(|w| w == note.as_slice())
        .expect("the flip note in the binary")
        + note.len();
    bytes[at..at + 4].copy_from_slice(&lowest.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&highest.to_le_bytes());
    deploy_bytes(to, &bytes);
}

#[test]
fn a_build_that_declares_only_unknown_handoff_versions_is_refused_before_anything_starts() {
    let (server, app) = deployable_http("cli-note-version", &[]);
    let addr_load = {
        // The address the server listens on, from its status.
        let status = status_of(&server);
        status
            .lines()
            .find_map(|l| l.strip_prefix("listening: listener tcp "))
            .map(str::to_owned)
            .expect("a tcp listener in the status")
    };
    let load = Load::start(&addr_load, 2, Mode::KeepAlive);
    load.wait_for_more(10);
    with_declared_versions(&example_path("http"), &app, 9, 9);
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "upgrade failed before anything started: {} speaks handoff versions 9 to 9; this binary speaks versions 1 to 2",
            app.display()
        )),
        "{said}"
    );
    // Nothing was started from it: no successor, and no standby either.
    assert_eq!(server.pid(), Some(server.first_pid));
    let log = server.log();
    assert!(!log.contains("started the successor"), "{log}");
    let status = status_of(&server);
    assert!(!status.contains("standby: pid"), "{status}");
    // A build that declares a range with a version in common is taken, speaking the highest.
    with_declared_versions(&example_path("http"), &app, 2, 7);
    let out = run(&["upgrade", "--pid-file", &pid_file(&server)]);
    assert!(out.status.success(), "{}", text(&out));
    let new = server.pid().unwrap();
    wait_exit(server.first_pid, DEADLINE);
    load.wait_for_more(10);
    load.finish()
        .assert_lossless_across(&[server.first_pid, new]);
}
