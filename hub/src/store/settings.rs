//! Reading the settings the `fleet` table keeps, at start: the registry, cordons, verdicts,
//! the gateway's usage and aliases, workflows' hooks, schedules and memory (`load_fleet`), and
//! the join tokens and enrolled sidecars (`load_enrolled`).

use redb::{ReadableDatabase, ReadableTable};

use super::{
    ALIAS_PREFIX, CORDON_PREFIX, ENDPOINT_PREFIX, Enrolled, Error, FLEET, Fleet, HOOK_PREFIX, IDENTITY_PREFIX,
    JOIN_PREFIX, MEMORY_PREFIX, SCHEDULE_PREFIX, Store, USAGE_PREFIX, VERDICTS_PREFIX, codec, redb_err,
};

impl Store {
    /// The registry and the cordons, as stored. A record that does not decode is skipped with a
    /// warning naming it: these are settings an operator can redo, and the queue matters more.
    pub fn load_fleet(&self) -> Result<Fleet, Error> {
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let table = txn.open_table(FLEET).map_err(redb_err)?;
        let mut fleet = Fleet::default();
        for entry in table.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let (key, value) = (key.value(), value.value());
            if let Some(sidecar_id) = key.strip_prefix(CORDON_PREFIX) {
                match codec::decode_cordon(value) {
                    Ok(cordon) => drop(fleet.cordons.insert(sidecar_id.to_owned(), cordon)),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored cordon that does not decode"),
                }
            } else if key.starts_with(ENDPOINT_PREFIX) {
                match codec::decode_endpoint(value) {
                    Ok(endpoint) => drop(fleet.registry.put(endpoint)),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored endpoint that does not decode"),
                }
            } else if let Some(rest) = key.strip_prefix(VERDICTS_PREFIX) {
                match codec::decode_verdicts(rest, value) {
                    Ok(verdicts) => fleet.verdicts.push(verdicts),
                    Err(err) => tracing::warn!(key, error = %err, "skipped stored verdicts that do not decode"),
                }
            } else if let Some(name) = key.strip_prefix(ALIAS_PREFIX) {
                match std::str::from_utf8(value) {
                    Ok(models) => fleet.aliases.push((name.to_owned(), models.lines().map(str::to_owned).collect())),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored model alias that does not decode"),
                }
            } else if let Some(rest) = key.strip_prefix(USAGE_PREFIX) {
                match codec::decode_usage(rest, value) {
                    Ok(row) => fleet.usage.push(row),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored usage row that does not decode"),
                }
            } else if let Some(name) = key.strip_prefix(HOOK_PREFIX) {
                match codec::workflow::decode_hook(name, value) {
                    Ok(hook) => fleet.hooks.push(hook),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored webhook that does not decode"),
                }
            } else if let Some(name) = key.strip_prefix(SCHEDULE_PREFIX) {
                match codec::workflow::decode_scheduled(name, value) {
                    Ok(scheduled) => fleet.schedules.push(scheduled),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored schedule that does not decode"),
                }
            } else if let Some(name) = key.strip_prefix(MEMORY_PREFIX) {
                match codec::workflow::decode_memory(name, value) {
                    Ok(memory) => fleet.memories.push(memory),
                    Err(err) => {
                        tracing::warn!(key, error = %err, "skipped a stored workflow memory that does not decode")
                    }
                }
            } else if !(key.starts_with(JOIN_PREFIX) || key.starts_with(IDENTITY_PREFIX)) {
                tracing::warn!(key, "skipped an unknown fleet setting");
            }
        }
        Ok(fleet)
    }

    /// The join tokens and enrolled sidecars. A record that does not decode is skipped with a
    /// warning (a sidecar whose identity is skipped cannot connect until it enrols again).
    pub fn load_enrolled(&self) -> Result<Enrolled, Error> {
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let table = txn.open_table(FLEET).map_err(redb_err)?;
        let mut enrolled = Enrolled::default();
        for entry in table.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let (key, value) = (key.value(), value.value());
            if let Some(id) = key.strip_prefix(JOIN_PREFIX) {
                match codec::decode_join_grant(id, value) {
                    Ok(grant) => enrolled.joins.push(grant),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored join token that does not decode"),
                }
            } else if let Some(id) = key.strip_prefix(IDENTITY_PREFIX) {
                match codec::decode_identity(id, value) {
                    Ok(identity) => enrolled.identities.push(identity),
                    Err(err) => {
                        tracing::warn!(key, error = %err, "skipped a stored sidecar identity that does not decode")
                    }
                }
            }
        }
        Ok(enrolled)
    }
}
