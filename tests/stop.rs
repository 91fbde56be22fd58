//! The draining stop (`FLIP_STOP=drain`, the default of `#[flip::main]`): SIGTERM closes every
//! copy of every listener, so that new connections are refused (not reset), lets what was
//! accepted finish, and exits 0; as a plain process, during an upgrade's drain, and as PID 1
//! of a pid namespace (a container) with older generations still draining.

use std::net::TcpStream;
use std::process::{Command, Stdio};

use flip_suite as support;
use nix::sys::signal::Signal;
use support::load::{Load, Mode};
use support::*;

/// Waits until a new connection to `addr` is refused.
fn wait_refused(addr: &str) {
    wait_for(
        "new connections to be refused",
        DEADLINE,
        || match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
}

/// Nothing that reached a server went unanswered; connections refused after the stop are
/// what a stop is.
fn nothing_lost(report: &support::load::Report) {
    let f = report.failures;
    assert_eq!(
        (f.no_response, f.bad_status, f.other),
        (0, 0, 0),
        "requests that reached a server and got no full answer: {report:?}"
    );
}

#[test]
fn sigterm_under_load_refuses_new_connections_finishes_what_was_accepted_and_exits_0() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "drain-stop",
        &example_path("http"),
        &[("HTTP_ADDR", addr.clone())],
    );
    let pid = server.first_pid;
    let load = Load::start(&addr, 3, Mode::Close);
    load.wait_for_more(20);
    // Longer than a refused connect takes to show (a dropped SYN is retried after 1 s).
    let slow = slow_request(&addr, 8_000);
    wait_accepted_by(&addr, &slow, pid);
    signal(pid, Signal::SIGTERM);
    wait_refused(&addr);
    assert!(alive(pid), "the stop waits for the request in flight");
    let answered = whole_answer(slow);
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.contains(&format!("hello from {pid}")),
        "the request in flight was cut: {answered:?}\n{}",
        server.log()
    );
    assert_eq!(exit_code(pid, DEADLINE), 0, "{}", server.log());
    let report = load.finish();
    eprintln!(
        "drain stop under load: {} answered, {} refused after the stop, {:?}",
        report.answered, report.failures.connect, report.failures
    );
    nothing_lost(&report);
    assert!(
        server
            .log()
            .contains("stopped by SIGTERM; every accepted request finished"),
        "{}",
        server.log()
    );
}

#[test]
fn sigterm_to_the_new_process_while_the_old_one_drains_lets_the_old_one_finish() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "drain-stop-upgrade",
        &example_path("http"),
        &[("HTTP_ADDR", addr.clone())],
    );
    let first = server.first_pid;
    let slow = slow_request(&addr, 3_000);
    wait_accepted_by(&addr, &slow, first);
    let new = server.upgrade().expect("the upgrade succeeds");
    server.wait_pid_file(new);
    signal(new, Signal::SIGTERM);
    wait_exit(new, DEADLINE);
    let answered = whole_answer(slow);
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.contains(&format!("hello from {first}")),
        "the predecessor's request was cut: {answered:?}\n{}",
        server.log()
    );
    wait_exit(first, DEADLINE);
    wait_refused(&addr);
    let log = server.log();
    assert!(!log.contains("taking service back"), "{log}");
}

/// `unshare` and its pid namespace, killed if the test ends early (killing the namespace's
/// PID 1 ends every process in it).
struct Container(std::process::Child);

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(&pid1) = children_of(self.0.id()).first() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1 as i32), Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn as_pid_1_sigterm_drains_every_generation_and_the_container_ends_with_0() {
    init();
    let scratch = Scratch::new("drain-stop-pid1");
    let addr = format!("127.0.0.1:{}", free_port());
    let pid_file = scratch.path("server.pid");
    let log = scratch.path("log");
    let mut container = Container(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(example_path("http"))
            .env("HTTP_ADDR", &addr)
            .env("FLIP_PID_FILE", &pid_file)
            .env("RUST_LOG", "debug")
            .env_remove("FLIP_HANDOFF")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let unshare = container.0.id();
    let supervisor = wait_for("PID 1 of the namespace", DEADLINE, || {
        children_of(unshare).first().copied()
    });
    let first = wait_for("the first generation to serve", DEADLINE, || {
        let child = children_of(supervisor).first().copied()?;
        (pid_in(&pid_file).is_some() && TcpStream::connect(&addr).is_ok()).then_some(child)
    });
    let load = Load::start(&addr, 3, Mode::Close);
    load.wait_for_more(20);
    // The first generation holds a slow request, and still drains it after an upgrade.
    let slow = slow_request(&addr, 4_000);
    wait_accepted_by(&addr, &slow, first);
    let ns_first = pid_in(&pid_file).unwrap();
    signal(supervisor, Signal::SIGHUP);
    wait_for("the pid file to name the new generation", DEADLINE, || {
        pid_in(&pid_file).filter(|&p| p != ns_first)
    });
    load.wait_for_more(20);
    assert!(alive(first), "the first generation drains its slow request");

    // docker stop: SIGTERM to PID 1.
    signal(supervisor, Signal::SIGTERM);
    let answered = whole_answer(slow);
    assert!(
        answered.starts_with("HTTP/1.1 200"),
        "the older generation's request was cut: {answered:?}\n{}",
        read_log()
    );
    let status = wait_for("the container to end", DEADLINE, || {
        container.0.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", read_log());
    let report = load.finish();
    eprintln!(
        "PID 1 drain stop under load: {} answered, {} refused after the stop, {:?}",
        report.answered, report.failures.connect, report.failures
    );
    nothing_lost(&report);
}

#[test]
fn a_second_sigterm_a_second_after_the_first_ends_a_draining_stop_at_once_with_3() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "drain-stop-twice",
        &example_path("http"),
        &[("HTTP_ADDR", addr.clone())],
    );
    let pid = server.first_pid;
    // Longer than the test's deadline: only the second signal can end this drain in time.
    let slow = slow_request(&addr, 120_000);
    wait_accepted_by(&addr, &slow, pid);
    signal(pid, Signal::SIGTERM);
    let first = std::time::Instant::now();
    wait_for("the draining stop", DEADLINE, || {
        server.log().contains("SIGTERM: stopping").then_some(())
    });
    // One right after the first is the same stop (a process group's signal and its copy
    // passed on arrive together): ignored.
    signal(pid, Signal::SIGTERM);
    wait_for("a second to pass since the first", DEADLINE, || {
        (first.elapsed() > std::time::Duration::from_millis(1200)).then_some(())
    });
    assert!(
        alive(pid),
        "a duplicate of the first signal ended the drain"
    );
    signal(pid, Signal::SIGTERM);
    assert_eq!(exit_code(pid, DEADLINE), 3, "{}", server.log());
    assert!(
        server
            .log()
            .contains("stopped by SIGTERM; drain forced to end by SIGTERM"),
        "{}",
        server.log()
    );
}
