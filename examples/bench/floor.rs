//! What any tokio server pays for its listeners, without flip: the floor under the cost of an
//! upgrade with many sockets (`--floor N`).
//!
//! Each round binds N unix sockets (not timed), builds a runtime like the `http` example's
//! (multi-thread, one worker per CPU), and times what the new process of an upgrade must do for
//! each socket once it has it: register it with tokio and spawn the task that accepts on it,
//! with and without duplicating the descriptor first (the registry hands out a duplicate).

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::report::{ms, percentile};

const ROUNDS: usize = 30;

pub fn floor(listeners: usize) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("flip-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = rounds(&dir, listeners);
    let _ = std::fs::remove_dir_all(&dir);
    let (mut plain, mut with_dup) = result?;
    plain.sort();
    with_dup.sort();
    println!(
        "floor: {listeners} listeners, {ROUNDS} rounds: register with tokio and spawn an accept task each: p50 {} p99 {}; with a dup first: p50 {} p99 {}",
        ms(percentile(&plain, 0.5)),
        ms(percentile(&plain, 0.99)),
        ms(percentile(&with_dup, 0.5)),
        ms(percentile(&with_dup, 0.99)),
    );
    Ok(())
}

fn rounds(dir: &std::path::Path, n: usize) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let (mut plain, mut with_dup) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for dup in [false, true] {
            let sockets = (0..n)
                .map(|i| {
                    let path = dir.join(format!("{round}-{dup}-{i}.sock"));
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
                let started = Instant::now();
                for l in sockets {
                    let l = if dup {
                        let copy = l.try_clone().map_err(|e| e.to_string())?;
                        drop(l);
                        copy
                    } else {
                        l
                    };
                    let l = tokio::net::UnixListener::from_std(l).map_err(|e| e.to_string())?;
                    tokio::spawn(async move { while l.accept().await.is_ok() {} });
                }
                Ok::<_, String>(started.elapsed())
            })?;
            runtime.shutdown_background();
            if dup { &mut with_dup } else { &mut plain }.push(took);
        }
    }
    Ok((plain, with_dup))
}
