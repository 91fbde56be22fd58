//! `--deploy-lead-ms N`: every upgrade runs a binary that is new on disk, as after a deploy.
//!
//! The server is started as `<dir>/current/<name>`, where `current` is a symbolic link to one
//! of two copies of its binary (`release-a`, `release-b`: two files, so two inodes). Before each
//! `SIGHUP` the link is switched to the other copy, atomically (a new link renamed over it), and
//! the benchmark waits N ms: the time a deploy script leaves between putting the binary in
//! place and asking for the reload. A standby process started from the previous binary is stale
//! then; what the upgrade costs depends on whether the server noticed the new binary in time.

use std::path::{Path, PathBuf};

pub struct Releases {
    dir: PathBuf,
    /// The copy `current` points at.
    on_a: bool,
}

impl Releases {
    /// Copies `exe` into `dir` twice and points `current` at the first copy; returns the path
    /// to start the server by.
    pub fn install(dir: &Path, exe: &Path) -> Result<(Releases, PathBuf), String> {
        let name = exe
            .file_name()
            .ok_or("the server binary has no file name")?;
        for release in ["release-a", "release-b"] {
            let to = dir.join(release);
            std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
            std::fs::copy(exe, to.join(name))
                .map_err(|e| format!("copying {} into {}: {e}", exe.display(), to.display()))?;
        }
        let mut releases = Releases {
            dir: dir.to_owned(),
            on_a: false,
        };
        releases.switch()?;
        Ok((releases, dir.join("current").join(name)))
    }

    /// Points `current` at the other copy.
    pub fn switch(&mut self) -> Result<(), String> {
        let target = if self.on_a { "release-b" } else { "release-a" };
        let staged = self.dir.join("current.new");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(target, &staged)
            .and_then(|()| std::fs::rename(&staged, self.dir.join("current")))
            .map_err(|e| format!("switching current to {target}: {e}"))?;
        self.on_a = !self.on_a;
        Ok(())
    }
}
