//! [`JournalError`]: the failure modes a journal caller acts on.

use sluice_event::ErrorKind;

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// No such topic.
    #[error("topic {0} not found")]
    TopicNotFound(String),
    /// No such partition.
    #[error("partition {partition} of topic {topic} not found")]
    PartitionNotFound {
        /// Topic.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// The topic exists with another partition count.
    #[error("topic {topic} exists with {existing} partitions")]
    TopicExists {
        /// Topic.
        topic: String,
        /// Its partition count.
        existing: u32,
    },
    /// A record is larger than the segment format allows.
    #[error("record of {size} bytes exceeds the limit of {limit}")]
    RecordTooLarge {
        /// Record size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The disk is full; the append was rolled back and may be retried later.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The journal stopped after an fsync or write error; restart the process.
    #[error("journal failed and must be reopened: {0}")]
    Failed(String),
    /// Data before the durable point is corrupt; the partition is quarantined.
    #[error("partition {topic}/{partition} is quarantined: {reason}")]
    Quarantined {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// What was found.
        reason: String,
    },
    /// A name, argument or configuration value is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The journal was shut down; nothing more can be appended through this handle.
    #[error("journal is shut down")]
    Closed,
    /// Another journal, in this process or another, has the directory open.
    #[error("journal directory {} is in use by another journal", .0.display())]
    Locked(std::path::PathBuf),
    /// A remote backend (NATS JetStream) could not be reached or refused a request; the append
    /// or read may be retried.
    #[error("journal backend unavailable: {0}")]
    Unavailable(String),
    /// Another writer appended to a partition shared between writers, past what the caller had
    /// read when it made its conditional append ([`crate::Journal::append_shared`]): nothing was
    /// appended. Read the partition up to `end`, check again, and retry.
    #[error(
        "partition {topic}/{partition} has records of another writer up to offset {end}; read them first"
    )]
    Contended {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Every record of another writer lies below this offset.
        end: u64,
    },
    /// Another writer appended to a partition this handle appends to as its only writer
    /// ([`crate::Journal::append`]) since this handle last knew its end: nothing was appended.
    /// The partition has another owner now (a lease moved while this one was cut off or
    /// paused); read it again (`Journal::sync`) before deciding anything more.
    #[error(
        "partition {topic}/{partition} has records of another writer from offset {after}; nothing was appended (its owner moved to another writer)"
    )]
    Fenced {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The partition's end as this handle knew it.
        after: u64,
    },
    /// Another IO error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl JournalError {
    /// Classification for callers and HTTP mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TopicNotFound(_) | Self::PartitionNotFound { .. } => ErrorKind::NotFound,
            Self::TopicExists { .. } => ErrorKind::Conflict,
            Self::RecordTooLarge { .. } => ErrorKind::TooLarge,
            Self::DiskFull(_)
            | Self::Failed(_)
            | Self::Quarantined { .. }
            | Self::Closed
            | Self::Unavailable(_)
            | Self::Contended { .. }
            | Self::Fenced { .. }
            | Self::Locked(_) => ErrorKind::Unavailable,
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::Io { .. } => ErrorKind::Internal,
        }
    }
}
