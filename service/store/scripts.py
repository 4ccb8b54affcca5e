"""The Lua scripts that make multi-key steps atomic inside Redis, each with its KEYS and
ARGV documented in its header. Every script touches the keys of one model only (one
hash tag, so one Redis Cluster slot), or one service-wide key.

Scripts are registered once per client (``register_script`` computes the SHA and loads
the script on first use, on every cluster node it is sent to).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript

FENCED = """
-- Fenced writes: run the given commands only while the caller holds the model's lease.
-- KEYS[1]: the lease hash, KEYS[2]: the meta hash, KEYS[3..]: the keys the commands use.
-- ARGV[1]: the caller's fencing token; then, per command: its name, the index in KEYS of
--   its key, the number of further arguments, and those arguments.
-- Returns {1, reply, ...} in command order, or {0, reason}: 'gone' (no meta: the model was
--   deleted, or Redis lost it), 'taken' (another token holds the lease), 'expired' (nobody).
local token = redis.call('HGET', KEYS[1], 'token')
if token ~= ARGV[1] then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {0, 'gone'} end
  if token then return {0, 'taken'} end
  return {0, 'expired'}
end
local replies = {1}
local i = 2
while i <= #ARGV do
  local argc = tonumber(ARGV[i + 2])
  local command = {ARGV[i], KEYS[tonumber(ARGV[i + 1])]}
  for j = 1, argc do command[j + 2] = ARGV[i + 2 + j] end
  replies[#replies + 1] = redis.call(unpack(command))
  i = i + 3 + argc
end
return replies
"""

ACQUIRE = """
-- Take a model's lease if nobody holds it, or if its holder is ARGV[4] (known dead).
-- KEYS[1]: the lease hash, KEYS[2]: the meta hash.
-- ARGV[1]: replica id, ARGV[2]: lease length (ms), ARGV[3]: the incarnation the caller
--   serves, ARGV[4]: a holder that may be replaced ('' for none).
-- Returns {1, token} when acquired (every acquisition increments meta's epoch, and the
--   token is incarnation:epoch), {0, holder} when held, {-1, ''} when the model is gone
--   or is another incarnation.
if redis.call('HGET', KEYS[2], 'inc') ~= ARGV[3] then return {-1, ''} end
local holder = redis.call('HGET', KEYS[1], 'replica')
if holder and holder ~= ARGV[4] then return {0, holder} end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
local token = ARGV[3] .. ':' .. epoch
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'token', token, 'replica', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, token}
"""

RENEW = """
-- Extend a lease the caller holds. KEYS[1]: the lease hash, KEYS[2]: the meta hash.
-- ARGV[1]: the caller's token, ARGV[2]: lease length (ms).
-- Returns 'ok', or why not: 'gone' (no meta), 'taken' (another token), 'expired'.
local token = redis.call('HGET', KEYS[1], 'token')
if token == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 'ok'
end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'gone' end
if token then return 'taken' end
return 'expired'
"""

APPEND = """
-- Append one request to a model's log from any replica (the log is the queue), and ring
-- the owner's bell with it: the bell item carries the entry and the id of the entry just
-- before it in the log ('' if none is left), so an owner that applied exactly that one
-- can apply this one without reading the log.
-- KEYS[1]: meta, KEYS[2]: log, KEYS[3]: bell, KEYS[4]: lease.
-- ARGV[1]: the incarnation the caller serves; ARGV[2]: most bell items kept;
--   ARGV[3..]: the entry's field/value pairs.
-- Returns {entry id, lease holder or false}, or false when the model is gone.
if redis.call('HGET', KEYS[1], 'inc') ~= ARGV[1] then return false end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local prev = ''
if last[1] then prev = last[1][1] end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
local item = {prev, id}
for i = 3, #ARGV do item[#item + 1] = ARGV[i] end
redis.call('RPUSH', KEYS[3], cjson.encode(item))
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[2]), -1)
return {id, redis.call('HGET', KEYS[4], 'replica')}
"""

CREATE = """
-- Create a model (meta, spec, first snapshot) unless its name is taken, clearing leftovers.
-- KEYS[1]: meta, KEYS[2]: spec, KEYS[3]: snapshot, KEYS[4..]: the model's other keys.
-- ARGV[1]: incarnation id, ARGV[2]: spec JSON, ARGV[3]: ON layer names (JSON),
--   ARGV[4]: created_at, ARGV[5..]: the snapshot's field/value pairs.
-- Returns false when created, else the incarnation that holds the name.
local existing = redis.call('HGET', KEYS[1], 'inc')
if existing then return existing end
redis.call('DEL', unpack(KEYS))
redis.call('HSET', KEYS[1], 'inc', ARGV[1], 'epoch', 0, 'layers', ARGV[3], 'created_at', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], unpack(ARGV, 5))
return false
"""

DELETE = """
-- Delete every key of one incarnation of a model. KEYS: the model's keys, meta first.
-- ARGV[1]: the incarnation. Returns 1 when deleted, 0 when gone or another incarnation.
if redis.call('HGET', KEYS[1], 'inc') ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
"""

UNLIST = """
-- Remove a model from the catalog if the entry is that incarnation (compare and delete).
-- KEYS[1]: the catalog hash. ARGV[1]: name, ARGV[2]: incarnation. Returns 1 or 0.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

HEARTBEAT = """
-- Renew a replica's membership by Redis's clock, drop expired members, list the live ones.
-- KEYS[1]: the replicas sorted set. ARGV[1]: replica id, ARGV[2]: membership length (ms).
-- Returns the live replica ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""

LIVE = """
-- The live replica ids, by Redis's clock. KEYS[1]: the replicas sorted set.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""

PEEK = """
-- How far a model's log and snapshot have moved, for a replica that follows it.
-- KEYS[1]: log, KEYS[2]: snapshot, KEYS[3]: lease.
-- Returns {last log id or '', snapshot log id or '', lease holder or ''}.
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = ''
if last[1] then id = last[1][1] end
local snap = redis.call('HGET', KEYS[2], 'log_id')
local holder = redis.call('HGET', KEYS[3], 'replica')
return {id, snap or '', holder or ''}
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Pending predictions (label_later): KEYS[1] meta, then the keys of keys.label_keys:
# KEYS[2] pending hash (x:<id>, p:<id>), KEYS[3] pending_at zset, KEYS[4] labelled zset,
# KEYS[5] counters hash, KEYS[6] delays list.
_PRUNE = """
-- Forget (at most 256 of) the predictions whose wait expired, and old labelled ids.
local function prune(now, ttl)
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - ttl, 'LIMIT', 0, 256)
  for _, id in ipairs(old) do
    redis.call('HDEL', KEYS[2], 'x:' .. id, 'p:' .. id)
    redis.call('ZREM', KEYS[3], id)
  end
  if #old > 0 then redis.call('HINCRBY', KEYS[5], 'expired', #old) end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)
  return #old
end
"""

REMEMBER = (
    """
-- Keep predictions until their labels arrive. ARGV[1]: incarnation, ARGV[2]: wait (ms),
--   ARGV[3]: most pending per model, ARGV[4..]: per prediction its id, its input (JSON)
--   and what was served (JSON).
-- Returns {'ok', pending, expired, evicted} (counts after the call, and of this call),
--   {'exists', index} when an id is pending or labelled already (or
--   twice in the call: nothing is kept), or false when the model is gone. Past the bound
--   the oldest pending predictions are evicted (counted).
if redis.call('HGET', KEYS[1], 'inc') ~= ARGV[1] then return false end
"""
    + _NOW
    + _PRUNE
    + """
local ttl, bound = tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = prune(now, ttl)
local seen = {}
local n = 0
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  local pending = tonumber(redis.call('ZSCORE', KEYS[3], id))
  local labelled = tonumber(redis.call('ZSCORE', KEYS[4], id))
  if seen[id] or (pending and pending > now - ttl) or (labelled and labelled > now - ttl) then
    return {'exists', n}
  end
  seen[id] = true
  n = n + 1
end
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  redis.call('HSET', KEYS[2], 'x:' .. id, ARGV[i + 1], 'p:' .. id, ARGV[i + 2])
  redis.call('ZADD', KEYS[3], now, id)
end
local over = redis.call('ZCARD', KEYS[3]) - bound
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[3], over)
  for j = 1, #popped, 2 do redis.call('HDEL', KEYS[2], 'x:' .. popped[j], 'p:' .. popped[j]) end
  redis.call('HINCRBY', KEYS[5], 'evicted', over)
else
  over = 0
end
return {'ok', redis.call('ZCARD', KEYS[3]), expired, over}
"""
)

TAKE_LABELS = (
    """
-- Turn labels of pending predictions into one learn entry of the log (as APPEND does:
-- the entry, then the bell), atomically with marking the predictions labelled.
-- KEYS[7]: log, KEYS[8]: bell, KEYS[9]: lease.
-- ARGV[1]: incarnation, ARGV[2]: wait (ms), ARGV[3]: most bell items, ARGV[4]: most
--   delays kept, ARGV[5]: the Idempotency-Key ('' for none), ARGV[6]: the entry's other
--   field/value pairs as a JSON object, ARGV[7..]: per label its prediction id and y (JSON).
-- Returns {'ok', entry id, lease holder or false, pending, expired, delays (ms)...};
--   {why, index} for the first label that
--   cannot be taken (why: 'unknown', 'expired', 'labelled', 'duplicate'; nothing is
--   taken); false when the model is gone. When every refused label was 'labelled' and
--   an Idempotency-Key came with them, a 'dup' entry is logged instead, for the owner to
--   answer from the key's record: {'dup', entry id, holder}.
if redis.call('HGET', KEYS[1], 'inc') ~= ARGV[1] then return false end
"""
    + _NOW
    + _PRUNE
    + """
local ttl = tonumber(ARGV[2])
local delays = {}
local first, all_labelled = nil, true
local seen = {}
local index = 0
for i = 7, #ARGV, 2 do
  local id = ARGV[i]
  local why = nil
  local at = tonumber(redis.call('ZSCORE', KEYS[3], id))
  if seen[id] then
    why = 'duplicate'
  elseif at and at <= now - ttl then
    why = 'expired'
  elseif not at then
    local labelled = tonumber(redis.call('ZSCORE', KEYS[4], id))
    why = (labelled and labelled > now - ttl) and 'labelled' or 'unknown'
  end
  seen[id] = true
  if why then
    if not first then first = {why, index} end
    if why ~= 'labelled' then all_labelled = false end
  end
  index = index + 1
end
local expired = prune(now, ttl)  -- after the checks, which tell expired ids apart
local fields = cjson.decode(ARGV[6])
local entry = {}
for k, v in pairs(fields) do entry[#entry + 1] = k; entry[#entry + 1] = v end
if ARGV[5] ~= '' then entry[#entry + 1] = 'ikey'; entry[#entry + 1] = ARGV[5] end
local status = 'ok'
if first then
  if not (all_labelled and ARGV[5] ~= '') then return first end
  status = 'dup'
  entry[#entry + 1] = 'dup'; entry[#entry + 1] = '1'
  entry[#entry + 1] = 'samples'; entry[#entry + 1] = '[]'
  entry[#entry + 1] = 'served'; entry[#entry + 1] = '[]'
else
  local samples, served = {}, {}
  for i = 7, #ARGV, 2 do
    local id = ARGV[i]
    local at = tonumber(redis.call('ZSCORE', KEYS[3], id))
    samples[#samples + 1] = '[' .. redis.call('HGET', KEYS[2], 'x:' .. id) .. ',' .. ARGV[i + 1] .. ']'
    served[#served + 1] = redis.call('HGET', KEYS[2], 'p:' .. id)
    redis.call('HDEL', KEYS[2], 'x:' .. id, 'p:' .. id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[4], at, id)
    redis.call('LPUSH', KEYS[6], now - at)
    delays[#delays + 1] = now - at
  end
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[4]) - 1)
  redis.call('HINCRBY', KEYS[5], 'labelled', #samples)
  entry[#entry + 1] = 'samples'; entry[#entry + 1] = '[' .. table.concat(samples, ',') .. ']'
  entry[#entry + 1] = 'served'; entry[#entry + 1] = '[' .. table.concat(served, ',') .. ']'
end
local last = redis.call('XREVRANGE', KEYS[7], '+', '-', 'COUNT', 1)
local prev = ''
if last[1] then prev = last[1][1] end
local id = redis.call('XADD', KEYS[7], '*', unpack(entry))
local item = {prev, id}
for i = 1, #entry do item[#item + 1] = entry[i] end
redis.call('RPUSH', KEYS[8], cjson.encode(item))
redis.call('LTRIM', KEYS[8], -tonumber(ARGV[3]), -1)
local out = {status, id, redis.call('HGET', KEYS[9], 'replica'), redis.call('ZCARD', KEYS[3]), expired}
for i = 1, #delays do out[#out + 1] = delays[i] end
return out
"""
)


@dataclass(frozen=True)
class Scripts:
    fenced: AsyncScript
    acquire: AsyncScript
    renew: AsyncScript
    append: AsyncScript
    create: AsyncScript
    delete: AsyncScript
    unlist: AsyncScript
    heartbeat: AsyncScript
    live: AsyncScript
    peek: AsyncScript
    remember: AsyncScript
    take_labels: AsyncScript


_SOURCES = {
    "fenced": FENCED,
    "acquire": ACQUIRE,
    "renew": RENEW,
    "append": APPEND,
    "create": CREATE,
    "delete": DELETE,
    "unlist": UNLIST,
    "heartbeat": HEARTBEAT,
    "live": LIVE,
    "peek": PEEK,
    "remember": REMEMBER,
    "take_labels": TAKE_LABELS,
}
_REGISTERED: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


def scripts(redis: Any) -> Scripts:
    """The scripts registered on ``redis`` (a client or cluster client), once per client."""
    found = _REGISTERED.get(redis)
    if found is None:
        found = Scripts(**{name: redis.register_script(src) for name, src in _SOURCES.items()})
        _REGISTERED[redis] = found
    return found
