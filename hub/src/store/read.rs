//! Reading what is stored: every task at start, whole (tools and tests) or as the hub keeps
//! them ([`Store::load_queue`]: finished tasks packed as their records), decoded on every core;
//! and one task with its output, from the `output` table or its files.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{Error, OUTPUT, Packed, Store, TASKS, codec, in_files, redb_err};
use crate::domain::{Task, TaskId};

/// A stored task as [`Store::load_queue`] gives it to the hub.
pub enum Loaded {
    /// Not finished: the core works with it.
    Live(Box<Task>),
    /// Finished: kept packed; its idempotency key apart, for the core's index of keys.
    Settled { id: TaskId, packed: Packed, idempotency_key: Option<String> },
}

impl Loaded {
    /// A task as the load gives it: packed if it is finished.
    pub fn from_task(task: Task) -> Loaded {
        if !task.state.is_terminal() {
            return Loaded::Live(Box::new(task));
        }
        let (id, idempotency_key) = (task.id, task.spec.idempotency_key.clone());
        Loaded::Settled { id, packed: Packed::pack(task), idempotency_key }
    }
}

impl Store {
    /// Every stored task, oldest first, decoded whole (tools and tests; the hub loads with
    /// [`Store::load_queue`]). A record that does not decode stops the load.
    /// Boxed, because a task record is large and a million of them should move as pointers.
    #[allow(clippy::vec_box)] // Reason: as above.
    pub fn load_tasks(&self) -> Result<Vec<Box<Task>>, Error> {
        self.load_records(|key, bytes| {
            codec::decode_task(&bytes).map(Box::new).map_err(|message| Error::Corrupt { key, message })
        })
    }

    /// Every stored task, oldest first, as the hub keeps it: a task not finished decoded, a
    /// finished one packed (its record's bytes). A record that does not decode stops the load:
    /// the hub must never start with part of its queue silently missing.
    pub fn load_queue(&self) -> Result<Vec<Loaded>, Error> {
        self.load_records(|key, bytes| {
            let mut task = codec::decode_task(&bytes).map_err(|message| Error::Corrupt { key, message })?;
            if !task.state.is_terminal() {
                if let Some(outcome) = &mut task.outcome {
                    // A record of the format before output was stored apart holds its own,
                    // which stays on disk and is read from there.
                    (outcome.stdout, outcome.stderr) = (Vec::new(), Vec::new());
                }
                return Ok(Loaded::Live(Box::new(task)));
            }
            if task.outcome.as_ref().is_some_and(|o| !(o.stdout.is_empty() && o.stderr.is_empty())) {
                return Ok(Loaded::from_task(task)); // Packed without its inline output.
            }
            let packed = Packed::from_record(&task, bytes);
            Ok(Loaded::Settled { id: task.id, packed, idempotency_key: task.spec.idempotency_key })
        })
    }

    /// Reads every task record in one read transaction, then converts them on every core.
    fn load_records<T: Send>(
        &self,
        convert: impl Fn(u128, Vec<u8>) -> Result<T, Error> + Sync,
    ) -> Result<Vec<T>, Error> {
        let reading = std::time::Instant::now();
        let mut raw: Vec<(u128, Vec<u8>)> = {
            let txn = self.db()?.begin_read().map_err(redb_err)?;
            let table = txn.open_table(TASKS).map_err(redb_err)?;
            let mut raw = Vec::with_capacity(table.len().map_err(redb_err)? as usize);
            for entry in table.iter().map_err(redb_err)? {
                let (key, value) = entry.map_err(redb_err)?;
                raw.push((key.value(), value.value().to_vec()));
            }
            raw
        };
        tracing::debug!(records = raw.len(), read_ms = reading.elapsed().as_millis() as u64, "read stored tasks");
        let convert_all = |chunk: &mut [(u128, Vec<u8>)]| -> Result<Vec<T>, Error> {
            chunk.iter_mut().map(|(key, bytes)| convert(*key, std::mem::take(bytes))).collect()
        };
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if raw.len() < 10_000 || threads == 1 {
            return convert_all(&mut raw);
        }
        let chunk = raw.len().div_ceil(threads);
        let converted: Vec<Result<Vec<T>, Error>> = std::thread::scope(|scope| {
            let convert_all = &convert_all;
            let workers: Vec<_> = raw.chunks_mut(chunk).map(|part| scope.spawn(move || convert_all(part))).collect();
            workers.into_iter().map(|w| w.join().expect("a decoding thread panicked")).collect()
        });
        let mut records = Vec::with_capacity(raw.len());
        for part in converted {
            records.extend(part?);
        }
        Ok(records)
    }

    /// One stored task, with its output. Blocking: call from a blocking context.
    pub fn get_task(&self, id: TaskId) -> Result<Option<Task>, Error> {
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let table = txn.open_table(TASKS).map_err(redb_err)?;
        let key = u128::from(id.0);
        let Some(value) = table.get(key).map_err(redb_err)? else { return Ok(None) };
        let mut task = codec::decode_task(value.value()).map_err(|message| Error::Corrupt { key, message })?;
        if let Some(outcome) = &mut task.outcome {
            // Records written before output was kept apart hold it inline.
            let output = txn.open_table(OUTPUT).map_err(redb_err)?;
            let (stdout, stderr) = self.read_outputs(&output, key)?;
            if !stdout.is_empty() || !stderr.is_empty() {
                (outcome.stdout, outcome.stderr) = (stdout, stderr);
            }
        }
        Ok(Some(task))
    }

    /// A task's stdout and stderr, from its files or its chunks.
    fn read_outputs(
        &self,
        table: &impl ReadableTable<(u128, u8, u32), &'static [u8]>,
        key: u128,
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        if table.get(in_files(key)).map_err(redb_err)?.is_none() {
            return Ok((read_output(table, key, 1)?, read_output(table, key, 2)?));
        }
        let read = |stream| self.blobs.read(key, stream).map_err(Error::io(self.blobs.dir()));
        Ok((read(1)?, read(2)?))
    }

    /// Removes output files no marker names: what a crash left between writing a file and the
    /// commit naming it, or between a commit dropping it and its removal.
    pub(super) fn sweep_output_files(&self) -> Result<(), Error> {
        if !self.blobs.dir().exists() {
            return Ok(());
        }
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let output = txn.open_table(OUTPUT).map_err(redb_err)?;
        let removed = self.blobs.sweep(|key| output.get(in_files(key)).ok().flatten().is_some());
        if removed > 0 {
            tracing::info!(removed, dir = %self.blobs.dir().display(), "removed output files no task names");
        }
        Ok(())
    }

    /// A task's stored output, stdout and stderr: what [`Op::PutOutput`] wrote, and nothing
    /// once retention dropped it. Blocking.
    pub fn output(&self, id: TaskId) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let output = txn.open_table(OUTPUT).map_err(redb_err)?;
        self.read_outputs(&output, u128::from(id.0))
    }
}

/// One stream of a task's stored output, its chunks joined.
fn read_output(
    table: &impl ReadableTable<(u128, u8, u32), &'static [u8]>,
    key: u128,
    stream: u8,
) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    for entry in table.range((key, stream, 0)..=(key, stream, u32::MAX)).map_err(redb_err)? {
        let (_, chunk) = entry.map_err(redb_err)?;
        bytes.extend_from_slice(chunk.value());
    }
    Ok(bytes)
}
