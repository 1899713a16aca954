//! [`RedisStore`]: the hot store on a Redis server, for several nodes sharing one hot tier.
//!
//! Layout under a key prefix (`sluice:` by default): `<prefix>v:<key>` holds a value (a string
//! of JSON), `<prefix>pos:<consumer>` a hash of partition → next offset. A [`WriteBatch`] is
//! one Lua script, which Redis runs atomically: it checks every expected position, and only
//! then sets the positions and the values and removes the deleted keys. A script that fails
//! its check writes nothing. All
//! keys of a batch must live on one server (no Redis Cluster slot spreading).

use std::sync::Arc;

use redis::aio::ConnectionManager;

use crate::HotError;
use crate::store::{BoxFuture, HotStore, Positions, WriteBatch};

/// KEYS[1] = the positions hash, then the value keys to set, then the `d` keys to delete.
/// ARGV[1] = n, ARGV[2] = d; then n triples (partition, expected or "", new); then one value
/// per key to set.
///
/// Redis does not roll back a script that fails half-way: the writes before the failing call
/// stay. So the script checks everything first (the counts, every partition and position a
/// decimal number, every expected position found) and only then writes; once it writes, no
/// call can fail on its arguments.
const WRITE_SCRIPT: &str = r#"
local function count(arg)
  local c = tonumber(arg)
  if c == nil or c < 0 or c ~= math.floor(c) then return nil end
  return c
end
local n, d = count(ARGV[1]), count(ARGV[2])
if n == nil or d == nil then
  return redis.error_reply('BADARGS the counts ' .. tostring(ARGV[1]) .. ', ' .. tostring(ARGV[2]) .. ' are not counts')
end
local sets = #KEYS - 1 - d
if sets < 0 or #ARGV ~= 2 + n * 3 + sets then
  return redis.error_reply('BADARGS ' .. #ARGV .. ' arguments and ' .. #KEYS .. ' keys for ' .. n .. ' positions and ' .. d .. ' deletions')
end
for i = 0, n - 1 do
  local field, expected, new = ARGV[3 + i * 3], ARGV[4 + i * 3], ARGV[5 + i * 3]
  if not string.match(field, '^%d+$') or not string.match(new, '^%d+$')
      or (expected ~= '' and not string.match(expected, '^%d+$')) then
    return redis.error_reply('BADARGS partition "' .. field .. '": positions "' .. expected .. '" -> "' .. new .. '" are not numbers')
  end
end
for i = 0, n - 1 do
  local field = ARGV[3 + i * 3]
  local expected = ARGV[4 + i * 3]
  local found = redis.call('HGET', KEYS[1], field)
  if found == false then found = '' end
  if found ~= expected then
    return redis.error_reply('CONFLICT partition ' .. field .. ': expected position "' .. expected .. '", found "' .. found .. '"')
  end
end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[3 + i * 3], ARGV[5 + i * 3])
end
local base = 3 + n * 3
for k = 1, sets do
  redis.call('SET', KEYS[1 + k], ARGV[base + k - 1])
end
for k = 2 + sets, #KEYS do
  redis.call('DEL', KEYS[k])
end
return 'OK'
"#;

fn redis_err(e: redis::RedisError) -> HotError {
    HotError::Redis(e.to_string())
}

/// The Redis backend. Cheap to clone (a multiplexed, reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
    /// `delete` calls finished (through this handle and its clones).
    deletions: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://127.0.0.1:6379`); every key gets `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, HotError> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let conn = client.get_connection_manager().await.map_err(redis_err)?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            script: redis::Script::new(WRITE_SCRIPT),
            deletions: Default::default(),
        })
    }

    fn value_key(&self, key: &str) -> String {
        format!("{}v:{key}", self.prefix)
    }

    fn positions_key(&self, consumer: &str) -> String {
        format!("{}pos:{consumer}", self.prefix)
    }

    /// Deletes every key under this store's prefix (values and positions): what a run under a
    /// prefix of its own (a benchmark) leaves behind. The number of keys deleted.
    pub async fn delete_everything(&self) -> Result<u64, HotError> {
        if self.prefix.is_empty() {
            return Err(HotError::Invalid(
                "refusing to delete every key of a store without a prefix".into(),
            ));
        }
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut conn = self.conn.clone();
        let (mut cursor, mut deleted) = (0u64, 0u64);
        loop {
            let (next, keys) = scan_page(&mut conn, cursor, &pattern).await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err)?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// One `SCAN` step from `cursor` over the keys matching `pattern`: the next cursor (0 at the
/// end) and the keys found.
async fn scan_page(
    conn: &mut ConnectionManager,
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<String>), HotError> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .query_async(conn)
        .await
        .map_err(redis_err)
}

/// `text` as a Redis glob pattern that matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl HotStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, HotError>> {
        Box::pin(async move {
            let values = self.value_key("");
            let pattern = format!("{}*", glob_escape(&self.value_key(prefix)));
            let mut conn = self.conn.clone();
            let (mut cursor, mut found) = (0u64, Vec::new());
            loop {
                let (next, keys) = scan_page(&mut conn, cursor, &pattern).await?;
                found.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(&values))
                        .map(String::from),
                );
                if next == 0 {
                    return Ok(found);
                }
                cursor = next;
            }
        })
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, HotError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("MGET");
            for k in keys {
                cmd.arg(self.value_key(k));
            }
            cmd.query_async(&mut conn).await.map_err(redis_err)
        })
    }

    fn positions<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<Positions, HotError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let raw: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(self.positions_key(consumer))
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            let mut out = Positions::new();
            for (field, value) in raw {
                let corrupt = || HotError::Corrupt {
                    key: self.positions_key(consumer),
                    reason: format!("field {field:?} = {value:?} is not a position"),
                };
                let p: u32 = field.parse().map_err(|_| corrupt())?;
                let v: u64 = value.parse().map_err(|_| corrupt())?;
                out.insert(p, v);
            }
            Ok(out)
        })
    }

    fn write(&self, batch: Arc<WriteBatch>) -> BoxFuture<'_, Result<(), HotError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut inv = self.script.prepare_invoke();
            inv.key(self.positions_key(&batch.consumer));
            for (key, _) in &batch.puts {
                inv.key(self.value_key(key));
            }
            for key in &batch.deletes {
                inv.key(self.value_key(key));
            }
            inv.arg(batch.positions.len()).arg(batch.deletes.len());
            for (partition, (expected, new)) in &batch.positions {
                inv.arg(partition.to_string())
                    .arg(expected.map(|e| e.to_string()).unwrap_or_default())
                    .arg(new.to_string());
            }
            for (_, value) in &batch.puts {
                inv.arg(value.as_slice());
            }
            match inv.invoke_async::<String>(&mut conn).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("CONFLICT") => Err(HotError::Conflict {
                    consumer: batch.consumer.clone(),
                    detail: e.to_string(),
                }),
                Err(e) if e.to_string().contains("BADARGS") => {
                    Err(HotError::Invalid(format!("hot-tier batch refused: {e}")))
                }
                Err(e) => Err(redis_err(e)),
            }
        })
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<usize, HotError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("DEL");
            for key in keys {
                cmd.arg(self.value_key(key));
            }
            let deleted = cmd.query_async::<usize>(&mut conn).await.map_err(redis_err);
            self.deletions
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            deleted
        })
    }

    fn deletions(&self) -> u64 {
        self.deletions.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the write script with raw arguments; what it answered.
    async fn invoke(
        conn: &mut ConnectionManager,
        keys: &[&str],
        args: &[&str],
    ) -> Result<String, redis::RedisError> {
        let script = redis::Script::new(WRITE_SCRIPT);
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        inv.invoke_async::<String>(conn).await
    }

    #[tokio::test]
    #[ignore = "needs the Redis server on 127.0.0.1:6379"]
    async fn a_malformed_batch_writes_nothing() {
        let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
        let mut conn = client.get_connection_manager().await.unwrap();
        let p = format!("sluice-test:badargs:{}:", std::process::id());
        let (pos, v1, v2, old) = (
            format!("{p}pos"),
            format!("{p}v1"),
            format!("{p}v2"),
            format!("{p}old"),
        );
        let keys = [pos.as_str(), v1.as_str(), v2.as_str(), old.as_str()];
        let exists = |conn: &mut ConnectionManager, keys: &[&str]| {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(keys);
            let mut conn = conn.clone();
            async move { cmd.query_async::<i64>(&mut conn).await.unwrap() }
        };
        let _: () = redis::cmd("SET")
            .arg(&old)
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        let malformed: [&[&str]; 7] = [
            // A value missing: the last SET would fail after the positions were written.
            &["1", "1", "0", "", "10", "a"],
            // One too many.
            &["1", "1", "0", "", "10", "a", "b", "c"],
            // More deletions than keys.
            &["1", "4", "0", "", "10"],
            // A position that is not a number.
            &["1", "1", "0", "", "ten", "a", "b"],
            &["1", "1", "0", "x", "10", "a", "b"],
            &["one", "1", "0", "", "10", "a", "b"],
            &["1", "-1", "0", "", "10", "a", "b"],
        ];
        for args in malformed {
            let err = invoke(&mut conn, &keys, args).await.unwrap_err();
            assert!(err.to_string().contains("BADARGS"), "{args:?}: {err}");
            assert_eq!(
                exists(&mut conn, &keys[..3]).await,
                0,
                "{args:?} wrote something"
            );
            assert_eq!(
                exists(&mut conn, &keys[3..]).await,
                1,
                "{args:?} deleted something"
            );
        }
        let ok = invoke(&mut conn, &keys, &["1", "1", "0", "", "10", "a", "b"]).await;
        assert_eq!(ok.unwrap(), "OK");
        assert_eq!(exists(&mut conn, &keys[..3]).await, 3);
        assert_eq!(
            exists(&mut conn, &keys[3..]).await,
            0,
            "the deletion was made"
        );
        let _: i64 = redis::cmd("DEL")
            .arg(&keys[..])
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    #[ignore = "needs the Redis server on 127.0.0.1:6379"]
    async fn delete_everything_deletes_its_own_prefix_only() {
        // A prefix with glob characters, and a neighbour its unescaped pattern would match.
        let id = std::process::id();
        let (ours, neighbour) = (
            format!("sluice-test:del*{id}[a]:"),
            format!("sluice-test:delX{id}a:k"),
        );
        let store = RedisStore::connect("redis://127.0.0.1:6379", &ours)
            .await
            .unwrap();
        let mut conn = store.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(&neighbour)
            .arg("stays")
            .query_async(&mut conn)
            .await
            .unwrap();
        let puts = (0..2500)
            .map(|i| (format!("p:{i}"), b"{}".to_vec()))
            .collect();
        let batch = WriteBatch {
            consumer: "hot/good".into(),
            positions: [(0, (None, 2500))].into(),
            puts,
            deletes: Vec::new(),
        };
        store.write(Arc::new(batch)).await.unwrap();
        assert_eq!(store.delete_everything().await.unwrap(), 2501);
        assert!(store.positions("hot/good").await.unwrap().is_empty());
        let keys = ["p:0".to_string(), "p:2499".to_string()];
        assert_eq!(store.get_many(&keys).await.unwrap(), vec![None, None]);
        let kept: Option<String> = redis::cmd("GET")
            .arg(&neighbour)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept.as_deref(), Some("stays"));
        let _: i64 = redis::cmd("DEL")
            .arg(&neighbour)
            .query_async(&mut conn)
            .await
            .unwrap();
        let bare = RedisStore::connect("redis://127.0.0.1:6379", "")
            .await
            .unwrap();
        assert!(matches!(
            bare.delete_everything().await,
            Err(HotError::Invalid(_))
        ));
    }
}
