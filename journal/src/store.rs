//! The sled-backed implementation.
//!
//! Layout: one sled database in `<dir>/db`, trees `steps` (StepId BE → record), `prov`
//! (vmid BE → provenance), `nonces` (nonce → claim), `audit` (seq BE → entry), `susp`
//! (vmid or "host" → suspension), `jobs` (nonce → signed job record), `meta` (epoch, clock
//! high-water, gc horizon, desired revision and last-known-good document, trust, learned task
//! durations), `copies`
//! (copy id → safety-copy manifest, see `copies`) and `verify` (`ct/<vmid>` → verify window,
//! in `store/verify.rs`). Every value is JSON wrapped as `{"v":1,"r":...}` so a future format
//! is detected, never misread.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    AuditEntry, CheckReport, CreateEnd, DetachRecord, JobRecord, JournalError, NewStep, NonceClaim,
    NonceError, Outcome, Phase, Provenance, Retention, StepId, StepRecord, Suspension, SyncTiming,
    TaskDuration, TrustRecord,
};

pub mod copies;
mod lock;
mod verify;

const VERSION: u32 = 1;
/// Audit entries kept (oldest dropped first).
const AUDIT_RETENTION: usize = 100_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<T> {
    v: u32,
    r: T,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    steps: sled::Tree,
    prov: sled::Tree,
    nonces: sled::Tree,
    audit: sled::Tree,
    susp: sled::Tree,
    /// Signed jobs by nonce (`JobRecord`).
    jobs: sled::Tree,
    meta: sled::Tree,
    /// Held for the process lifetime: the exclusive lock on `<dir>/drover.lock`.
    _lock: Option<lock::DirLock>,
    /// A read-only snapshot lives in this temporary directory.
    _snapshot: Option<tempfile_dir::TempDir>,
    /// Serializes nonce consumption so check-then-insert is atomic across threads.
    nonce_lock: std::sync::Mutex<()>,
    epoch: String,
    /// Audit entries held; sled's `len()` walks the whole tree, too slow for every append.
    audit_len: AtomicUsize,
    /// `done` calls since the last automatic compaction; persisted in `meta`, so `run --once`
    /// and restarted daemons still compact.
    done_since_compact: AtomicU64,
    /// Ids of the records not yet done, built from one scan on first use and kept up to date
    /// by `intent` and `done`: a lane turn asks for in-flight steps, and decoding every kept
    /// record each time made turns slower as the journal grew.
    in_flight_ids: std::sync::Mutex<Option<std::collections::BTreeSet<u64>>>,
    /// Step records decoded so far (for tests and diagnostics of the index above).
    decoded: AtomicU64,
    /// The next step id. Not sled's `generate_id`, which jumps by a million after every
    /// restart; ids are what operators read in `drover journal`, so they stay dense.
    next_step: AtomicU64,
    retention: RwLock<Retention>,
    /// Group commit: concurrent writers share one flush + fdatasync (see `durable`).
    commit: GroupCommit,
    /// Told how long each durable write took (the agent feeds a metric from it).
    sync_observer: RwLock<Option<SyncObserver>>,
    /// Every wait for the disk runs inside it (see [`Journal::wait_for_disk_in`]).
    disk_section: RwLock<Option<DiskSection>>,
}

type SyncObserver = Arc<dyn Fn(SyncTiming) + Send + Sync>;
type DiskSection = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// The journal handle: `Clone + Send + Sync`.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

mod tempfile_dir {
    //! A tiny owned temporary directory (removed on drop), to avoid a runtime dependency.
    use std::path::{Path, PathBuf};
    pub struct TempDir(PathBuf);
    impl TempDir {
        pub fn new(prefix: &str) -> std::io::Result<TempDir> {
            let base = std::env::temp_dir();
            sweep_dead(&base, prefix);
            for i in 0..1000u32 {
                let p = base.join(format!("{prefix}-{}-{i}", std::process::id()));
                if std::fs::create_dir(&p).is_ok() {
                    return Ok(TempDir(p));
                }
            }
            Err(std::io::Error::other("cannot create a temporary directory"))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Removes `<prefix>-<pid>-<n>` directories of processes that no longer exist: a process
    /// killed while it held a snapshot (a `drover status` killed by SIGKILL, a timeout) never
    /// ran the drop above, and each left copy is the size of the journal. Only where `/proc`
    /// tells which processes are alive, and only copies untouched for an hour.
    const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

    fn sweep_dead(base: &Path, prefix: &str) {
        let proc = Path::new("/proc");
        if !proc.join("self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.strip_prefix('-'))
                .and_then(|n| n.split_once('-'))
                .and_then(|(pid, i)| i.parse::<u32>().ok().and(pid.parse::<u32>().ok()))
            else {
                continue;
            };
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            // Old enough that no process in another pid namespace sharing this /tmp (where
            // /proc does not show it) can still be reading it: snapshots are short-lived.
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_AFTER));
            if is_dir && stale && !proc.join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn io(dir: &Path, context: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError::Io {
        dir: dir.to_path_buf(),
        context: context.to_string(),
        message: e.to_string(),
    }
}

fn sled_err(dir: &Path, e: sled::Error) -> JournalError {
    match e {
        sled::Error::Corruption { .. } => JournalError::Corrupt {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        },
        other => io(dir, "sled", other),
    }
}

/// sled's page cache. Its default (1 GiB) lets every page ever read stay in memory: on a host
/// of thousands of guests that was tens of MiB of a daemon that should stay small. The
/// journal's hot set (records in flight, the newest steps, provenance being looked up) fits
/// easily; a page that fell out is read back from the page cache of the kernel.
const CACHE_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;

/// Opens sled, turning a panic on damaged files into an error.
fn open_db(dir: &Path, db_path: &Path) -> Result<sled::Db, JournalError> {
    // sled locks its own file too. After a `Journal` is dropped, sled's flusher thread can hold
    // that lock for a moment longer; `drover.lock` (taken first) already proves no other
    // process has the store, so a busy sled lock here is that thread and is waited out.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let r = loop {
        let p = db_path.to_path_buf();
        let r = std::panic::catch_unwind(move || {
            sled::Config::new()
                .path(p)
                .cache_capacity(CACHE_CAPACITY_BYTES)
                .open()
        });
        match &r {
            // sled reports it as ErrorKind::Other with this text.
            Ok(Err(sled::Error::Io(e)))
                if e.to_string().starts_with("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => break r,
        }
    };
    match r {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(match e {
            sled::Error::Io(ioe) if ioe.kind() != std::io::ErrorKind::InvalidData => {
                io(dir, "opening the database", ioe)
            }
            other => JournalError::Corrupt {
                dir: dir.to_path_buf(),
                detail: other.to_string(),
            },
        }),
        Err(_) => Err(JournalError::Corrupt {
            dir: dir.to_path_buf(),
            detail: "the database files could not be read (sled panicked while opening them)"
                .into(),
        }),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &t)?;
        } else {
            std::fs::copy(e.path(), t)?;
        }
    }
    Ok(())
}

/// The state of the group commit in `Journal::durable`.
#[derive(Default)]
struct GroupCommit {
    state: std::sync::Mutex<CommitState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct CommitState {
    /// Writes registered so far (each `durable` call counts one, after its write).
    written: u64,
    /// Every write up to this count is on stable storage.
    synced: u64,
    /// A sync runs now.
    syncing: bool,
}

impl GroupCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer running a sync: on drop (also while unwinding) the sync is over, what it
/// covered is recorded, and the waiters are woken.
struct SyncLeader<'a> {
    commit: &'a GroupCommit,
    /// Set when the sync succeeded: every write up to this count is durable.
    covered: Option<u64>,
}

impl Drop for SyncLeader<'_> {
    fn drop(&mut self) {
        let mut state = self.commit.lock();
        state.syncing = false;
        if let Some(covers) = self.covered {
            state.synced = state.synced.max(covers);
        }
        self.commit.done.notify_all();
    }
}

impl Journal {
    /// Opens (or creates) the store in `dir`, taking an exclusive lock (fails fast with
    /// `Locked`).
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "creating the directory", e))?;
        let lock = lock::take(dir)?;
        let db = open_db(dir, &dir.join("db"))?;
        Journal::from_db(dir, db, Some(lock), None)
    }

    /// Opens for reading while a daemon may hold the lock: a consistent copy of the files is
    /// opened in a temporary directory; the real store is never written.
    pub fn open_read_only(dir: &Path) -> Result<Journal, JournalError> {
        let src = dir.join("db");
        if !src.exists() {
            // No store yet: an empty, throwaway one answers every question correctly.
            let tmp = tempfile_dir::TempDir::new("drover-journal-ro")
                .map_err(|e| io(dir, "creating a snapshot", e))?;
            let db = open_db(dir, &tmp.path().join("db"))?;
            return Journal::from_db(dir, db, None, Some(tmp));
        }
        let tmp = tempfile_dir::TempDir::new("drover-journal-ro")
            .map_err(|e| io(dir, "creating a snapshot", e))?;
        copy_dir(&src, &tmp.path().join("db")).map_err(|e| io(dir, "copying a snapshot", e))?;
        let db = open_db(dir, &tmp.path().join("db"))?;
        Journal::from_db(dir, db, None, Some(tmp))
    }

    fn from_db(
        dir: &Path,
        db: sled::Db,
        lock: Option<lock::DirLock>,
        snapshot: Option<tempfile_dir::TempDir>,
    ) -> Result<Journal, JournalError> {
        let t = |name: &str| db.open_tree(name).map_err(|e| sled_err(dir, e));
        let meta = t("meta")?;
        let epoch = match meta.get("epoch").map_err(|e| sled_err(dir, e))? {
            Some(v) => String::from_utf8(v.to_vec()).map_err(|_| JournalError::Corrupt {
                dir: dir.to_path_buf(),
                detail: "the state epoch is not text".into(),
            })?,
            None => {
                let e: String = (0..8)
                    .map(|_| format!("{:02x}", rand::random::<u8>()))
                    .collect();
                meta.insert("epoch", e.as_bytes())
                    .map_err(|e| sled_err(dir, e))?;
                e
            }
        };
        let audit_len = audit_tree_len(dir, &t("audit")?)?;
        let next_step = next_step_id(dir, &t("steps")?, &meta)?;
        let done_since_compact = match meta.get(DONE_SINCE_COMPACT).map_err(|e| sled_err(dir, e))? {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| JournalError::Corrupt {
                    dir: dir.to_path_buf(),
                    detail: format!("the compaction counter is {} bytes, not 8", v.len()),
                })?,
            None => 0,
        };
        let j = Journal {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                steps: t("steps")?,
                prov: t("prov")?,
                nonces: t("nonces")?,
                audit: t("audit")?,
                susp: t("susp")?,
                jobs: t("jobs")?,
                meta,
                db,
                _lock: lock,
                _snapshot: snapshot,
                nonce_lock: std::sync::Mutex::new(()),
                epoch,
                audit_len: AtomicUsize::new(audit_len),
                done_since_compact: AtomicU64::new(done_since_compact),
                in_flight_ids: std::sync::Mutex::new(None),
                decoded: AtomicU64::new(0),
                next_step: AtomicU64::new(next_step),
                retention: RwLock::new(Retention::default()),
                sync_observer: RwLock::new(None),
                disk_section: RwLock::new(None),
                commit: GroupCommit::default(),
            }),
        };
        j.durable()?;
        Ok(j)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Makes every write so far reach stable storage.
    ///
    /// sled 0.34's `flush` ends in `sync_file_range`, which writes dirty pages but does not
    /// flush the device's write cache (reconcile-anchors.md §6.1): after a power loss an
    /// acknowledged step could be gone. So after the flush, every file of the database is
    /// `fdatasync`ed as well.
    ///
    /// Writers that arrive while a sync runs share the next one (group commit): a write is
    /// acknowledged only by a sync that *started* after it was in sled's memory, so sharing
    /// never weakens the promise, and parallel lanes on a slow disk wait for one sync instead
    /// of queueing for one each. A failed sync fails its own caller; every waiter it would
    /// have covered runs a sync of its own and gets that one's answer.
    fn durable(&self) -> Result<(), JournalError> {
        let section = self
            .inner
            .disk_section
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match section {
            Some(run) => {
                let mut answer = None;
                run(&mut || answer = Some(self.durable_here()));
                // A section that did not run its work still gets it done, here.
                answer.unwrap_or_else(|| self.durable_here())
            }
            None => self.durable_here(),
        }
    }

    /// `durable` on the calling thread.
    fn durable_here(&self) -> Result<(), JournalError> {
        let commit = &self.inner.commit;
        let mut state = commit.lock();
        state.written += 1;
        let mine = state.written;
        loop {
            if state.synced >= mine {
                return Ok(());
            }
            if !state.syncing {
                state.syncing = true;
                let covers = state.written;
                drop(state);
                // Released even if the sync panics (sled, or the observer): a `syncing` left
                // set would make every later writer wait forever.
                let mut leader = SyncLeader {
                    commit,
                    covered: None,
                };
                let r = self.flush_and_sync();
                if r.is_ok() {
                    leader.covered = Some(covers);
                }
                drop(leader);
                return r;
            }
            state = commit.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// One flush of sled and one `fdatasync` of each of its files.
    fn flush_and_sync(&self) -> Result<(), JournalError> {
        let dir = &self.inner.dir;
        let t0 = Instant::now();
        self.inner.db.flush().map_err(|e| sled_err(dir, e))?;
        let flush = t0.elapsed();
        if self.inner._snapshot.is_some() {
            return Ok(());
        }
        let t1 = Instant::now();
        let db_dir = dir.join("db");
        let entries = std::fs::read_dir(&db_dir).map_err(|e| io(dir, "listing the database", e))?;
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                File::open(e.path())
                    .and_then(|f| f.sync_data())
                    .map_err(|e| io(dir, "fdatasync", e))?;
            }
        }
        let fdatasync = t1.elapsed();
        let observer = self
            .inner
            .sync_observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(observe) = observer {
            observe(SyncTiming { flush, fdatasync });
        }
        Ok(())
    }

    /// Runs every wait for the disk (a write's sync, or the wait for another writer's sync
    /// that covers it) inside `section`, which must call the function it is given once. The
    /// agent passes tokio's `block_in_place`: a durable write made on a runtime worker then
    /// hands the worker's other tasks to another thread while the disk is slow, instead of
    /// stopping them. The journal itself knows no runtime.
    pub fn wait_for_disk_in(&self, section: impl Fn(&mut dyn FnMut()) + Send + Sync + 'static) {
        *self
            .inner
            .disk_section
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(section));
    }

    /// Registers a function told the timing of every durable write (for a metric).
    pub fn on_sync(&self, observer: impl Fn(SyncTiming) + Send + Sync + 'static) {
        *self
            .inner
            .sync_observer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(observer));
    }

    /// Replaces the retention policy applied by the automatic compaction.
    pub fn set_retention(&self, retention: Retention) {
        *self
            .inner
            .retention
            .write()
            .unwrap_or_else(|p| p.into_inner()) = retention;
    }

    fn retention(&self) -> Retention {
        *self
            .inner
            .retention
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn enc<T: Serialize>(&self, r: &T) -> Result<Vec<u8>, JournalError> {
        serde_json::to_vec(&Envelope { v: VERSION, r })
            .map_err(|e| io(&self.inner.dir, "encoding", e))
    }

    fn dec<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, JournalError> {
        decode(&self.inner.dir, key, bytes)
    }

    fn put(
        &self,
        tree: &sled::Tree,
        key: impl AsRef<[u8]>,
        value: Vec<u8>,
    ) -> Result<(), JournalError> {
        tree.insert(key, value)
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        self.durable()
    }

    // ---------------------------------------------------------------- step records

    /// The intent of a step that starts its guest (`start`, `reboot`), journaled together
    /// with the guest's `started` mark: after a crash behind the call, cleaning the guest up
    /// must not count as benign. One sync covers both (the mark is written first), where two
    /// calls cost two.
    pub fn intent_starting(&self, step: NewStep) -> Result<StepId, JournalError> {
        if let Some(mut p) = self.provenance(step.vmid)?
            && !p.started
        {
            p.started = true;
            self.inner
                .prov
                .insert(p.vmid.to_be_bytes(), self.enc(&p)?)
                .map_err(|e| sled_err(&self.inner.dir, e))?;
        }
        self.intent(step)
    }

    pub fn intent(&self, step: NewStep) -> Result<StepId, JournalError> {
        // Unique across concurrent lanes; the record itself makes the id durable.
        let id = StepId(self.inner.next_step.fetch_add(1, Ordering::Relaxed));
        let rec = StepRecord {
            id,
            step,
            phase: Phase::Intent,
            intent_at_ms: now_ms(),
            submitted_at_ms: None,
            done_at_ms: None,
        };
        self.put(&self.inner.steps, id.0.to_be_bytes(), self.enc(&rec)?)?;
        if let Some(ids) = self.in_flight_index().as_mut() {
            ids.insert(id.0);
        }
        Ok(id)
    }

    fn in_flight_index(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<std::collections::BTreeSet<u64>>> {
        self.inner
            .in_flight_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: StepId, f: impl FnOnce(&mut StepRecord)) -> Result<(), JournalError> {
        self.update_unsynced(id, f)?;
        self.durable()
    }

    /// `update` without the sync; returns the record as written.
    fn update_unsynced(
        &self,
        id: StepId,
        f: impl FnOnce(&mut StepRecord),
    ) -> Result<StepRecord, JournalError> {
        let mut rec = self.get(id)?.ok_or_else(|| JournalError::NoSuchStep {
            dir: self.inner.dir.clone(),
            id,
        })?;
        f(&mut rec);
        self.inner
            .steps
            .insert(id.0.to_be_bytes(), self.enc(&rec)?)
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        Ok(rec)
    }

    /// Makes every write so far durable (the writes that return before their sync, such as
    /// `done_deferred`, rely on it or on any later durable write).
    pub fn sync(&self) -> Result<(), JournalError> {
        self.durable()
    }

    pub fn submitted(&self, id: StepId, upid: &str) -> Result<(), JournalError> {
        self.update(id, |r| {
            r.phase = Phase::Submitted {
                upid: upid.to_string(),
            };
            r.submitted_at_ms = Some(now_ms());
        })
    }

    /// Closes a record. Every `Retention::every` closes, old done records are compacted, so a
    /// host that runs for years keeps a bounded store without anyone scheduling it.
    pub fn done(&self, id: StepId, outcome: Outcome) -> Result<(), JournalError> {
        self.close(id, outcome)?;
        self.durable()
    }

    /// Closes a record whose task's UPID is journaled, and returns before the close is
    /// durable: the caller owes a `sync` (any later durable write also covers it, sled keeps
    /// the order of writes). Losing such a close in a crash loses nothing: the record is
    /// still `submitted` with its UPID, so recovery re-attaches to the task, which has ended,
    /// and closes it from the task's status; no call is sent again. Returns whether a sync is
    /// owed: a record without a UPID (a synchronous call, whose close recovery could not
    /// rebuild) is synced here, like `done`.
    pub fn done_deferred(&self, id: StepId, outcome: Outcome) -> Result<bool, JournalError> {
        let rec = self.close(id, outcome)?;
        if rec.upid().is_some() {
            return Ok(true);
        }
        self.durable()?;
        Ok(false)
    }

    /// The close of `done` and `done_deferred`, without the sync.
    fn close(&self, id: StepId, outcome: Outcome) -> Result<StepRecord, JournalError> {
        let retention = self.retention();
        let n = self
            .inner
            .done_since_compact
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let compact_now = retention.every > 0 && n >= retention.every;
        // The counter only schedules compaction; it becomes durable with the record below.
        let counted = if compact_now { 0 } else { n };
        self.inner
            .meta
            .insert(DONE_SINCE_COMPACT, &counted.to_be_bytes())
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        let rec = self.update_unsynced(id, |r| {
            let upid = r.upid().map(str::to_string);
            r.phase = Phase::Done { upid, outcome };
            r.done_at_ms = Some(now_ms());
        })?;
        if let Some(ids) = self.in_flight_index().as_mut() {
            ids.remove(&id.0);
        }
        if compact_now {
            self.inner.done_since_compact.store(0, Ordering::Relaxed);
            // A failed compaction only delays retention; the close is synced by the caller.
            if let Err(e) = self.compact(retention.per_guest, retention.total) {
                tracing::warn!("journal compaction failed (will retry later): {e}");
            }
        }
        Ok(rec)
    }

    pub fn get(&self, id: StepId) -> Result<Option<StepRecord>, JournalError> {
        match self
            .inner
            .steps
            .get(id.0.to_be_bytes())
            .map_err(|e| sled_err(&self.inner.dir, e))?
        {
            Some(b) => {
                self.inner.decoded.fetch_add(1, Ordering::Relaxed);
                Ok(Some(self.dec(&format!("step {id}"), &b)?))
            }
            None => Ok(None),
        }
    }

    fn all_steps(&self) -> impl DoubleEndedIterator<Item = Result<StepRecord, JournalError>> + '_ {
        self.inner.steps.iter().map(move |kv| {
            let (k, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            let key = k
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map(|n| format!("step {n}"))
                .unwrap_or_else(|_| "step ?".into());
            self.inner.decoded.fetch_add(1, Ordering::Relaxed);
            self.dec(&key, &v)
        })
    }

    /// Records not yet done, oldest first. The first call scans every record (and reports a
    /// damaged one); later calls read only the records still in flight.
    pub fn in_flight(&self) -> Result<Vec<StepRecord>, JournalError> {
        let mut index = self.in_flight_index();
        if index.is_none() {
            let mut ids = std::collections::BTreeSet::new();
            for r in self.all_steps() {
                let r = r?;
                if !r.is_done() {
                    ids.insert(r.id.0);
                }
            }
            *index = Some(ids);
        }
        let ids: Vec<u64> = index.iter().flatten().copied().collect();
        drop(index);
        let mut out = Vec::new();
        for id in ids {
            // Removed by compaction or closed meanwhile: not in flight.
            if let Some(r) = self.get(StepId(id))?
                && !r.is_done()
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// How many step records this handle has decoded (the in-flight index keeps this from
    /// growing with the journal on every lane turn).
    pub fn records_decoded(&self) -> u64 {
        self.inner.decoded.load(Ordering::Relaxed)
    }

    /// Most recent first.
    pub fn recent(&self, limit: usize) -> Result<Vec<StepRecord>, JournalError> {
        self.all_steps().rev().take(limit).collect()
    }

    pub fn recent_for_vmid(
        &self,
        vmid: u32,
        limit: usize,
    ) -> Result<Vec<StepRecord>, JournalError> {
        let mut out = Vec::new();
        for r in self.all_steps().rev() {
            let r = r?;
            if r.step.vmid == vmid {
                out.push(r);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Keeps the `per_guest` most recent done records per guest and at most `total` done
    /// records overall; in-flight records are never removed.
    pub fn compact(&self, per_guest: usize, total: usize) -> Result<u64, JournalError> {
        let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
        let mut kept = 0usize;
        let mut doomed = Vec::new();
        for r in self.all_steps().rev() {
            let r = r?;
            if !r.is_done() {
                continue;
            }
            let n = seen.entry(r.step.vmid).or_insert(0);
            *n += 1;
            if *n > per_guest || kept >= total {
                doomed.push(r.id);
            } else {
                kept += 1;
            }
        }
        if let Some(highest) = doomed.first() {
            // Removing the newest record (total = 0) must not let its id be handed out again.
            self.inner
                .meta
                .insert(STEP_ID_FLOOR, &(highest.0 + 1).to_be_bytes())
                .map_err(|e| sled_err(&self.inner.dir, e))?;
        }
        let mut batch = sled::Batch::default();
        for id in &doomed {
            batch.remove(&id.0.to_be_bytes());
        }
        self.inner
            .steps
            .apply_batch(batch)
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        self.durable()?;
        Ok(doomed.len() as u64)
    }

    // ---------------------------------------------------------------- provenance

    fn put_prov(&self, p: &Provenance) -> Result<(), JournalError> {
        self.put(&self.inner.prov, p.vmid.to_be_bytes(), self.enc(p)?)
    }

    /// The agent's create task ended OK: this incarnation is the agent's, and may hold data.
    pub fn record_created(
        &self,
        vmid: u32,
        op: &str,
        create_upid: &str,
        config_digest: &str,
    ) -> Result<(), JournalError> {
        self.record_create_ended(vmid, op, Some(create_upid), config_digest, CreateEnd::Ok)
    }

    /// The agent's create step ended (`outcome`) and left a guest with `config_digest`.
    pub fn record_create_ended(
        &self,
        vmid: u32,
        op: &str,
        create_upid: Option<&str>,
        config_digest: &str,
        outcome: CreateEnd,
    ) -> Result<(), JournalError> {
        self.put_prov(&Provenance {
            vmid,
            created_by_agent: true,
            create_op: Some(op.to_string()),
            op_finished: false,
            create_upid: create_upid.map(str::to_string),
            config_digest: Some(config_digest.to_string()),
            scratch: false,
            created_at_ms: now_ms(),
            create_outcome: Some(outcome),
            started: false,
            adopted_by: None,
        })
    }

    /// An operator's signed approval adopted a guest the agent did not create.
    pub fn record_adopted(
        &self,
        vmid: u32,
        config_digest: &str,
        approval_sha256: &str,
    ) -> Result<(), JournalError> {
        self.put_prov(&Provenance {
            vmid,
            created_by_agent: false,
            create_op: None,
            op_finished: true,
            create_upid: None,
            config_digest: Some(config_digest.to_string()),
            scratch: false,
            created_at_ms: now_ms(),
            create_outcome: None,
            started: false,
            adopted_by: Some(approval_sha256.to_string()),
        })
    }

    /// The agent is about to start this incarnation (or saw it running): from now on it may hold
    /// data, so cleaning it up is no longer benign.
    pub fn record_started(&self, vmid: u32) -> Result<(), JournalError> {
        if let Some(mut p) = self.provenance(vmid)?
            && !p.started
        {
            p.started = true;
            self.put_prov(&p)?;
        }
        Ok(())
    }

    pub fn record_own_write(&self, vmid: u32, config_digest: &str) -> Result<(), JournalError> {
        if let Some(mut p) = self.provenance(vmid)? {
            p.config_digest = Some(config_digest.to_string());
            self.put_prov(&p)?;
        }
        Ok(())
    }

    pub fn finish_operation(&self, vmid: u32) -> Result<(), JournalError> {
        if let Some(mut p) = self.provenance(vmid)?
            && !p.op_finished
        {
            p.op_finished = true;
            self.put_prov(&p)?;
        }
        Ok(())
    }

    pub fn mark_scratch(&self, vmid: u32) -> Result<(), JournalError> {
        if let Some(mut p) = self.provenance(vmid)? {
            p.scratch = true;
            self.put_prov(&p)?;
        }
        Ok(())
    }

    pub fn forget(&self, vmid: u32) -> Result<(), JournalError> {
        self.inner
            .prov
            .remove(vmid.to_be_bytes())
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        self.durable()
    }

    pub fn provenance(&self, vmid: u32) -> Result<Option<Provenance>, JournalError> {
        match self
            .inner
            .prov
            .get(vmid.to_be_bytes())
            .map_err(|e| sled_err(&self.inner.dir, e))?
        {
            Some(b) => Ok(Some(self.dec(&format!("provenance {vmid}"), &b)?)),
            None => Ok(None),
        }
    }

    // ---------------------------------------------------------------- nonces

    pub fn state_epoch(&self) -> String {
        self.inner.epoch.clone()
    }

    fn meta_i64(&self, key: &str) -> Option<i64> {
        self.inner
            .meta
            .get(key)
            .ok()
            .flatten()
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes))
    }

    pub fn clock_high_water(&self) -> Option<i64> {
        self.meta_i64("clock_high_water")
    }

    /// True when `nonce` was consumed (and not yet garbage-collected). Read-only: for answers
    /// such as `drover verify-approval`, never for deciding (only `consume` decides).
    pub fn nonce_consumed(&self, nonce: &str) -> Result<bool, JournalError> {
        self.inner
            .nonces
            .contains_key(nonce.as_bytes())
            .map_err(|e| sled_err(&self.inner.dir, e))
    }

    /// Atomic (one winner among concurrent callers) and durable before it returns.
    pub fn consume(&self, claim: &NonceClaim) -> Result<(), NonceError> {
        let storage = |e: JournalError| NonceError::Storage(e.to_string());
        let _guard = self
            .inner
            .nonce_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if claim.expires_at <= self.meta_i64("gc_horizon").unwrap_or(i64::MIN) {
            return Err(NonceError::ExpiredForever);
        }
        let value = self.enc(claim).map_err(storage)?;
        let prev = self
            .inner
            .nonces
            .compare_and_swap(claim.nonce.as_bytes(), None as Option<&[u8]>, Some(value))
            .map_err(|e| storage(sled_err(&self.inner.dir, e)))?;
        if prev.is_err() {
            return Err(NonceError::Replayed(claim.nonce.clone()));
        }
        let hw = self.clock_high_water().unwrap_or(i64::MIN).max(claim.now);
        self.inner
            .meta
            .insert("clock_high_water", &hw.to_be_bytes())
            .map_err(|e| storage(sled_err(&self.inner.dir, e)))?;
        self.durable().map_err(storage)
    }

    /// Deletes claims that expired at or before `now` and raises the horizon to `now`, so a
    /// deleted nonce can never be accepted again.
    pub fn gc_nonces(&self, now: i64) -> Result<u64, JournalError> {
        let _guard = self
            .inner
            .nonce_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let horizon = self.meta_i64("gc_horizon").unwrap_or(i64::MIN).max(now);
        self.inner
            .meta
            .insert("gc_horizon", &horizon.to_be_bytes())
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        // The horizon must be durable before any claim disappears.
        self.durable()?;
        let mut n = 0;
        for kv in self.inner.nonces.iter() {
            let (k, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            let c: NonceClaim = self.dec("nonce", &v)?;
            if c.expires_at <= horizon {
                self.inner
                    .nonces
                    .remove(k)
                    .map_err(|e| sled_err(&self.inner.dir, e))?;
                n += 1;
            }
        }
        self.durable()?;
        Ok(n)
    }

    // ---------------------------------------------------------------- audit

    pub fn audit(&self, entry: AuditEntry) -> Result<(), JournalError> {
        let dir = &self.inner.dir;
        let seq = self.inner.db.generate_id().map_err(|e| sled_err(dir, e))?;
        self.inner
            .audit
            .insert(seq.to_be_bytes(), self.enc(&entry)?)
            .map_err(|e| sled_err(dir, e))?;
        let mut len = self.inner.audit_len.fetch_add(1, Ordering::Relaxed) + 1;
        while len > AUDIT_RETENTION {
            match self.inner.audit.pop_min().map_err(|e| sled_err(dir, e))? {
                Some(_) => len = self.inner.audit_len.fetch_sub(1, Ordering::Relaxed) - 1,
                None => break,
            }
        }
        self.durable()
    }

    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>, JournalError> {
        let mut out = Vec::new();
        for kv in self.inner.audit.iter().rev().take(n) {
            let (_, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            out.push(self.dec("audit entry", &v)?);
        }
        out.reverse();
        Ok(out)
    }

    // ---------------------------------------------------------------- small state

    pub fn last_revision(&self) -> Result<Option<u64>, JournalError> {
        Ok(self.meta_i64("last_revision").map(|r| r as u64))
    }

    /// Stores revision + the document bytes as last-known-good, durably.
    pub fn accept_desired(&self, revision: u64, document: &[u8]) -> Result<(), JournalError> {
        let dir = &self.inner.dir;
        let mut b = sled::Batch::default();
        b.insert("last_revision", &(revision as i64).to_be_bytes());
        b.insert("lkg_document", document);
        self.inner
            .meta
            .apply_batch(b)
            .map_err(|e| sled_err(dir, e))?;
        self.durable()
    }

    pub fn last_known_good(&self) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let doc = self
            .inner
            .meta
            .get("lkg_document")
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        Ok(match (self.last_revision()?, doc) {
            (Some(r), Some(d)) => Some((r, d.to_vec())),
            _ => None,
        })
    }

    /// Records the trust document in force, durably, in the database and in a file beside it
    /// ([`TRUST_RECORD_FILE`]): moving a damaged database aside starts a new state epoch, but
    /// must not forget a rotation that revoked a key (signing-gate.md §5.11 "keep the
    /// history"), or the old file's keys would come back.
    pub fn set_trust(&self, record: &TrustRecord) -> Result<(), JournalError> {
        let bytes = self.enc(record)?;
        self.put(&self.inner.meta, "trust", bytes.clone())?;
        let dir = &self.inner.dir;
        write_atomic(&dir.join(TRUST_RECORD_FILE), &bytes)
            .map_err(|e| io(dir, "writing the trust record file", e))
    }

    /// The trust record: the newer (by version) of the database's and the file's, so a moved-
    /// aside database or a crash between the two writes never rolls the trust back.
    pub fn trust(&self) -> Result<Option<TrustRecord>, JournalError> {
        let dir = &self.inner.dir;
        let in_db: Option<TrustRecord> =
            match self.inner.meta.get("trust").map_err(|e| sled_err(dir, e))? {
                Some(b) => Some(self.dec("trust", &b)?),
                None => None,
            };
        let in_file: Option<TrustRecord> = match std::fs::read(dir.join(TRUST_RECORD_FILE)) {
            Ok(b) => Some(decode(dir, TRUST_RECORD_FILE, &b)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(dir, "reading the trust record file", e)),
        };
        Ok(match (in_db, in_file) {
            (Some(d), Some(f)) if f.version > d.version => Some(f),
            (Some(d), _) => Some(d),
            (None, f) => f,
        })
    }

    /// `meta` key of a detached volume: `detach/<vmid>/<volume>`.
    fn detach_key(vmid: u32, volume: &str) -> String {
        format!("detach/{vmid}/{volume}")
    }

    /// Remembers (durably) that Drover detached `r.volume` from a mount point at `r.at`, so
    /// its deletion can wait out the grace period and is only ever planned for its own detach.
    pub fn record_detached(&self, r: &DetachRecord) -> Result<(), JournalError> {
        self.put(
            &self.inner.meta,
            Self::detach_key(r.vmid, &r.volume),
            self.enc(r)?,
        )
    }

    /// The volumes Drover detached from `vmid`'s mount points.
    pub fn detached(&self, vmid: u32) -> Result<Vec<DetachRecord>, JournalError> {
        let mut out = Vec::new();
        for kv in self.inner.meta.scan_prefix(format!("detach/{vmid}/")) {
            let (_, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            out.push(self.dec("detached volume", &v)?);
        }
        Ok(out)
    }

    /// Forgets a detached volume (deleted, or re-attached).
    pub fn forget_detached(&self, vmid: u32, volume: &str) -> Result<(), JournalError> {
        self.inner
            .meta
            .remove(Self::detach_key(vmid, volume))
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        self.durable()
    }

    /// Remembers how long a kind of task takes, without a sync of its own: the value is
    /// advisory, so it rides along with the next durable write (or sled's close), and a crash
    /// before that loses only learning.
    pub fn remember_task_duration(&self, d: &TaskDuration) -> Result<(), JournalError> {
        self.inner
            .meta
            .insert(
                format!("{TASK_DURATION_PREFIX}{}", d.worker_type),
                self.enc(d)?,
            )
            .map_err(|e| sled_err(&self.inner.dir, e))?;
        Ok(())
    }

    /// The task durations learned so far. An entry that does not decode comes back as its
    /// error, so the caller can say so and still use the others.
    pub fn task_durations(&self) -> Result<Vec<Result<TaskDuration, JournalError>>, JournalError> {
        let mut out = Vec::new();
        for kv in self.inner.meta.scan_prefix(TASK_DURATION_PREFIX) {
            let (_, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            out.push(self.dec::<TaskDuration>("task duration", &v));
        }
        Ok(out)
    }

    fn susp_key(vmid: Option<u32>) -> String {
        vmid.map(|v| format!("ct/{v}"))
            .unwrap_or_else(|| "host".into())
    }

    pub fn suspend(&self, s: Suspension) -> Result<(), JournalError> {
        self.put(&self.inner.susp, Self::susp_key(s.vmid), self.enc(&s)?)
    }

    pub fn resume(&self, vmid: Option<u32>) -> Result<bool, JournalError> {
        let had = self
            .inner
            .susp
            .remove(Self::susp_key(vmid))
            .map_err(|e| sled_err(&self.inner.dir, e))?
            .is_some();
        self.durable()?;
        Ok(had)
    }

    pub fn suspensions(&self) -> Result<Vec<Suspension>, JournalError> {
        let mut out = Vec::new();
        for kv in self.inner.susp.iter() {
            let (_, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            out.push(self.dec("suspension", &v)?);
        }
        Ok(out)
    }
}

/// Jobs kept once they ended (the newest; running jobs are never removed).
const ENDED_JOBS_KEPT: usize = 500;

impl Journal {
    /// Writes a job record (its first phase or a later one), durably.
    pub fn put_job(&self, job: &JobRecord) -> Result<(), JournalError> {
        self.put(&self.inner.jobs, job.id.as_bytes(), self.enc(job)?)?;
        if job.end.is_some() {
            self.trim_jobs()?;
        }
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, JournalError> {
        match self
            .inner
            .jobs
            .get(id.as_bytes())
            .map_err(|e| sled_err(&self.inner.dir, e))?
        {
            Some(b) => Ok(Some(self.dec(&format!("job {id}"), &b)?)),
            None => Ok(None),
        }
    }

    /// Every job record, oldest accepted first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, JournalError> {
        let mut out: Vec<JobRecord> = Vec::new();
        for kv in self.inner.jobs.iter() {
            let (k, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            out.push(self.dec(&format!("job {}", String::from_utf8_lossy(&k)), &v)?);
        }
        out.sort_by(|a, b| {
            a.accepted_at_ms
                .cmp(&b.accepted_at_ms)
                .then(a.id.cmp(&b.id))
        });
        Ok(out)
    }

    fn trim_jobs(&self) -> Result<(), JournalError> {
        let jobs = self.jobs()?;
        let ended: Vec<&JobRecord> = jobs.iter().filter(|j| j.end.is_some()).collect();
        if ended.len() <= ENDED_JOBS_KEPT {
            return Ok(());
        }
        for j in &ended[..ended.len() - ENDED_JOBS_KEPT] {
            self.inner
                .jobs
                .remove(j.id.as_bytes())
                .map_err(|e| sled_err(&self.inner.dir, e))?;
        }
        self.durable()
    }
}

fn decode<T: DeserializeOwned>(dir: &Path, key: &str, bytes: &[u8]) -> Result<T, JournalError> {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
        dir: dir.to_path_buf(),
        detail: format!("{key} does not decode: {e}"),
    })?;
    if v.v != VERSION {
        return Err(JournalError::UnknownVersion {
            dir: dir.to_path_buf(),
            key: key.to_string(),
            version: v.v,
        });
    }
    let e: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
        dir: dir.to_path_buf(),
        detail: format!("{key} does not decode: {e}"),
    })?;
    Ok(e.r)
}

/// The trust record's copy outside the database, in the state directory.
pub const TRUST_RECORD_FILE: &str = "trust-record.json";

/// Temp file, fsync, rename, fsync the directory: the file is the old one or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Meta key: the lowest step id that may still be handed out (set by compaction).
const STEP_ID_FLOOR: &str = "step_id_floor";
/// `meta` key prefix of a learned task duration (`task_duration/vzstart`).
const TASK_DURATION_PREFIX: &str = "task_duration/";
/// `meta` key of the count of `done` calls since the last automatic compaction.
const DONE_SINCE_COMPACT: &str = "done_since_compact";

/// One past the highest step id ever used: the newest record's, or the floor compaction left.
fn next_step_id(dir: &Path, steps: &sled::Tree, meta: &sled::Tree) -> Result<u64, JournalError> {
    let corrupt = |detail: String| JournalError::Corrupt {
        dir: dir.to_path_buf(),
        detail,
    };
    let be = |what: &str, bytes: &[u8]| -> Result<u64, JournalError> {
        <[u8; 8]>::try_from(bytes)
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(format!("{what} is {} bytes, not 8", bytes.len())))
    };
    let last = match steps.last().map_err(|e| sled_err(dir, e))? {
        Some((k, _)) => be("a step record key", &k)?.saturating_add(1),
        None => 1,
    };
    let floor = match meta.get(STEP_ID_FLOOR).map_err(|e| sled_err(dir, e))? {
        Some(v) => be("the step id floor", &v)?,
        None => 1,
    };
    Ok(last.max(floor))
}

fn audit_tree_len(dir: &Path, tree: &sled::Tree) -> Result<usize, JournalError> {
    let mut n = 0;
    for kv in tree.iter().keys() {
        kv.map_err(|e| sled_err(dir, e))?;
        n += 1;
    }
    Ok(n)
}

/// Checks a store without modifying it (works on a snapshot copy).
pub fn check(dir: &Path) -> CheckReport {
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        ..CheckReport::default()
    };
    let j = match Journal::open_read_only(dir) {
        Ok(j) => j,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.opened = true;
    report.epoch = Some(j.state_epoch());
    let count = |tree: &sled::Tree,
                 what: &str,
                 report: &mut CheckReport,
                 f: &dyn Fn(&[u8]) -> Result<bool, JournalError>|
     -> u64 {
        let mut n = 0;
        for kv in tree.iter() {
            match kv {
                Ok((k, v)) => match f(&v) {
                    Ok(_) => n += 1,
                    Err(e) => report
                        .undecodable
                        .push((format!("{what} {}", hex_key(&k)), e.to_string())),
                },
                Err(e) => {
                    report.error = Some(e.to_string());
                    break;
                }
            }
        }
        n
    };
    let mut in_flight = 0u64;
    let steps = {
        let mut n = 0;
        for kv in j.inner.steps.iter() {
            match kv {
                Ok((k, v)) => match decode::<StepRecord>(dir, "step", &v) {
                    Ok(r) => {
                        n += 1;
                        if !r.is_done() {
                            in_flight += 1;
                        }
                    }
                    Err(e) => report
                        .undecodable
                        .push((format!("step {}", hex_key(&k)), e.to_string())),
                },
                Err(e) => {
                    report.error = Some(e.to_string());
                    break;
                }
            }
        }
        n
    };
    report.steps = steps;
    report.in_flight = in_flight;
    report.provenance = count(&j.inner.prov, "provenance", &mut report, &|b| {
        decode::<Provenance>(dir, "provenance", b).map(|_| true)
    });
    report.nonces = count(&j.inner.nonces, "nonce", &mut report, &|b| {
        decode::<NonceClaim>(dir, "nonce", b).map(|_| true)
    });
    report.audit = count(&j.inner.audit, "audit", &mut report, &|b| {
        decode::<AuditEntry>(dir, "audit", b).map(|_| true)
    });
    count(&j.inner.jobs, "job", &mut report, &|b| {
        decode::<JobRecord>(dir, "job", b).map(|_| true)
    });
    if let Ok(tree) = j.copies_tree() {
        report.copies = count(&tree, "safety copy", &mut report, &|b| {
            decode::<copies::SafetyCopy>(dir, "safety copy", b).map(|_| true)
        });
    }
    if let Err(e) = j.trust() {
        report
            .undecodable
            .push(("trust record".into(), e.to_string()));
    }
    j.check_verify(&mut report);
    report
}

fn hex_key(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renames a damaged database to `<dir>/db.broken-<unix time>` (kept for inspection) and
/// returns the new path; the next open starts an empty store with a new state epoch, which
/// invalidates every outstanding approval. Refused while a daemon holds the lock.
pub fn move_aside(dir: &Path) -> Result<PathBuf, JournalError> {
    let _lock = lock::take(dir)?;
    let src = dir.join("db");
    if !src.exists() {
        return Err(io(
            dir,
            "moving the store aside",
            std::io::Error::new(std::io::ErrorKind::NotFound, "there is no database to move"),
        ));
    }
    let stamp = now_ms() / 1000;
    let mut target = dir.join(format!("db.broken-{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("db.broken-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(&src, &target).map_err(|e| io(dir, "moving the store aside", e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> TrustRecord {
        TrustRecord {
            version,
            sha256: format!("s{version}"),
            document: format!("d{version}"),
            file_sha256: format!("f{version}"),
            origin: "rotation".into(),
            applied_ms: 0,
        }
    }

    #[test]
    fn the_trust_record_outlives_a_database_moved_aside() {
        let d = tempfile::tempdir().expect("tempdir");
        {
            let j = Journal::open(d.path()).expect("open");
            j.set_trust(&record(3)).expect("set");
        }
        move_aside(d.path()).expect("move aside");
        let j = Journal::open(d.path()).expect("reopen");
        assert_eq!(j.trust().expect("read").map(|r| r.version), Some(3));
        // The newer of the two copies wins (a crash between the two writes).
        j.put(&j.inner.meta, "trust", j.enc(&record(2)).expect("enc"))
            .expect("put");
        assert_eq!(j.trust().expect("read").map(|r| r.version), Some(3));
        j.set_trust(&record(4)).expect("set");
        assert_eq!(j.trust().expect("read").map(|r| r.version), Some(4));
        // A damaged copy is an error, never a silent fallback to an older trust.
        std::fs::write(d.path().join(TRUST_RECORD_FILE), b"{").expect("write");
        assert!(j.trust().is_err());
        // ... and `drover journal check` names it.
        let report = check(d.path());
        assert!(
            report
                .undecodable
                .iter()
                .any(|(what, _)| what == "trust record"),
            "{:?}",
            report.undecodable
        );
    }
}
