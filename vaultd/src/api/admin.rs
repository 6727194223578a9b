//! The admin service: init, unlock, seal, status and secret management, for the
//! vault's owner (the accept-time policy admits nobody else).

use super::{actor, blocking, existing_version, policy_change, rotation_info, secret_meta, version_meta};
use crate::audit::{Event, Kind, Outcome, Verdict, entry_json};
use crate::crypto::{KdfParams, SecretBytes};
use crate::state::{Client, Grant, GrantKind, SecretLabels, Token};
use crate::store::{AuditFilter, AuditRow};
use crate::vault::{SecretRef, TokenSpec, Trigger, Vault};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use vault_proto::v1::{self, admin_server::Admin};

type EntryStream = Pin<Box<dyn Stream<Item = Result<v1::AuditEntry, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::BackupChunk, Status>> + Send>>;

/// Versions per rewrap transaction when the request does not say.
const DEFAULT_REWRAP_BATCH: u32 = 500;

/// Entries an export or tail stream buffers ahead of a slow reader.
const STREAM_BUFFER: usize = 256;
/// Entries an export reads from the database at a time.
const EXPORT_PAGE: u32 = 1000;

pub struct AdminApi {
    vault: Arc<Vault>,
}

impl AdminApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        AdminApi { vault }
    }

    fn status(&self) -> Result<v1::StatusResponse, Status> {
        let s = self.vault.status()?;
        Ok(v1::StatusResponse {
            initialized: s.initialized,
            sealed: s.sealed,
            version: env!("CARGO_PKG_VERSION").into(),
            secrets: s.secrets,
            key_term: s.key_term,
            kdf: s.kdf.map(kdf_params),
            schema_version: s.schema_version,
            audit_forward_errors: s.audit_forward_errors,
            audit_forward_dropped: s.audit_forward_dropped,
            rotations_due: s.rotations_due,
            rotations_failed: s.rotations_failed,
            compromised: s.compromised,
            integrity: s.integrity,
            exe_attestation: crate::identity::exe_attestation(),
        })
    }
}

/// Moves a request's secret bytes into a zeroizing buffer, leaving the message empty.
fn take_secret(bytes: &mut Vec<u8>) -> SecretBytes {
    SecretBytes::new(std::mem::take(bytes))
}

fn secret_ref(r: &Option<v1::SecretRef>) -> Result<SecretRef<'_>, Status> {
    let r = r.as_ref().ok_or_else(|| Status::invalid_argument("missing secret"))?;
    Ok(SecretRef::parse(&r.env, &r.name)?)
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn init(&self, req: Request<v1::InitRequest>) -> Result<Response<v1::InitResponse>, Status> {
        let actor = actor("admin", &req);
        let passphrase = take_secret(&mut req.into_inner().passphrase);
        let vault = self.vault.clone();
        blocking(move || vault.init(&actor, &passphrase)).await?;
        tracing::info!("vault initialized and unlocked");
        Ok(Response::new(v1::InitResponse { status: Some(self.status()?) }))
    }

    async fn unlock(&self, req: Request<v1::UnlockRequest>) -> Result<Response<v1::UnlockResponse>, Status> {
        let actor = actor("admin", &req);
        let passphrase = take_secret(&mut req.into_inner().passphrase);
        let vault = self.vault.clone();
        match blocking(move || vault.unlock(&actor, &passphrase)).await {
            Ok(()) => tracing::info!("vault unlocked"),
            Err(status) => {
                tracing::warn!(reason = status.message(), "unlock refused");
                return Err(status);
            }
        }
        Ok(Response::new(v1::UnlockResponse { status: Some(self.status()?) }))
    }

    async fn seal(&self, req: Request<v1::SealRequest>) -> Result<Response<v1::SealResponse>, Status> {
        let actor = actor("admin", &req);
        let vault = self.vault.clone();
        blocking(move || vault.seal(&actor)).await?;
        tracing::info!("vault sealed");
        Ok(Response::new(v1::SealResponse { status: Some(self.status()?) }))
    }

    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(self.status()?))
    }

    async fn put_secret(&self, req: Request<v1::PutSecretRequest>) -> Result<Response<v1::PutSecretResponse>, Status> {
        let actor = actor("admin", &req);
        let mut req = req.into_inner();
        let value = take_secret(&mut req.value);
        let secret = secret_ref(&req.secret)?;
        let (env, name) = (secret.env.to_owned(), secret.name.to_owned());
        let labels = SecretLabels { provider: req.provider, description: req.description };
        let policy = policy_change(req.rotation)?;
        let vault = self.vault.clone();
        let (row, (version, promoted)) = blocking(move || {
            let secret = SecretRef { env: &env, name: &name };
            let put = vault.put(&actor, secret, &labels, &policy, &value)?;
            Ok((vault.describe(secret)?, put))
        })
        .await?;
        tracing::info!(env = row.env, name = row.name, version, "secret stored");
        Ok(Response::new(v1::PutSecretResponse {
            secret: Some(secret_meta(row)),
            version,
            previous_version: promoted.and_then(|p| p.previous).unwrap_or(0),
            grace_until_unix: promoted.map_or(0, |p| p.grace_until),
        }))
    }

    async fn show_secret(
        &self,
        req: Request<v1::ShowSecretRequest>,
    ) -> Result<Response<v1::ShowSecretResponse>, Status> {
        let actor = actor("admin", &req);
        let req = req.into_inner();
        let secret = secret_ref(&req.secret)?;
        // The rotation first: once it reads done, the secret row shows its promotion.
        let last_rotation = self.vault.last_rotation(secret)?.map(rotation_info);
        let mut meta = secret_meta(self.vault.describe(secret)?);
        meta.last_rotation = last_rotation;
        let value = if req.reveal {
            let (version, value) = self.vault.reveal(&actor, secret, existing_version(secret, req.version)?)?;
            tracing::info!(env = secret.env, name = secret.name, version, "secret revealed to the owner");
            value.expose().to_vec()
        } else if req.version != 0 {
            return Err(Status::invalid_argument("a version is given only with reveal"));
        } else {
            Vec::new()
        };
        Ok(Response::new(v1::ShowSecretResponse { secret: Some(meta), value }))
    }

    async fn list_secrets(
        &self,
        req: Request<v1::ListSecretsRequest>,
    ) -> Result<Response<v1::ListSecretsResponse>, Status> {
        let rows = self.vault.list(&req.get_ref().env)?;
        Ok(Response::new(v1::ListSecretsResponse { secrets: rows.into_iter().map(secret_meta).collect() }))
    }

    async fn list_versions(
        &self,
        req: Request<v1::ListVersionsRequest>,
    ) -> Result<Response<v1::ListVersionsResponse>, Status> {
        let rows = self.vault.versions(secret_ref(&req.get_ref().secret)?)?;
        Ok(Response::new(v1::ListVersionsResponse { versions: rows.into_iter().map(version_meta).collect() }))
    }

    async fn delete_secret(
        &self,
        req: Request<v1::DeleteSecretRequest>,
    ) -> Result<Response<v1::DeleteSecretResponse>, Status> {
        let actor = actor("admin", &req);
        let secret = secret_ref(&req.get_ref().secret)?;
        let (env, name) = (secret.env.to_owned(), secret.name.to_owned());
        let vault = self.vault.clone();
        let destroyed = blocking(move || vault.delete(&actor, SecretRef { env: &env, name: &name })).await?;
        tracing::info!(env = secret.env, name = secret.name, destroyed, "secret removed");
        Ok(Response::new(v1::DeleteSecretResponse { versions_destroyed: destroyed }))
    }

    async fn set_rotation(&self, req: Request<v1::SetRotationRequest>) -> Result<Response<v1::SecretMeta>, Status> {
        let actor = actor("admin", &req);
        let req = req.into_inner();
        let secret = secret_ref(&req.secret)?;
        let change = policy_change(req.change)?;
        if change.is_empty() {
            return Err(Status::invalid_argument("nothing to change: give a rotator, a period or a grace period"));
        }
        let (env, name) = (secret.env.to_owned(), secret.name.to_owned());
        let vault = self.vault.clone();
        let row = blocking(move || vault.set_rotation(&actor, SecretRef { env: &env, name: &name }, &change)).await?;
        Ok(Response::new(secret_meta(row)))
    }

    async fn rotate_secret(
        &self,
        req: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        let actor = actor("admin", &req);
        let mut req = req.into_inner();
        let value = Some(take_secret(&mut req.value)).filter(|v| !v.is_empty());
        let secret = secret_ref(&req.secret)?;
        let rotated = self.vault.rotate(&actor, secret, value, Trigger::Operator).await?;
        tracing::info!(env = secret.env, name = secret.name, version = rotated.version, "secret rotated");
        // The rotation first: once it reads done, the secret row shows its promotion.
        let last_rotation = self.vault.last_rotation(secret)?.map(rotation_info);
        let mut meta = secret_meta(self.vault.describe(secret)?);
        meta.last_rotation = last_rotation;
        Ok(Response::new(v1::RotateSecretResponse {
            secret: Some(meta),
            version: rotated.version,
            previous_version: rotated.promoted.previous.unwrap_or(0),
            grace_until_unix: rotated.promoted.grace_until,
            revoked_compromised: rotated.compromised.iter().filter(|(_, r)| r.is_ok()).map(|(v, _)| *v).collect(),
            not_revoked: rotated
                .compromised
                .iter()
                .filter_map(|(v, r)| r.as_ref().err().map(|why| format!("version {v}: {why}")))
                .collect(),
        }))
    }

    async fn list_rotations(
        &self,
        req: Request<v1::ListRotationsRequest>,
    ) -> Result<Response<v1::ListRotationsResponse>, Status> {
        let rows = self.vault.rotations(req.get_ref().due_only, req.get_ref().compromised_only)?;
        Ok(Response::new(v1::ListRotationsResponse { secrets: rows.into_iter().map(secret_meta).collect() }))
    }

    async fn revoke_all(&self, req: Request<v1::RevokeAllRequest>) -> Result<Response<v1::IncidentReport>, Status> {
        let actor = actor("admin", &req);
        let req = req.into_inner();
        let report = self.vault.revoke_all(&actor, &req.reason, req.seal, req.provider_revoke).await?;
        tracing::warn!(
            incident = report.id,
            tokens = report.tokens_revoked,
            clients = report.clients_disabled,
            secrets = report.secrets_compromised,
            streams = report.streams_closed,
            "revoke-all"
        );
        Ok(Response::new(report))
    }

    async fn list_incidents(
        &self,
        _: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        let incidents = self.vault.incidents()?;
        Ok(Response::new(v1::ListIncidentsResponse { incidents }))
    }

    async fn show_incident(
        &self,
        req: Request<v1::ShowIncidentRequest>,
    ) -> Result<Response<v1::ShowIncidentResponse>, Status> {
        let req = req.into_inner();
        let hours = if req.hours == 0 { 6 } else { req.hours.min(24 * 366) };
        let (report, timeline) = self.vault.incident(req.id, hours)?;
        Ok(Response::new(v1::ShowIncidentResponse {
            report: Some(report),
            timeline: timeline.iter().map(entry).collect(),
        }))
    }

    async fn query_audit(
        &self,
        req: Request<v1::QueryAuditRequest>,
    ) -> Result<Response<v1::QueryAuditResponse>, Status> {
        let filter = audit_filter(req.into_inner().filter);
        let rows = self.vault.audit_query(&filter)?;
        let entries: Vec<v1::AuditEntry> = rows.iter().map(entry).collect();
        // Said plainly here rather than as the transport's "message too large".
        if entries.iter().map(|e| e.json.len() + 16).sum::<usize>() > vault_proto::MAX_ADMIN_REPLY_LEN {
            return Err(Status::resource_exhausted(format!(
                "the {} entries that match do not fit in one reply: narrow the query (--limit, --since) or use `audit export`",
                entries.len()
            )));
        }
        Ok(Response::new(v1::QueryAuditResponse { entries }))
    }

    type ExportAuditStream = EntryStream;

    async fn export_audit(&self, req: Request<v1::ExportAuditRequest>) -> Result<Response<EntryStream>, Status> {
        self.vault.record(Event::new(Kind::AuditExport, Outcome::Ok, &actor("admin", &req)))?;
        let first = self.vault.audit_page(0, EXPORT_PAGE)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let vault = self.vault.clone();
        // Pages are read one at a time so an export of millions of entries never
        // sits in memory; the stream ends at the newest entry when it started.
        tokio::task::spawn_blocking(move || {
            let mut page = first;
            while !page.is_empty() {
                let after = page.last().map_or(0, |r| r.seq);
                for row in &page {
                    if tx.blocking_send(Ok(entry(row))).is_err() {
                        return; // the client went away
                    }
                }
                page = match vault.audit_page(after, EXPORT_PAGE) {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::from(e)));
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type TailAuditStream = EntryStream;

    async fn tail_audit(&self, req: Request<v1::TailAuditRequest>) -> Result<Response<EntryStream>, Status> {
        let filter = audit_filter(req.into_inner().filter);
        // Subscribe before reading the backlog so nothing falls in between.
        let mut live = self.vault.subscribe();
        let backlog = self.vault.audit_query(&filter)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut last = 0;
            for row in &backlog {
                last = row.seq;
                if tx.send(Ok(entry(row))).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(row) if row.seq > last && filter.matches(row.time_unix_ms, row.fields()) => {
                        if tx.send(Ok(entry(&row))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify_audit(
        &self,
        req: Request<v1::VerifyAuditRequest>,
    ) -> Result<Response<v1::VerifyAuditResponse>, Status> {
        let actor = actor("admin", &req);
        let vault = self.vault.clone();
        let verdict = blocking(move || vault.audit_verify()).await?;
        let (event, reply) = match verdict {
            Verdict::Intact { entries, first_seq, last_seq, acknowledged } => (
                Event::new(Kind::AuditVerify, Outcome::Ok, &actor).with("entries", entries),
                v1::VerifyAuditResponse {
                    intact: true,
                    entries,
                    first_seq,
                    last_seq,
                    acknowledged,
                    ..Default::default()
                },
            ),
            Verdict::Broken { seq, problem } => {
                tracing::error!(seq, %problem, "audit chain broken");
                (
                    Event::new(Kind::AuditVerify, Outcome::Failed, &actor)
                        .with("broken_seq", seq)
                        .with("problem", problem.clone()),
                    v1::VerifyAuditResponse { intact: false, broken_seq: seq, problem, ..Default::default() },
                )
            }
        };
        self.vault.record(event)?;
        Ok(Response::new(reply))
    }

    async fn acknowledge_integrity(
        &self,
        req: Request<v1::AcknowledgeIntegrityRequest>,
    ) -> Result<Response<v1::AcknowledgeIntegrityResponse>, Status> {
        let actor = actor("admin", &req);
        let vault = self.vault.clone();
        let acknowledged = blocking(move || vault.acknowledge_integrity(&actor)).await?;
        Ok(Response::new(v1::AcknowledgeIntegrityResponse { acknowledged }))
    }

    async fn hash_value(&self, req: Request<v1::HashValueRequest>) -> Result<Response<v1::HashValueResponse>, Status> {
        let mut req = req.into_inner();
        let value = take_secret(&mut req.value);
        let current_digest = match &req.current_of {
            Some(_) => self.vault.current_digest(secret_ref(&req.current_of)?)?.unwrap_or_default(),
            None => String::new(),
        };
        Ok(Response::new(v1::HashValueResponse { digest: self.vault.value_digest(&value)?, current_digest }))
    }

    async fn add_client(&self, req: Request<v1::AddClientRequest>) -> Result<Response<v1::ClientInfo>, Status> {
        let actor = actor("admin", &req);
        let r = req.into_inner();
        let client = Client {
            id: 0,
            name: r.name,
            uid: r.uid,
            gid: r.gid,
            exe: (!r.exe.is_empty()).then_some(r.exe),
            exe_sha256: (!r.exe_sha256.is_empty()).then_some(r.exe_sha256),
            enabled: true,
            token_only: r.token_only,
            grants: r.allow.into_iter().map(|p| (p, Grant { kind: grant_kind(r.use_only), created_unix: 0 })).collect(),
            created_unix: 0,
        };
        let vault = self.vault.clone();
        Ok(Response::new(client_info(blocking(move || vault.client_add(&actor, client)).await?)))
    }

    async fn remove_client(&self, req: Request<v1::ClientName>) -> Result<Response<v1::RemoveClientResponse>, Status> {
        let actor = actor("admin", &req);
        let name = req.into_inner().name;
        let vault = self.vault.clone();
        blocking(move || vault.client_remove(&actor, &name)).await?;
        Ok(Response::new(v1::RemoveClientResponse {}))
    }

    async fn set_client_enabled(
        &self,
        req: Request<v1::SetClientEnabledRequest>,
    ) -> Result<Response<v1::ClientInfo>, Status> {
        let actor = actor("admin", &req);
        let r = req.into_inner();
        let vault = self.vault.clone();
        Ok(Response::new(client_info(blocking(move || vault.client_set_enabled(&actor, &r.name, r.enabled)).await?)))
    }

    async fn grant(&self, req: Request<v1::GrantRequest>) -> Result<Response<v1::ClientInfo>, Status> {
        self.change_grants(req, true).await
    }

    async fn ungrant(&self, req: Request<v1::GrantRequest>) -> Result<Response<v1::ClientInfo>, Status> {
        self.change_grants(req, false).await
    }

    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let actor = actor("admin", &req);
        let r = req.into_inner();
        let secs = |n: u64| (n > 0).then(|| std::time::Duration::from_secs(n));
        let vault = self.vault.clone();
        let spec = TokenSpec {
            ttl: secs(r.ttl_secs),
            idle: secs(r.idle_secs),
            uses: r.uses,
            any_uid: r.any_uid,
            bind_exe: (!r.bind_exe.is_empty()).then_some(r.bind_exe),
        };
        let (token, row) = blocking(move || vault.token_create(&actor, &r.client, &spec)).await?;
        tracing::info!(accessor = row.accessor, client = row.client, "token created");
        // The one place a token leaves vaultd; it is not kept anywhere in clear.
        let token = String::from_utf8_lossy(token.expose()).into_owned();
        Ok(Response::new(v1::CreateTokenResponse { token, info: Some(token_info(row)) }))
    }

    async fn list_tokens(&self, _: Request<v1::ListTokensRequest>) -> Result<Response<v1::ListTokensResponse>, Status> {
        let tokens = self.vault.tokens()?;
        Ok(Response::new(v1::ListTokensResponse { tokens: tokens.into_iter().map(token_info).collect() }))
    }

    async fn revoke_tokens(
        &self,
        req: Request<v1::RevokeTokensRequest>,
    ) -> Result<Response<v1::RevokeTokensResponse>, Status> {
        let actor = actor("admin", &req);
        let r = req.into_inner();
        let accessor = match (r.all, r.accessor.is_empty()) {
            (true, true) => None,
            (false, false) => Some(r.accessor),
            _ => return Err(Status::invalid_argument("give a token accessor or --all, not both")),
        };
        let vault = self.vault.clone();
        let revoked = blocking(move || vault.token_revoke(&actor, accessor.as_deref())).await?;
        Ok(Response::new(v1::RevokeTokensResponse { revoked }))
    }

    async fn list_clients(
        &self,
        _: Request<v1::ListClientsRequest>,
    ) -> Result<Response<v1::ListClientsResponse>, Status> {
        let clients = self.vault.clients()?;
        Ok(Response::new(v1::ListClientsResponse { clients: clients.into_iter().map(client_info).collect() }))
    }

    async fn rekey(&self, req: Request<v1::RekeyRequest>) -> Result<Response<v1::RekeyResponse>, Status> {
        let actor = actor("admin", &req);
        let mut r = req.into_inner();
        let old = take_secret(&mut r.passphrase);
        let new = (!r.new_passphrase.is_empty()).then(|| take_secret(&mut r.new_passphrase));
        let kdf =
            r.kdf.map(|k| KdfParams { memory_kib: k.memory_kib, iterations: k.iterations, parallelism: k.parallelism });
        let vault = self.vault.clone();
        let kdf = blocking(move || vault.rekey(&actor, &old, new.as_ref(), kdf)).await?;
        tracing::info!(
            memory_kib = kdf.memory_kib,
            iterations = kdf.iterations,
            parallelism = kdf.parallelism,
            "rekeyed"
        );
        Ok(Response::new(v1::RekeyResponse { kdf: Some(kdf_params(kdf)) }))
    }

    async fn rotate_key(&self, req: Request<v1::RotateKeyRequest>) -> Result<Response<v1::RotateKeyResponse>, Status> {
        let actor = actor("admin", &req);
        let rewrap = req.get_ref().rewrap;
        let vault = self.vault.clone();
        let r = blocking(move || vault.rotate_key(&actor, rewrap)).await?;
        tracing::info!(term = r.term, new_term = r.new_term, to_rewrap = r.to_rewrap, "key term rotated");
        Ok(Response::new(v1::RotateKeyResponse {
            term: r.term,
            new_term: r.new_term,
            to_rewrap: r.to_rewrap,
            retired_terms: r.retired,
        }))
    }

    async fn rewrap_keys(
        &self,
        req: Request<v1::RewrapKeysRequest>,
    ) -> Result<Response<v1::RewrapKeysResponse>, Status> {
        let actor = actor("admin", &req);
        let r = req.into_inner();
        let batch = if r.batch == 0 { DEFAULT_REWRAP_BATCH } else { r.batch };
        let vault = self.vault.clone();
        let target = (r.term != 0).then_some(r.term);
        let w = blocking(move || vault.rewrap(&actor, target, r.after, batch)).await?;
        if w.done && w.remaining == 0 {
            tracing::info!(term = w.term, retired = ?w.retired, "rewrap finished");
        }
        Ok(Response::new(v1::RewrapKeysResponse {
            term: w.term,
            rewrapped: w.rewrapped,
            next_after: w.next_after,
            done: w.done,
            remaining: w.remaining,
            retired_terms: w.retired,
        }))
    }

    type BackupStream = ChunkStream;

    async fn backup(&self, req: Request<v1::BackupRequest>) -> Result<Response<ChunkStream>, Status> {
        let actor = actor("admin", &req);
        let vault = self.vault.clone();
        let writer = blocking(move || vault.backup(&actor)).await?;
        let total = writer.file_len();
        tracing::info!(bytes = total, "backup snapshot taken");
        let (tx, rx) = mpsc::channel(4);
        // The snapshot is read in chunks as the client takes them, never whole.
        tokio::task::spawn_blocking(move || {
            for chunk in writer {
                let item = chunk
                    .map(|data| v1::BackupChunk { data, total })
                    .map_err(|e| super::internal(format!("reading the snapshot: {e}")));
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn kdf_params(k: KdfParams) -> v1::KdfParams {
    v1::KdfParams {
        algorithm: "argon2id".into(),
        memory_kib: k.memory_kib,
        iterations: k.iterations,
        parallelism: k.parallelism,
        insecure_test_profile: k.is_insecure_test_profile(),
    }
}

impl AdminApi {
    async fn change_grants(
        &self,
        req: Request<v1::GrantRequest>,
        grant: bool,
    ) -> Result<Response<v1::ClientInfo>, Status> {
        let actor = actor("admin", &req);
        let r = req.into_inner();
        let vault = self.vault.clone();
        let change = if grant { Some(grant_kind(r.use_only)) } else { None };
        let row = blocking(move || vault.client_grants(&actor, &r.name, &r.patterns, change)).await?;
        Ok(Response::new(client_info(row)))
    }
}

fn grant_kind(use_only: bool) -> GrantKind {
    if use_only { GrantKind::Use } else { GrantKind::Read }
}

fn token_info(t: Token) -> v1::TokenInfo {
    v1::TokenInfo {
        accessor: t.accessor,
        client: t.client,
        bind_uid: t.bind_uid,
        created_unix: t.created_unix,
        expires_unix: t.expires_unix.unwrap_or(0),
        idle_secs: t.idle_secs.unwrap_or(0),
        uses_left: t.uses_left,
        last_used_unix: t.last_used_unix.unwrap_or(0),
        revoked_unix: t.revoked_unix.unwrap_or(0),
        bind_exe: t.bind_exe.unwrap_or_default(),
    }
}

fn client_info(c: Client) -> v1::ClientInfo {
    v1::ClientInfo {
        name: c.name,
        uid: c.uid,
        gid: c.gid,
        exe: c.exe.unwrap_or_default(),
        exe_sha256: c.exe_sha256.unwrap_or_default(),
        enabled: c.enabled,
        token_only: c.token_only,
        use_only: c.grants.iter().filter(|(_, g)| g.kind == GrantKind::Use).map(|(p, _)| p.clone()).collect(),
        grants: c.grants.into_keys().collect(),
        created_unix: c.created_unix,
    }
}

fn entry(row: &AuditRow) -> v1::AuditEntry {
    v1::AuditEntry { seq: row.seq, json: entry_json(row).to_string() }
}

fn audit_filter(f: Option<v1::AuditFilter>) -> AuditFilter {
    let f = f.unwrap_or_default();
    let text = |s: String| (!s.is_empty()).then_some(s);
    let time = |t: i64| (t != 0).then_some(t);
    AuditFilter {
        since_unix_ms: time(f.since_unix_ms),
        until_unix_ms: time(f.until_unix_ms),
        kind: text(f.r#type),
        client: text(f.client),
        secret: text(f.secret),
        limit: f.limit,
    }
}
