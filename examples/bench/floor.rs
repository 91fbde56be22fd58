//! What any tokio server pays for its listeners, without flip: the floor under the cost of an
//! upgrade with many sockets (`--floor N`).
//!
//! Each round binds N unix sockets (not timed), builds a runtime like the `http` example's
//! (multi-thread, one worker per CPU), and times what the new process of an upgrade must do for
//! each socket once it has it, in three ways: register it with tokio only (one `epoll_ctl`
//! each: what no server on tokio avoids), register it and spawn the task that accepts on it (as
//! a plain server's `main` does), and duplicate it first (as flip's registry does, keeping one
//! descriptor of its own).

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::report::{ms, percentile};

const ROUNDS: usize = 30;

pub fn floor(listeners: usize) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("flip-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = rounds(&dir, listeners);
    let _ = std::fs::remove_dir_all(&dir);
    let mut figures = result?;
    let mut line = format!("floor: {listeners} listeners, {ROUNDS} rounds, p50 / p99:");
    for (way, took) in WAYS.iter().zip(&mut figures) {
        took.sort();
        line += &format!(
            " {way} {} / {};",
            ms(percentile(took, 0.5)),
            ms(percentile(took, 0.99))
        );
    }
    println!("{}", line.trim_end_matches(';'));
    Ok(())
}

const WAYS: [&str; 3] = ["register", "register + spawn", "dup + register + spawn"];

fn rounds(dir: &std::path::Path, n: usize) -> Result<[Vec<Duration>; 3], String> {
    let mut figures: [Vec<Duration>; 3] = Default::default();
    for round in 0..ROUNDS {
        for (way, took_by_way) in figures.iter_mut().enumerate() {
            let (spawn, dup) = (way >= 1, way == 2);
            let sockets = (0..n)
                .map(|i| {
                    let path = dir.join(format!("{round}-{way}-{i}.sock"));
                    let l = UnixListener::bind(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let _ = std::fs::remove_file(&path);
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok(l)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let took = runtime.block_on(async move {
                let mut kept = Vec::with_capacity(n);
                let mut registered = Vec::with_capacity(n);
                let started = Instant::now();
                for l in sockets {
                    let l = if dup {
                        let copy = l.try_clone().map_err(|e| e.to_string())?;
                        kept.push(l);
                        copy
                    } else {
                        l
                    };
                    let l = tokio::net::UnixListener::from_std(l).map_err(|e| e.to_string())?;
                    if spawn {
                        tokio::spawn(async move { while l.accept().await.is_ok() {} });
                    } else {
                        registered.push(l);
                    }
                }
                let took = started.elapsed();
                drop((kept, registered)); // closing is not part of the cost
                Ok::<_, String>(took)
            })?;
            runtime.shutdown_background();
            took_by_way.push(took);
        }
    }
    Ok(figures)
}
