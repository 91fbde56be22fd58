//! Starting a server binary for a test, and stopping it (every generation) afterwards.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{alive, read_pid};

/// How to start a [`TestServer`].
#[derive(Debug)]
pub struct TestServerBuilder {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    pid_file_var: String,
    dir: Option<PathBuf>,
    timeout: Duration,
}

/// A server binary under test: started with a pid file of its own in a fresh directory, and
/// stopped (`SIGTERM` to the serving process, then `SIGKILL` to every process it left) when
/// dropped.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    dir: PathBuf,
    pid_file: PathBuf,
}

impl TestServer {
    /// A server that runs `program` (`env!("CARGO_BIN_EXE_<name>")` in a test).
    pub fn start(program: impl Into<PathBuf>) -> TestServerBuilder {
        TestServerBuilder {
            program: program.into(),
            env: Vec::new(),
            pid_file_var: "FLIP_PID_FILE".into(),
            dir: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// The pid file the server writes.
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The directory of the pid file (and the server's log, `log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process the pid file names.
    pub fn pid(&self) -> Option<u32> {
        read_pid(&self.pid_file)
    }

    /// What the server wrote to stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl TestServerBuilder {
    /// Sets an environment variable of the server.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The variable that names the pid file (default `FLIP_PID_FILE`; `<PREFIX>_PID_FILE` for
    /// `#[flip::main(env_prefix = ...)]`).
    pub fn pid_file_var(mut self, name: &str) -> Self {
        self.pid_file_var = name.to_owned();
        self
    }

    /// The directory for the pid file and log (default: a new one in the temporary directory).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// How long the server may take to write its pid file (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the server and waits until its pid file names a running process.
    pub fn ready(self) -> std::io::Result<TestServer> {
        let dir = match self.dir {
            Some(d) => d,
            None => {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                std::env::temp_dir().join(format!(
                    "flip-testserver-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ))
            }
        };
        std::fs::create_dir_all(&dir)?;
        let pid_file = dir.join("server.pid");
        let _ = std::fs::remove_file(&pid_file);
        let log = std::fs::File::create(dir.join("log"))?;
        let child = Command::new(&self.program)
            .env(&self.pid_file_var, &pid_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut server = TestServer {
            child,
            dir,
            pid_file,
        };
        let up = super::load::wait_until(self.timeout, || {
            server.pid().is_some_and(alive) || !alive(server.child.id())
        });
        match server.child.try_wait()? {
            Some(status) => Err(std::io::Error::other(format!(
                "{} exited at start ({status}); log:\n{}",
                self.program.display(),
                server.log()
            ))),
            None if up && server.pid().is_some() => Ok(server),
            None => {
                let _ = server.child.kill();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no pid file within {:?}", self.timeout),
                ))
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = crate::sys::process::send_signal(pid as i32, crate::sys::process::SIGTERM);
            super::load::wait_until(Duration::from_secs(5), || !alive(pid));
            let _ = crate::sys::process::kill_hard(pid as i32);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
