//! `ExecReload=flip upgrade --pid-file ...` under a real systemd (the box of
//! flip_suite::SystemdBox): `systemctl reload` returns once the successor is ready, and
//! fails when the upgrade fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flip_suite::*;

const UNIT: &str = "flip-http.service";

fn unit(app: &Path, addr: &str, pid_file: &Path) -> String {
    let flip = PathBuf::from(env!("CARGO_BIN_EXE_flip"));
    include_str!("../../examples/systemd/flip-http.service")
        .replace("/usr/local/bin/flip-http", &app.display().to_string())
        .replace("127.0.0.1:8080", addr)
        .replace("/run/flip-http/http.pid", &pid_file.display().to_string())
        .replace(
            "ExecReload=/bin/kill -HUP $MAINPID",
            &format!(
                "ExecReload={} upgrade --pid-file {}",
                flip.display(),
                pid_file.display()
            ),
        )
}

#[test]
fn systemctl_reload_waits_for_the_new_process_and_fails_when_the_upgrade_fails() {
    if let Some(why) = systemd_box_unavailable() {
        assert!(
            std::env::var_os("FLIP_REQUIRE_SYSTEMD_BOX").is_none(),
            "the systemd box cannot boot here: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let flip = PathBuf::from(env!("CARGO_BIN_EXE_flip"));
    let b = SystemdBox::boot("flip-reload", &[flip.parent().unwrap()]);
    let app = b.share.path("app");
    std::fs::copy(example_path("http"), &app).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let pid_file = b.share.path("http.pid");
    b.install_unit(UNIT, &unit(&app, &addr, &pid_file));
    b.systemctl_ok(&["start", UNIT]);

    for _ in 0..3 {
        let old = b.property(UNIT, "MainPID");
        // Returns only when `flip upgrade` did: the successor is ready and systemd follows it.
        b.systemctl_ok(&["reload", UNIT]);
        let new = b.property(UNIT, "MainPID");
        assert_ne!(new, old);
        assert_eq!(pid_in(&pid_file).map(|p| p.to_string()), Some(new.clone()));
        assert_eq!(b.property(UNIT, "ActiveState"), "active");
    }

    let serving = b.property(UNIT, "MainPID");
    let broken = b.share.path("app.new");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &app).unwrap();
    let out = b.systemctl(&["reload", UNIT]);
    assert!(!out.status.success(), "the reload fails with the upgrade");
    assert_eq!(
        b.property(UNIT, "MainPID"),
        serving,
        "the predecessor still serves"
    );
    assert_eq!(b.property(UNIT, "ActiveState"), "active");
    let journal = b.journal();
    assert!(journal.contains("exit code 3"), "{journal}");
    b.systemctl_ok(&["stop", UNIT]);
}
