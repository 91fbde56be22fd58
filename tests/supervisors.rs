//! flip under the supervisors people run it under, each the real program: runit (`runsv`,
//! `sv`), s6 (`s6-supervise`, `s6-svc`), supervisord (`supervisorctl`), tini and dumb-init.
//! The `http` example runs in the supervisor mode (`FLIP_SUPERVISE=1`), takes 10 upgrades
//! asked through each supervisor's own command under load, then the supervisor's own stop
//! under load with a slow request in flight: the upgrades lose nothing, and the stop
//! (draining, the default) answers what was accepted and refuses the rest.
//!
//! The supervisors come from Debian (`runit`, `s6`, `supervisor`, `tini`, `dumb-init`); CI
//! installs them. A missing one fails the test, naming the package.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use flip_suite as support;
use nix::sys::signal::Signal;
use support::load::{Load, Mode};
use support::*;

/// How to run, upgrade and stop a service under one supervisor.
struct Supervisor {
    name: &'static str,
    package: &'static str,
    /// Starts the supervisor over the service's `run` script in `dir`.
    start: fn(dir: &Path, run: &Path) -> Command,
    /// Asks for an upgrade (`SIGHUP` to the service) the supervisor's way.
    hup: fn(dir: &Path, outer: u32) -> Command,
    /// Stops the service the supervisor's way.
    stop: fn(dir: &Path, outer: u32) -> Command,
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn kill_command(sig: &str, pid: u32) -> Command {
    command("kill", &[sig, &pid.to_string()])
}

fn supervisord_conf(dir: &Path) -> PathBuf {
    dir.join("supervisord.conf")
}

const SUPERVISORS: [Supervisor; 5] = [
    Supervisor {
        name: "runit",
        package: "runit",
        start: |dir, _| command("runsv", &[path(dir)]),
        hup: |dir, _| command("sv", &["hup", path(dir)]),
        stop: |dir, _| command("sv", &["down", path(dir)]),
    },
    Supervisor {
        name: "s6",
        package: "s6",
        start: |dir, _| command("s6-supervise", &[path(dir)]),
        hup: |dir, _| command("s6-svc", &["-h", path(dir)]),
        stop: |dir, _| command("s6-svc", &["-d", path(dir)]),
    },
    Supervisor {
        name: "supervisord",
        package: "supervisor",
        start: |dir, _| command("supervisord", &["-n", "-c", path(&supervisord_conf(dir))]),
        hup: |dir, _| {
            command(
                "supervisorctl",
                &["-c", path(&supervisord_conf(dir)), "signal", "HUP", "flip"],
            )
        },
        stop: |dir, _| {
            command(
                "supervisorctl",
                &["-c", path(&supervisord_conf(dir)), "stop", "flip"],
            )
        },
    },
    Supervisor {
        name: "tini",
        package: "tini",
        start: |_, run| command("tini", &["-s", "--", path(run)]),
        hup: |_, outer| kill_command("-HUP", outer),
        stop: |_, outer| kill_command("-TERM", outer),
    },
    Supervisor {
        name: "dumb-init",
        package: "dumb-init",
        start: |_, run| command("dumb-init", &[path(run)]),
        hup: |_, outer| kill_command("-HUP", outer),
        stop: |_, outer| kill_command("-TERM", outer),
    },
];

/// The supervisor, and everything under it, killed if the test ends early.
struct Outer(Child);

impl Drop for Outer {
    fn drop(&mut self) {
        let mut pids = vec![self.0.id()];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(children_of(pids[i]));
            i += 1;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn run_ok(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ten_upgrades_and_a_draining_stop_under_each_supervisor_lose_nothing() {
    init();
    for sup in &SUPERVISORS {
        let probe = match sup.name {
            "runit" => "runsv",
            "s6" => "s6-supervise",
            other => other,
        };
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {probe}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{} is not installed (Debian package {})",
            sup.name,
            sup.package
        );
        one_supervisor(sup);
    }
}

/// A service directory for `sup` in `scratch` whose `run` script starts the `http` example
/// (`supervise`: in the supervisor mode); returns the directory, the `run` script, the
/// address, the pid file and the log.
fn service(scratch: &Scratch, supervise: bool) -> (PathBuf, PathBuf, String, PathBuf, PathBuf) {
    let dir = scratch.path("service");
    std::fs::create_dir(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let pid_file = scratch.path("server.pid");
    let log = scratch.path("log");
    let run = dir.join("run");
    std::fs::write(
        &run,
        format!(
            "#!/bin/sh\nexec 2>>{log} 1>&2\n{supervise}\nexport HTTP_ADDR={addr} FLIP_PID_FILE={pid} RUST_LOG=info\nexec {http}\n",
            supervise = if supervise {
                "export FLIP_SUPERVISE=1"
            } else {
                "unset FLIP_SUPERVISE"
            },
            log = log.display(),
            pid = pid_file.display(),
            http = example_path("http").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        supervisord_conf(&dir),
        format!(
            "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
             [unix_http_server]\nfile={d}/supervisor.sock\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\
             [program:flip]\ncommand={run}\nautorestart=false\nstartsecs=0\nstopsignal=TERM\nstopwaitsecs=60\n",
            d = dir.display(),
            run = run.display()
        ),
    )
    .unwrap();
    (dir, run, addr, pid_file, log)
}

fn one_supervisor(sup: &Supervisor) {
    let scratch = Scratch::new(&format!("under-{}", sup.name));
    let (dir, run, addr, pid_file, log) = service(&scratch, true);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let outer = Outer(
        (sup.start)(&dir, &run)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let outer_pid = outer.0.id();
    let first = wait_for(
        &format!("{}: the service to serve", sup.name),
        DEADLINE,
        || {
            let serving = pid_in(&pid_file)?;
            TcpStream::connect(&addr).ok().map(|_| serving)
        },
    );
    // flip's supervisor: the service's process, whose child the serving generation is.
    let flip_supervisor = wait_for("flip's supervisor", DEADLINE, || {
        let p = std::fs::read_to_string(format!("/proc/{first}/stat")).ok()?;
        p[p.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse::<u32>()
            .ok()
    });
    assert_ne!(
        flip_supervisor, outer_pid,
        "{}: supervised by flip",
        sup.name
    );

    // 10 upgrades under load, each asked the supervisor's way.
    let load = Load::start(&addr, 3, Mode::Close);
    load.wait_for_more(20);
    let mut serving = first;
    for i in 0..10 {
        run_ok(
            (sup.hup)(&dir, outer_pid),
            &format!("{}: hup {i}", sup.name),
        );
        serving = wait_for(&format!("{}: upgrade {i}", sup.name), DEADLINE, || {
            pid_in(&pid_file).filter(|&p| p != serving)
        });
        load.wait_for_more(20);
    }
    let upgrades = load.finish();
    assert_eq!(
        upgrades.failed,
        0,
        "{}: {upgrades:?}\n{}",
        sup.name,
        read_log()
    );
    assert!(
        alive(flip_supervisor),
        "{}: flip's supervisor kept its pid",
        sup.name
    );

    // The supervisor's stop, under load, with a slow request in flight.
    let load = Load::start(&addr, 3, Mode::Close);
    load.wait_for_more(20);
    let slow = slow_request(&addr, 2_000);
    let server_port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let client_port = slow.local_addr().unwrap().port();
    let accepted_by = wait_for("the slow request to be accepted", DEADLINE, || {
        let inode = tcp_server_socket_inode(server_port, client_port)?;
        children_of(flip_supervisor)
            .into_iter()
            .find(|&p| holds_socket(p, inode))
    });
    run_ok((sup.stop)(&dir, outer_pid), &format!("{}: stop", sup.name));
    let answer = whole_answer(slow);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(&format!("hello from {accepted_by}")),
        "{}: the request in flight was cut: {answer:?}\n{}",
        sup.name,
        read_log()
    );
    wait_exit(flip_supervisor, DEADLINE);
    let stop = load.finish();
    let f = stop.failures;
    assert_eq!(
        (f.no_response, f.bad_status, f.other),
        (0, 0, 0),
        "{}: {stop:?}\n{}",
        sup.name,
        read_log()
    );
    eprintln!(
        "{}: 10 upgrades under load, {} answered, {} failed; draining stop under load: the 2 s request answered, {} answered, {} refused, {} lost",
        sup.name,
        upgrades.answered,
        upgrades.failed,
        stop.answered,
        f.connect,
        f.no_response + f.bad_status + f.other
    );
    drop(outer);
}

#[test]
fn without_the_supervisor_mode_each_supervisor_gets_a_warning_and_no_upgrade_that_would_break_it() {
    init();
    for sup in SUPERVISORS
        .iter()
        .filter(|s| matches!(s.name, "runit" | "s6" | "supervisord"))
    {
        let scratch = Scratch::new(&format!("unsupervised-{}", sup.name));
        let (dir, run, addr, pid_file, log) = service(&scratch, false);
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        let outer = Outer(
            (sup.start)(&dir, &run)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let serving = wait_for(
            &format!("{}: ready, with a warning", sup.name),
            DEADLINE,
            || {
                let said = read_log();
                (said.contains("upgrades will be refused") && said.contains("ready pid="))
                    .then_some(())?;
                pid_in(&pid_file)
            },
        );
        assert!(
            read_log().contains("FLIP_SUPERVISE=1"),
            "{}: {}",
            sup.name,
            read_log()
        );
        run_ok((sup.hup)(&dir, outer.0.id()), &format!("{}: hup", sup.name));
        wait_for(
            &format!("{}: the upgrade to be refused", sup.name),
            DEADLINE,
            || read_log().contains("upgrade refused").then_some(()),
        );
        assert_eq!(pid_in(&pid_file), Some(serving), "{}", sup.name);
        assert!(TcpStream::connect(&addr).is_ok(), "{}: serving", sup.name);
        drop(outer);
    }
}
