//! Typed async client for the Proxmox VE API, as the Drover agent uses it.
//!
//! * Auth with an API token ([`ApiToken`]); the secret is never logged. A 401 is
//!   [`ErrorKind::Unauthorized`] and is never retried.
//! * TLS without an insecure mode ([`TlsTrust`]): a pinned leaf fingerprint, the node's own
//!   certificate file (re-read on renewal), or a CA file. Handshake signatures are always
//!   verified; rustls with aws-lc-rs only; HTTP/1.1 with a 4 s idle pool.
//! * Endpoints for LXC lifecycle, config, snapshots and tasks, and for storages, backups
//!   (vzdump, content, protection, pruning) and restore ([`Client`]), typed responses
//!   ([`types`]), property strings parsed to values ([`property`]), UPIDs ([`Upid`]) and task
//!   waiting ([`Client::wait_task`]).
//! * One error type ([`Error`]) with the classification the engine needs. No business logic,
//!   no retries: the caller decides.

mod api;
pub mod auth;
pub mod client;
pub mod error;
mod lenient;
mod local_file;
pub mod params;
pub mod property;
pub mod task;
pub mod tls;
pub mod types;
pub mod upid;

pub use auth::ApiToken;
pub use client::{Client, ClientConfig, MAX_POOL_IDLE, RequestObserver};
pub use error::{AlreadyInState, Error, ErrorKind};
pub use lenient::parse_bool;
pub use params::{
    BackupCompression, BackupMode, ConfigUpdate, ContentFilter, CreateLxc, DestroyOptions, Params,
    ResizeSize, RestoreLxc, ShutdownOptions, TaskListFilter, TaskSource, VolumeUpdate,
    VzdumpRequest,
};
pub use property::{DiskSize, Features, MountConfig, NetConfig, PropertyError, parse_tags};
pub use task::{TaskOutcome, WaitOptions, WaitTrace};
pub use tls::{DEFAULT_NODE_CERT_PATHS, Fingerprint, TlsTrust};
pub use types::{
    ClusterResource, GuestStatus, HaStatus, InterfaceAddress, InterfaceInfo, LxcConfig,
    LxcListEntry, LxcStatus, PendingEntry, PruneEntry, SnapshotEntry, StorageContentEntry,
    StorageStatus, TaskExit, TaskListEntry, TaskLog, TaskLogLine, TaskState, TaskStatus,
    Verification, VersionInfo, VolumeInfo, VzdumpDefaults, VzdumpStarted, backup_volid_from_log,
};
pub use upid::{Upid, UpidParseError};
