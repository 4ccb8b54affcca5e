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
}
_REGISTERED: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


def scripts(redis: Any) -> Scripts:
    """The scripts registered on ``redis`` (a client or cluster client), once per client."""
    found = _REGISTERED.get(redis)
    if found is None:
        found = Scripts(**{name: redis.register_script(src) for name, src in _SOURCES.items()})
        _REGISTERED[redis] = found
    return found
