//! Sessions, as Consul has them: a client's claim to be alive, which locks on keys hang from.
//!
//! A session lives until it is destroyed, until its TTL lapses without a renewal, or until a
//! check it names (the node's `serfHealth` by default) goes critical. Ending it *invalidates*
//! it: every key it holds is released (behavior `release`) or deleted (`delete`), and none of
//! them can be locked again for the session's lock-delay, so a holder that was cut off has time
//! to notice before someone else acts on the same lock.
//!
//! The store keeps sessions durably and owns their TTL ([`Store::renew_session`]): the redb
//! backend with timers that restart when the store opens (as Consul's restart when it boots),
//! the etcd backend with one etcd lease per session, so a lock means the same on every node.
//! The node invalidates sessions whose checks fail.
//!
//! [`Store::renew_session`]: crate::Store::renew_session

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_spec::FieldError;

use crate::record::SCHEMA_VERSION;
use crate::{Error, Result};

/// The shortest TTL a session may have by default, as in Consul (whose agents, like shoal's
/// nodes, may set another: the store refuses only a zero TTL).
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(10);

/// The longest TTL a session may have, as in Consul.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);

/// A session's lock-delay when its creator does not say, as in Consul.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// The longest lock-delay, as in Consul.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// The check every node has, passing while the node is alive: a session names it unless
/// told otherwise, so it ends with its node.
pub const NODE_HEALTH_CHECK: &str = "serfHealth";

/// A session lapses when it has not been renewed for this many TTLs, as in Consul, which
/// allows a renewal that is a little late.
pub const TTL_MULTIPLIER: u32 = 2;

/// What happens to the keys a session holds when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// The keys stay, unlocked.
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

impl SessionBehavior {
    /// `release` or `delete`, as Consul names them.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

/// A session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// A UUID, chosen by the node that creates it.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The node it belongs to, whose checks it names.
    pub node: String,
    /// The IDs of the node's checks it ends with ([`NODE_HEALTH_CHECK`] by default).
    pub checks: Vec<String>,
    /// What happens to its keys when it ends.
    pub behavior: SessionBehavior,
    /// It ends when not renewed for [`TTL_MULTIPLIER`] times this; `None`: only when destroyed
    /// or when a check fails.
    pub ttl: Option<Duration>,
    /// How long its keys cannot be locked again once it is invalidated.
    pub lock_delay: Duration,
    /// The change index of the change that created it.
    pub create_index: u64,
    /// The same: a session is never modified, only created and destroyed.
    pub modify_index: u64,
}

impl SessionRecord {
    /// A session to create on `node`, with Consul's defaults: no name, `serfHealth`, release,
    /// no TTL, a lock-delay of 15 s.
    pub fn new(id: impl Into<String>, node: impl Into<String>) -> SessionRecord {
        SessionRecord {
            version: SCHEMA_VERSION,
            id: id.into(),
            name: String::new(),
            node: node.into(),
            checks: vec![NODE_HEALTH_CHECK.to_owned()],
            behavior: SessionBehavior::Release,
            ttl: None,
            lock_delay: DEFAULT_LOCK_DELAY,
            create_index: 0,
            modify_index: 0,
        }
    }

    /// Refuses what no backend may store, naming the field: an empty ID, a TTL of zero or
    /// over [`SESSION_TTL_MAX`] (or under `ttl_min`), a lock-delay over [`MAX_LOCK_DELAY`].
    pub fn validate(&self, ttl_min: Duration) -> Result<()> {
        if self.id.is_empty() {
            return Err(Error::Invalid(FieldError::new("ID", "missing session ID")));
        }
        if let Some(ttl) = self.ttl
            && (ttl.is_zero() || ttl < ttl_min || ttl > SESSION_TTL_MAX)
        {
            return Err(Error::Invalid(FieldError::new(
                "TTL",
                format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    humantime::format_duration(ttl),
                    humantime::format_duration(ttl_min),
                    humantime::format_duration(SESSION_TTL_MAX)
                ),
            )));
        }
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(Error::Invalid(FieldError::new(
                "LockDelay",
                format!(
                    "lock-delay {} is over the maximum of {}s",
                    humantime::format_duration(self.lock_delay),
                    MAX_LOCK_DELAY.as_secs()
                ),
            )));
        }
        Ok(())
    }

    /// How long it may go without a renewal before it lapses.
    pub fn lapses_after(&self) -> Option<Duration> {
        self.ttl.map(|ttl| ttl * TTL_MULTIPLIER)
    }
}
