//! Unlock's check of the stored state: every row against its MAC, every parent
//! against its children, every summed table against the root, and the root's
//! generation against the one the audit head recorded. What passes becomes the
//! [`Image`] vaultd serves from; what does not is never acted on: it is named
//! in a [`Violation`] and its scope is quarantined.

use super::SmallMap;
use super::mac::{self, Root, SUMMED, Sums, Table};
use super::model::{Client, Grant, Incident, KeyTerm, Secret, Token, VersionState};
use super::{Child, Found, Persist, StoredState};
use super::{Image, Scope, Violation};
use crate::crypto::{MAC_LEN, Mac, Unlocked};
use std::collections::{BTreeSet, HashMap};

/// What unlock found.
pub struct Loaded {
    pub image: Image,
    pub violations: Vec<Violation>,
}

fn same(stored: Option<&[u8]>, computed: &[u8]) -> bool {
    stored.is_some_and(|s| {
        s.len() == computed.len() && s.iter().zip(computed).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

/// What the check has found so far.
struct Check<'k> {
    keys: &'k Unlocked,
    image: Image,
    violations: Vec<Violation>,
    /// Over the MACs stored with every row present (held or quarantined): what
    /// the root's per-table MACs should cover.
    stored: Sums,
}

impl Check<'_> {
    fn violation(&mut self, table: Table, row: impl Into<String>, problem: &str) {
        self.violations.push(Violation { table, row: row.into(), problem: problem.into() });
    }

    /// Counts a row toward its table's sum, by the MAC stored with it.
    fn count(&mut self, table: Table, stored: Option<&[u8]>, held: Option<&Mac>) {
        if let Some(m) = stored {
            self.stored.add(self.keys, table, m);
            // Until acknowledged, a quarantined row's stored MAC stays in the sums
            // the next root covers: it is reported again at every unlock.
            if held.is_none() {
                self.image.sums.add(self.keys, table, m);
            }
        }
        if let Some(m) = held {
            self.image.sums.add(self.keys, table, m);
        }
    }
}

/// An entry as stored, with the MAC stored with its own row and those stored
/// with its children's (table, key, MAC).
struct Stored<T> {
    entry: T,
    mac: Option<Vec<u8>>,
    children: Vec<ChildMac>,
}

/// A child row's table, key and stored MAC.
type ChildMac = (Table, String, Option<Vec<u8>>);

/// The stored rows grouped into entries.
struct Assembled {
    secrets: Vec<Stored<Secret>>,
    clients: Vec<Stored<Client>>,
    tokens: Vec<Found<Token>>,
    incidents: Vec<Found<Incident>>,
    terms: Vec<Found<KeyTerm>>,
    /// Children that name no parent: (table, a description).
    orphans: Vec<(Table, String)>,
    unreadable: Vec<(Table, i64)>,
    root: Option<Root>,
}

fn assemble(stored: StoredState) -> Assembled {
    let StoredState { secrets, versions, rotations, clients, grants, tokens, incidents, terms, root, unreadable } =
        stored;
    let mut kids: HashMap<i64, (Secret, Vec<ChildMac>)> = HashMap::new();
    for v in versions {
        let entry = kids.entry(v.parent).or_insert_with(|| (Secret::empty(), Vec::new()));
        entry.0.versions.insert(v.key, v.row);
        entry.1.push((Table::Version, v.key.to_string(), v.mac));
    }
    for r in rotations {
        let entry = kids.entry(r.parent).or_insert_with(|| (Secret::empty(), Vec::new()));
        entry.0.rotations.insert(r.key, r.row);
        entry.1.push((Table::Rotation, r.key.to_string(), r.mac));
    }
    let secrets = secrets
        .into_iter()
        .map(|Found { row: mut secret, mac }| {
            let (children, macs) = kids.remove(&secret.id).unwrap_or_else(|| (Secret::empty(), Vec::new()));
            secret.versions = children.versions;
            secret.rotations = children.rotations;
            secret.versions.shrink();
            secret.rotations.shrink();
            Stored { entry: secret, mac, children: macs }
        })
        .collect();
    let mut orphans: Vec<(Table, String)> = kids
        .into_iter()
        .flat_map(|(parent, (_, macs))| {
            macs.into_iter().map(move |(t, key, _)| (t, format!("secret row {parent}: {key}")))
        })
        .collect();
    let mut by_client: HashMap<i64, Vec<Child<String, Grant>>> = HashMap::new();
    for g in grants {
        by_client.entry(g.parent).or_default().push(g);
    }
    let clients = clients
        .into_iter()
        .map(|Found { row: mut client, mac }| {
            let grants = by_client.remove(&client.id).unwrap_or_default();
            client.grants = grants.iter().map(|g| (g.key.clone(), g.row)).collect();
            let children = grants.into_iter().map(|g| (Table::Grant, g.key, g.mac)).collect();
            Stored { entry: client, mac, children }
        })
        .collect();
    orphans.extend(
        by_client.into_iter().flat_map(|(parent, g)| {
            g.into_iter().map(move |g| (Table::Grant, format!("client row {parent}: {}", g.key)))
        }),
    );
    Assembled { secrets, clients, tokens, incidents, terms, orphans, unreadable, root }
}

/// Checks `stored` under `keys`. `head_generation` is the state generation the
/// audit head recorded, when the head verified.
pub fn check(keys: &Unlocked, stored: StoredState, head_generation: Option<u64>) -> Loaded {
    let mut c = Check { keys, image: Image::default(), violations: Vec::new(), stored: Sums::default() };
    let Assembled { secrets, clients, tokens, incidents, terms, orphans, unreadable, root } = assemble(stored);
    for (table, rowid) in unreadable {
        c.violation(table, format!("row {rowid}"), "holds a state vaultd never writes (edited)");
        // Its parent cannot be told apart from the others: the table is suspect.
        let parent = match table {
            Table::Version | Table::Rotation => Table::Secret,
            other => other,
        };
        c.image.quarantine(Scope::Table(parent));
    }
    for (table, row) in orphans {
        c.violation(table, row, "belongs to nothing stored (inserted)");
    }

    for Stored { entry: secret, mac: stored_mac, children } in secrets {
        let computed = mac::secret(keys, &secret);
        let label = format!("{}/{}", secret.env, secret.name);
        let mut ok = true;
        for (table, key, stored) in children {
            let want = match table {
                Table::Version => key.parse().ok().and_then(|k| computed.versions.get(&k)),
                _ => key.parse().ok().and_then(|k| computed.rotations.get(&k)),
            };
            if !want.is_some_and(|m| same(stored.as_deref(), m)) {
                let what = if table == Table::Version { "version" } else { "rotation" };
                c.violation(table, format!("{label} {what} {key}"), "does not match its MAC (edited or inserted)");
                ok = false;
            }
        }
        if !same(stored_mac.as_deref(), &computed.row) {
            c.violation(
                Table::Secret,
                label,
                "does not match its MAC (edited, or a row under it was deleted, added or put back)",
            );
            ok = false;
        }
        if ok {
            c.count(Table::Secret, stored_mac.as_deref(), Some(&computed.row));
            c.image.insert_secret(secret);
        } else {
            c.count(Table::Secret, stored_mac.as_deref(), None);
            c.image.quarantine(Scope::Secret(secret.env, secret.name));
        }
    }

    for Stored { entry: client, mac: stored_mac, children } in clients {
        let computed = mac::client(keys, &client);
        let mut ok = true;
        for (_, pattern, stored) in &children {
            if !computed.grants.get(pattern).is_some_and(|m| same(stored.as_deref(), m)) {
                let row = format!("{} {pattern}", client.name);
                c.violation(Table::Grant, row, "does not match its MAC (edited or inserted)");
                ok = false;
            }
        }
        if !same(stored_mac.as_deref(), &computed.row) {
            let problem = "does not match its MAC (edited, or a grant was deleted, added or put back)";
            c.violation(Table::Client, client.name.clone(), problem);
            ok = false;
        }
        if ok {
            c.count(Table::Client, stored_mac.as_deref(), Some(&computed.row));
            c.image.insert_client(client);
        } else {
            c.count(Table::Client, stored_mac.as_deref(), None);
            c.image.quarantine(Scope::Client(client.name));
        }
    }

    for Found { row: token, mac: stored_mac } in tokens {
        let computed = mac::token(keys, &token);
        if same(stored_mac.as_deref(), &computed) {
            c.count(Table::Token, stored_mac.as_deref(), Some(&computed));
            c.image.insert_token(token);
        } else {
            c.violation(Table::Token, token.accessor.clone(), "does not match its MAC (edited, inserted or moved)");
            c.count(Table::Token, stored_mac.as_deref(), None);
            c.image.quarantine(Scope::Token(token.accessor));
        }
    }

    for Found { row: incident, mac: stored_mac } in incidents {
        // The one row written without the key on purpose (an offline revoke-all,
        // or one made while sealed): applied at unlock.
        if stored_mac.is_none() {
            c.image.pending_incidents.insert(incident.id, incident);
            continue;
        }
        let computed = mac::incident(keys, &incident);
        if same(stored_mac.as_deref(), &computed) {
            c.count(Table::Incident, stored_mac.as_deref(), Some(&computed));
            c.image.incidents.insert(incident.id, incident);
        } else {
            c.violation(Table::Incident, incident.id.to_string(), "does not match its MAC (edited or inserted)");
            c.count(Table::Incident, stored_mac.as_deref(), None);
        }
    }

    for Found { row: term, mac: stored_mac } in terms {
        let computed = mac::key_term(keys, &term);
        if same(stored_mac.as_deref(), &computed) {
            c.count(Table::KeyTerm, stored_mac.as_deref(), Some(&computed));
            c.image.terms.insert(term.term, term);
        } else {
            c.violation(Table::KeyTerm, term.term.to_string(), "does not match its MAC (edited or inserted)");
            c.count(Table::KeyTerm, stored_mac.as_deref(), None);
            c.image.quarantine(Scope::Table(Table::KeyTerm));
        }
    }

    check_root(&mut c, root, head_generation);
    Loaded { image: c.image, violations: c.violations }
}

/// The root: each summed table's rows, no more and no fewer, at the generation
/// the audit head recorded. A table that does not add up is quarantined whole
/// (which of its rows went or came back cannot be told); a root that is not
/// vaultd's, or is older than the audit log says, quarantines every table.
fn check_root(c: &mut Check<'_>, root: Option<Root>, head_generation: Option<u64>) {
    let genuine = root.as_ref().filter(|r| r.is_genuine(c.keys) && r.tables.len() == SUMMED.len() * MAC_LEN);
    let Some(root) = genuine else {
        let problem = if root.is_some() {
            "the state root does not match its MAC (edited)"
        } else {
            "the state root is missing (deleted)"
        };
        c.violation(Table::Secret, "root", problem);
        return quarantine_all(c, root.map_or(0, |r| r.generation));
    };
    c.image.generation = root.generation;
    let Some(head_generation) = head_generation else {
        // The generation the state must be at is what the head says; without a
        // head that verifies, an older copy of the state cannot be told apart.
        let problem = "the audit log's head does not verify, so the state's generation cannot be confirmed";
        c.violation(Table::Secret, "root", problem);
        return quarantine_all(c, root.generation);
    };
    if head_generation != root.generation {
        let problem = format!(
            "the state root is generation {}, the audit log's head says {head_generation}: the state was put back \
             from an older copy",
            root.generation,
        );
        c.violation(Table::Secret, "root", &problem);
        return quarantine_all(c, root.generation);
    }
    for table in SUMMED {
        let stored = root.table(table).unwrap_or_default();
        if !same(Some(stored), &c.stored.table_mac(c.keys, root.generation, table)) {
            c.violation(table, "*", "rows were deleted, added or put back from an older copy");
            c.image.quarantine(Scope::Table(table));
            c.image.carried.insert(table, stored.to_vec());
        }
    }
}

fn quarantine_all(c: &mut Check<'_>, generation: u64) {
    c.image.generation = generation;
    for table in SUMMED {
        c.image.quarantine(Scope::Table(table));
        // Never a MAC of anything: the tables stay reported until acknowledged.
        c.image.carried.insert(table, vec![0; MAC_LEN]);
    }
}

impl Secret {
    /// A placeholder the loader fills in.
    fn empty() -> Secret {
        Secret {
            id: 0,
            env: String::new(),
            name: String::new(),
            provider: String::new(),
            description: String::new(),
            current_version: 0,
            created_unix: 0,
            updated_unix: 0,
            rotator: String::new(),
            rotate_every_secs: None,
            grace_secs: 0,
            next_rotation_unix: None,
            due_alerted_unix: None,
            versions: SmallMap::new(),
            rotations: SmallMap::new(),
        }
    }
}

/// Every stored entry as it stands, whatever its MACs say, signed anew as the
/// state at `generation` + 1 (a full rewrite: every row's MAC, the sums, the
/// root). `neutralize`d scopes lose what they could grant: their clients are
/// disabled, their tokens revoked, their secrets' previous versions retired.
/// Incidents never signed stay pending (`signed_incidents`: false), or are
/// taken as applied (the first unlock of a vault from before authenticated
/// state, where none was ever signed).
pub fn resign<P: Persist>(
    txn: &P,
    keys: &Unlocked,
    stored: StoredState,
    generation: u64,
    neutralize: &BTreeSet<Scope>,
    signed_incidents: bool,
) -> Result<Image, P::Error> {
    let held = |scope: Scope, table: Table| !neutralize.contains(&scope) && !neutralize.contains(&Scope::Table(table));
    let now = crate::clock::now_unix();
    let a = assemble(stored);
    let mut base = Image { generation, ..Image::default() };
    let mut pending = Vec::new();
    let changes = {
        let mut d = base.draft();
        for Stored { entry: mut s, children, .. } in a.secrets {
            if !held(Scope::Secret(s.env.clone(), s.name.clone()), Table::Secret) {
                // Nothing that fails its own MAC is served again: such a version
                // is kept (the owner can still reveal it) but retired, and such a
                // rotation is over.
                let computed = mac::secret(keys, &s);
                for (table, key, stored) in children {
                    match table {
                        Table::Version => {
                            let Ok(n) = key.parse::<u64>() else { continue };
                            if !computed.versions.get(&n).is_some_and(|m| same(stored.as_deref(), m))
                                && let Some(v) = s.versions.get_mut(&n)
                            {
                                v.state = VersionState::Retired;
                            }
                        }
                        _ => {
                            let Ok(id) = key.parse::<i64>() else { continue };
                            if !computed.rotations.get(&id).is_some_and(|m| same(stored.as_deref(), m))
                                && let Some(r) = s.rotations.get_mut(&id)
                            {
                                r.step = super::model::Step::Failed;
                            }
                        }
                    }
                }
                for v in s.versions.values_mut().filter(|v| v.state == VersionState::Previous) {
                    v.state = VersionState::Retired;
                }
            }
            d.secrets.insert((s.env.clone(), s.name.clone()), Some(s));
        }
        for Stored { entry: mut c, .. } in a.clients {
            if !held(Scope::Client(c.name.clone()), Table::Client) {
                c.enabled = false;
            }
            d.clients.insert(c.name.clone(), Some(c));
        }
        for Found { row: mut t, .. } in a.tokens {
            if !held(Scope::Token(t.accessor.clone()), Table::Token) {
                t.revoke(now);
            }
            d.tokens.insert(t.accessor.clone(), Some(t));
        }
        for Found { row: i, mac } in a.incidents {
            if mac.is_some() || signed_incidents {
                d.incidents.push(i);
            } else {
                pending.push(i);
            }
        }
        for Found { row: t, .. } in a.terms {
            d.terms.insert(t.term, Some(t));
        }
        d.persist(txn, keys)?
    };
    base.apply(changes);
    for i in pending {
        base.pending_incidents.insert(i.id, i);
    }
    txn.delete_orphans()?;
    Ok(base)
}
