//! The `http` example under a real systemd (252 here), booted in a throwaway box: `Type=notify`
//! units reloaded under load, socket activation, and a new binary that crashes. Needs root (as
//! CI runs); elsewhere each test says why it was skipped.

use std::path::{Path, PathBuf};

use flip_suite as support;
use support::load::{AssertLossless, Load, Mode};
use support::*;

const UNIT: &str = "flip-http.service";
const ACTIVATED: &str = "flip-http-activated.service";

/// One box at a time: each boots a whole systemd.
static ONE_BOX: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether to skip: only where the box cannot boot, and never in CI
/// (`FLIP_REQUIRE_SYSTEMD_BOX=1`, set by `.ci/run`).
fn skip() -> bool {
    match systemd_box_unavailable() {
        Some(why) if std::env::var_os("FLIP_REQUIRE_SYSTEMD_BOX").is_some() => {
            panic!("the systemd box cannot boot here: {why}")
        }
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

/// A `Type=notify` unit running `exe` on `addr`, reloaded with SIGHUP: the one in
/// `examples/systemd/flip-http.service`, with the paths of the test.
fn notify_unit(exe: &Path, addr: &str, pid_file: &Path) -> String {
    let example = include_str!("../examples/systemd/flip-http.service");
    example
        .replace("/usr/local/bin/flip-http", &exe.display().to_string())
        .replace("127.0.0.1:8080", addr)
        .replace("/run/flip-http/http.pid", &pid_file.display().to_string())
}

fn main_pid(b: &SystemdBox, unit: &str) -> u32 {
    b.property(unit, "MainPID").parse().expect("MainPID")
}

/// Reloads `unit` and waits until systemd follows the successor: a new MainPID, which the
/// pid file names too, the unit active and running, and the predecessor gone.
fn reload(b: &SystemdBox, unit: &str, pid_file: &Path) -> u32 {
    let old = main_pid(b, unit);
    b.systemctl_ok(&["reload", unit]);
    let new = wait_for("systemd to follow the successor", DEADLINE, || {
        let main = main_pid(b, unit);
        let settled = main != old
            && pid_in(pid_file) == Some(main)
            && b.property(unit, "ActiveState") == "active"
            && b.property(unit, "SubState") == "running";
        settled.then_some(main)
    });
    wait_for("the predecessor to exit", DEADLINE, || {
        b.host_pid(old).is_none().then_some(())
    });
    wait_for("no job left in systemd", DEADLINE, || {
        b.systemctl_text(&["list-jobs", "--no-legend"])
            .trim()
            .is_empty()
            .then_some(())
    });
    new
}

/// The inode of the socket listening on 127.0.0.1:`port`.
fn listening_inode(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok())?
        })
        .expect("a listening socket on the port")
}

fn http_example() -> PathBuf {
    example_path("http")
}

/// A box named `name` running the `http` example as the `Type=notify` unit, started (which
/// returns once the service sent READY=1): the box, the binary, its address and pid file.
fn started_notify_unit(name: &str) -> (SystemdBox, PathBuf, String, PathBuf) {
    let http = http_example();
    let b = SystemdBox::boot(name, &[http.parent().unwrap()]);
    let addr = format!("127.0.0.1:{}", free_port());
    let pid_file = b.share.path("http.pid");
    b.install_unit(UNIT, &notify_unit(&http, &addr, &pid_file));
    b.systemctl_ok(&["start", UNIT]);
    (b, http, addr, pid_file)
}

#[test]
fn a_notify_unit_starts_reloads_ten_times_under_load_and_stops_leaving_nothing() {
    let _one = ONE_BOX.lock().unwrap_or_else(|p| p.into_inner());
    if skip() {
        return;
    }
    let (b, http, addr, pid_file) = started_notify_unit("notify");
    assert_eq!(b.property(UNIT, "ActiveState"), "active");
    let first = main_pid(&b, UNIT);
    assert_eq!(pid_in(&pid_file), Some(first), "MainPID is the pid file's");
    assert!(b.property(UNIT, "StatusText").starts_with("serving"));

    let load = Load::start(&addr, 3, Mode::Close);
    // The first generation answers before it is upgraded: every generation must answer some
    // request, and a fast first upgrade could otherwise come before the clients' first one.
    load.wait_for_more(20);
    let mut generations = vec![first];
    for _ in 0..10 {
        let new = reload(&b, UNIT, &pid_file);
        load.wait_for_more(20);
        generations.push(new);
    }
    let report = load.finish();
    eprintln!(
        "systemd Type=notify: {} reloads, {} requests, {} failed",
        generations.len() - 1,
        report.answered,
        report.failed
    );
    report.assert_lossless_across(&generations);
    let status = b.property(UNIT, "StatusText");
    assert!(status.starts_with("serving"), "{status}");
    assert_eq!(b.property(UNIT, "NRestarts"), "0");

    b.systemctl_ok(&["stop", UNIT]);
    assert_eq!(
        b.property(UNIT, "ActiveState"),
        "inactive",
        "journal:\n{}",
        b.journal()
    );
    assert_eq!(
        b.processes_running(&http),
        Vec::<u32>::new(),
        "no process left"
    );
}

#[test]
fn a_crash_under_load_restarts_the_unit_on_the_fd_stores_sockets_refusing_nothing() {
    let _one = ONE_BOX.lock().unwrap_or_else(|p| p.into_inner());
    if skip() {
        return;
    }
    let (b, _http, addr, pid_file) = started_notify_unit("fdstore");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let socket = listening_inode(port);
    let load = Load::start(&addr, 4, Mode::Close);
    load.wait_for_more(20);
    // Through an upgrade first: the successor stores the sockets it holds too.
    let upgraded = reload(&b, UNIT, &pid_file);
    load.wait_for_more(20);
    let before = load.answered();
    signal(
        b.host_pid(upgraded).expect("the main process on the host"),
        nix::sys::signal::Signal::SIGKILL,
    );
    let restarted = wait_for("systemd to start the service again", DEADLINE, || {
        let main = main_pid(&b, UNIT);
        (main != upgraded
            && main != 0
            && b.property(UNIT, "ActiveState") == "active"
            && pid_in(&pid_file) == Some(main))
        .then_some(main)
    });
    load.wait_for_more(50);
    let report = load.finish();
    eprintln!(
        "systemd fd store, kill -9 of {upgraded}: {} answered ({} after the kill), {:?}",
        report.answered,
        report.answered - before,
        report.failures
    );
    assert_eq!(report.failures.connect, 0, "nothing refused: {report:?}");
    assert!(report.failed <= 4, "only what was in flight: {report:?}");
    assert_eq!(b.property(UNIT, "NRestarts"), "1");
    assert_eq!(
        listening_inode(port),
        socket,
        "the restarted process serves on the very socket the first one bound"
    );
    assert_eq!(pid_in(&pid_file), Some(restarted));
    b.systemctl_ok(&["stop", UNIT]);
    assert_eq!(b.property(UNIT, "ActiveState"), "inactive");
}

#[test]
fn a_socket_activated_unit_serves_on_systemds_very_socket_across_reloads() {
    let _one = ONE_BOX.lock().unwrap_or_else(|p| p.into_inner());
    if skip() {
        return;
    }
    let http = http_example();
    let b = SystemdBox::boot("activated", &[http.parent().unwrap()]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let pid_file = b.share.path("http.pid");
    let socket = include_str!("../examples/systemd/flip-http-activated.socket")
        .replace("127.0.0.1:8080", &addr);
    b.install_unit("flip-http-activated.socket", &socket);
    let service = include_str!("../examples/systemd/flip-http-activated.service")
        .replace("/usr/local/bin/flip-http", &http.display().to_string())
        .replace("127.0.0.1:8080", &addr)
        .replace(
            "/run/flip-http-activated/http.pid",
            &pid_file.display().to_string(),
        );
    b.install_unit(ACTIVATED, &service);
    b.systemctl_ok(&["start", "flip-http-activated.socket"]);
    let inode = listening_inode(port);
    assert!(holds_socket(b.pid1, inode), "systemd listens");

    // The first connection starts the service, which takes systemd's socket.
    let load = Load::start(&addr, 3, Mode::KeepAlive);
    wait_for("the service to start and answer", DEADLINE, || {
        assert_ne!(
            b.property(ACTIVATED, "ActiveState"),
            "failed",
            "journal:\n{}",
            b.journal()
        );
        (load.answered() >= 20).then_some(())
    });
    let mut generations = vec![main_pid(&b, ACTIVATED)];
    for _ in 0..3 {
        let serving = b
            .host_pid(*generations.last().unwrap())
            .expect("the serving process");
        assert!(
            holds_socket(serving, inode),
            "the service serves on systemd's socket"
        );
        generations.push(reload(&b, ACTIVATED, &pid_file));
        load.wait_for_more(20);
    }
    let serving = b
        .host_pid(*generations.last().unwrap())
        .expect("the serving process");
    assert!(
        holds_socket(serving, inode),
        "still systemd's socket after the reloads"
    );
    assert_eq!(
        listening_inode(port),
        inode,
        "one listening socket, never a second"
    );
    let report = load.finish();
    report.assert_lossless_across(&generations[1..]);
    b.systemctl_ok(&["stop", ACTIVATED, "flip-http-activated.socket"]);
}

#[test]
fn a_new_binary_that_crashes_leaves_the_unit_active_on_the_old_process() {
    let _one = ONE_BOX.lock().unwrap_or_else(|p| p.into_inner());
    if skip() {
        return;
    }
    let b = SystemdBox::boot("crash", &[]);
    // The unit runs a copy, so that the test can replace it as a deploy would.
    let app = b.share.path("app");
    std::fs::copy(http_example(), &app).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let pid_file = b.share.path("http.pid");
    b.install_unit(UNIT, &notify_unit(&app, &addr, &pid_file));
    b.systemctl_ok(&["start", UNIT]);
    let old = main_pid(&b, UNIT);

    let broken = b.share.path("app.new");
    std::fs::write(&broken, "#!/bin/sh\necho broken build >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &app).unwrap();

    let load = Load::start(&addr, 2, Mode::Close);
    b.systemctl_ok(&["reload", UNIT]);
    let status = wait_for("the failed upgrade in the unit's status", DEADLINE, || {
        let s = b.property(UNIT, "StatusText");
        s.starts_with("upgrade failed").then_some(s)
    });
    assert!(status.contains("exit code 3"), "{status}");
    load.wait_for_more(20);
    let report = load.finish();
    report.assert_lossless_across(&[old]);
    assert_eq!(
        main_pid(&b, UNIT),
        old,
        "the predecessor is still the main one"
    );
    assert_eq!(b.property(UNIT, "ActiveState"), "active");
    assert_eq!(pid_in(&pid_file), Some(old));
}

/// Sends a request that takes `ms` to `addr`, and waits until the process with host pid
/// `host_pid` accepted it.
fn slow_request_to(addr: &str, ms: u64, host_pid: u32) -> std::net::TcpStream {
    let s = slow_request(addr, ms);
    wait_accepted_by(addr, &s, host_pid);
    s
}

#[test]
fn systemctl_stop_under_load_lets_every_generation_finish_what_it_accepted() {
    let _one = ONE_BOX.lock().unwrap_or_else(|p| p.into_inner());
    if skip() {
        return;
    }
    let (b, http, addr, pid_file) = started_notify_unit("drain-stop");
    let first = main_pid(&b, UNIT);
    let load = Load::start(&addr, 3, Mode::Close);
    load.wait_for_more(20);
    // The first generation holds a request through a reload, and drains it.
    // Long enough to still run once the second generation holds its own request, on a
    // loaded machine too.
    let slow_first = slow_request_to(&addr, 8_000, b.host_pid(first).unwrap());
    b.systemctl_ok(&["reload", UNIT]);
    let second = wait_for("systemd to follow the successor", DEADLINE, || {
        let main = main_pid(&b, UNIT);
        (main != first && pid_in(&pid_file) == Some(main)).then_some(main)
    });
    load.wait_for_more(20);
    let slow_second = slow_request_to(&addr, 2_000, b.host_pid(second).unwrap());
    assert!(b.host_pid(first).is_some(), "the first generation drains");
    // Returns once every process of the unit is gone.
    b.systemctl_ok(&["stop", UNIT]);
    for (answer, pid) in [
        (whole_answer(slow_first), first),
        (whole_answer(slow_second), second),
    ] {
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains(&format!("hello from {pid}")),
            "a request pid {pid} accepted was cut: {answer:?}\njournal:\n{}",
            b.journal()
        );
    }
    assert_eq!(
        b.property(UNIT, "ActiveState"),
        "inactive",
        "journal:\n{}",
        b.journal()
    );
    assert_eq!(
        b.processes_running(&http),
        Vec::<u32>::new(),
        "no process left"
    );
    let report = load.finish();
    let f = report.failures;
    eprintln!(
        "systemctl stop under load: {} answered, {} refused after the stop, {} lost",
        report.answered,
        f.connect,
        f.no_response + f.bad_status + f.other
    );
    assert_eq!(
        (f.no_response, f.bad_status, f.other),
        (0, 0, 0),
        "{report:?}"
    );
}
