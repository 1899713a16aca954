//! Who may call what on the Kinesis and Firehose APIs.
//!
//! The credential is the SigV4 access key id (or, for hand-rolled clients, the headers
//! [`crate::auth::header_key`] reads). The signature is not checked: sluice stores only hashes,
//! so it has no secret to check it against, and any secret works in the client. What the access
//! key id names decides:
//!
//! - a **write key** may put into `raw` and the ingest streams (`PutRecord`, `PutRecords`,
//!   Firehose `PutRecord`, `PutRecordBatch`), under its source, and describe those streams
//!   (`DescribeStream`, `DescribeStreamSummary`, `ListShards`: producer libraries look up the
//!   shards before they put). Nothing else: no reads, no other stream, no stream management;
//! - a **reader token** may list and describe streams and read `good`, `bad` and user streams
//!   (`GetShardIterator`, `GetRecords`);
//! - an **admin token** may do all that, read `raw`, put into user streams, and create and
//!   delete streams.
//!
//! Unknown credentials get 401 `UnrecognizedClientException`, known ones that may not do this
//! 403 `AccessDeniedException`, each with one fixed message. With no token configured, local
//! clients may read and manage without one; with no write key configured, they may put under
//! source `default` (see [`crate::access`]).

use std::sync::Arc;

use serde::Deserialize;
use sluice_event::DEFAULT_SOURCE;

use super::streams::StreamKind;
use super::token::TokenKind;
use super::wire::AwsError;
use super::{Kinesis, Service, now_ms};
use crate::access::{FORBIDDEN, Identity, Need, Origin, Refusal};
use crate::auth::{Locality, UNAUTHORIZED};

/// What an operation does, for the access check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Put,
    Describe,
    Read,
    Manage,
}

/// The stream an operation names (by name, ARN or shard iterator), as far as access goes.
#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Named {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    shard_iterator: Option<String>,
}

/// A refusal in the AWS shape.
pub(crate) fn refusal(r: Refusal) -> AwsError {
    match r {
        Refusal::Unauthorized => AwsError::UnrecognizedClient(UNAUTHORIZED.into()),
        Refusal::Forbidden => AwsError::Forbidden(FORBIDDEN.into()),
    }
}

fn act_of(service: Service, op: &str) -> Act {
    match (service, op) {
        (Service::Firehose, _) | (_, "PutRecord" | "PutRecords") => Act::Put,
        (_, "DescribeStream" | "DescribeStreamSummary" | "ListShards") => Act::Describe,
        (_, "CreateStream" | "DeleteStream") => Act::Manage,
        _ => Act::Read,
    }
}

impl Kinesis {
    /// Refuses at once (before the body is read) a request that no rule can let through: an
    /// unknown credential from a client that no open access covers.
    pub(super) fn precheck(&self, key: Option<&str>, from: Locality) -> Result<(), AwsError> {
        let known = key.and_then(|k| self.access.identify(k)).is_some();
        let open =
            from == Locality::Local && (!self.access.keys().has_keys() || !self.access.closed());
        if known || open {
            Ok(())
        } else {
            Err(refusal(Refusal::Unauthorized))
        }
    }

    /// Whether `key` from `from` may make this call; the source its puts are stored under.
    pub(super) fn permit(
        &self,
        service: Service,
        op: &str,
        body: &[u8],
        key: Option<&str>,
        from: Locality,
    ) -> Result<Arc<str>, AwsError> {
        let act = act_of(service, op);
        let kind = match service {
            Service::Firehose => StreamKind::Raw,
            Service::Kinesis => self.kind_named(body),
        };
        let who = key.and_then(|k| self.access.identify(k));
        let need = match (act, kind) {
            (Act::Put, StreamKind::Raw) => return self.put_source(key, from, who.as_ref()),
            (Act::Describe, StreamKind::Raw) if matches!(who, Some(Identity::Writer(_))) => {
                return Ok(Arc::from(DEFAULT_SOURCE));
            }
            (Act::Describe, _) => Need::Read,
            (Act::Read, StreamKind::Raw) => Need::Admin,
            (Act::Read, _) => Need::Read,
            (Act::Put | Act::Manage, _) => Need::Admin,
        };
        self.access
            .decide(need, key, from, Origin::Trusted)
            .map_err(refusal)?;
        Ok(Arc::from(DEFAULT_SOURCE))
    }

    /// The source of a put into the pipeline: a write key's, or `default` under open access.
    fn put_source(
        &self,
        key: Option<&str>,
        from: Locality,
        who: Option<&Identity>,
    ) -> Result<Arc<str>, AwsError> {
        self.access
            .keys()
            .source_for_key(key, from)
            .map_err(|_| match who {
                Some(Identity::Token(_)) => refusal(Refusal::Forbidden),
                _ => refusal(Refusal::Unauthorized),
            })
    }

    /// The kind of the stream a request names; a user stream when it names none it can tell.
    fn kind_named(&self, body: &[u8]) -> StreamKind {
        let named: Named = serde_json::from_slice(body).unwrap_or_default();
        if let Some(it) = &named.shard_iterator {
            return match self.tokens.decode(it, TokenKind::ShardIterator, now_ms()) {
                Ok(t) => StreamKind::of_topic(&t.name),
                Err(_) => StreamKind::User,
            };
        }
        let arn_name = named
            .stream_arn
            .as_deref()
            .and_then(super::streams::name_of_arn);
        match named.stream_name.as_deref().or(arn_name) {
            Some(n) if self.is_ingest_name(n) => StreamKind::Raw,
            Some(n) => StreamKind::of_topic(n),
            None => StreamKind::User,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_map_to_acts() {
        assert_eq!(act_of(Service::Firehose, "PutRecordBatch"), Act::Put);
        assert_eq!(act_of(Service::Kinesis, "PutRecords"), Act::Put);
        assert_eq!(act_of(Service::Kinesis, "ListShards"), Act::Describe);
        assert_eq!(act_of(Service::Kinesis, "DeleteStream"), Act::Manage);
        assert_eq!(act_of(Service::Kinesis, "GetRecords"), Act::Read);
        assert_eq!(act_of(Service::Kinesis, "ListStreams"), Act::Read);
        assert_eq!(act_of(Service::Kinesis, "Nonsense"), Act::Read);
    }
}
