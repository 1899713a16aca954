//! [`RedisStore`]: the hot store on a Redis server, for several nodes sharing one hot tier.
//!
//! Layout under a key prefix (`sluice:` by default): `<prefix>v:<key>` holds a value (a string
//! of JSON), `<prefix>pos:<consumer>` a hash of partition → next offset. A [`WriteBatch`] is
//! one Lua script, which Redis runs atomically: it checks every expected position, and only
//! then sets the positions and the values. A script that fails its check writes nothing. All
//! keys of a batch must live on one server (no Redis Cluster slot spreading).

use redis::aio::ConnectionManager;

use crate::HotError;
use crate::store::{BoxFuture, HotStore, Positions, WriteBatch};

/// KEYS[1] = the positions hash, KEYS[2..] = value keys. ARGV[1] = n; then n triples
/// (partition, expected or "", new); then one value per value key.
const WRITE_SCRIPT: &str = r#"
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local field = ARGV[2 + i * 3]
  local expected = ARGV[3 + i * 3]
  local found = redis.call('HGET', KEYS[1], field)
  if found == false then found = '' end
  if found ~= expected then
    return redis.error_reply('CONFLICT partition ' .. field .. ': expected position "' .. expected .. '", found "' .. found .. '"')
  end
end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[2 + i * 3], ARGV[4 + i * 3])
end
local base = 2 + n * 3
for k = 2, #KEYS do
  redis.call('SET', KEYS[k], ARGV[base + k - 2])
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
        })
    }

    fn value_key(&self, key: &str) -> String {
        format!("{}v:{key}", self.prefix)
    }

    fn positions_key(&self, consumer: &str) -> String {
        format!("{}pos:{consumer}", self.prefix)
    }
}

impl HotStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
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

    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), HotError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut inv = self.script.prepare_invoke();
            inv.key(self.positions_key(&batch.consumer));
            for (key, _) in &batch.puts {
                inv.key(self.value_key(key));
            }
            inv.arg(batch.positions.len());
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
                Err(e) => Err(redis_err(e)),
            }
        })
    }
}
