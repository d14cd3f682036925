//! A sink on a full disk: a real 256 KiB tmpfs, filled, then freed. The
//! delivery fails, leaves nothing behind, is retried with backoff, and every
//! result arrives exactly once once there is room again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orchestrator::clock::Clock;
use orchestrator::sim::SimConfig;
use orchestrator::store::RunState;

use crate::support::harness::{Harness, harness, t0};

/// A tmpfs of `size` mounted on `at`, unmounted when dropped: by this
/// process when it runs as root, else through `sudo -n` when that works.
struct Mount {
    at: PathBuf,
    sudo: bool,
}

/// The ids this process runs as, for the mount's owner.
fn ids() -> (String, String) {
    let id = |flag: &str| {
        let output = Command::new("id").arg(flag).output().expect("id runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    (id("-u"), id("-g"))
}

impl Mount {
    /// `None` (the test skipped, and saying so) when this process may not mount.
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let (uid, gid) = ids();
        let options = format!("size={size},uid={uid},gid={gid},mode=0755");
        let mount = |sudo: bool| {
            let mut command = if sudo { Command::new("sudo") } else { Command::new("mount") };
            if sudo {
                command.args(["-n", "mount"]);
            }
            command.args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(at).output()
        };
        let root = uid == "0";
        match mount(!root) {
            Ok(output) if output.status.success() => Some(Mount { at: at.to_owned(), sudo: !root }),
            Ok(output) => {
                let why = String::from_utf8_lossy(&output.stderr).trim().to_owned();
                crate::support::skip(&format!(
                    "the full-disk test mounts a 256 KiB tmpfs, which needs root or sudo: {why}"
                ));
                None
            }
            Err(error) => {
                crate::support::skip(&format!("the full-disk test cannot run mount: {error}"));
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mut command = if self.sudo { Command::new("sudo") } else { Command::new("umount") };
        if self.sudo {
            command.args(["-n", "umount"]);
        }
        let _ = command.arg(&self.at).status();
    }
}

/// Writes zeros into `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_delivery_then_a_freed_disk_gets_every_result_once() {
    let h = harness("realtime", "1h", 120, SimConfig::default()).await;
    let out = h.dir.path().join("out");
    let Some(_mount) = Mount::tmpfs(&out, "256k") else { return };
    let filler = out.join("filler");
    fill(&filler);
    let run = h.engine.start_run(&h.job, t0(), t0() + chrono::Duration::hours(1)).await.unwrap();
    let _presence = h.clock.enter();
    // Tick as the daemon does until the store says delivery is failing and
    // every answer has arrived (they keep arriving while the sink fails: the
    // first delivery may come after the first few on a loaded machine).
    let failing =
        "SELECT COUNT(*) FROM runs WHERE delivery_failing_since IS NOT NULL AND delivery_error LIKE '%No space left%'";
    let succeeded = "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'";
    for _ in 0..1000 {
        let wake = h.engine.tick(None).await.unwrap();
        if h.count(failing) == 1 && h.count(succeeded) == 120 {
            break;
        }
        h.clock.sleep(orchestrator::engine::until(h.clock.now(), wake)).await;
    }
    assert_eq!(h.count(failing), 1, "the delivery failed on the full disk");
    assert_eq!(h.count(succeeded), 120, "the results are stored");
    assert_eq!(h.count("SELECT COUNT(*) FROM deliveries"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'delivery_failed'"), 1);
    assert_eq!(entries(&out), ["bulk.jsonl", "filler"], "no temporary copy holds the space");
    assert_eq!(std::fs::metadata(out.join("bulk.jsonl")).unwrap().len(), 0, "no half-written line either");
    // More failed tries while the disk stays full: one event, the wait grows.
    let failed_at = h.clock.now();
    for _ in 0..4 {
        let wake = h.engine.tick(None).await.unwrap();
        h.clock.sleep(orchestrator::engine::until(h.clock.now(), wake)).await;
    }
    assert!(h.clock.now() - failed_at >= chrono::Duration::seconds(7), "backoff: 1 s, 2 s, 4 s, ...");
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'delivery_failed'"), 1, "one event per streak");
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE state = 'open'"), 1, "the run waits, it is not failed");
    std::fs::remove_file(&filler).unwrap();
    drop(_presence);
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), h.engine.drive(run.id, async |_| Ok(()))).await.unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(120);
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'delivery_recovered'"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE delivery_failing_since IS NOT NULL"), 0);
    assert_eq!(entries(&out), ["bulk.jsonl"]);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_writes_holds_the_calls_it_paid_for_instead_of_paying_again() {
    let h = harness("realtime", "1h", 20, SimConfig::default()).await;
    // The state database takes no record of a call (as a full disk would).
    h.db()
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON attempts BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;")
        .unwrap();
    let run = h.engine.start_run(&h.job, t0(), t0() + chrono::Duration::hours(1)).await.unwrap();
    let engine = std::sync::Arc::clone(&h.engine);
    let driven = tokio::spawn(async move { engine.drive(run.id, async |_| Ok(())).await });
    // Ten minutes of the clock with the store refusing: the lane holds what it paid for.
    let start = std::time::Instant::now();
    while h.clock.now() < t0() + chrono::Duration::minutes(10) {
        assert!(start.elapsed() < Duration::from_secs(60), "the clock did not move: {:?}", h.clock);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let paid = h.sim.stats().messages_calls;
    assert_eq!(paid, 8, "one call per worker of the window, then nothing new while nothing can be recorded");
    h.db().execute_batch("DROP TRIGGER refuse;").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), driven).await.unwrap().unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(20);
    assert_eq!(h.sim.stats().messages_calls, 20, "every request paid for exactly once");
    assert_eq!(h.count(Harness::SYNC_CALLS), 20, "and every paid call recorded");
    h.sim.shutdown().await;
}
