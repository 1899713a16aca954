//! Opaque tokens: shard iterators and pagination tokens.
//!
//! A token is `base64url(kind | instance | issued_ms | shard | offset | name | tag)`: the
//! token kind, this process's instance id, when it was issued, a shard (or index), an offset,
//! a stream (journal topic) name, and a 16-byte HMAC-SHA256 tag under a key drawn at random
//! when the process starts. A client cannot forge or alter one (the tag), and a token expires
//! [`TOKEN_TTL_MS`] after it was issued, as AWS's do. A token from an earlier process (after a
//! restart) is answered as expired rather than invalid, so that consumers fetch a new iterator
//! from their checkpoint instead of giving up.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How long a token stays valid (AWS: 5 minutes).
pub(crate) const TOKEN_TTL_MS: i64 = 5 * 60 * 1000;

/// Bytes of the truncated HMAC tag.
const TAG_LEN: usize = 16;

/// kind (1) + instance (8) + issued (8) + shard (4) + offset (8).
const HEADER_LEN: usize = 29;

/// What a token is for; a token of one kind is refused where another is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// `GetRecords`' `ShardIterator`.
    ShardIterator = 1,
    /// `ListShards`' `NextToken`.
    ListShards = 2,
    /// `ListStreams`' `NextToken`.
    ListStreams = 3,
}

/// The contents of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    /// What it is for.
    pub kind: TokenKind,
    /// Journal topic (shard iterators, ListShards) or last stream name returned (ListStreams).
    pub name: String,
    /// Shard (partition) or the next index to list.
    pub shard: u32,
    /// Next journal offset to read.
    pub offset: u64,
    /// When it was issued, ms since the epoch.
    pub issued_ms: i64,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// Not a token, altered, or of another kind.
    #[error("invalid token")]
    Invalid,
    /// Older than [`TOKEN_TTL_MS`], or issued by an earlier server process.
    #[error(
        "token expired: issued at {issued_ms} ms, now {now_ms} ms, valid for {TOKEN_TTL_MS} ms"
    )]
    Expired {
        /// When it was issued (0 when it comes from an earlier process).
        issued_ms: i64,
        /// Now.
        now_ms: i64,
    },
}

/// Signs and checks tokens with this process's key.
pub(crate) struct TokenCodec {
    key: [u8; 64],
    instance: [u8; 8],
}

impl TokenCodec {
    /// A codec with a fresh random key and instance id.
    pub(crate) fn random() -> Self {
        let mut key = [0u8; 64];
        for chunk in key.chunks_mut(16) {
            chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        let mut instance = [0u8; 8];
        instance.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
        Self { key, instance }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // A key of exactly SHA-256's block size is used as is.
        <Hmac<Sha256> as KeyInit>::new(&self.key.into())
    }

    /// Encodes and signs a token.
    pub(crate) fn encode(&self, token: &Token) -> String {
        let mut bytes = Vec::with_capacity(HEADER_LEN + token.name.len() + TAG_LEN);
        bytes.push(token.kind as u8);
        bytes.extend_from_slice(&self.instance);
        bytes.extend_from_slice(&token.issued_ms.to_be_bytes());
        bytes.extend_from_slice(&token.shard.to_be_bytes());
        bytes.extend_from_slice(&token.offset.to_be_bytes());
        bytes.extend_from_slice(token.name.as_bytes());
        let mut mac = self.mac();
        mac.update(&bytes);
        let tag = mac.finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks and decodes a token of `kind` at time `now_ms`.
    pub(crate) fn decode(
        &self,
        text: &str,
        kind: TokenKind,
        now_ms: i64,
    ) -> Result<Token, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| TokenError::Invalid)?;
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let field = |range: std::ops::Range<usize>| body.get(range).ok_or(TokenError::Invalid);
        let instance = field(1..9)?;
        if instance != self.instance {
            // Signed under another process's key: it cannot be checked, and it is at least as
            // old as this process.
            return Err(TokenError::Expired {
                issued_ms: 0,
                now_ms,
            });
        }
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| TokenError::Invalid)?;
        if field(0..1)? != [kind as u8] {
            return Err(TokenError::Invalid);
        }
        let issued_ms = i64::from_be_bytes(to_array(field(9..17)?)?);
        let shard = u32::from_be_bytes(to_array(field(17..21)?)?);
        let offset = u64::from_be_bytes(to_array(field(21..29)?)?);
        let name = std::str::from_utf8(field(HEADER_LEN..body.len())?)
            .map_err(|_| TokenError::Invalid)?
            .to_string();
        if now_ms.saturating_sub(issued_ms) > TOKEN_TTL_MS {
            return Err(TokenError::Expired { issued_ms, now_ms });
        }
        Ok(Token {
            kind,
            name,
            shard,
            offset,
            issued_ms,
        })
    }
}

fn to_array<const N: usize>(s: &[u8]) -> Result<[u8; N], TokenError> {
    s.try_into().map_err(|_| TokenError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token {
            kind: TokenKind::ShardIterator,
            name: "clicks.v2".into(),
            shard: 3,
            offset: 12_345,
            issued_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn round_trip_and_size() {
        let codec = TokenCodec::random();
        let t = token();
        let text = codec.encode(&t);
        assert_eq!(
            codec.decode(&text, TokenKind::ShardIterator, t.issued_ms + 1000),
            Ok(t.clone())
        );
        // A 128-character stream name still fits the 512-character limit.
        let long = Token {
            name: "s".repeat(128),
            ..t
        };
        assert!(codec.encode(&long).len() <= 512);
    }

    #[test]
    fn expires_after_five_minutes() {
        let codec = TokenCodec::random();
        let t = token();
        let text = codec.encode(&t);
        assert!(
            codec
                .decode(&text, TokenKind::ShardIterator, t.issued_ms + TOKEN_TTL_MS)
                .is_ok()
        );
        assert_eq!(
            codec.decode(
                &text,
                TokenKind::ShardIterator,
                t.issued_ms + TOKEN_TTL_MS + 1
            ),
            Err(TokenError::Expired {
                issued_ms: t.issued_ms,
                now_ms: t.issued_ms + TOKEN_TTL_MS + 1
            })
        );
    }

    #[test]
    fn tampering_and_wrong_kinds_are_refused() {
        let codec = TokenCodec::random();
        let t = token();
        let now = t.issued_ms;
        let text = codec.encode(&t);
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        // Flip each byte after the instance id in turn: every change is caught.
        for i in (0..bytes.len()).filter(|i| !(1..9).contains(i)) {
            bytes[i] ^= 0x01;
            let forged = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(
                codec.decode(&forged, TokenKind::ShardIterator, now),
                Err(TokenError::Invalid),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        // A later offset with the old tag.
        let moved = Token {
            offset: t.offset + 1,
            ..t.clone()
        };
        let mut moved_bytes = URL_SAFE_NO_PAD.decode(codec.encode(&moved)).unwrap();
        let tag_at = moved_bytes.len() - TAG_LEN;
        moved_bytes[tag_at..].copy_from_slice(&bytes[bytes.len() - TAG_LEN..]);
        assert_eq!(
            codec.decode(
                &URL_SAFE_NO_PAD.encode(&moved_bytes),
                TokenKind::ShardIterator,
                now
            ),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            codec.decode(&text, TokenKind::ListShards, now),
            Err(TokenError::Invalid)
        );
        for junk in ["", "AAAA", "not base64 !", &"A".repeat(600)] {
            // All zeros happens to read as a token issued at 0 ms, so expired.
            assert!(
                matches!(
                    codec.decode(junk, TokenKind::ShardIterator, now),
                    Err(TokenError::Invalid | TokenError::Expired { .. })
                ),
                "{junk}"
            );
        }
    }

    #[test]
    fn another_process_token_reads_as_expired() {
        let a = TokenCodec::random();
        let b = TokenCodec::random();
        let t = token();
        assert!(matches!(
            b.decode(&a.encode(&t), TokenKind::ShardIterator, t.issued_ms),
            Err(TokenError::Expired { .. })
        ));
    }
}
