//! Every kind of audit entry (`family.action`, its stored and exported name)
//! and the class `audit query --type` selects it by, in one list: a new kind is
//! one line here, and no code compares kinds as text.

/// What `audit query --type CLASS` selects. Every denial or failure is
/// `security`, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Who may do what, and the vault's own lifecycle.
    Security,
    /// Secrets and their rotations changed.
    Change,
    /// Values read, revealed, listed, watched or used.
    Access,
    /// The log itself.
    Audit,
    /// vaultd's process and keys.
    System,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Security => "security",
            Class::Change => "change",
            Class::Access => "access",
            Class::Audit => "audit",
            Class::System => "system",
        }
    }
}

macro_rules! kinds {
    ($($variant:ident = $name:literal, $class:ident;)*) => {
        /// A kind of audit entry.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($variant),*
        }

        impl Kind {
            pub const ALL: &[Kind] = &[$(Kind::$variant),*];

            /// Its name, as stored, exported and queried.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name),*
                }
            }

            /// The kind a stored name stands for; `None` for a name vaultd never
            /// writes (a row it did not write).
            pub fn parse(name: &str) -> Option<Kind> {
                match name {
                    $($name => Some(Kind::$variant),)*
                    _ => None,
                }
            }

            fn ok_class(self) -> Class {
                match self {
                    $(Kind::$variant => Class::$class),*
                }
            }
        }
    };
}

kinds! {
    VaultInit = "vault.init", Security;
    VaultUnlock = "vault.unlock", Security;
    VaultSeal = "vault.seal", Security;
    VaultRekey = "vault.rekey", Security;
    VaultBackup = "vault.backup", Security;
    VaultRestore = "vault.restore", Security;
    SecretWrite = "secret.write", Change;
    SecretDelete = "secret.delete", Change;
    SecretRead = "secret.read", Access;
    SecretReveal = "secret.reveal", Access;
    SecretList = "secret.list", Access;
    SecretWatch = "secret.watch", Access;
    SecretUse = "secret.use", Access;
    RotationPolicy = "rotation.policy", Change;
    RotationStart = "rotation.start", Change;
    RotationCreated = "rotation.created", Change;
    RotationTested = "rotation.tested", Change;
    RotationPromoted = "rotation.promoted", Change;
    RotationResumed = "rotation.resumed", Change;
    RotationRetired = "rotation.retired", Change;
    RotationRevokedOld = "rotation.revoked_old", Change;
    RotationFailed = "rotation.failed", Change;
    RotationDue = "rotation.due", Security;
    ClientAdd = "client.add", Security;
    ClientRemove = "client.remove", Security;
    ClientEnable = "client.enable", Security;
    ClientDisable = "client.disable", Security;
    ClientGrant = "client.grant", Security;
    ClientUngrant = "client.ungrant", Security;
    TokenCreate = "token.create", Security;
    TokenRevoke = "token.revoke", Security;
    TokenRefused = "token.refused", Security;
    RequestRateLimited = "request.rate_limited", Security;
    RequestRefused = "request.refused", Security;
    RequestRefusals = "request.refusals", Security;
    IncidentRevokeAll = "incident.revoke_all", Security;
    IncidentApplied = "incident.applied", Security;
    IncidentHonoured = "incident.honoured", Security;
    IncidentCompleted = "incident.completed", Security;
    IntegrityViolation = "integrity.violation", Security;
    IntegrityAcknowledged = "integrity.acknowledged", Security;
    KeyRotate = "key.rotate", System;
    KeyRewrap = "key.rewrap", System;
    KeyRewrapResume = "key.rewrap.resume", System;
    KeyRewrapDone = "key.rewrap.done", System;
    KeyRetire = "key.retire", System;
    DaemonStart = "daemon.start", System;
    DaemonStop = "daemon.stop", System;
    AuditAdopted = "audit.adopted", Audit;
    AuditTampered = "audit.tampered", Audit;
    AuditPruned = "audit.pruned", Audit;
    AuditCheckpoint = "audit.checkpoint", Audit;
    AuditBatch = "audit.batch", Audit;
    AuditJournalDamaged = "audit.journal_damaged", Audit;
    AuditJournalRecovered = "audit.journal_recovered", Audit;
    AuditVerify = "audit.verify", Audit;
    AuditExport = "audit.export", Audit;
    // The credential broker: each request, each refusal of a stored value, each
    // provider check, each alert delivered or not.
    BrokerRequest = "broker.request", Access;
    BrokerExfiltration = "broker.exfiltration", Security;
    ProviderCheck = "provider.check", System;
    AlertSent = "alert.sent", Security;
    AlertFailed = "alert.failed", Security;
}

impl Kind {
    /// The class of an entry of this kind that ended with `outcome`.
    pub fn class(self, outcome: super::Outcome) -> Class {
        if outcome == super::Outcome::Ok { self.ok_class() } else { Class::Security }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A stored row's kind (text: the row may not be vaultd's) against a kind.
impl PartialEq<Kind> for String {
    fn eq(&self, kind: &Kind) -> bool {
        self == kind.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(*kind));
            let (family, action) = kind.as_str().split_once('.').unwrap_or_default();
            assert!(!family.is_empty() && !action.is_empty(), "{kind}: family.action");
        }
        assert_eq!(Kind::parse("secret.readx"), None);
    }

    #[test]
    fn classes() {
        assert_eq!(Kind::SecretRead.class(Outcome::Ok), Class::Access);
        assert_eq!(Kind::SecretRead.class(Outcome::Denied), Class::Security);
        assert_eq!(Kind::SecretWrite.class(Outcome::Ok), Class::Change);
        assert_eq!(Kind::SecretList.class(Outcome::Ok), Class::Access);
        assert_eq!(Kind::VaultUnlock.class(Outcome::Ok), Class::Security);
        assert_eq!(Kind::AuditPruned.class(Outcome::Ok), Class::Audit);
        assert_eq!(Kind::RotationDue.class(Outcome::Ok), Class::Security);
        assert_eq!(Kind::KeyRotate.class(Outcome::Failed), Class::Security);
        assert_eq!(Kind::BrokerRequest.class(Outcome::Ok), Class::Access);
        assert_eq!(Kind::BrokerRequest.class(Outcome::Denied), Class::Security);
        assert_eq!(Kind::AlertSent.class(Outcome::Ok), Class::Security);
    }
}
