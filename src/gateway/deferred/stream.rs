//! The "redis" store of an async route: a Redis stream the fleet shares,
//! one consumer group per route, each instance a consumer of its own name.
//!
//! Keys, for `[redis] key_prefix` P and route R (the braces make every key
//! of a route one hash slot):
//!
//! - `P:async:{R}:q` — the stream of accepted requests (fields `t` ticket,
//!   `r` the record of [`super::record::Accepted`], `s` since when it counts
//!   towards `deliver_within` if re-driven); group `sluice`;
//! - `P:async:{R}:dead` — the stream of dead letters (same fields, and `a`);
//! - `P:async:{R}:t:TICKET` — the ticket's hash: `s` state (q queued, f dead
//!   letter, d delivered, x expired, c discarded), `a` attempts, `n` its
//!   ordinal, `c` and `b` the backend's status and kept body; expires
//!   `deliver_within` after it ended (a dead letter's lives until re-driven
//!   or discarded);
//! - `P:async:{R}:k:HEX` — an `Idempotency-Key` (hex) to its ticket, for
//!   `deliver_within`;
//! - `P:async:{R}:n` — the count of entries ever added (for positions).
//!
//! Invariant: every change is one script, so Redis holds a request, its
//! ticket and its key together or not at all; a request leaves the stream
//! (XACK + XDEL) only once it ended or moved to the dead letters.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::{Script, Value};
use tokio::sync::Notify;

use super::record::{Ended, TicketId};
use crate::store::RedisLink;

/// The consumer group every instance reads a route's stream in.
const GROUP: &str = "sluice";

/// Requests an instance holds at most (ready and in flight; retries
/// waiting for their time aside): enough that its pacers never wait for a
/// fetch, few enough that a crash leaves little for the others to claim.
pub(super) const WINDOW: usize = 16;

/// A consumer (an instance that stopped) holding nothing and silent this
/// long (or ten times `claim_idle`, if longer) leaves the group, so the
/// group does not list every instance that ever ran.
const FORGET_CONSUMERS: Duration = Duration::from_secs(600);

/// Dead letters moved per script call by a re-drive or a discard.
const BATCH: usize = 500;

const ACCEPT: &str = r"
if ARGV[5] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'dup', existing} end
end
local held = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2])
if held >= tonumber(ARGV[3]) then return {'full', tostring(held)} end
local id = redis.call('XADD', KEYS[1], '*', 't', ARGV[2], 'r', ARGV[1])
local n = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[3], 's', 'q', 'a', '0', 'n', n)
redis.call('PEXPIRE', KEYS[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[5]) end
return {'ok', id}
";

const FETCH: &str = r"
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local entries
if ARGV[5] == 'claim' then
  entries = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[6], '0-0', 'COUNT', ARGV[3])[2]
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local name, pending, idle = nil, 1, 0
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] elseif c[i] == 'idle' then idle = c[i + 1] end
    end
    if name and name ~= ARGV[2] and pending == 0 and idle > tonumber(ARGV[7]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    end
  end
else
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
  if not r then return {} end
  entries = r[1][2]
end
local out = {}
for _, e in ipairs(entries) do
  local f = e[2]
  if f then
    local t, rec, since = '', '', ''
    for i = 1, #f, 2 do
      if f[i] == 't' then t = f[i + 1] elseif f[i] == 'r' then rec = f[i + 1] elseif f[i] == 's' then since = f[i + 1] end
    end
    local a = redis.call('HGET', ARGV[4] .. t, 'a') or '0'
    table.insert(out, {e[1], t, rec, since, a})
  end
end
return out
";

const TOUCH: &str = r"
local mine = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then table.insert(mine, ARGV[i]) end
end
if #mine == 5 then return {} end
table.insert(mine, 'JUSTID')
return redis.call(unpack(mine))
";

const END: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 's', ARGV[3], 'c', ARGV[4], 'b', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
";

const PARK: &str = r"
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if e[1] then
  local add = {'XADD', KEYS[2], '*'}
  for _, v in ipairs(e[1][2]) do table.insert(add, v) end
  table.insert(add, 'a')
  table.insert(add, ARGV[3])
  redis.call(unpack(add))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], 's', 'f', 'a', ARGV[3])
redis.call('PERSIST', KEYS[3])
return 1
";

const REDRIVE: &str = r"
local all = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[4])
for _, e in ipairs(all) do
  local t, rec = '', ''
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 't' then t = f[i + 1] elseif f[i] == 'r' then rec = f[i + 1] end
  end
  redis.call('XADD', KEYS[1], '*', 't', t, 'r', rec, 's', ARGV[2])
  local n = redis.call('INCR', KEYS[3])
  redis.call('HSET', ARGV[1] .. t, 's', 'q', 'a', '0', 'n', n)
  redis.call('PEXPIRE', ARGV[1] .. t, ARGV[3])
  redis.call('XDEL', KEYS[2], e[1])
end
return #all
";

const DISCARD: &str = r"
local all = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[3])
for _, e in ipairs(all) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 't' then
      redis.call('HSET', ARGV[1] .. f[i + 1], 's', 'c')
      redis.call('PEXPIRE', ARGV[1] .. f[i + 1], ARGV[2])
    end
  end
  redis.call('XDEL', KEYS[1], e[1])
end
return #all
";

const STATUS: &str = r"
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return {} end
local read = -1
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[2])
if type(groups) == 'table' and not groups.err then
  for _, g in ipairs(groups) do
    local name, entries = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'entries-read' then entries = g[i + 1] end
    end
    if name == ARGV[1] and entries then read = entries end
  end
end
return {h, read}
";

const SAMPLE: &str = r"
local len = redis.call('XLEN', KEYS[1])
local dead = redis.call('XLEN', KEYS[2])
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and not p.err and p[1] then pending = p[1] end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = ''
if first[1] then oldest = first[1][1] end
local bytes = (redis.call('MEMORY', 'USAGE', KEYS[1]) or 0) + (redis.call('MEMORY', 'USAGE', KEYS[2]) or 0)
return {len, dead, pending, oldest, bytes}
";

/// A route's key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Keys {
    base: String,
}

impl Keys {
    pub(super) fn new(key_prefix: &str, route: &str) -> Keys {
        Keys {
            base: format!("{key_prefix}:async:{{{route}}}"),
        }
    }

    pub(super) fn queue(&self) -> String {
        format!("{}:q", self.base)
    }

    pub(super) fn dead(&self) -> String {
        format!("{}:dead", self.base)
    }

    pub(super) fn counter(&self) -> String {
        format!("{}:n", self.base)
    }

    /// What a ticket's key begins with (the scripts append the ticket).
    pub(super) fn ticket_prefix(&self) -> String {
        format!("{}:t:", self.base)
    }

    pub(super) fn ticket(&self, ticket: TicketId) -> String {
        format!("{}{ticket}", self.ticket_prefix())
    }

    /// An idempotency key, as hex (any bytes make a readable key name).
    pub(super) fn idempotency(&self, key: &[u8]) -> String {
        let mut name = format!("{}:k:", self.base);
        for b in key {
            let _ = write!(name, "{b:02x}");
        }
        name
    }
}

/// The milliseconds part of a stream entry ID (`MS-SEQ`): when Redis added it.
pub(super) fn id_ms(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    seq.parse::<u64>().ok()?;
    ms.parse().ok()
}

/// A request read from the stream (new, or claimed from another consumer).
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    pub(super) id: Arc<str>,
    pub(super) ticket: TicketId,
    pub(super) record: Bytes,
    /// Re-driven at (Unix ms): `deliver_within` counts from then.
    pub(super) since_ms: Option<u64>,
    pub(super) attempts: u32,
}

/// How an accept ended in Redis.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Added {
    New,
    /// The idempotency key's ticket.
    Existing(TicketId),
    Full,
}

/// A ticket's state as Redis has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stored {
    Queued {
        attempts: u32,
        /// Entries added before it not yet read by any instance, if known.
        ahead: Option<u64>,
    },
    DeadLetter {
        attempts: u32,
    },
    Ended(Ended),
}

/// The route's depth as last sampled.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Snapshot {
    /// Entries in the stream (queued and held by instances) and dead letters.
    pub(super) queue: u64,
    pub(super) dead: u64,
    /// Entries read by some instance and not yet acknowledged.
    pub(super) pending: u64,
    pub(super) oldest_ms: Option<u64>,
    pub(super) bytes: u64,
}

/// One dead letter as listed.
pub(super) struct Letter {
    pub(super) ticket: TicketId,
    pub(super) record: Bytes,
    pub(super) attempts: u32,
}

struct Scripts {
    accept: Script,
    fetch: Script,
    touch: Script,
    end: Script,
    park: Script,
    redrive: Script,
    discard: Script,
    status: Script,
    sample: Script,
}

/// A route's stream in one Redis, as this instance's consumer.
pub(super) struct Stream {
    link: Arc<RedisLink>,
    key_prefix: String,
    keys: Keys,
    consumer: String,
    scripts: Scripts,
    /// Entry IDs this instance holds in its book, to their book sequence.
    pub(super) held: Mutex<HashMap<Arc<str>, u64>>,
    next_seq: AtomicU64,
    pub(super) snapshot: Mutex<Snapshot>,
    /// Woken when the book wants more (a pacer took one, a request was
    /// accepted here).
    pub(super) wanted: Arc<Notify>,
}

impl Stream {
    pub(super) fn new(link: Arc<RedisLink>, key_prefix: &str, route: &str) -> Stream {
        let mut random = [0u8; 6];
        let _ = getrandom::fill(&mut random);
        let mut consumer = format!("{}-", std::process::id());
        for b in random {
            let _ = write!(consumer, "{b:02x}");
        }
        Stream {
            link,
            key_prefix: key_prefix.to_string(),
            keys: Keys::new(key_prefix, route),
            consumer,
            scripts: Scripts {
                accept: Script::new(ACCEPT),
                fetch: Script::new(FETCH),
                touch: Script::new(TOUCH),
                end: Script::new(END),
                park: Script::new(PARK),
                redrive: Script::new(REDRIVE),
                discard: Script::new(DISCARD),
                status: Script::new(STATUS),
                sample: Script::new(SAMPLE),
            },
            held: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            snapshot: Mutex::new(Snapshot::default()),
            wanted: Arc::new(Notify::new()),
        }
    }

    /// Whether this is the stream `link` and `key_prefix` make.
    pub(super) fn uses(&self, link: &Arc<RedisLink>, key_prefix: &str) -> bool {
        Arc::ptr_eq(&self.link, link) && self.key_prefix == key_prefix
    }

    pub(super) fn consumer(&self) -> &str {
        &self.consumer
    }

    /// A book sequence number for a fetched entry.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends an accepted request (unless its idempotency key is known,
    /// or `capacity` requests are held); answers once Redis has it.
    pub(super) async fn add(
        &self,
        record: Vec<u8>,
        ticket: TicketId,
        key: Option<&[u8]>,
        capacity: usize,
        (ticket_ttl, deliver_within): (Duration, Duration),
    ) -> Result<Added, String> {
        let keys = [
            self.keys.queue(),
            self.keys.dead(),
            self.keys.ticket(ticket),
            key.map_or_else(|| self.keys.idempotency(b""), |k| self.keys.idempotency(k)),
            self.keys.counter(),
        ];
        let args = [
            record,
            ticket.to_string().into_bytes(),
            capacity.to_string().into_bytes(),
            millis(ticket_ttl),
            key.map_or_else(Vec::new, |_| millis(deliver_within)),
        ];
        let reply = self.link.eval(&self.scripts.accept, &keys, &args).await?;
        let reply = array(&reply).ok_or("accept: not an array")?;
        match (
            reply.first().and_then(text),
            reply.get(1).and_then(text).unwrap_or_default(),
        ) {
            (Some("ok"), _) => Ok(Added::New),
            (Some("full"), _) => Ok(Added::Full),
            (Some("dup"), existing) => TicketId::parse(existing)
                .map(Added::Existing)
                .ok_or_else(|| format!("accept: idempotency key names {existing:?}")),
            _ => Err("accept: unexpected reply".into()),
        }
    }

    /// Up to `count` entries: new ones, or (`claim`) those another
    /// consumer has held for that long without a word.
    pub(super) async fn fetch(
        &self,
        count: usize,
        claim: Option<Duration>,
    ) -> Result<Vec<Fetched>, String> {
        let keys = [self.keys.queue()];
        let args = [
            GROUP.as_bytes().to_vec(),
            self.consumer.as_bytes().to_vec(),
            count.to_string().into_bytes(),
            self.keys.ticket_prefix().into_bytes(),
            if claim.is_some() {
                b"claim".to_vec()
            } else {
                b"new".to_vec()
            },
            millis(claim.unwrap_or_default()),
            millis(claim.map_or(FORGET_CONSUMERS, |idle| (idle * 10).max(FORGET_CONSUMERS))),
        ];
        let reply = self.link.eval(&self.scripts.fetch, &keys, &args).await?;
        Ok(array(&reply)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                let e = array(e)?;
                Some(Fetched {
                    id: Arc::from(text(e.first()?)?),
                    ticket: TicketId::parse(text(e.get(1)?)?)?,
                    record: Bytes::copy_from_slice(bytes(e.get(2)?)?),
                    since_ms: text(e.get(3)?).and_then(|s| s.parse().ok()),
                    attempts: number(e.get(4)?).unwrap_or(0) as u32,
                })
            })
            .collect())
    }

    /// Resets the idle time of `ids` still pending with this consumer (so
    /// no other instance claims them); the IDs that still are.
    pub(super) async fn touch(&self, ids: Vec<Arc<str>>) -> Result<Vec<Arc<str>>, String> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = [self.keys.queue()];
        let mut args = vec![GROUP.as_bytes().to_vec(), self.consumer.as_bytes().to_vec()];
        args.extend(ids.iter().map(|id| id.as_bytes().to_vec()));
        let reply = self.link.eval(&self.scripts.touch, &keys, &args).await?;
        Ok(array(&reply)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| text(v).map(Arc::from))
            .collect())
    }

    /// The entry `id` ended: acknowledged, deleted, its ticket says how.
    pub(super) async fn end(
        &self,
        id: &str,
        ticket: TicketId,
        ended: &Ended,
        keep: Duration,
    ) -> Result<(), String> {
        let (state, code, body) = match ended {
            Ended::Delivered { status, body } => ("d", status.to_string(), body.to_vec()),
            Ended::Expired => ("x", String::new(), Vec::new()),
            Ended::Discarded => ("c", String::new(), Vec::new()),
        };
        let keys = [self.keys.queue(), self.keys.ticket(ticket)];
        let args = [
            GROUP.as_bytes().to_vec(),
            id.as_bytes().to_vec(),
            state.as_bytes().to_vec(),
            code.into_bytes(),
            body,
            millis(keep),
        ];
        self.link.eval(&self.scripts.end, &keys, &args).await?;
        Ok(())
    }

    /// An attempt failed: the ticket counts it (another instance taking the
    /// entry over goes on from there).
    pub(super) async fn failed(&self, ticket: TicketId, attempts: u32) -> Result<(), String> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.ticket(ticket)).arg("a").arg(attempts);
        self.link.query(&cmd).await.map(drop)
    }

    /// Out of attempts: the entry moves to the dead letters.
    pub(super) async fn park(
        &self,
        id: &str,
        ticket: TicketId,
        attempts: u32,
    ) -> Result<(), String> {
        let keys = [
            self.keys.queue(),
            self.keys.dead(),
            self.keys.ticket(ticket),
        ];
        let args = [
            GROUP.as_bytes().to_vec(),
            id.as_bytes().to_vec(),
            attempts.to_string().into_bytes(),
        ];
        self.link.eval(&self.scripts.park, &keys, &args).await?;
        Ok(())
    }

    /// Dead letters, oldest first (at most `limit`).
    pub(super) async fn dead_letters(&self, limit: usize) -> Result<Vec<Letter>, String> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.keys.dead())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        let reply = self.link.query(&cmd).await?;
        Ok(array(&reply)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                let fields = array(array(e)?.get(1)?)?;
                let field = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| text(&kv[0]) == Some(name))
                        .and_then(|kv| kv.get(1))
                };
                Some(Letter {
                    ticket: TicketId::parse(text(field("t")?)?)?,
                    record: Bytes::copy_from_slice(bytes(field("r")?)?),
                    attempts: field("a").and_then(number).unwrap_or(0) as u32,
                })
            })
            .collect())
    }

    /// Every dead letter back to the queue, counted from `now_ms`.
    pub(super) async fn redrive(&self, now_ms: u64, ticket_ttl: Duration) -> Result<usize, String> {
        let keys = [self.keys.queue(), self.keys.dead(), self.keys.counter()];
        let args = [
            self.keys.ticket_prefix().into_bytes(),
            now_ms.to_string().into_bytes(),
            millis(ticket_ttl),
            BATCH.to_string().into_bytes(),
        ];
        self.batches(&self.scripts.redrive, &keys, &args).await
    }

    /// Every dead letter dropped for good; tickets say "discarded".
    pub(super) async fn discard(&self, keep: Duration) -> Result<usize, String> {
        let keys = [self.keys.dead()];
        let args = [
            self.keys.ticket_prefix().into_bytes(),
            millis(keep),
            BATCH.to_string().into_bytes(),
        ];
        self.batches(&self.scripts.discard, &keys, &args).await
    }

    /// Runs a batch script until a batch comes back short; the total.
    async fn batches(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<usize, String> {
        let mut total = 0;
        loop {
            let moved = number(&self.link.eval(script, keys, args).await?).unwrap_or(0) as usize;
            total += moved;
            if moved < BATCH {
                return Ok(total);
            }
        }
    }

    /// The ticket's state, if Redis knows the ticket.
    pub(super) async fn status(&self, ticket: TicketId) -> Result<Option<Stored>, String> {
        let keys = [self.keys.ticket(ticket), self.keys.queue()];
        let args = [GROUP.as_bytes().to_vec()];
        let reply = self.link.eval(&self.scripts.status, &keys, &args).await?;
        Ok(parse_status(&reply))
    }

    /// Depth, dead letters, pending, oldest, bytes: the snapshot, updated.
    pub(super) async fn sample(&self) -> Result<Snapshot, String> {
        let keys = [self.keys.queue(), self.keys.dead()];
        let args = [GROUP.as_bytes().to_vec()];
        let reply = self.link.eval(&self.scripts.sample, &keys, &args).await?;
        let v = array(&reply).ok_or("sample: not an array")?;
        let n = |i: usize| v.get(i).and_then(number).unwrap_or(0).max(0) as u64;
        let snapshot = Snapshot {
            queue: n(0),
            dead: n(1),
            pending: n(2),
            oldest_ms: v.get(3).and_then(text).and_then(id_ms),
            bytes: n(4),
        };
        *self.snapshot.lock() = snapshot;
        Ok(snapshot)
    }
}

/// The status script's `{hash, entries read}` as a state.
fn parse_status(reply: &Value) -> Option<Stored> {
    let v = array(reply)?;
    let hash = array(v.first()?)?;
    let read = v.get(1).and_then(number).unwrap_or(-1);
    let field = |name: &str| {
        hash.chunks(2)
            .find(|kv| text(&kv[0]) == Some(name))
            .and_then(|kv| kv.get(1))
    };
    let attempts = field("a").and_then(number).unwrap_or(0) as u32;
    Some(match field("s").and_then(text)? {
        "q" => Stored::Queued {
            attempts,
            ahead: field("n")
                .and_then(number)
                .filter(|_| read >= 0)
                .map(|n| (n - read - 1).max(0) as u64),
        },
        "f" => Stored::DeadLetter { attempts },
        "d" => Stored::Ended(Ended::Delivered {
            status: field("c").and_then(number).unwrap_or(0) as u16,
            body: Bytes::copy_from_slice(field("b").and_then(bytes).unwrap_or_default()),
        }),
        "x" => Stored::Ended(Ended::Expired),
        "c" => Stored::Ended(Ended::Discarded),
        _ => return None,
    })
}

fn millis(d: Duration) -> Vec<u8> {
    d.as_millis().max(1).to_string().into_bytes()
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    std::str::from_utf8(bytes(v)?).ok()
}

fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_keys_share_one_hash_slot_and_name_what_they_hold() {
        let keys = Keys::new("sluice", "orders");
        assert_eq!(keys.queue(), "sluice:async:{orders}:q");
        assert_eq!(keys.dead(), "sluice:async:{orders}:dead");
        assert_eq!(keys.counter(), "sluice:async:{orders}:n");
        let ticket = TicketId(0xab);
        assert_eq!(
            keys.ticket(ticket),
            "sluice:async:{orders}:t:000000000000000000000000000000ab"
        );
        assert!(keys.ticket(ticket).starts_with(&keys.ticket_prefix()));
        assert_eq!(
            keys.idempotency(b"k\x00 1"),
            "sluice:async:{orders}:k:6b002031"
        );
        assert_ne!(
            keys.idempotency(b"a"),
            Keys::new("sluice", "other").idempotency(b"a")
        );
    }

    #[test]
    fn stream_ids_give_their_milliseconds() {
        assert_eq!(id_ms("1765000000000-0"), Some(1_765_000_000_000));
        assert_eq!(id_ms("5-17"), Some(5));
        assert_eq!(id_ms("5"), None);
        assert_eq!(id_ms("x-1"), None);
        assert_eq!(id_ms("5-y"), None);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_tickets_hash_reads_as_its_state() {
        let reply = |fields: &[&str], read: i64| {
            Value::Array(vec![
                Value::Array(fields.iter().map(|f| bulk(f)).collect()),
                Value::Int(read),
            ])
        };
        assert_eq!(
            parse_status(&reply(&["s", "q", "a", "2", "n", "10"], 4)),
            Some(Stored::Queued {
                attempts: 2,
                ahead: Some(5)
            })
        );
        assert_eq!(
            parse_status(&reply(&["s", "q", "a", "0", "n", "3"], -1)),
            Some(Stored::Queued {
                attempts: 0,
                ahead: None
            })
        );
        assert_eq!(
            parse_status(&reply(&["s", "d", "c", "201", "b", "ok"], 0)),
            Some(Stored::Ended(Ended::Delivered {
                status: 201,
                body: Bytes::from_static(b"ok")
            }))
        );
        assert_eq!(
            parse_status(&reply(&["s", "f", "a", "5"], 0)),
            Some(Stored::DeadLetter { attempts: 5 })
        );
        assert_eq!(
            parse_status(&reply(&["s", "x"], 0)),
            Some(Stored::Ended(Ended::Expired))
        );
        assert_eq!(
            parse_status(&reply(&["s", "c"], 0)),
            Some(Stored::Ended(Ended::Discarded))
        );
        assert_eq!(parse_status(&reply(&["s", "?"], 0)), None);
        assert_eq!(parse_status(&Value::Array(vec![])), None);
    }
}
