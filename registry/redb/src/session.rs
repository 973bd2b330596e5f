//! Sessions' transactions: creating one, and invalidating one with the keys it holds in the
//! same transaction, so no reader sees a lock held by a session that is gone.

use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use shoal_registry::{
    Committed, Error, KvEntry, KvWrites, SessionBehavior, SessionRecord, Subject,
};

use crate::db::{Area, Db, DbResult, Write, bump_change_index, decode, encode, read_indexes};
use crate::kv::apply_writes;
use crate::tables::{KV, KV_LOCKS, LOCK_DELAYS, META, SESSIONS};

impl Db {
    /// Creates a session; see [`Store::create_session`](shoal_registry::Store::create_session).
    pub(crate) fn create_session(
        &self,
        mut session: SessionRecord,
    ) -> DbResult<Committed<SessionRecord>> {
        session.validate(Duration::ZERO)?;
        let id = session.id.clone();
        self.write(Subject::Session(id.clone()), |txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            if sessions.get(id.as_str())?.is_some() {
                return Err(Error::Conflict {
                    kind: "session",
                    name: id.clone(),
                    expected: "no session".into(),
                    found: "a session".into(),
                }
                .into());
            }
            let change_index = bump_change_index(txn, &[])?;
            session.create_index = change_index;
            session.modify_index = change_index;
            sessions.insert(id.as_str(), encode(&session).as_slice())?;
            Ok(Write::Commit(session))
        })
    }

    /// The session `id`.
    pub(crate) fn session(&self, id: &str) -> DbResult<Option<SessionRecord>> {
        let txn = self.database.begin_read()?;
        let sessions = txn.open_table(SESSIONS)?;
        let found = sessions.get(id)?;
        found.map(|value| decode(value.value(), id)).transpose()
    }

    /// Every session, by ID, and the change index.
    pub(crate) fn sessions(&self) -> DbResult<(Vec<SessionRecord>, u64)> {
        let txn = self.database.begin_read()?;
        let index = read_indexes(&txn.open_table(META)?)?.change;
        let mut sessions = Vec::new();
        for item in txn.open_table(SESSIONS)?.iter()? {
            let (id, value) = item?;
            sessions.push(decode(value.value(), id.value())?);
        }
        Ok((sessions, index))
    }

    /// Invalidates a session; see
    /// [`Store::destroy_session`](shoal_registry::Store::destroy_session).
    pub(crate) fn destroy_session(&self, id: &str) -> DbResult<Committed<bool>> {
        let now = self.clock.now_unix_ms();
        self.write(Subject::Session(id.to_owned()), |txn| {
            let session: SessionRecord = {
                let sessions = txn.open_table(SESSIONS)?;
                let found = sessions.get(id)?;
                match found {
                    Some(value) => decode(value.value(), id)?,
                    None => return Ok(Write::Abort(false)),
                }
            };
            txn.open_table(SESSIONS)?.remove(id)?;
            let held: Vec<(String, u64)> = {
                let locks = txn.open_table(KV_LOCKS)?;
                let mut held = Vec::new();
                for item in locks.iter()? {
                    let (key, lock) = item?;
                    let (lock_index, holder) = lock.value();
                    if holder == id {
                        held.push((key.value().to_owned(), lock_index));
                    }
                }
                held
            };
            let areas: &[Area] = if held.is_empty() { &[] } else { &[Area::Kv] };
            let change_index = bump_change_index(txn, areas)?;
            let mut writes = KvWrites::new();
            {
                let kv = txn.open_table(KV)?;
                for (key, lock_index) in &held {
                    let written = match session.behavior {
                        SessionBehavior::Delete => None,
                        SessionBehavior::Release => kv.get(key.as_str())?.map(|value| {
                            let (create_index, _, flags, value) = value.value();
                            KvEntry {
                                key: key.clone(),
                                value: value.to_vec(),
                                flags,
                                create_index,
                                modify_index: change_index,
                                lock_index: *lock_index,
                                session: None,
                            }
                        }),
                    };
                    writes.insert(key.clone(), written);
                }
            }
            apply_writes(txn, &writes)?;
            if !session.lock_delay.is_zero() {
                let until = now.saturating_add(
                    u64::try_from(session.lock_delay.as_millis()).unwrap_or(u64::MAX),
                );
                let mut delays = txn.open_table(LOCK_DELAYS)?;
                for (key, _) in &held {
                    delays.insert(key.as_str(), until)?;
                }
            }
            Ok(Write::Commit(true))
        })
    }
}
