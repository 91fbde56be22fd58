//! The upgrade's decisions with a fake successor: the phases, the refusals and the standby
//! choice, each in milliseconds and without a process. The real processes are driven by the
//! integration tests (`tests/`); these pin the decisions between them.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::successor::{OnCommit, OnExit, Spawner, Successor};
use super::{FreshStart, Options, Start, SuccessorStart, Upgrader};
use crate::error::{Error, ErrorKind, ExitStatus, Repr};
use crate::handoff::ProcessName;
use crate::key::Key;
use crate::registry::Registered;
use crate::sync::{BoxFuture, lock};
use crate::sys::fd::FileId;

/// How a fake successor behaves once handed over.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Says ready at once.
    Ready,
    /// Exits with this code before it is ready.
    Exit(i32),
    /// Neither, until the test says.
    Hang,
}

/// One fake process, shared between the upgrader's handle and the test.
struct Proc {
    pid: u32,
    binary: u64,
    then: Then,
    handed_over: AtomicBool,
    /// Ready (`Ok`) or ended (`Err`), once either happened.
    outcome: watch::Sender<Option<Result<(), ExitStatus>>>,
    killed: AtomicBool,
    stopped: AtomicBool,
    on_exit: Mutex<Option<OnExit>>,
    on_commit: Mutex<Option<OnCommit>>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Proc {
    fn ended(&self) -> Option<ExitStatus> {
        match *self.outcome.borrow() {
            Some(Err(status)) => Some(status),
            _ => None,
        }
    }

    /// Ends it from outside (a standby killed before the upgrade, say).
    fn die(&self, status: ExitStatus) {
        self.outcome.send_replace(Some(Err(status)));
    }

    fn say_ready(&self) {
        self.outcome.send_replace(Some(Ok(())));
    }

    /// Ends it after it took over: the predecessor hears of it through `serve`'s callback.
    fn crash(&self, status: ExitStatus) {
        self.die(status);
        if let Some(on_exit) = lock(&self.on_exit).take() {
            on_exit(status);
        }
    }

    /// Commits the upgrade that started it (it upgrades in turn).
    fn commit(&self) {
        if let Some(on_commit) = lock(&self.on_commit).take() {
            on_commit();
        }
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// The machine the fakes run on: the file at the launch path and every process started.
#[derive(Debug, Default)]
struct World {
    binary: AtomicU32,
    next_pid: AtomicU32,
    fail_spawn: AtomicBool,
    script: Mutex<VecDeque<Then>>,
    spawned: Mutex<Vec<Arc<Proc>>>,
}

impl World {
    fn new(script: &[Then]) -> Arc<World> {
        let world = World {
            next_pid: AtomicU32::new(100),
            binary: AtomicU32::new(1),
            ..World::default()
        };
        lock(&world.script).extend(script.iter().copied());
        Arc::new(world)
    }

    fn spawned(&self) -> Vec<Arc<Proc>> {
        lock(&self.spawned).clone()
    }

    fn process(&self, pid: u32) -> Arc<Proc> {
        let all = self.spawned();
        let found = all.iter().find(|p| p.pid == pid);
        Arc::clone(found.unwrap_or_else(|| panic!("no process {pid}")))
    }

    /// Waits (a few ms at most: nothing here blocks) until `n` processes were started.
    async fn until_spawned(&self, n: usize) -> Arc<Proc> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(p) = self.spawned().get(n - 1) {
                    return Arc::clone(p);
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} processes never started"))
    }
}

#[derive(Debug)]
struct FakeSpawner(Arc<World>);

impl Spawner for FakeSpawner {
    fn spawn(
        &self,
        fds: Vec<Registered>,
        _generation: u64,
        _ancestors: &[ProcessName],
    ) -> Result<Box<dyn Successor>, Error> {
        let world = &self.0;
        if world.fail_spawn.load(Ordering::SeqCst) {
            return Err(Repr::Spawn {
                program: "/fake/app".into(),
                source: std::io::Error::other("no such binary"),
            }
            .into());
        }
        let then = lock(&world.script).pop_front().unwrap_or(Then::Ready);
        let proc = Arc::new(Proc {
            pid: world.next_pid.fetch_add(1, Ordering::SeqCst),
            binary: u64::from(world.binary.load(Ordering::SeqCst)),
            then,
            handed_over: AtomicBool::new(false),
            outcome: watch::Sender::new(None),
            killed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            on_exit: Mutex::new(None),
            on_commit: Mutex::new(None),
        });
        lock(&world.spawned).push(Arc::clone(&proc));
        let handed = fds.into_iter().map(|r| (r.key, r.file)).collect();
        Ok(Box::new(Fake {
            proc,
            handed,
            serving: false,
        }))
    }

    fn binary_now(&self) -> Option<FileId> {
        Some(FileId {
            dev: 0,
            ino: u64::from(self.0.binary.load(Ordering::SeqCst)),
        })
    }

    fn program(&self) -> &Path {
        Path::new("/fake/app")
    }

    fn for_program(&self, _program: std::path::PathBuf) -> Box<dyn Spawner> {
        Box::new(FakeSpawner(Arc::clone(&self.0)))
    }
}

#[derive(Debug)]
struct Fake {
    proc: Arc<Proc>,
    handed: Vec<(Key, FileId)>,
    serving: bool,
}

impl Successor for Fake {
    fn pid(&self) -> u32 {
        self.proc.pid
    }

    fn hand_over(&mut self) -> Result<(), Error> {
        self.proc.handed_over.store(true, Ordering::SeqCst);
        if self.proc.ended().is_none() {
            match self.proc.then {
                Then::Ready => self.proc.say_ready(),
                Then::Exit(code) => self.proc.die(ExitStatus::Code(code)),
                Then::Hang => {}
            }
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> BoxFuture<'_, Result<(), ExitStatus>> {
        let mut outcome = self.proc.outcome.subscribe();
        Box::pin(async move {
            match outcome.wait_for(Option::is_some).await {
                Ok(said) => said.unwrap_or(Err(ExitStatus::Unknown)),
                Err(_) => Err(ExitStatus::Unknown),
            }
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        self.proc.killed.store(true, Ordering::SeqCst);
        self.proc.die(ExitStatus::Signal(9));
        Box::pin(async {})
    }

    fn last_stderr(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async { vec!["fake stderr".to_owned()] })
    }

    fn ended(&mut self) -> Option<ExitStatus> {
        self.proc.ended()
    }

    fn is_stopped(&self) -> bool {
        self.proc.stopped.load(Ordering::SeqCst)
    }

    fn version(&self) -> u32 {
        crate::handoff::NEWEST_VERSION
    }

    fn binary(&self) -> Option<FileId> {
        Some(FileId {
            dev: 0,
            ino: self.proc.binary,
        })
    }

    fn handed(&self) -> &[(Key, FileId)] {
        &self.handed
    }

    fn discard(self: Box<Self>) {
        drop(self);
    }

    fn serve(mut self: Box<Self>, on_exit: OnExit, on_commit: OnCommit) -> Option<OwnedFd> {
        self.serving = true;
        *lock(&self.proc.on_exit) = Some(on_exit);
        *lock(&self.proc.on_commit) = Some(on_commit);
        None
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        // As the real one: a successor that does not serve is killed.
        if !self.serving && self.proc.ended().is_none() {
            self.proc.killed.store(true, Ordering::SeqCst);
            self.proc.die(ExitStatus::Signal(9));
        }
    }
}

fn upgrader(world: &Arc<World>, options: Options) -> Upgrader {
    let upgrader = Upgrader::assemble(
        options,
        Box::new(FakeSpawner(Arc::clone(world))),
        None,
        Start {
            generation: 1,
            ancestors: Vec::new(),
            prepared_pid_file: None,
        },
    );
    upgrader.ready().unwrap();
    upgrader
}

fn without_standby() -> Options {
    Options::new().standby(false)
}

fn with_standby() -> Options {
    Options::new().standby(true)
}

#[tokio::test]
async fn a_successor_that_exits_before_ready_fails_the_upgrade_and_the_next_one_succeeds() {
    let world = World::new(&[Then::Exit(1), Then::Ready]);
    let up = upgrader(&world, without_standby());
    let err = up.upgrade().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SuccessorExited, "{err:?}");
    assert_eq!(err.pid(), Some(100));
    assert_eq!(err.exit_status(), Some(ExitStatus::Code(1)));
    assert_eq!(err.last_stderr(), ["fake stderr"]);
    assert!(err.is_failed_upgrade() && !err.is_refusal());
    assert!(!up.is_exiting(), "the predecessor serves on");
    assert_eq!(up.last_successor_start(), None);
    assert_eq!(up.upgrade().await.unwrap(), 101);
    assert!(up.is_exiting());
    assert_eq!(
        up.last_successor_start(),
        Some(SuccessorStart::Fresh(FreshStart::NoStandby))
    );
    assert!(matches!(up.upgrade().await, Err(e) if e.kind() == ErrorKind::AlreadyUpgraded));
}

#[tokio::test]
async fn a_spawn_that_fails_is_reported_and_changes_nothing() {
    let world = World::new(&[]);
    world.fail_spawn.store(true, Ordering::SeqCst);
    let up = upgrader(&world, without_standby());
    let err = up.upgrade().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err:?}");
    assert!(!up.is_exiting());
    world.fail_spawn.store(false, Ordering::SeqCst);
    assert!(up.upgrade().await.is_ok());
}

#[tokio::test]
async fn a_successor_that_is_not_ready_in_time_is_killed() {
    let world = World::new(&[Then::Hang]);
    let up = upgrader(
        &world,
        without_standby().upgrade_timeout(Duration::from_millis(50)),
    );
    let err = up.upgrade().await.unwrap_err();
    assert_eq!(
        (err.kind(), err.pid()),
        (ErrorKind::Timeout, Some(100)),
        "{err:?}"
    );
    assert!(world.process(100).killed());
    assert!(!up.is_exiting());
}

#[tokio::test]
async fn a_second_upgrade_during_an_upgrade_is_refused_and_the_first_goes_on() {
    let world = World::new(&[Then::Hang]);
    let up = upgrader(&world, without_standby());
    let first = tokio::spawn({
        let up = up.clone();
        async move { up.upgrade().await }
    });
    let proc = world.until_spawned(1).await;
    assert!(matches!(up.upgrade().await, Err(e) if e.kind() == ErrorKind::InProgress));
    assert_eq!(world.spawned().len(), 1, "nothing more was started");
    proc.say_ready();
    assert_eq!(first.await.unwrap().unwrap(), 100);
    assert!(up.is_exiting());
}

#[tokio::test]
async fn a_stop_during_an_upgrade_kills_the_successor_and_refuses_later_ones() {
    let world = World::new(&[Then::Hang]);
    let up = upgrader(&world, without_standby());
    let upgrade = tokio::spawn({
        let up = up.clone();
        async move { up.upgrade().await }
    });
    let proc = world.until_spawned(1).await;
    up.stop();
    assert!(matches!(upgrade.await.unwrap(), Err(e) if e.kind() == ErrorKind::Terminating));
    assert!(proc.killed());
    assert!(up.is_exiting());
    assert!(matches!(up.upgrade().await, Err(e) if e.kind() == ErrorKind::Terminating));
}

#[tokio::test]
async fn a_successor_that_crashes_during_the_drain_is_reported_and_service_can_be_taken_back() {
    let world = World::new(&[Then::Ready, Then::Ready]);
    let up = upgrader(&world, without_standby());
    let exited = up.successor_exited();
    assert!(matches!(up.resume(), Err(e) if e.kind() == ErrorKind::NotResumable));
    let pid = up.upgrade().await.unwrap();
    assert!(up.is_exiting());
    world.process(pid).crash(ExitStatus::Signal(9));
    let status = tokio::time::timeout(Duration::from_secs(5), exited)
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Signal(9));
    up.resume().unwrap();
    assert!(!up.is_exiting(), "serving again");
    assert_eq!(up.upgrade().await.unwrap(), pid + 1);
}

#[tokio::test]
async fn a_current_standby_takes_over_without_a_new_start() {
    let world = World::new(&[]);
    let up = upgrader(&world, with_standby());
    let standby = up.refresh_standby().unwrap().unwrap();
    assert_eq!(
        up.refresh_standby().unwrap(),
        Some(standby),
        "kept, not replaced"
    );
    assert_eq!(up.upgrade().await.unwrap(), standby);
    assert_eq!(up.last_successor_start(), Some(SuccessorStart::Standby));
    assert_eq!(world.spawned().len(), 1);
}

#[tokio::test]
async fn a_standby_that_died_before_the_upgrade_gives_way_to_a_fresh_start() {
    let world = World::new(&[]);
    let up = upgrader(&world, with_standby());
    let standby = up.refresh_standby().unwrap().unwrap();
    world.process(standby).die(ExitStatus::Code(1));
    let pid = up.upgrade().await.unwrap();
    assert_ne!(pid, standby);
    assert_eq!(
        up.last_successor_start(),
        Some(SuccessorStart::Fresh(FreshStart::StandbyExited))
    );
}

#[tokio::test]
async fn a_standby_that_dies_after_the_handoff_gives_way_to_a_fresh_start() {
    let world = World::new(&[Then::Exit(1), Then::Ready]);
    let up = upgrader(&world, with_standby());
    let standby = up.refresh_standby().unwrap().unwrap();
    let pid = up.upgrade().await.unwrap();
    assert_eq!(pid, standby + 1);
    assert!(world.process(standby).handed_over.load(Ordering::SeqCst));
    assert_eq!(
        up.last_successor_start(),
        Some(SuccessorStart::Fresh(FreshStart::StandbyExited))
    );
}

#[tokio::test]
async fn a_stale_standby_is_let_go_and_says_why() {
    type MakeStale = fn(&World, &Upgrader, &Proc);
    let stale: [(&str, MakeStale, FreshStart); 3] = [
        (
            "new binary",
            |world, _, _| {
                world.binary.fetch_add(1, Ordering::SeqCst);
            },
            FreshStart::NewBinary,
        ),
        (
            "sockets changed",
            |_, up, _| {
                up.fds().tcp_listener("127.0.0.1:0").unwrap();
            },
            FreshStart::SocketsChanged,
        ),
        (
            "stopped",
            |_, _, proc| proc.stopped.store(true, Ordering::SeqCst),
            FreshStart::StandbyStopped,
        ),
    ];
    for (case, make_stale, why) in stale {
        let world = World::new(&[]);
        let up = upgrader(&world, with_standby());
        let standby = up.refresh_standby().unwrap().unwrap();
        make_stale(&world, &up, &world.process(standby));
        let pid = up.upgrade().await.unwrap();
        assert_ne!(pid, standby, "{case}");
        assert!(world.process(standby).killed(), "{case}: let go");
        assert!(
            !world.process(standby).handed_over.load(Ordering::SeqCst),
            "{case}: never handed over"
        );
        assert_eq!(
            up.last_successor_start(),
            Some(SuccessorStart::Fresh(why)),
            "{case}"
        );
    }
}

#[tokio::test]
async fn a_standby_that_keeps_exiting_is_not_restarted_at_once() {
    let world = World::new(&[]);
    let up = upgrader(&world, with_standby());
    let first = up.refresh_standby().unwrap().unwrap();
    world.process(first).die(ExitStatus::Code(1));
    assert_eq!(up.refresh_standby().unwrap(), None, "backing off");
    let why = up.standby_trouble().unwrap();
    assert!(why.contains("exited"), "{why}");
    assert_eq!(world.spawned().len(), 1);
    // A new binary is tried at once.
    world.binary.fetch_add(1, Ordering::SeqCst);
    assert!(up.refresh_standby().unwrap().is_some());
    assert_eq!(up.standby_trouble(), None);
}

#[tokio::test]
async fn a_stop_lets_the_standby_go() {
    let world = World::new(&[]);
    let up = upgrader(&world, with_standby());
    let standby = up.refresh_standby().unwrap().unwrap();
    up.stop();
    assert!(world.process(standby).killed());
    assert_eq!(up.refresh_standby().unwrap(), None);
}

#[tokio::test]
async fn no_upgrade_before_ready() {
    let world = World::new(&[]);
    let up = Upgrader::assemble(
        without_standby(),
        Box::new(FakeSpawner(Arc::clone(&world))),
        None,
        Start {
            generation: 1,
            ancestors: Vec::new(),
            prepared_pid_file: None,
        },
    );
    assert!(matches!(up.upgrade().await, Err(e) if e.kind() == ErrorKind::NotReady));
    assert!(world.spawned().is_empty());
}

#[tokio::test]
async fn a_successor_that_commits_is_reported_and_a_resume_forgets_it() {
    let world = World::new(&[Then::Ready, Then::Ready]);
    let up = upgrader(&world, without_standby());
    let pid = up.upgrade().await.unwrap();
    let committed = up.successor_committed();
    world.process(pid).commit();
    tokio::time::timeout(Duration::from_secs(5), committed)
        .await
        .unwrap();
    // A crash after that is still reported (the Bootstrap decides what to do with it), and
    // taking service back starts a fresh verdict.
    world.process(pid).crash(ExitStatus::Signal(9));
    up.resume().unwrap();
    let again = up.successor_committed();
    let pid = up.upgrade().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(20), again)
            .await
            .is_err(),
        "a new successor has not committed"
    );
    world.process(pid).commit();
}
