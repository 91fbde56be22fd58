//! Probation: after an upgrade the predecessor drains, then stays ready to take service back
//! until the window ends. A build that says ready and then crashes is rolled back with nothing
//! refused; a good one is committed; back-to-back upgrades commit the one on probation.

use flip_suite as support;

use nix::sys::signal::Signal;
use support::load::{Load, Mode};
use support::*;

fn bootserver() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_flip-bootserver"))
}

/// Load clients; each has one request outstanding at a time, so a crashed process can take at
/// most this many requests with it.
const CLIENTS: usize = 3;

/// A bootserver with an HTTP listener, probation `window`, and load on it.
fn serving(name: &str, window: &str) -> (Server, Load) {
    let http = format!("127.0.0.1:{}", free_port());
    let env = vec![
        ("TB_HTTP", http.clone()),
        ("BOOT_PROBATION", window.to_owned()),
        ("BOOT_STANDBY", "0".to_owned()),
    ];
    let mut env = env;
    env.push(("BOOT_HEALTH_INTERVAL", "1s".to_owned()));
    let server = Server::start(name, &bootserver(), &env);
    let load = Load::start(&http, CLIENTS, Mode::Close);
    load.wait_for_more(20);
    (server, load)
}

fn log_has(server: &Server, what: &str) -> Option<()> {
    server.log().contains(what).then_some(())
}

/// The successor ends within the window by `end`; the predecessor takes service back.
fn rolled_back(name: &str, behaviour: &str, end: impl FnOnce(&Server, u32)) {
    let (server, load) = serving(name, "30s");
    let old = server.first_pid;
    server.set_behaviour(behaviour);
    // Asked as `flip upgrade` asks: the answer is the verdict.
    let control = flip::control::Client::for_pid_file(&server.pid_file);
    let verdict = std::thread::spawn(move || control.upgrade(std::time::Duration::from_secs(60)));
    let new = wait_for("the successor", DEADLINE, || {
        server.pid().filter(|&p| p != old)
    });
    load.wait_for_more(20);
    end(&server, new);
    match verdict.join().unwrap() {
        Err(flip::control::ControlError::RolledBack {
            new_pid,
            old_pid,
            cause,
        }) => {
            assert_eq!((new_pid, old_pid), (new, old), "{name}: {cause}");
            assert!(
                cause.contains(&format!("the successor {new} ended")),
                "{name}: {cause}"
            );
        }
        other => panic!("{name}: the verdict is a rollback, not {other:?}"),
    }
    wait_for("the rollback", DEADLINE, || {
        log_has(&server, "upgrade rolled back")
    });
    wait_exit(new, DEADLINE);
    server.wait_pid_file(old);
    let before = load.answered();
    load.wait_for_more(50);
    assert!(alive(old), "{name}: the predecessor serves on");
    let report = load.finish();
    eprintln!(
        "{name}: {} answered ({} after the rollback), failures {:?}",
        report.answered,
        report.answered - before,
        report.failures
    );
    // Nothing refused: the listeners never closed. Only requests in flight on the process
    // that died are lost, at most one per client.
    assert_eq!(report.failures.connect, 0, "{name}: {report:?}");
    assert!(report.failed <= CLIENTS as u64, "{name}: {report:?}");
    assert!(report.pids.contains(&old) && report.pids.contains(&new));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("upgrade rolled back"))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{name}: {line}");
    assert!(
        line.contains(&format!("the successor {new} ended")),
        "{name}: {line}"
    );
    // The predecessor takes upgrades again, and a good build is committed at the window's end
    // (a short window here: the test waits for it).
    server.set_behaviour("ok");
    let newer = server.upgrade().expect("a later upgrade");
    server.wait_pid_file(newer);
    assert!(alive(old), "{name}: on probation again");
}

#[test]
fn a_build_that_crashes_two_seconds_after_ready_is_rolled_back_under_load() {
    rolled_back("crash-after-ready", "crash-after 2000", |_, _| {});
}

#[test]
fn a_successor_killed_during_the_window_is_rolled_back() {
    rolled_back("killed-in-window", "ok", |_, new| {
        signal(new, Signal::SIGKILL)
    });
}

#[test]
fn a_build_whose_health_check_fails_is_rolled_back_under_load() {
    rolled_back("unhealthy", "unhealthy", |_, _| {});
}

#[test]
fn a_build_that_crashes_after_the_window_is_committed_and_not_rolled_back() {
    let (server, load) = serving("committed", "1s");
    let old = server.first_pid;
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    // The successor's status shows its health check, which ran during the probation.
    let control = flip::control::Client::for_pid_file(&server.pid_file);
    let health = wait_for(
        "the successor's health check in its status",
        DEADLINE,
        || {
            control
                .status()
                .ok()
                .filter(|s| s.pid == new)
                .and_then(|s| s.last_health_check)
        },
    );
    assert_eq!(health.result, "ok", "{health:?}");
    assert!(health.check.contains("backend"), "{health:?}");
    wait_for("the commit", DEADLINE, || {
        log_has(&server, "upgrade committed: the probation is over")
    });
    wait_exit(old, DEADLINE);
    load.wait_for_more(20);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(!server.log().contains("rolled back"));
}

#[test]
fn back_to_back_upgrades_commit_the_one_on_probation_and_lose_nothing() {
    let (server, load) = serving("back-to-back", "60s");
    let mut generations = vec![server.first_pid];
    for i in 0..8 {
        let current = *generations.last().unwrap();
        // Each asks the process that serves now, once its predecessor drained and waits out
        // a 60 s window that only the commit can end (before that, it is refused as without
        // probation: one generation drains at a time).
        wait_for("the predecessor to be on probation", DEADLINE, || {
            let on_probation = server.log().matches("drained; on probation").count();
            (on_probation >= generations.len() - 1).then_some(())
        });
        let new = server
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade {i}: {e}"));
        server.wait_pid_file(new);
        load.wait_for_more(10);
        if generations.len() >= 2 {
            // The one before `current` was committed by this upgrade, and exits.
            wait_exit(generations[generations.len() - 2], DEADLINE);
        }
        assert!(alive(current), "upgrade {i}: {current} is on probation");
        generations.push(new);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    let log = server.log();
    assert!(log.contains("upgrade committed: the successor upgrades in turn"));
    assert!(!log.contains("rolled back"));
}
