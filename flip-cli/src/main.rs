//! `flip`: upgrade a running flip server and learn how it went, ask for its status, and check
//! that a server (flip's or any other that writes a pid file) loses nothing across upgrades.
//!
//! ```text
//! flip upgrade (--pid-file F | --socket S) [--timeout SECS] [--json]
//! flip rollback (--pid-file F | --socket S) [--timeout SECS] [--json]
//! flip status  (--pid-file F | --socket S) [--json]
//! flip check   --pid-file F (--http ADDR | --grpc ADDR)... [--upgrades N] [--conns N] [--mode close|keepalive]
//!              [--slow-path P] [--signal] [--socket S] [--interval-ms N] [--timeout SECS]
//!              [--json] [--plot FILE.svg]
//! ```
//!
//! Exit codes: 0 done (for `check`: nothing lost; for `upgrade`: committed); 1 the upgrade
//! failed, or `check` saw a loss; 2 could not ask (no server, refused, bad arguments); 3 the
//! upgrade was rolled back (the successor ended within the probation; the old process serves).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flip::control::{Client, ControlError, Status};
use flip::testing::load::Mode;
use flip::testing::{Check, Via};

const USAGE: &str = "usage:
  flip upgrade  (--pid-file F | --socket S) [--timeout SECS] [--json]
  flip rollback (--pid-file F | --socket S) [--timeout SECS] [--json]
                (an upgrade to the build the running one replaced, even if its file is gone)
  flip status  (--pid-file F | --socket S) [--json]
  flip check   --pid-file F [--http ADDR] [--grpc ADDR] [--upgrades N] [--conns N] [--mode close|keepalive]
               [--slow-path P] [--signal] [--socket S] [--interval-ms N] [--timeout SECS]
               [--json] [--plot FILE.svg]
exit codes: 0 done (upgrade: committed; check: nothing lost), 1 upgrade failed (check: something lost),
  2 could not ask, 3 upgrade rolled back (the old process serves on)";

/// Exit code: the upgrade failed, or the check saw a loss.
const FAILED: u8 = 1;
/// Exit code: could not ask (no server, refused, bad arguments).
const COULD_NOT_ASK: u8 = 2;
/// Exit code: the upgrade was rolled back during its probation.
const ROLLED_BACK: u8 = 3;

#[derive(Default)]
struct Args {
    pid_file: Option<PathBuf>,
    socket: Option<PathBuf>,
    http: Option<String>,
    grpc: Option<String>,
    timeout: Option<Duration>,
    upgrades: Option<usize>,
    conns: Option<usize>,
    mode: Option<Mode>,
    slow_path: Option<String>,
    interval: Option<Duration>,
    plot: Option<PathBuf>,
    signal: bool,
    json: bool,
    help: bool,
}

fn parse(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    while let Some(flag) = words.next() {
        match flag.as_str() {
            "--json" => a.json = true,
            "--signal" => a.signal = true,
            "--help" | "-h" => a.help = true,
            _ => {
                let value = words.next().ok_or(format!("{flag} needs a value"))?;
                let number = |what: &str| -> Result<u64, String> {
                    value
                        .parse()
                        .map_err(|_| format!("{flag} {value:?}: expected {what}"))
                };
                match flag.as_str() {
                    "--pid-file" => a.pid_file = Some(value.into()),
                    "--socket" => a.socket = Some(value.into()),
                    "--http" => a.http = Some(value),
                    "--grpc" => a.grpc = Some(value),
                    "--timeout" => a.timeout = Some(Duration::from_secs(number("seconds")?)),
                    "--upgrades" => a.upgrades = Some(number("a count")? as usize),
                    "--conns" => a.conns = Some(number("a count")?.max(1) as usize),
                    "--interval-ms" => a.interval = Some(Duration::from_millis(number("ms")?)),
                    "--slow-path" => a.slow_path = Some(value),
                    "--plot" => a.plot = Some(value.into()),
                    "--mode" => {
                        a.mode = Some(match value.as_str() {
                            "close" => Mode::Close,
                            "keepalive" => Mode::KeepAlive,
                            _ => {
                                return Err(format!(
                                    "--mode {value:?}: expected close or keepalive"
                                ));
                            }
                        })
                    }
                    _ => return Err(format!("unknown option {flag}")),
                }
            }
        }
    }
    Ok(a)
}

fn client(a: &Args) -> Result<Client, String> {
    match (&a.socket, &a.pid_file) {
        (Some(s), _) => Ok(Client::new(s)),
        (None, Some(p)) => Ok(Client::for_pid_file(p)),
        (None, None) => Err("say which server: --pid-file F or --socket S".into()),
    }
}

fn main() -> ExitCode {
    let mut words = std::env::args().skip(1);
    let Some(command) = words.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(COULD_NOT_ASK);
    };
    let args = match parse(words) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flip: {e}\n{USAGE}");
            return ExitCode::from(COULD_NOT_ASK);
        }
    };
    if args.help {
        say(&format!("{USAGE}\n"));
        return ExitCode::SUCCESS;
    }
    let result = match command.as_str() {
        "upgrade" => upgrade(&args, false),
        "rollback" => upgrade(&args, true),
        "status" => status(&args),
        "check" => check(&args),
        "help" | "--help" | "-h" => {
            say(&format!("{USAGE}\n"));
            Ok(())
        }
        other => Err((COULD_NOT_ASK, format!("unknown command {other:?}\n{USAGE}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("flip: {message}");
            ExitCode::from(code)
        }
    }
}

type Outcome = Result<(), (u8, String)>;

fn could_not_ask(e: impl std::fmt::Display) -> (u8, String) {
    (COULD_NOT_ASK, e.to_string())
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    flip::Chain(e).to_string()
}

fn upgrade(a: &Args, rollback: bool) -> Outcome {
    let client = client(a).map_err(could_not_ask)?;
    let timeout = a.timeout.unwrap_or(Duration::from_secs(120));
    let asked = if rollback {
        client.rollback(timeout)
    } else {
        client.upgrade(timeout)
    };
    match asked {
        Ok(done) => {
            if a.json {
                say(&format!(
                    "{{\"verdict\":\"committed\",\"old_pid\":{},\"new_pid\":{},\"ready_ms\":{:.3},\"committed_after_ms\":{},\"started\":{},\"old_binary\":{},\"new_binary\":{}}}\n",
                    done.old_pid,
                    done.new_pid,
                    done.ready_after.as_secs_f64() * 1000.0,
                    done.committed_after.map_or("null".into(), |d| format!(
                        "{:.3}",
                        d.as_secs_f64() * 1000.0
                    )),
                    done.started.as_deref().map_or("null".into(), json),
                    json(&done.old_binary),
                    json(&done.new_binary)
                ));
            } else {
                say(&format!(
                    "{}: pid {} -> {}, ready after {:.2} ms{}{}\n  old: {}\n  new: {}\n",
                    if rollback {
                        "rolled back to the previous build"
                    } else {
                        "upgraded"
                    },
                    done.old_pid,
                    done.new_pid,
                    done.ready_after.as_secs_f64() * 1000.0,
                    done.started
                        .as_deref()
                        .map_or(String::new(), |s| format!(" ({s})")),
                    match done.committed_after {
                        Some(d) if !d.is_zero() =>
                            format!(", committed after a probation of {:.1} s", d.as_secs_f64()),
                        _ => String::new(),
                    },
                    done.old_binary,
                    done.new_binary
                ));
            }
            Ok(())
        }
        Err(e @ ControlError::Failed { .. }) => {
            let mut message = chain(&e);
            if let ControlError::Failed { stderr, .. } = &e
                && !stderr.is_empty()
            {
                message.push_str("\nthe successor's last lines on stderr:");
                for line in stderr {
                    message.push_str("\n  ");
                    message.push_str(line);
                }
            }
            Err((FAILED, message))
        }
        Err(ControlError::RolledBack {
            new_pid,
            cause,
            old_pid,
        }) => {
            if a.json {
                say(&format!(
                    "{{\"verdict\":\"rolled back\",\"old_pid\":{old_pid},\"new_pid\":{new_pid},\"cause\":{}}}\n",
                    json(&cause)
                ));
            }
            Err((
                ROLLED_BACK,
                format!("upgrade rolled back: {cause}; pid {old_pid} serves on"),
            ))
        }
        Err(e) => Err(could_not_ask(chain(&e))),
    }
}

fn status(a: &Args) -> Outcome {
    let client = client(a).map_err(could_not_ask)?;
    let s = client.status().map_err(|e| could_not_ask(chain(&e)))?;
    if a.json {
        say(&format!("{}\n", status_json(&s)));
    } else {
        say(&status_text(&s));
    }
    Ok(())
}

fn status_text(s: &Status) -> String {
    let mut out = format!(
        "pid {} (generation {}), serving since {} (unix)\nbinary: {}\nflip {}\nupgrades: {} succeeded, {} failed, {} rolled back\n",
        s.pid,
        s.generation,
        s.started_unix,
        s.binary,
        s.flip_version,
        s.upgrades_succeeded,
        s.upgrades_failed,
        s.upgrades_rolled_back
    );
    if let Some(last) = &s.last_upgrade {
        out.push_str(&format!(
            "last upgrade: {} after {:.2} ms{}: {}\n",
            last.result,
            last.elapsed.as_secs_f64() * 1000.0,
            last.new_pid
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default(),
            last.detail
        ));
    }
    if let Some(previous) = &s.previous_binary {
        out.push_str(&format!(
            "previous build: {previous} (flip rollback starts it)\n"
        ));
    }
    if let Some(h) = &s.last_health_check {
        out.push_str(&format!(
            "last health check: {}: {} (at {}, unix)\n",
            h.check, h.result, h.at_unix
        ));
    }
    if let Some(running) = s.upgrading_for {
        out.push_str(&format!(
            "upgrade in progress for {:.0} ms\n",
            running.as_secs_f64() * 1000.0
        ));
    }
    match s.draining_parent {
        Some(p) => out.push_str(&format!("previous generation: pid {p}, still draining\n")),
        None => out.push_str("previous generation: exited\n"),
    }
    if let Some(p) = s.standby_pid {
        out.push_str(&format!("standby: pid {p}\n"));
    } else if let Some(why) = &s.standby_none {
        out.push_str(&format!("standby: none: {why}\n"));
    }
    for l in &s.listeners {
        // The registry's files (`file <name>`, flip's own `flip.binary-watch` among them) are
        // handed over too, but nothing listens on them.
        let verb = if l.starts_with("file ") {
            "holding"
        } else {
            "listening"
        };
        out.push_str(&format!("{verb}: {l}\n"));
    }
    out
}

fn status_json(s: &Status) -> String {
    let opt = |v: Option<u32>| v.map_or("null".to_owned(), |p| p.to_string());
    let last = match &s.last_upgrade {
        None => "null".to_owned(),
        Some(l) => format!(
            "{{\"result\":{},\"new_pid\":{},\"elapsed_ms\":{:.3},\"detail\":{}}}",
            json(&l.result),
            opt(l.new_pid),
            l.elapsed.as_secs_f64() * 1000.0,
            json(&l.detail)
        ),
    };
    let health = match &s.last_health_check {
        None => "null".to_owned(),
        Some(h) => format!(
            "{{\"check\":{},\"result\":{},\"at_unix\":{}}}",
            json(&h.check),
            json(&h.result),
            h.at_unix
        ),
    };
    let listeners: Vec<String> = s.listeners.iter().map(|l| json(l)).collect();
    format!(
        "{{\"pid\":{},\"generation\":{},\"started_unix\":{},\"upgrades_succeeded\":{},\"upgrades_failed\":{},\"upgrades_rolled_back\":{},\"last_upgrade\":{},\"upgrading_ms\":{},\"draining_parent\":{},\"standby_pid\":{},\"standby_none\":{},\"last_health_check\":{},\"listeners\":[{}],\"binary\":{},\"previous_binary\":{},\"flip_version\":{}}}",
        s.pid,
        s.generation,
        s.started_unix,
        s.upgrades_succeeded,
        s.upgrades_failed,
        s.upgrades_rolled_back,
        last,
        s.upgrading_for.map_or("null".into(), |d| format!(
            "{:.3}",
            d.as_secs_f64() * 1000.0
        )),
        opt(s.draining_parent),
        opt(s.standby_pid),
        s.standby_none.as_deref().map_or("null".into(), json),
        health,
        listeners.join(","),
        json(&s.binary),
        s.previous_binary.as_deref().map_or("null".into(), json),
        json(&s.flip_version)
    )
}

fn check(a: &Args) -> Outcome {
    let pid_file = a
        .pid_file
        .clone()
        .ok_or_else(|| could_not_ask("check needs --pid-file F"))?;
    let mut c = match (&a.http, &a.grpc) {
        (None, None) => return Err(could_not_ask("check needs --http ADDR or --grpc ADDR")),
        (Some(http), _) => Check::new(pid_file, http),
        (None, Some(_)) => Check::without_http(pid_file),
    };
    if let Some(grpc) = &a.grpc {
        c = c.grpc(grpc);
    }
    c = c.via(if a.signal { Via::Signal } else { Via::Control });
    if let Some(n) = a.upgrades {
        c = c.upgrades(n);
    }
    if let Some(n) = a.conns {
        c = c.conns(n);
    }
    if let Some(m) = a.mode {
        c = c.mode(m);
    }
    if let Some(p) = &a.slow_path {
        c = c.slow_path(p);
    }
    if let Some(s) = &a.socket {
        c = c.control_socket(s);
    }
    if let Some(i) = a.interval {
        c = c.interval(i);
    }
    if let Some(t) = a.timeout {
        c = c.timeout(t);
    }
    let report = c.run().map_err(|e| could_not_ask(chain(&e)))?;
    if let Some(path) = &a.plot {
        report
            .write_svg(path)
            .map_err(|e| could_not_ask(format!("writing {}: {e}", path.display())))?;
    }
    if a.json {
        say(&format!("{}\n", report.to_json()));
    } else {
        say(&format!("{report}\n"));
    }
    if report.lossless() {
        Ok(())
    } else {
        Err((FAILED, "requests were lost across the upgrades".into()))
    }
}

/// Writes `text` to standard output. A reader that went away (`flip status | head -1`) is not
/// an error worth a panic: what it did not read, it did not want.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn json(s: &str) -> String {
    flip::testing::json_string(s)
}
