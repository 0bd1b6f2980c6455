"""The Lua scripts of `smpprelay.shared.concat`: each decision about a concatenated message is
one script, so Redis runs it whole while every other instance's commands wait.

Keys (``P`` is ``store.key_prefix``; ``M``, a message's member name, is
``hex(account):hex(source):hex(destination):reference``):

- ``P c:m:M`` (hash): an open message: ``account``, ``total``, ``first`` (ms), ``n`` (parts held),
  ``bytes`` (their cost), ``glued`` (the completing part's sequence while the operator has the
  message), ``retrying``; per part ``f:S`` (frame), ``i:S`` (its id), ``x:S`` (arrival ms,
  app_iso, receipt_as).
- ``P c:x:M:total`` (string): a closed message's first-part time (ms), kept two windows from it.
- ``P c:open`` (zset): the open messages scored by first-part time (expiry, ``max_open``).
- ``P c:o:hex(account)`` (zset): the same, per account (``max_open_per_account``).
- ``P c:held`` (string) and ``P c:held:a`` (hash by account): held parts' cost in bytes.
- ``P c:id:ID`` (string): ``"S M"``, the part the relay gave the id ``ID`` (held, or completing
  a message the operator has), for query_sm, cancel_sm and replace_sm; deleted when its
  message closes, else gone with its TTL. Checked against the message hash (``i:S`` must
  still be ``ID``) and the account (``M`` starts with it) before any use.

Every key gets a TTL of three windows on each write, so nothing outlives a cluster of dead
instances by long. Times are integer milliseconds (Lua numbers are truncated to integers).
The scripts build keys from the prefix (the expiry finds its messages in a zset), so they need
a single Redis (or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

from smpprelay.store.redis_link import Script

# Close an open message (its hash must exist): remember it for stragglers, give back its counts.
_CLOSE = """
local function close(prefix, member, now, window)
  local mkey = prefix .. 'c:m:' .. member
  local h = redis.call('HMGET', mkey, 'account', 'total', 'first', 'bytes')
  local first = tonumber(h[3])
  local keep = first + 2 * window - now
  if keep < 1 then keep = 1 end
  redis.call('SET', prefix .. 'c:x:' .. member .. ':' .. h[2], h[3], 'PX', keep)
  local bytes = tonumber(h[4]) or 0
  -- A counter gone by its TTL is not brought back (without a TTL, below zero).
  local heldk, heldh = prefix .. 'c:held', prefix .. 'c:held:a'
  if bytes ~= 0 and redis.call('EXISTS', heldk) == 1 then
    redis.call('DECRBY', heldk, bytes)
  end
  if bytes ~= 0 and redis.call('HEXISTS', heldh, h[1]) == 1 then
    if redis.call('HINCRBY', heldh, h[1], -bytes) <= 0 then
      redis.call('HDEL', heldh, h[1])
    end
  end
  for s = 1, tonumber(h[2]) do
    local id = redis.call('HGET', mkey, 'i:' .. s)
    if id then redis.call('DEL', prefix .. 'c:id:' .. id) end
  end
  redis.call('DEL', mkey)
  redis.call('ZREM', prefix .. 'c:open', member)
  local hexacc = string.sub(member, 1, string.find(member, ':', 1, true) - 1)
  redis.call('ZREM', prefix .. 'c:o:' .. hexacc, member)
end
"""

# KEYS: message hash, closed marker, open zset, account's open zset, held total, held by account,
#       the part's id index.
# ARGV: member, total, sequence, now, window, ttl, max_open, max_open_per_account,
#       max_held_bytes, max_held_bytes_per_account, account, frame, id, meta, cost.
# Returns {'hold'}, {'reject', reason}, {'replay', id}, or {'accept', S, frame, id, meta, ...}
# (the other parts, the completing one marked as being with the operator).
CHECK = Script(
    "concat_check",
    """
local mkey, ckey, openz, acctz, heldk, heldh = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local member, total, seq = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now, window, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local account, frame, id, meta, cost = ARGV[11], ARGV[12], ARGV[13], ARGV[14], tonumber(ARGV[15])
local idkey = KEYS[7]

local function no_room()
  local held = tonumber(redis.call('GET', heldk)) or 0
  local mine = tonumber(redis.call('HGET', heldh, account)) or 0
  return held + cost > tonumber(ARGV[9]) or mine + cost > tonumber(ARGV[10])
end

local function hold()
  redis.call('HSET', mkey, 'f:' .. seq, frame, 'i:' .. seq, id, 'x:' .. seq, meta)
  redis.call('HINCRBY', mkey, 'n', 1)
  redis.call('HINCRBY', mkey, 'bytes', cost)
  redis.call('INCRBY', heldk, cost)
  redis.call('HINCRBY', heldh, account, cost)
  redis.call('SET', idkey, seq .. ' ' .. member, 'PX', ttl)
  for _, key in ipairs({mkey, openz, acctz, heldk, heldh}) do
    redis.call('PEXPIRE', key, ttl)
  end
  return {'hold'}
end

local h = redis.call('HMGET', mkey, 'total', 'first', 'glued', 'retrying', 'n')
if h[1] and tonumber(h[1]) == total then
  local first = tonumber(h[2])
  if now > first + window then return {'reject', 'late'} end
  local held = redis.call('HGET', mkey, 'f:' .. seq)
  if held then
    if not h[3] and (h[4] or string.sub(held, 17) == string.sub(frame, 17)) then
      return {'replay', redis.call('HGET', mkey, 'i:' .. seq)}
    end
    return {'reject', 'duplicate_part'}
  end
  if tonumber(h[5]) + 1 < total then
    if no_room() then return {'reject', 'full'} end
    return hold()
  end
  local out = {'accept'}
  for s = 1, total do
    local name = tostring(s)
    if name ~= seq then
      local part = redis.call('HMGET', mkey, 'f:' .. name, 'i:' .. name, 'x:' .. name)
      table.insert(out, name)
      table.insert(out, part[1])
      table.insert(out, part[2])
      table.insert(out, part[3])
    end
  end
  -- With the operator now: closed to new parts until the relay says what became of it. The
  -- completing part is kept (not counted) so that a retry can take it out again.
  redis.call('HSET', mkey, 'f:' .. seq, frame, 'i:' .. seq, id, 'x:' .. seq, meta,
    'glued', seq, 'n', total)
  redis.call('HDEL', mkey, 'retrying')
  redis.call('PEXPIRE', mkey, ttl)
  redis.call('SET', idkey, seq .. ' ' .. member, 'PX', ttl)
  return out
end
local closed = tonumber(redis.call('GET', ckey))
if closed then
  if now <= closed + window then return {'reject', 'duplicate_part'} end
  if now <= closed + 2 * window then return {'reject', 'late'} end
  redis.call('DEL', ckey)
end
if h[1] then return {'reject', 'reference_reused'} end
if redis.call('ZCARD', openz) >= tonumber(ARGV[7]) then return {'reject', 'full'} end
-- Members of instances that all died long ago (their hashes gone by TTL) no longer count.
redis.call('ZREMRANGEBYSCORE', acctz, '-inf', '(' .. (now - ttl))
if redis.call('ZCARD', acctz) >= tonumber(ARGV[8]) then return {'reject', 'full'} end
if no_room() then return {'reject', 'full'} end
redis.call('HSET', mkey, 'account', account, 'total', total, 'first', now, 'n', 0, 'bytes', 0)
redis.call('ZADD', openz, now, member)
redis.call('ZADD', acctz, now, member)
return hold()
""",
)

# KEYS: none declared (built from the prefix). ARGV: prefix, member, sequence, id, outcome,
# now, window, ttl. Returns 1 when the message was the one with the operator, else 0.
SETTLE = Script(
    "concat_settle",
    _CLOSE
    + """
local prefix, member, seq, id, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, window, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local mkey = prefix .. 'c:m:' .. member
local h = redis.call('HMGET', mkey, 'glued', 'i:' .. seq)
if h[1] ~= seq or h[2] ~= id then return 0 end
if outcome ~= 'retry' then
  close(prefix, member, now, window)
  return 1
end
-- The completing part goes, so the app's retry of it completes the message again; parts sent
-- again meanwhile are answered as held. Past its window, the next expiry gives it up.
redis.call('HDEL', mkey, 'f:' .. seq, 'i:' .. seq, 'x:' .. seq, 'glued')
redis.call('HINCRBY', mkey, 'n', -1)
redis.call('HSET', mkey, 'retrying', 1)
redis.call('PEXPIRE', mkey, ttl)
return 1
""",
)

# KEYS: none declared. ARGV: prefix, now, window, limit.
# Claims (closes) up to ``limit`` messages whose window ended, and a message still with the
# operator two windows after its first part (its instance never said what became of it: it
# died). Returns {account, first, {S, frame, id, meta, ...}} per message, the parts held
# (not the completing part of a message with the operator).
EXPIRE = Script(
    "concat_expire",
    _CLOSE
    + """
local prefix, now, window, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local openz = prefix .. 'c:open'
local due = redis.call('ZRANGEBYSCORE', openz, '-inf', '(' .. (now - window), 'LIMIT', 0, limit)
local out = {}
for _, member in ipairs(due) do
  local mkey = prefix .. 'c:m:' .. member
  local h = redis.call('HMGET', mkey, 'account', 'first', 'glued', 'total')
  if not h[1] then
    -- Its hash outlived by nothing (TTL): only the index entries are left.
    redis.call('ZREM', openz, member)
    local hexacc = string.sub(member, 1, string.find(member, ':', 1, true) - 1)
    redis.call('ZREM', prefix .. 'c:o:' .. hexacc, member)
  elseif not h[3] or tonumber(h[2]) < now - 2 * window then
    local parts = {}
    for s = 1, tonumber(h[4]) do
      local name = tostring(s)
      if name ~= h[3] then
        local part = redis.call('HMGET', mkey, 'f:' .. name, 'i:' .. name, 'x:' .. name)
        if part[1] then
          table.insert(parts, name)
          table.insert(parts, part[1])
          table.insert(parts, part[2])
          table.insert(parts, part[3])
        end
      end
    end
    table.insert(out, {h[1], h[2], parts})
    close(prefix, member, now, window)
  end
end
return out
""",
)

# The part the relay gave ``id`` to the account ``hexacc`` (hex of its name), still in its
# message's hash: its member, sequence and hash key; nil for another account's id, an unknown
# one, or one whose part is no longer held (its message closed, or a retry took it out).
_FIND = """
local function find(prefix, id, hexacc)
  local entry = redis.call('GET', prefix .. 'c:id:' .. id)
  if not entry then return nil end
  local sep = string.find(entry, ' ', 1, true)
  local seq, member = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  if string.sub(member, 1, #hexacc + 1) ~= hexacc .. ':' then return nil end
  local mkey = prefix .. 'c:m:' .. member
  if redis.call('HGET', mkey, 'i:' .. seq) ~= id then return nil end
  return member, seq, mkey
end
"""

# KEYS: none declared. ARGV: prefix, id, hex(account).
# Returns {} (not held for this account), or {S, frame, meta, first, 1 if the operator has
# the message else 0}.
FIND = Script(
    "concat_find",
    _FIND
    + """
local member, seq, mkey = find(ARGV[1], ARGV[2], ARGV[3])
if not member then return {} end
local h = redis.call('HMGET', mkey, 'f:' .. seq, 'x:' .. seq, 'first', 'glued')
return {seq, h[1], h[2], h[3], h[4] and 1 or 0}
""",
)

# KEYS: none declared. ARGV: prefix, id, hex(account), now, window.
# Drops the open message holding the part ``id`` names (cancel_sm), closed like an expired
# one so that its later parts are refused. Returns {'gone'}, {'with_operator'}, or
# {'cancelled', first, {S, frame, id, meta, ...}} (the parts it held).
CANCEL = Script(
    "concat_cancel",
    _CLOSE
    + _FIND
    + """
local prefix, now, window = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local member, seq, mkey = find(prefix, ARGV[2], ARGV[3])
if not member then return {'gone'} end
local h = redis.call('HMGET', mkey, 'first', 'glued', 'total')
if h[2] then return {'with_operator'} end
local parts = {}
for s = 1, tonumber(h[3]) do
  local name = tostring(s)
  local part = redis.call('HMGET', mkey, 'f:' .. name, 'i:' .. name, 'x:' .. name)
  if part[1] then
    table.insert(parts, name)
    table.insert(parts, part[1])
    table.insert(parts, part[2])
    table.insert(parts, part[3])
  end
end
close(prefix, member, now, window)
return {'cancelled', h[1], parts}
""",
)

# KEYS: none declared. ARGV: prefix, id, hex(account), frame, max_held_bytes,
# max_held_bytes_per_account. Puts ``frame`` in place of the held part ``id`` names
# (replace_sm), its cost counted against the caps. Returns 'replaced', 'full', 'gone' or
# 'with_operator'.
REPLACE = Script(
    "concat_replace",
    _FIND
    + """
local prefix, frame = ARGV[1], ARGV[4]
local member, seq, mkey = find(prefix, ARGV[2], ARGV[3])
if not member then return 'gone' end
local h = redis.call('HMGET', mkey, 'glued', 'account', 'f:' .. seq)
if h[1] then return 'with_operator' end
local delta = #frame - #h[3]
local heldk, heldh = prefix .. 'c:held', prefix .. 'c:held:a'
if delta > 0 then
  local held = tonumber(redis.call('GET', heldk)) or 0
  local mine = tonumber(redis.call('HGET', heldh, h[2])) or 0
  if held + delta > tonumber(ARGV[5]) or mine + delta > tonumber(ARGV[6]) then
    return 'full'
  end
end
redis.call('HSET', mkey, 'f:' .. seq, frame)
if delta ~= 0 then
  redis.call('HINCRBY', mkey, 'bytes', delta)
  -- A counter gone by its TTL is not brought back (as in close).
  if redis.call('EXISTS', heldk) == 1 then redis.call('INCRBY', heldk, delta) end
  if redis.call('HEXISTS', heldh, h[2]) == 1 then redis.call('HINCRBY', heldh, h[2], delta) end
end
return 'replaced'
""",
)
