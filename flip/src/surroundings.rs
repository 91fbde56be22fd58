//! What runs around this process, as far as upgrades care: an upgrade's new process is this
//! one's child, and this one exits once it drained. Whatever follows this pid (a container
//! init, a process supervisor) takes that exit for the end of the service. flip tells the cases
//! where it surely will, refuses to upgrade there, and says at start what to set instead: the
//! supervisor mode, whose pid never changes.

use crate::sys::pidref::Stat;

/// Container inits that end the container when their one child exits.
const CONTAINER_INITS: [&str; 4] = ["tini", "dumb-init", "docker-init", "catatonit"];

/// Process supervisors that follow the pid they started and restart it when it exits.
const PID_SUPERVISORS: [&str; 4] = ["runsv", "s6-supervise", "supervisord", "supervise"];

/// Why an upgrade would end the service here, if it would: this process is PID 1 of its pid
/// namespace, or its parent is a container init or a supervisor that follows its pid.
/// `supervise_var` names the variable that turns the supervisor mode on (`FLIP_SUPERVISE`).
pub(crate) fn upgrade_would_end_the_service(supervise_var: &str) -> Option<String> {
    let me = crate::sys::process::own_pid();
    let fix = format!("set {supervise_var}=1, so that flip's supervisor keeps this pid");
    if me == 1 {
        return Some(format!(
            "this process is PID 1 of its pid namespace: its exit after an upgrade would end every process in it, the new one included; {fix}"
        ));
    }
    let parent = Stat::read(me)?.parent;
    if parent <= 0 {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    let comm = comm.trim();
    if CONTAINER_INITS.contains(&comm) {
        return Some(format!(
            "the parent process {comm} (pid {parent}) ends the container when this process exits, as it would after an upgrade; {fix}"
        ));
    }
    if PID_SUPERVISORS.contains(&comm) {
        return Some(format!(
            "the parent process {comm} (pid {parent}) follows this pid: after an upgrade it would take this process's exit for a crash and start the service again; {fix}"
        ));
    }
    None
}
