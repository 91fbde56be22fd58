//! Faults with real processes: killed new processes, signals at bad moments, storms, broken
//! binaries, a vanished pid file directory. Each test counts the requests it loses.

use flip_suite as support;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::load::{AssertLossless, Load, Mode};
use support::*;

fn testserver() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_flip-testserver"))
}

/// Load clients; each has one request outstanding at a time, so a killed process can take at
/// most this many requests with it.
const CLIENTS: usize = 3;

/// A test server with an HTTP listener, and load on it.
fn serving(name: &str, extra: &[(&str, String)]) -> (Server, String, Load) {
    serving_in(Scratch::new(name), extra)
}

fn serving_in(scratch: Scratch, extra: &[(&str, String)]) -> (Server, String, Load) {
    let http = format!("127.0.0.1:{}", free_port());
    let mut env = vec![("TS_HTTP", http.clone())];
    env.extend(extra.iter().cloned());
    let server = Server::start_in(scratch, &testserver(), &env);
    let load = Load::start(&http, CLIENTS, Mode::Close);
    load.wait_for_more(20);
    (server, http, load)
}

/// With a binary that behaves again, an upgrade succeeds, the successor answers, and no
/// request of the whole run failed.
fn a_good_upgrade_then_nothing_lost(server: &Server, load: Load) {
    server.set_behaviour("ok");
    let new = server.upgrade_ok();
    load.wait_for_more(20);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.pids.contains(&new));
}

fn new_child_of(pid: u32) -> u32 {
    wait_for("the successor to start", DEADLINE, || {
        children_of(pid).first().copied()
    })
}

fn gone(pid: u32) {
    let dir = format!("/proc/{pid}");
    wait_for(
        &format!("process {pid} to be gone and reaped"),
        DEADLINE,
        || (!Path::new(&dir).exists()).then_some(()),
    );
}

#[test]
fn a_new_process_killed_before_it_reads_the_handoff_or_before_ready_loses_nothing() {
    let (server, _, load) = serving("kill-early", &[]);
    let old = server.first_pid;
    for behaviour in ["wait-before-handoff", "hang"] {
        server.set_behaviour(behaviour);
        let from = server.events().len();
        signal(old, Signal::SIGHUP);
        let child = new_child_of(old);
        load.wait_for_more(20);
        signal(child, Signal::SIGKILL);
        let (_, line) = server.wait_event(from, &format!("upgrade-failed {old} "));
        assert!(
            line.ends_with("successor-exited killed by signal 9 (SIGKILL)"),
            "{behaviour}: {line}"
        );
        gone(child);
        load.wait_for_more(20);
        assert_eq!(server.pid(), Some(old), "{behaviour}");
    }
    a_good_upgrade_then_nothing_lost(&server, load);
}

#[test]
fn the_old_process_killed_right_after_ready_leaves_the_new_one_serving_and_upgradable() {
    let (server, _, load) = serving("kill-old", &[("TS_LINGER_MS", "600000".into())]);
    let old = server.first_pid;
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    signal(old, Signal::SIGKILL);
    wait_exit(old, DEADLINE);
    load.wait_for_more(20);
    let newer = server
        .upgrade()
        .expect("the successor upgrades once its predecessor is gone");
    server.wait_pid_file(newer);
    load.wait_for_more(20);
    let report = load.finish();
    eprintln!(
        "old killed right after ready: {} answered, {} lost in the killed process",
        report.answered, report.failed
    );
    // The predecessor stops accepting once the new one is ready, but may still be finishing
    // requests it had: those die with it.
    assert!(report.failed <= CLIENTS as u64, "{report:?}");
    assert!(report.pids.contains(&newer), "{report:?}");
}

#[test]
fn a_sighup_storm_serialises_upgrades_and_kills_nothing() {
    let (server, _, load) = serving("storm", &[]);
    let started = Instant::now();
    let mut sent = 0;
    let mut most_children = 0;
    while sent < 200 && started.elapsed() < Duration::from_secs(10) {
        if let Some(pid) = server.pid() {
            let children = children_of(pid);
            most_children = most_children.max(children.len());
            // Aim at the serving process and at any process it is starting.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGHUP);
            for c in children {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c as i32), Signal::SIGHUP);
            }
            sent += 1;
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
    assert!(most_children <= 1, "{most_children} new processes at once");
    // Settle: one process serves, every other generation exited on its own.
    let serving = wait_for("the storm to settle", DEADLINE, || {
        let pid = server.pid()?;
        let others: Vec<u32> = server
            .all_pids()
            .into_iter()
            .filter(|&p| p != pid && alive(p))
            .collect();
        (others.is_empty() && children_of(pid).is_empty()).then_some(pid)
    });
    load.wait_for_more(20);
    let report = load.finish();
    let events = server.events();
    let upgrades = events.iter().filter(|l| l.starts_with("upgraded ")).count();
    let exits = events.iter().filter(|l| l.starts_with("exiting ")).count();
    eprintln!(
        "storm: {sent} SIGHUPs, {upgrades} upgrades, {} answered, {} failed",
        report.answered, report.failed
    );
    assert!(!events.iter().any(|l| l.starts_with("error")), "{events:?}");
    assert_eq!(
        exits, upgrades,
        "every upgraded process exited by itself: {events:?}"
    );
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.pids.contains(&serving));
}

#[test]
fn fifty_crashing_binaries_in_a_row_leave_the_old_process_serving_and_stable() {
    let (server, _, load) = serving("crash-50", &[]);
    let old = server.first_pid;
    server.set_behaviour("crash");
    let mut first = None;
    for i in 0..50 {
        let reason = server
            .upgrade()
            .expect_err("a crashing binary cannot take over");
        assert_eq!(reason, "successor-exited exit code 3");
        if i == 0 {
            first = Some(load.paused(|| (settled_fd_count(old), rss_kib(old))));
        }
    }
    let (fds_first, rss_first) = first.unwrap();
    let (fds_last, rss_last) = load.paused(|| (settled_fd_count(old), rss_kib(old)));
    eprintln!(
        "after 1 crash: {fds_first} fds, {rss_first} KiB; after 50: {fds_last} fds, {rss_last} KiB"
    );
    assert_eq!(fds_last, fds_first, "descriptors leak per failed upgrade");
    assert!(
        rss_last <= rss_first + 1024,
        "memory grows per failed upgrade: {rss_first} -> {rss_last} KiB"
    );
    assert!(children_of(old).is_empty(), "no zombie or straggler");
    a_good_upgrade_then_nothing_lost(&server, load);
}

#[test]
fn a_vanished_pid_file_directory_fails_the_upgrade_and_keeps_the_old_process() {
    let scratch = Scratch::new("piddir");
    let run = scratch.path("run");
    std::fs::create_dir(&run).unwrap();
    let pid_file = run.join("server.pid");
    let (server, _, load) = serving_in(
        scratch,
        &[("FLIP_PID_FILE", pid_file.display().to_string())],
    );
    let old = server.first_pid;
    std::fs::remove_dir_all(&run).unwrap();
    let reason = server
        .upgrade()
        .expect_err("the successor cannot write the pid file");
    assert_eq!(reason, "successor-exited exit code 1");
    assert!(
        server
            .events()
            .iter()
            .any(|l| l.starts_with("error ") && l.contains("pid file")),
        "the successor said why: {:?}",
        server.events()
    );
    load.wait_for_more(20);
    std::fs::create_dir(&run).unwrap();
    let new = server
        .upgrade()
        .expect("upgrade once the directory is back");
    server.wait_pid_file(new);
    wait_exit(old, DEADLINE);
    load.wait_for_more(20);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.pids.contains(&old) && report.pids.contains(&new));
}

#[test]
fn sigterm_during_an_upgrade_in_flight_stops_at_once_and_kills_the_new_process() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "term-in-flight",
        &std::path::PathBuf::from(env!("CARGO_BIN_EXE_flip-bootserver")),
        &[("TB_TCP", tcp.clone())],
    );
    let old = server.first_pid;
    server.set_behaviour("hang");
    signal(old, Signal::SIGHUP);
    let child = new_child_of(old);
    signal(old, Signal::SIGTERM);
    assert_eq!(exit_code(old, DEADLINE), 0);
    // The successor dies with it (killed by the old one, or at least never left running).
    wait_for("the successor to end", DEADLINE, || {
        (!alive(child)).then_some(())
    });
    assert!(
        server.log().contains("stopped by SIGTERM"),
        "{}",
        server.log()
    );
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn zombies_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn five_hundred_upgrades_under_load_leak_nothing() {
    let http = format!("127.0.0.1:{}", free_port());
    let server = Server::start("leaks", &testserver(), &[("TS_HTTP", http.clone())]);
    // Measured with no connection open, before and after the load.
    let first = server.upgrade_ok();
    let (fds_1, threads_1, rss_1) = (settled_fd_count(first), threads(first), rss_kib(first));
    let load = Load::start(&http, CLIENTS, Mode::Close);
    let mut last = first;
    for _ in 1..500 {
        load.wait_for_more(5);
        last = server.upgrade_ok();
    }
    load.wait_for_more(5);
    let report = load.finish();
    // Connections the load left are closing: a leak stays, they do not.
    let (fds_500, threads_500, rss_500) = (settled_fd_count(last), threads(last), rss_kib(last));
    eprintln!(
        "leaks: generation 1: {fds_1} fds, {threads_1} threads, {rss_1} KiB; generation 500: {fds_500} fds, {threads_500} threads, {rss_500} KiB; {} requests answered, {} failed",
        report.answered, report.failed
    );
    assert_eq!(fds_500, fds_1, "descriptors: {:?}", fd_links(last));
    assert_eq!(threads_500, threads_1, "threads");
    assert!(rss_500 <= rss_1 + 1024, "memory: {rss_1} -> {rss_500} KiB");
    // Zombies of this test process that were generations of this server (other tests of this
    // binary run at the same time, and their processes come back to us too, briefly zombies
    // until their test reaps them).
    let generations = server.all_pids();
    let zombies: Vec<u32> = zombies_of(std::process::id())
        .into_iter()
        .filter(|pid| generations.contains(pid))
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    assert!(zombies_of(last).is_empty());
    assert_eq!(report.failed, 0, "{report:?}");
}

#[test]
fn a_new_process_killed_right_after_ready_hands_service_back_to_the_old_one() {
    let http = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "kill-after-ready",
        &std::path::PathBuf::from(env!("CARGO_BIN_EXE_flip-bootserver")),
        // The greeting server's drain never ends (`TB_STUCK`): the predecessor is still there,
        // draining, when the new one dies, as it would be with a long request in flight.
        &[
            ("TB_HTTP", http.clone()),
            ("TB_TCP", format!("127.0.0.1:{}", free_port())),
            ("TB_STUCK", "1".into()),
            ("TB_GRACE_MS", "600000".into()),
        ],
    );
    let load = Load::start(&http, CLIENTS, Mode::Close);
    load.wait_for_more(20);
    let old = server.first_pid;
    let new = server.upgrade().expect("upgrade");
    server.wait_pid_file(new);
    signal(new, Signal::SIGKILL);
    // Killed after it told the predecessor it was ready: the old one, draining, takes service
    // back on the very same socket. Killed between writing the pid file and telling it: that
    // upgrade failed, the old one never stopped serving, and it reclaims the pid file. Either
    // way the predecessor serves and the pid file names it.
    server.wait_pid_file(old);
    load.wait_for_more(50);
    let log = server.log();
    assert!(
        log.contains("taking service back") || log.contains("upgrade failed"),
        "{log}"
    );
    // And it can upgrade again.
    let newer = server.upgrade().expect("a later upgrade");
    server.wait_pid_file(newer);
    load.wait_for_more(50);
    let report = load.finish();
    eprintln!(
        "killed right after ready: {} answered, {} lost in the killed process",
        report.answered, report.failed
    );
    // Only requests inside the killed process can be lost.
    assert!(report.failed <= CLIENTS as u64, "{report:?}");
    assert!(
        report.pids.contains(&old) && report.pids.contains(&newer),
        "{report:?}"
    );
}

#[test]
fn a_marker_inherited_by_a_process_no_upgrade_started_is_never_used() {
    let tcp = format!("127.0.0.1:{}", free_port());
    let server = Server::start("stray", &testserver(), &[("TS_TCP", tcp.clone())]);
    let old = server.first_pid;
    server.set_behaviour("hang");
    signal(old, Signal::SIGHUP);
    let child = new_child_of(old);
    // A real marker, token and all, as a grandchild would inherit it from a careless parent.
    let marker = wait_for("the marker of the starting process", DEADLINE, || {
        environ(child)
            .into_iter()
            .find_map(|v| v.strip_prefix("FLIP_HANDOFF=").map(str::to_owned))
    });
    let out = std::process::Command::new(testserver())
        .env("FLIP_HANDOFF", &marker)
        .env("TS_TCP", &tcp)
        .env_remove("TS_EVENTS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was not made for this process"), "{stderr}");
    assert_eq!(tcp_pid(&tcp), Some(old), "the server was not disturbed");
    signal(child, Signal::SIGKILL);
}

/// A tiny tmpfs at `dir`, unmounted when dropped.
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    fn mount(dir: &Path) -> Option<TinyFs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| TinyFs(dir.to_owned()))
    }

    /// Fills the file system until a write fails with ENOSPC.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("ballast")).unwrap();
        let chunk = [0u8; 1024];
        loop {
            match std::io::Write::write_all(&mut f, &chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        // The scratch directory that holds the mount point was removed while it was mounted,
        // which stops at the busy mount point: remove what is left, now that it is not.
        let _ = std::fs::remove_dir(&self.0);
        if let Some(scratch) = self.0.parent() {
            let _ = std::fs::remove_dir(scratch);
        }
    }
}

#[test]
fn a_full_pid_file_directory_is_reported_at_start_and_fails_an_upgrade() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: mounting a full file system needs root (CI runs as root)");
        return;
    }
    let scratch = Scratch::new("full");
    let Some(fs) = TinyFs::mount(&scratch.path("run")) else {
        panic!("cannot mount a tmpfs although root: the test cannot run here");
    };
    let pid_file = scratch.path("run").join("server.pid");

    // Full at first start: a clear error before anything starts.
    fs.fill();
    init();
    let out = std::process::Command::new(std::path::PathBuf::from(env!(
        "CARGO_BIN_EXE_flip-bootserver"
    )))
    .env("BOOT_PID_FILE", &pid_file)
    .env_remove("TS_EVENTS")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    std::fs::remove_file(scratch.path("run").join("ballast")).unwrap();

    // Full during an upgrade: the successor fails instead of claiming ready.
    let (server, _, load) = serving_in(
        scratch,
        &[("FLIP_PID_FILE", pid_file.display().to_string())],
    );
    let old = server.first_pid;
    fs.fill();
    let reason = server.upgrade().expect_err("no room for the new pid file");
    assert_eq!(reason, "successor-exited exit code 1");
    load.wait_for_more(20);
    assert_eq!(server.pid(), Some(old));
    std::fs::remove_file(server.scratch.path("run").join("ballast")).unwrap();
    let new = server.upgrade().expect("upgrade once there is room");
    server.wait_pid_file(new);
    load.wait_for_more(20);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    drop(server);
    drop(fs);
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks after boot.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn a_forged_lineage_on_a_first_start_gets_nobody_signalled() {
    let scratch = Scratch::new("forged-ancestors");
    let addr = format!("127.0.0.1:{}", free_port());
    // Two unrelated processes, named as "older generations" the way an old flip wrote them
    // (a bare pid) and the way this one does (pid and start time, which anyone can read).
    let mut victims: Vec<std::process::Child> = (0..2)
        .map(|_| {
            std::process::Command::new("sleep")
                .arg("120")
                .spawn()
                .unwrap()
        })
        .collect();
    let forged = format!(
        "{},{}:{}",
        victims[0].id(),
        victims[1].id(),
        start_time(victims[1].id())
    );
    let server = Server::start_in(
        scratch,
        &example_path("http"),
        &[
            ("HTTP_ADDR", addr.clone()),
            ("FLIP_ANCESTORS", forged),
            // An upgrade tells every older generation past one to finish now.
            ("FLIP_MAX_DRAINING", "1".into()),
        ],
    );
    let load = Load::start(&addr, CLIENTS, Mode::Close);
    load.wait_for_more(20);
    let new = server.upgrade_ok();
    load.wait_for_more(20);
    load.finish()
        .assert_lossless_across(&[server.first_pid, new]);
    for victim in &mut victims {
        assert!(
            victim.try_wait().unwrap().is_none(),
            "pid {} was signalled; log:\n{}",
            victim.id(),
            server.log()
        );
    }
    assert!(
        server.log().contains("FLIP_ANCESTORS"),
        "the ignored variable is reported: {}",
        server.log()
    );
    for victim in &mut victims {
        let _ = victim.kill();
        let _ = victim.wait();
    }
}

/// Starts the `http` example with a request that takes `ms` in flight on its first process
/// (accepted there, which is checked), so that its drain after an upgrade lasts that long.
fn http_with_a_slow_request(
    name: &str,
    ms: u64,
    env: &[(&str, String)],
) -> (Server, std::net::TcpStream) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut all = vec![("HTTP_ADDR", addr.clone())];
    all.extend(env.iter().cloned());
    let server = Server::start(name, &example_path("http"), &all);
    let slow = slow_request(&addr, ms);
    wait_accepted_by(&addr, &slow, server.first_pid);
    (server, slow)
}

#[test]
fn sigterm_to_the_new_process_while_the_old_one_drains_stops_both_at_once_with_the_immediate_stop()
{
    // The predecessor drains a request longer than the test's deadline: only a stop ends it.
    let (server, _slow) = http_with_a_slow_request(
        "stop-during-drain",
        120_000,
        &[("FLIP_STOP", "immediate".into())],
    );
    let first = server.first_pid;
    let new = server.upgrade().expect("the upgrade succeeds");
    server.wait_pid_file(new);
    assert!(alive(first), "the predecessor drains");
    signal(new, Signal::SIGTERM);
    wait_exit(new, DEADLINE);
    wait_for("the predecessor to stop too", DEADLINE, || {
        assert!(
            !server.log().contains("taking service back"),
            "a stop was taken for a crash:\n{}",
            server.log()
        );
        (!alive(first)).then_some(())
    });
    let log = server.log();
    assert!(
        !log.contains("taking service back"),
        "a stop was taken for a crash:\n{log}"
    );
}

#[test]
fn one_sighup_to_the_whole_process_group_makes_one_upgrade() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("group-hup");
    // In a process group of its own, as under dumb-init, which forwards a signal to the whole
    // group: the serving process and its standby both get it.
    let wrapper = scratch.path("run.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setsid {}\n",
            example_path("http").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_in(scratch, &wrapper, &[("HTTP_ADDR", addr.clone())]);
    let first = server.first_pid;
    let standby = wait_for("the standby", DEADLINE, || {
        children_of(first).first().copied()
    });
    let load = Load::start(&addr, CLIENTS, Mode::Close);
    load.wait_for_more(20);
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(first as i32), Signal::SIGHUP).unwrap();
    server.wait_pid_file(standby);
    wait_exit(first, DEADLINE);
    // The standby had the group's signal pending: it says it dropped it, and serves on.
    wait_for("the successor to drop the group's SIGHUP", DEADLINE, || {
        server
            .log()
            .contains("ignored a SIGHUP sent before this process served")
            .then_some(())
    });
    load.wait_for_more(20);
    assert_eq!(
        server.pid(),
        Some(standby),
        "a second upgrade ran:\n{}",
        server.log()
    );
    assert_eq!(
        server.log().matches("upgrade succeeded").count(),
        1,
        "{}",
        server.log()
    );
    load.finish().assert_lossless_across(&[first, standby]);
}

#[test]
fn a_reload_burst_with_max_draining_loses_no_request_in_flight() {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        "max-draining-burst",
        &example_path("http"),
        &[
            ("HTTP_ADDR", addr.clone()),
            ("FLIP_MAX_DRAINING", "1".into()),
            // A stop signal would end a drain at once here: making room must not send one.
            ("FLIP_STOP", "immediate".into()),
        ],
    );
    // Short requests, and slow ones that are in flight in every generation when it is asked
    // to make room.
    let load = support::load::Load::run(
        support::load::LoadConfig::new(&addr, CLIENTS, Mode::Close).slow(2, "/sleep/300"),
    );
    load.wait_for_more(20);
    let mut generations = vec![server.first_pid];
    for _ in 0..10 {
        // The next reload as soon as the last one is done: a burst.
        let new = server.upgrade().expect("the upgrade succeeds");
        server.wait_pid_file(new);
        generations.push(new);
    }
    load.wait_for_more(20);
    let report = load.finish();
    eprintln!(
        "max draining burst: {} upgrades, {} answered, {} failed",
        generations.len() - 1,
        report.answered,
        report.failed
    );
    assert_eq!(report.failed, 0, "{report:?}\n{}", server.log());
    // A generation that upgraded in turn and exited is an ordinary event, not an error.
    assert!(
        !server.log().contains(" ERROR "),
        "an ERROR in a normal burst:\n{}",
        server.log()
    );
}

#[test]
fn a_successor_that_upgraded_in_turn_and_exited_is_logged_as_an_ordinary_event() {
    // The first generation drains a 3 s request while its successor upgrades in turn and,
    // holding nothing, exits: the first sees its successor exit 0.
    let (server, _slow) =
        http_with_a_slow_request("handed-on-log", 3_000, &[("FLIP_MAX_DRAINING", "2".into())]);
    let first = server.first_pid;
    let second = server.upgrade().expect("the first upgrade");
    server.wait_pid_file(second);
    let third = server.upgrade().expect("the second upgrade");
    server.wait_pid_file(third);
    wait_exit(second, DEADLINE);
    wait_for(
        "the first generation to see its successor exit",
        DEADLINE,
        || {
            server
                .log()
                .contains("the successor exited while this process was draining")
                .then_some(())
        },
    );
    assert!(alive(first), "the first generation still drains");
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("the successor exited while this process was draining"))
        .unwrap()
        .to_owned();
    assert!(line.contains(" INFO "), "logged as an error: {line}");
}
