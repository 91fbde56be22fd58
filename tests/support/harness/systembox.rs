//! A real systemd, booted in a throwaway box (`tests/support/systemd-box.sh`) and driven with
//! `nsenter ... systemctl`. It never touches the machine's own root, `/run` or `/tmp`, and leaves
//! nothing behind: dropping the box kills its PID 1 (and with it every process of its pid
//! namespace, whose mounts go with them) and removes its cgroup tree.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::*;

/// Why a box cannot boot here, if it cannot: not root, or no systemd, unshare or cgroup2.
pub fn systemd_box_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (unshare, mount)".into());
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Some("systemd is not installed".into());
    }
    if cgroup2_root().is_none() {
        return Some("no cgroup2 hierarchy".into());
    }
    None
}

/// Where cgroup2 is mounted: the unified hierarchy of a hybrid setup, or the whole tree.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
}

/// A booted systemd.
pub struct SystemdBox {
    /// Host pid of the box's PID 1 (systemd).
    pub pid1: u32,
    outer: Child,
    cgroup: PathBuf,
    storage: Scratch,
    /// Scratch files shared with the box at the same path.
    pub share: Scratch,
}

impl SystemdBox {
    /// Boots systemd and waits until it runs; `shared` directories (binaries) are seen in the
    /// box at the same paths, and so is [`share`](SystemdBox::share).
    pub fn boot(name: &str, shared: &[&Path]) -> SystemdBox {
        init();
        let storage = Scratch::new(&format!("{name}-box"));
        let share = Scratch::new(&format!("{name}-share"));
        let root = cgroup2_root().expect("cgroup2");
        remove_stale_boxes(&root);
        let cgroup = root.join(format!("flip-box-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&cgroup).expect("create the box's cgroup");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/systemd-box.sh");
        let mut dirs: Vec<PathBuf> = shared.iter().map(|p| p.to_path_buf()).collect();
        dirs.push(share.0.clone());
        // Into the box's cgroup first, so that the cgroup namespace's root is that cgroup. Should
        // the test process die without dropping the box, unshare dies with it (parent-death
        // signal) and takes the box down (--kill-child).
        let mut outer = Command::new("bash");
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe and touches no memory of this process.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut outer, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let outer = outer
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec unshare --pid --fork --kill-child=SIGKILL --mount --cgroup --uts --ipc -- bash "$@""#)
            .arg("box")
            .arg(&cgroup)
            .arg(&script)
            .arg(&storage.0)
            .args(&dirs)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(share.path("console.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the box");
        let unshare = outer.id();
        let pid1 = wait_for("the box's PID 1", DEADLINE, || {
            children_of(unshare).into_iter().find(|&p| {
                std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e.ends_with("systemd"))
            })
        });
        let b = SystemdBox {
            pid1,
            outer,
            cgroup,
            storage,
            share,
        };
        let private = PathBuf::from(format!("/proc/{pid1}/root/run/systemd/private"));
        wait_for("systemd's control socket in the box", DEADLINE, || {
            private.exists().then_some(())
        });
        let state = b.systemctl(&["is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
        assert!(
            state == "running" || state == "degraded",
            "systemd in the box is {state:?}; failed units:\n{}",
            b.systemctl_text(&["list-units", "--state=failed", "--no-pager"])
        );
        b
    }

    /// A command that runs inside the box (its namespaces and root).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.pid1.to_string(),
            "-m",
            "-p",
            "-C",
            "-u",
            "-i",
            "-r",
            "-w",
        ])
        .arg(program)
        .stdin(Stdio::null());
        cmd
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.command("systemctl")
            .args(args)
            .output()
            .expect("run systemctl in the box")
    }

    /// `systemctl` that must succeed; its standard output.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}\n{}\njournal:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn systemctl_text(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// One property of a unit (`systemctl show -P`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.systemctl_ok(&["show", "-P", name, unit])
            .trim()
            .to_owned()
    }

    /// Installs a unit file and reloads systemd's configuration.
    pub fn install_unit(&self, name: &str, text: &str) {
        let path = PathBuf::from(format!(
            "/proc/{}/root/etc/systemd/system/{name}",
            self.pid1
        ));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.systemctl_ok(&["daemon-reload"]);
    }

    /// The journal of the test's units (`flip-*`), for failure messages.
    pub fn journal(&self) -> String {
        let out = self
            .command("journalctl")
            .args([
                "--no-pager",
                "-q",
                "-o",
                "short-monotonic",
                "-n",
                "150",
                "-u",
                "flip-*",
            ])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("(no journal: {e})"),
        }
    }

    /// The host pid of the box's process `ns_pid` (as systemd inside names it).
    pub fn host_pid(&self, ns_pid: u32) -> Option<u32> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.pid1)).ok()?;
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()? != ns {
                return None;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            let inner: u32 = line.split_whitespace().last()?.parse().ok()?;
            (inner == ns_pid).then_some(pid)
        })
    }

    /// Host pids of the box's processes that run `exe`.
    pub fn processes_running(&self, exe: &Path) -> Vec<u32> {
        let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/pid", self.pid1)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let in_box = std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|n| n == ns);
            let runs = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|x| x == exe);
            if in_box && runs && alive(pid) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        // SIGKILL to a pid namespace's init kills every process in it; the mounts go with the
        // namespace.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid1 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.outer.wait();
        let cgroup = self.cgroup.clone();
        wait_for("the box's cgroup to be removed", DEADLINE, || {
            remove_cgroup_tree(&cgroup);
            (!cgroup.exists()).then_some(())
        });
        let _ = &self.storage;
    }
}

/// Removes the cgroups of boxes whose test process died without dropping them (their
/// processes died with it).
fn remove_stale_boxes(root: &Path) {
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix("flip-box-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            remove_cgroup_tree(&e.path());
        }
    }
}

/// Removes a cgroup and everything below it, deepest first (a cgroup with processes stays).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
