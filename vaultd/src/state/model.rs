//! The authenticated state as vaultd holds it: secrets with their versions and
//! rotations, clients with their grants, tokens, incidents and key terms. Plain
//! data; what may change it is in `change`, how it is authenticated in `mac`.
//!
//! Every state a row can be in is an enum here, spelled once ([`VersionState`],
//! [`Step`], [`Trigger`], [`IncidentMode`]); the database stores the spelling.

use super::small_map::SmallMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An enum whose variants are stored and shown as fixed strings.
macro_rules! spelled {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s { $($text => Ok($name::$variant),)* _ => Err(UnknownState) }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A stored state spelled in no way vaultd writes (the row was altered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownState;

spelled! {
    /// Where a secret version is in its life (README "Rotation").
    pub enum VersionState {
        /// Made by a rotation, being tested; never served.
        Pending = "pending",
        Current = "current",
        /// The old current, readable until its grace period ends.
        Previous = "previous",
        Retired = "retired",
        /// Marked by revoke-all; never served.
        Compromised = "compromised",
        /// Its value is gone.
        Destroyed = "destroyed",
    }
}

spelled! {
    /// A rotation's step: `Create` and `Test` are in progress, the others final.
    pub enum Step {
        Create = "create",
        Test = "test",
        Done = "done",
        Failed = "failed",
    }
}

spelled! {
    /// Who started a rotation.
    pub enum Trigger {
        Operator = "operator",
        Schedule = "schedule",
    }
}

spelled! {
    /// What a grant allows.
    pub enum GrantKind {
        /// The value itself (and its use through the broker).
        Read = "read",
        /// Its use through the broker only: the agent never holds the value.
        Use = "use",
    }
}

spelled! {
    /// How a revoke-all was made: through vaultd, or straight on the data
    /// directory by `vaultctl revoke-all --offline` (applied by vaultd later).
    pub enum IncidentMode {
        Online = "online",
        Offline = "offline",
    }
}

impl Step {
    pub fn in_progress(self) -> bool {
        matches!(self, Step::Create | Step::Test)
    }
}

/// A secret with everything stored under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The database's row id (storage only: the MAC binds `env/name`). 0 until stored.
    pub id: i64,
    pub env: String,
    pub name: String,
    pub provider: String,
    pub description: String,
    pub current_version: u64,
    pub created_unix: i64,
    pub updated_unix: i64,
    /// The rotation policy.
    pub rotator: String,
    pub rotate_every_secs: Option<i64>,
    pub grace_secs: i64,
    pub next_rotation_unix: Option<i64>,
    /// When the current due period was raised as an alert (manual rotators).
    pub due_alerted_unix: Option<i64>,
    pub versions: SmallMap<u64, Version>,
    /// Every rotation of this secret, by id (see `change::MAX_ROTATIONS_KEPT`).
    pub rotations: SmallMap<i64, Rotation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub state: VersionState,
    /// `None` once destroyed. Bound to `env/name/version` by its AEAD too.
    pub ciphertext: Option<Arc<[u8]>>,
    pub created_unix: i64,
    /// End of the grace period of a previous version.
    pub expires_unix: Option<i64>,
    /// Its revoke-old hook has yet to run.
    pub revoke_pending: bool,
    /// The next revoke-old attempt, after a failed one.
    pub revoke_after_unix: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub rotator: String,
    pub trigger: Trigger,
    pub step: Step,
    pub from_version: u64,
    pub new_version: Option<u64>,
    pub error: Option<String>,
    pub started_unix: i64,
    pub updated_unix: i64,
}

/// An agent identity and what it may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The database's row id (storage only). 0 until stored.
    pub id: i64,
    pub name: String,
    pub uid: u32,
    pub gid: Option<u32>,
    pub exe: Option<String>,
    pub exe_sha256: Option<String>,
    pub enabled: bool,
    /// Matched by its tokens only, never by the kernel's identity alone (and a
    /// uid with such a client matches none of its clients without a token).
    pub token_only: bool,
    pub created_unix: i64,
    /// Grant patterns.
    pub grants: BTreeMap<String, Grant>,
}

/// One grant of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub kind: GrantKind,
    pub created_unix: i64,
}

/// A bearer token (its keyed hash; never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub accessor: String,
    pub hash: Vec<u8>,
    /// The client's name (the row stores its id).
    pub client: String,
    pub bind_uid: Option<u32>,
    /// The executable the caller must run (an absolute path), if bound to one.
    pub bind_exe: Option<String>,
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
    pub idle_secs: Option<i64>,
    pub uses_left: Option<i64>,
    pub last_used_unix: Option<i64>,
    pub revoked_unix: Option<i64>,
}

/// One revoke-all; `report` is its JSON report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: i64,
    pub started_unix: i64,
    pub mode: IncidentMode,
    pub reason: String,
    pub report: String,
}

/// A key term's stored half: its key wrapped under the root key, and how many
/// values it has sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTerm {
    pub term: u32,
    pub wrapped_key: Vec<u8>,
    pub created_unix: i64,
    pub encryptions: u64,
    /// The target of an unfinished `rotate-key --rewrap`.
    pub rewrap: bool,
}

impl Secret {
    /// The version `current_version` names, if it is current and has a value.
    pub fn current(&self) -> Option<(u64, &Arc<[u8]>)> {
        let v = self.versions.get(&self.current_version)?;
        (v.state == VersionState::Current).then_some(())?;
        Some((self.current_version, v.ciphertext.as_ref()?))
    }

    /// The newest version number stored.
    pub fn newest_version(&self) -> u64 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    /// The rotation in progress, if any.
    pub fn rotation_in_progress(&self) -> Option<(i64, &Rotation)> {
        self.rotations.iter().find(|(_, r)| r.step.in_progress()).map(|(id, r)| (*id, r))
    }

    pub fn last_rotation(&self) -> Option<(i64, &Rotation)> {
        self.rotations.iter().next_back().map(|(id, r)| (*id, r))
    }
}

impl Token {
    /// When this token stops being usable by time alone (TTL or idle), if ever.
    pub fn ends_at(&self) -> Option<i64> {
        let idle = self.idle_secs.map(|idle| self.last_used_unix.unwrap_or(self.created_unix).saturating_add(idle));
        match (self.expires_unix, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One version's metadata as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub version: u64,
    pub state: VersionState,
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
}

impl Secret {
    /// Every version, newest first.
    pub fn version_rows(&self) -> Vec<VersionRow> {
        self.versions
            .iter()
            .rev()
            .map(|(n, v)| VersionRow {
                version: *n,
                state: v.state,
                created_unix: v.created_unix,
                expires_unix: v.expires_unix,
            })
            .collect()
    }
}
