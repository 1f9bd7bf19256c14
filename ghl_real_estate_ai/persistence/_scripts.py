"""Lua scripts of the plain-Redis checkpointer (Redis 6.0+, no modules).

Each script touches the keys of ONE thread only. The keys of the namespace being written come in
``KEYS``; the keys of the thread's other namespaces (for the TTL refresh and deletes) are built inside
the script from the thread's base key, which carries the same ``{...}`` hash tag, so they always live
in the same Redis Cluster slot. The byte layouts they read are documented in ``_codec.py``.

Why Lua: each saver call is one round trip and atomic. A ``put`` stores the record, the index entry
and the new blobs, prunes old checkpoints (``keep_last``) and refreshes the expiry of every key the
thread still uses (unless that was done in the last second: ``refresh_due``), all at once;
``put_writes`` merges first-write-wins in place (HSETNX semantics on a packed field); a read returns
the checkpoint with its blobs and pending writes. The scripts keep the number of ``redis.call``s low
because each one costs about a microsecond of server time.
"""

from __future__ import annotations

import hashlib
import re

# Helpers shared by every script. `struct` and `bit` are part of Redis' Lua environment.
_PRELUDE = r"""
local FORK, DELTA = 1, 2
local REF, PATCH = 9, 10
local SPLICE = 128

-- The blob field a reference points into, or nil for a full blob (see _codec.py).
local function ref_target(v)
  local b = string.byte(v, 1)
  if b == REF then return string.sub(v, 6) end
  if b == PATCH then
    local n = struct.unpack('>H', v, 2)
    return string.sub(v, 4, 3 + n)
  end
  return nil
end

-- A checkpoint id as a record stores its parent (254 + 16 uuid bytes, or len + text) at position p:
-- the id and the position after it.
local function read_id(s, p)
  local n = string.byte(s, p)
  if n == 254 then
    local hex = string.gsub(string.sub(s, p + 1, p + 16), '.', function(c)
      return string.format('%02x', string.byte(c))
    end)
    return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' .. string.sub(hex, 13, 16) .. '-'
      .. string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32), p + 17
  end
  if n == 255 then
    n = struct.unpack('>H', s, p + 1)
    return string.sub(s, p + 3, p + 2 + n), p + 3 + n
  end
  return string.sub(s, p + 1, p + n), p + 1 + n
end

-- The record a splice (ops from position p) stands for, given its target's record.
local function apply_splice(base, sp, p)
  local parts, cursor = {}, 1
  while p <= #sp do
    local at, cut, n = struct.unpack('>HHH', sp, p)
    parts[#parts + 1] = string.sub(base, cursor, at)
    parts[#parts + 1] = string.sub(sp, p + 6, p + 5 + n)
    p = p + 6 + n
    cursor = at + cut + 1
  end
  parts[#parts + 1] = string.sub(base, cursor)
  return table.concat(parts)
end

-- The whole record of checkpoint `cid`, or false if it is gone. A record stored as a splice of a later
-- checkpoint's record (SPLICE, see _codec.py) is applied to that one, itself maybe a splice: a chain
-- ends at a record stored whole (the thread's latest at least). `memo` (cid -> record) spares the
-- chain's links to later calls in the same script.
local function record_of(h, cid, memo)
  local rec = memo[cid]
  if rec then return rec end
  rec = redis.call('HGET', h, 'c' .. cid)
  local chain, id = {}, cid
  while rec and string.byte(rec, 1) == SPLICE do
    local target, p = read_id(rec, 2)
    chain[#chain + 1] = {id, rec, p}
    if #chain > 100000 then error('record splices form a loop at ' .. cid) end
    id = target
    rec = memo[target] or redis.call('HGET', h, 'c' .. target)
  end
  if not rec then return false end
  memo[id] = rec
  for i = #chain, 1, -1 do
    local link = chain[i]
    rec = apply_splice(rec, link[2], link[3])
    memo[link[1]] = rec
  end
  return rec
end

-- A list of strings stored as u16 length + bytes each (the event index, field 's').
local function unpack_list(s)
  local out, p = {}, 1
  while p <= #s do
    local n = struct.unpack('>H', s, p)
    out[#out + 1] = string.sub(s, p + 2, p + 1 + n)
    p = p + 2 + n
  end
  return out
end

local function pack_list(t)
  local parts = {}
  for i, v in ipairs(t) do parts[i] = struct.pack('>H', #v) .. v end
  return table.concat(parts)
end

-- Marks in `reached` every blob field the extension references starting at `field` lead to (not
-- `field` itself); `reached` doubles as the set of fields already followed.
local function follow_refs(h, field, reached)
  local v = redis.call('HGET', h, field)
  while v do
    field = ref_target(v)
    if not field or reached[field] then return end
    reached[field] = true
    v = redis.call('HGET', h, field)
  end
end

local function rd_len(s, p)
  local n = string.byte(s, p)
  if n < 254 then return n, p + 1 end
  return struct.unpack('>H', s, p + 1), p + 3
end

-- The blob fields a checkpoint record reads (channels of kind 0), in channel order:
-- 'b' .. u16 name id .. version key.
local function blob_fields(rec)
  local fields = {}
  local p
  if string.byte(rec, 2) == 254 then
    p = 19
  else
    local n
    n, p = rd_len(rec, 2)
    p = p + n
  end
  local nvk = struct.unpack('>H', rec, p)
  p = p + 2
  local vks = {}
  for i = 1, nvk do
    local n
    n, p = rd_len(rec, p)
    vks[i] = string.sub(rec, p, p + n - 1)
    p = p + n
  end
  local nch = struct.unpack('>H', rec, p)
  p = p + 2
  for _ = 1, nch do
    if string.byte(rec, p + 4) == 0 then
      fields[#fields + 1] = 'b' .. string.sub(rec, p, p + 1) .. vks[struct.unpack('>H', rec, p + 2) + 1]
    end
    p = p + 5
  end
  return fields
end

local function flags_of(d)
  if d then return string.byte(d, 9) end
  return 0
end

local function set_flag(h, flag)
  local d = redis.call('HGET', h, 'n')
  if d and bit.band(string.byte(d, 9), flag) == 0 then
    redis.call('HSET', h, 'n', string.sub(d, 1, 8) .. string.char(bit.bor(string.byte(d, 9), flag))
      .. string.sub(d, 10))
  end
end

-- Every key of the thread gets the same expiry: an unchanged channel's blob, written long ago,
-- lives exactly as long as the checkpoints that read it.
local function refresh(base, nset, ttl)
  local nss = redis.call('SMEMBERS', nset)
  if ttl > 0 then
    redis.call('PEXPIRE', nset, ttl)
    for _, ns in ipairs(nss) do
      redis.call('PEXPIRE', base .. ':h:' .. ns, ttl)
      redis.call('PEXPIRE', base .. ':i:' .. ns, ttl)
    end
  else
    redis.call('PERSIST', nset)
    for _, ns in ipairs(nss) do
      redis.call('PERSIST', base .. ':h:' .. ns)
      redis.call('PERSIST', base .. ':i:' .. ns)
    end
  end
end

-- A write that created none of the thread's keys refreshes them only if they were not refreshed in
-- the last second (ttl/100 for a ttl under 100 s): all keys are always refreshed together, so the
-- namespace hash's remaining time stands for all of them, and the writes of one graph turn (about
-- eight, milliseconds apart) refresh once. Every write still leaves every key at least ttl - slack.
local function refresh_due(base, nset, h, ttl, created)
  if not created then
    local left = redis.call('PTTL', h)
    if ttl > 0 then
      if left <= ttl and left >= ttl - math.min(1000, math.floor(ttl / 100)) then return end
    elseif left == -1 then
      return
    end
  end
  refresh(base, nset, ttl)
end

-- Registers namespace `ns`; returns 1 if the thread already existed, 0 if this created it.
local function add_namespace(nset, ns)
  if redis.call('SADD', nset, ns) == 0 then return 1 end
  if redis.call('SCARD', nset) > 1 then return 1 end
  return 0
end

-- Remove checkpoints `cids` of one namespace with their writes, then the blobs no remaining
-- checkpoint reads. The readers of a blob (channel, version) form a connected subtree of the
-- checkpoint tree (versions are unique and only inherited), so when history is one chain and the
-- oldest checkpoints go, the oldest survivor is the only one that can still read a freed blob. After
-- a fork, a delete in the middle or an out-of-order put (flag FORK), every survivor is checked.
local function remove_checkpoints(nset, ns, h, ik, cids, full)
  local cand, ncand = {}, 0
  local memo = {}
  for _, c in ipairs(cids) do
    local rec = record_of(h, c, memo)
    if rec then
      for _, f in ipairs(blob_fields(rec)) do
        if not cand[f] then cand[f] = true; ncand = ncand + 1 end
      end
    end
    redis.call('HDEL', h, 'c' .. c, 'w' .. c)
    redis.call('ZREM', ik, c)
  end
  if redis.call('ZCARD', ik) == 0 then
    redis.call('DEL', h, ik)
    redis.call('SREM', nset, ns)
    return
  end
  if ncand == 0 then return end
  -- what the removed checkpoints reached through extension references may be freed too
  local reached = {}
  for f in pairs(cand) do
    if not reached[f] then follow_refs(h, f, reached) end
  end
  for f in pairs(reached) do
    if not cand[f] then cand[f] = true; ncand = ncand + 1 end
  end
  local survivors
  if full or bit.band(flags_of(redis.call('HGET', h, 'n')), FORK) ~= 0 then
    survivors = redis.call('ZRANGE', ik, 0, -1)
  else
    survivors = redis.call('ZRANGE', ik, 0, 0)
  end
  -- A survivor also reads what its blobs' extension references lead to (always later versions).
  local followed = {}
  for _, c in ipairs(survivors) do
    local rec = record_of(h, c, memo)
    if rec then
      for _, f in ipairs(blob_fields(rec)) do
        if cand[f] then cand[f] = nil; ncand = ncand - 1 end
        if not followed[f] then
          followed[f] = true
          follow_refs(h, f, followed)
        end
      end
    end
    if ncand == 0 then return end
  end
  for f in pairs(followed) do
    if cand[f] then cand[f] = nil; ncand = ncand - 1 end
  end
  for f in pairs(cand) do redis.call('HDEL', h, f) end
end

-- Keeps the newest `kev` of the sorted event starts `first` and prunes the checkpoints older than the
-- oldest kept one; returns the starts kept.
local function cut_events(nset, ns, h, ik, first, kev)
  if #first <= kev then return first end
  local cut = first[#first - kev + 1]
  local kept = {}
  for i = #first - kev + 1, #first do kept[#kept + 1] = first[i] end
  local old = redis.call('ZRANGEBYLEX', ik, '-', '(' .. cut)
  if #old > 0 then remove_checkpoints(nset, ns, h, ik, old, false) end
  return kept
end
"""

# KEYS: nset, h, ik
# ARGV: base, ns, cid, parent, record, ttl_ms, keep_last, uses_delta, epoch, known_names,
#       new_name_count, new_names, nblobs, field1, blob1, ..., nrefs, old_field1, ref1, ...,
#       keep_events, continues ('1' if the caller wrote the parent itself, as its last put here, and
#       this is a "loop" checkpoint of the next step), spliced, splice
# The record refers to names by id, assuming the dictionary has epoch `epoch` and `known_names` names
# (0 and a fresh epoch when the caller knows none). If it does not, nothing is written and the current
# dictionary is returned ("" if none) for the caller to rebuild the record. Otherwise `new_names` is
# appended and the reply is 1 if the thread already existed, else 0 (the caller then registers it).
# Each `old_field` (a blob the new blob repeats or extends) is rewritten into its reference `ref`
# unless it is gone. So is the record of checkpoint `spliced` (an earlier one, the parent) into
# `splice`, the same record as a splice of this one (see _codec.py); '' for none.
# Events (keep_events > 0): a checkpoint starts an event (a graph run, an update, a fork) unless it is
# a "loop" checkpoint of the next step whose parent is the latest checkpoint, written by the same
# caller (`continues`, checked against the index here). Field 's' holds (the first 20 characters of)
# the ids starting the kept events; the checkpoints older than the oldest kept event are pruned. A put
# that continues an event reads and writes nothing of the index. A namespace with checkpoints but no
# 's' (written before events were kept) gets nothing written and the reply 'M': the caller indexes its
# events (INDEX_EVENTS), then puts again. (Field 'e', the last put's id and step, was written by the
# release that introduced events; a start removes it.)
PUT = r"""
local nset, h, ik = KEYS[1], KEYS[2], KEYS[3]
local base, ns, cid, parent = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local nblobs = tonumber(ARGV[13])
local rp = 14 + 2 * nblobs
local nrefs = tonumber(ARGV[rp])
local ep = rp + 1 + 2 * nrefs
local kev = tonumber(ARGV[ep])
local continues = ARGV[ep + 1] == '1'
local spliced, splice = ARGV[ep + 2], ARGV[ep + 3]
local d = redis.call('HGET', h, 'n')
local s = false
if kev > 0 and not continues then
  s = redis.call('HGET', h, 's')
  if not s and bit.band(flags_of(d), DELTA) == 0 and ARGV[8] ~= '1' and redis.call('ZCARD', ik) > 0 then
    return 'M'
  end
end
local had_hash = d ~= false
local known = tonumber(ARGV[10])
local flags
if d then
  if string.sub(d, 1, 8) ~= ARGV[9] or struct.unpack('>H', d, 10) ~= known then return d end
  flags = string.byte(d, 9)
elseif known ~= 0 then
  return ''
else
  flags = 0
  d = ARGV[9] .. '\0\0\0'
end
local newflags = flags
if ARGV[8] == '1' then newflags = bit.bor(newflags, DELTA) end
-- a namespace with a name dictionary is registered already (the scripts that drop a namespace from
-- the set delete its hash, dictionary included)
local existed = 1
if known == 0 then existed = add_namespace(nset, ns) end
local latest = redis.call('ZREVRANGE', ik, 0, 0)[1]
local linear
if latest then linear = (parent == latest and cid > latest) else linear = (parent == '') end
if redis.call('ZADD', ik, 0, cid) == 0 then linear = false end
if not linear then newflags = bit.bor(newflags, FORK) end
local added = tonumber(ARGV[11])
if added > 0 or newflags ~= flags or known == 0 then
  redis.call('HSET', h, 'n', string.sub(d, 1, 8) .. string.char(newflags)
    .. struct.pack('>H', known + added) .. string.sub(d, 12) .. ARGV[12])
end
redis.call('HSET', h, 'c' .. cid, ARGV[5])
for i = 0, nblobs - 1 do
  redis.call('HSETNX', h, ARGV[14 + 2 * i], ARGV[15 + 2 * i])
end
if spliced and spliced ~= '' and spliced < cid then
  -- an earlier record as a splice of this one, unless it is gone (then it stays gone)
  if redis.call('HSET', h, 'c' .. spliced, splice) == 1 then redis.call('HDEL', h, 'c' .. spliced) end
end
for i = 0, nrefs - 1 do
  -- (a blob that is a reference already, into another branch's later version, may be pointed here
  -- instead: this version holds it as well; a blob pruned meanwhile stays gone: one command when it
  -- is there, as it nearly always is)
  local f = ARGV[rp + 1 + 2 * i]
  if redis.call('HSET', h, f, ARGV[rp + 2 + 2 * i]) == 1 then redis.call('HDEL', h, f) end
end
local keep = tonumber(ARGV[7])
if keep > 0 and bit.band(newflags, DELTA) == 0 then
  local total = redis.call('ZCARD', ik)
  if total > keep then
    remove_checkpoints(nset, ns, h, ik, redis.call('ZRANGE', ik, 0, total - keep - 1), false)
  end
end
if kev > 0 and bit.band(newflags, DELTA) == 0 and not (continues and linear) then
  -- this put starts an event (or continues one after another writer's put: counted as a start)
  if continues then s = redis.call('HGET', h, 's') end
  local first = {}
  if s then first = unpack_list(s) end
  -- the first 20 characters of the id are enough to cut at: every id below the prefix is below
  -- the id, so a prefix can only keep more, never less (a uuid6 id's time fills them)
  first[#first + 1] = string.sub(cid, 1, 20)
  table.sort(first)
  first = cut_events(nset, ns, h, ik, first, kev)
  redis.call('HSET', h, 's', pack_list(first))
  redis.call('HDEL', h, 'e')
end
-- h and ik existed before this call if the dictionary and a latest checkpoint did
refresh_due(base, nset, h, tonumber(ARGV[6]), not (had_hash and latest))
return existed
"""

# KEYS: nset, h, ik
# ARGV: base, ns, cid, ttl_ms, keep_last, pack (one task group, no repeated idx)
# Regular writes (idx >= 0) are first-write-wins per (task_id, idx); special channels (idx < 0)
# overwrite. Returns 1 if the thread already existed, else 0.
PUT_WRITES = r"""
local nset, h, ik = KEYS[1], KEYS[2], KEYS[3]
local base, ns, cid = ARGV[1], ARGV[2], ARGV[3]
local keep = tonumber(ARGV[5])
-- writes for a stored checkpoint: its namespace is registered and it is not pruned
local stored = redis.call('HEXISTS', h, 'c' .. cid) == 1
local existed = 1
if not stored then existed = add_namespace(nset, ns) end
local stale = false
if keep > 0 and not stored and redis.call('ZCARD', ik) >= keep then
  -- writes that arrive after keep_last already pruned their checkpoint would never be read
  local oldest = redis.call('ZRANGE', ik, 0, 0)[1]
  stale = oldest ~= nil and cid < oldest
end
local cur = nil
if not stale then cur = redis.call('HGET', h, 'w' .. cid) end
if stale then
  -- nothing to store
elseif not cur then
  redis.call('HSET', h, 'w' .. cid, ARGV[6])
else
  -- a pack is a list of task groups; see _codec.py
  local tasks, groups = {}, {}
  local function each(s, fn)
    local p, e = 1, #s
    while p <= e do
      local lt, lp, n = struct.unpack('>HHH', s, p)
      p = p + 6
      local tid = string.sub(s, p, p + lt - 1)
      local path = string.sub(s, p + lt, p + lt + lp - 1)
      p = p + lt + lp
      for _ = 1, n do
        local idx, lc, lv = struct.unpack('>iHI4', s, p)
        local stop = p + 10 + lc + lv
        fn(tid, path, idx, string.sub(s, p, stop - 1))
        p = stop
      end
    end
  end
  local function add(tid, path, idx, entry, incoming)
    local g = groups[tid]
    if g == nil then
      g = {path = path, order = {}, by = {}}
      groups[tid] = g
      tasks[#tasks + 1] = tid
    end
    if g.by[idx] == nil then
      g.order[#g.order + 1] = idx
      g.by[idx] = entry
      return true
    elseif incoming and idx < 0 then
      g.by[idx] = entry
      return true
    end
    return false
  end
  each(cur, function(tid, path, idx, entry) add(tid, path, idx, entry, false) end)
  local changed = false
  each(ARGV[6], function(tid, path, idx, entry)
    if add(tid, path, idx, entry, true) then changed = true end
  end)
  if changed then
    local parts = {}
    for _, tid in ipairs(tasks) do
      local g = groups[tid]
      parts[#parts + 1] = struct.pack('>HHH', #tid, #g.path, #g.order) .. tid .. g.path
      for _, idx in ipairs(g.order) do parts[#parts + 1] = g.by[idx] end
    end
    redis.call('HSET', h, 'w' .. cid, table.concat(parts))
  end
end
refresh_due(base, nset, h, tonumber(ARGV[4]), not stored)
return existed
"""

# KEYS: h, ik
# ARGV: mode ('id' | 'page'), cid (mode id) or exclusive upper bound ('' = none), count (mode page),
#       epoch and length of the caller's cached name dictionary
# Returns {name dictionary if the cached one is stale else nil,
#          {cid, record, {writes pack or nil, blob values in record order...}}, ...}, newest first.
LOAD = r"""
local h, ik = KEYS[1], KEYS[2]
local cids
if ARGV[1] == 'id' then
  cids = {ARGV[2]}
else
  local hi = '+'
  if ARGV[2] ~= '' then hi = '(' .. ARGV[2] end
  cids = redis.call('ZREVRANGEBYLEX', ik, hi, '-', 'LIMIT', 0, tonumber(ARGV[3]))
end
local out = {false}
local memo = {}
for _, c in ipairs(cids) do
  local rec = record_of(h, c, memo)
  if rec then
    local fields = blob_fields(rec)
    local vals = redis.call('HMGET', h, 'w' .. c, unpack(fields))
    for i = 2, #vals do
      local v = vals[i]
      local target = v and ref_target(v)
      if target then
        -- a chain of references: its links, then the full blob it ends at (see _codec.py)
        local parts, n = {}, 0
        while v and target do
          n = n + 1
          parts[n] = struct.pack('>I', #v) .. v
          v = redis.call('HGET', h, target)
          target = v and ref_target(v)
        end
        if v then vals[i] = string.char(11) .. struct.pack('>H', n) .. table.concat(parts) .. v
        else vals[i] = false end
      end
    end
    out[#out + 1] = {c, rec, vals}
  end
end
if #out > 1 then
  local d = redis.call('HGET', h, 'n')
  if d and (string.sub(d, 1, 8) ~= ARGV[4] or struct.unpack('>H', d, 10) ~= tonumber(ARGV[5])) then
    out[1] = d
  end
end
return out
"""

# KEYS: nset; ARGV: base
DELETE_THREAD = r"""
local nset, base = KEYS[1], ARGV[1]
for _, ns in ipairs(redis.call('SMEMBERS', nset)) do
  redis.call('DEL', base .. ':h:' .. ns, base .. ':i:' .. ns)
end
return redis.call('DEL', nset)
"""

# KEYS: nset, h, ik; ARGV: base, ns, cid1, cid2, ...
# Removes the given checkpoints (delete_for_runs) and every blob no survivor reads.
REMOVE = r"""
local nset, h, ik = KEYS[1], KEYS[2], KEYS[3]
local cids, gone = {}, {}
for i = 3, #ARGV do cids[#cids + 1] = ARGV[i]; gone[ARGV[i]] = true end
-- a survivor stored as a splice of a checkpoint about to go (directly or down its chain) is stored
-- whole first
local memo = {}
for _, c in ipairs(redis.call('ZRANGE', ik, 0, -1)) do
  if not gone[c] then
    local link = redis.call('HGET', h, 'c' .. c)
    while link and string.byte(link, 1) == SPLICE do
      local target = read_id(link, 2)
      if gone[target] then
        redis.call('HSET', h, 'c' .. c, record_of(h, c, memo))
        break
      end
      link = memo[target] or redis.call('HGET', h, 'c' .. target)
    end
  end
end
remove_checkpoints(nset, ARGV[2], h, ik, cids, true)
-- the survivors no longer form one chain back to the first checkpoint
set_flag(h, FORK)
if redis.call('SCARD', nset) == 0 then redis.call('DEL', nset) end
return #cids
"""

# KEYS: nset; ARGV: base
# Keeps the latest checkpoint of every namespace with its pending writes and the blobs it reads.
KEEP_LATEST = r"""
local nset, base = KEYS[1], ARGV[1]
for _, ns in ipairs(redis.call('SMEMBERS', nset)) do
  local h, ik = base .. ':h:' .. ns, base .. ':i:' .. ns
  local all = redis.call('ZRANGE', ik, 0, -1)
  local latest = all[#all]
  if latest then
    table.remove(all)
    for _, f in ipairs(redis.call('HKEYS', h)) do
      -- writes saved for checkpoints that were never stored
      if string.sub(f, 1, 1) == 'w' and f ~= 'w' .. latest then redis.call('HDEL', h, f) end
    end
    remove_checkpoints(nset, ns, h, ik, all, true)
    local d = redis.call('HGET', h, 'n')
    if d then
      redis.call('HSET', h, 'n', string.sub(d, 1, 8) .. string.char(bit.band(string.byte(d, 9), DELTA))
        .. string.sub(d, 10))
    end
  else
    redis.call('DEL', h, ik)
    redis.call('SREM', nset, ns)
  end
end
if redis.call('SCARD', nset) == 0 then redis.call('DEL', nset) end
return 1
"""

# KEYS: nset; ARGV: base, needle1, needle2, ...
# Returns {ns, cid, record, ...} for every checkpoint whose record contains one of the needles as
# bytes (a cheap server-side prefilter; the caller decodes the candidates and checks for real).
FIND = r"""
local nset, base = KEYS[1], ARGV[1]
local out = {}
for _, ns in ipairs(redis.call('SMEMBERS', nset)) do
  local ik, h = base .. ':i:' .. ns, base .. ':h:' .. ns
  local memo = {}
  for _, c in ipairs(redis.call('ZRANGE', ik, 0, -1)) do
    local rec = record_of(h, c, memo)
    if rec then
      for j = 2, #ARGV do
        if string.find(rec, ARGV[j], 1, true) then
          out[#out + 1] = ns; out[#out + 1] = c; out[#out + 1] = rec
          break
        end
      end
    end
  end
end
return out
"""


# KEYS: nset, h, ik; ARGV: base, ns, keep_events, start1, start2, ... (sorted)
# Writes the event index of a namespace written before events were kept (see PUT) and prunes the
# checkpoints older than the oldest kept event. Does nothing if the index exists by now.
INDEX_EVENTS = r"""
local nset, h, ik = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HEXISTS', h, 's') == 1 then return 0 end
local kev = tonumber(ARGV[3])
local first = {}
for i = 4, #ARGV do first[#first + 1] = ARGV[i] end
first = cut_events(nset, ARGV[2], h, ik, first, kev)
if redis.call('EXISTS', h) == 1 then
  redis.call('HSET', h, 's', pack_list(first))
end
return 1
"""


def _prelude_for(body: str) -> str:
    """The prelude's constants and the helpers ``body`` calls, directly or through another helper, in
    prelude order. Every helper is a closure made anew at each call of a script, so a script carries
    only the ones it uses."""
    chunks = _PRELUDE.split("\nlocal function ")
    head, helpers = chunks[0], ["local function " + chunk for chunk in chunks[1:]]
    names = [helper.split("(", 1)[0].removeprefix("local function ") for helper in helpers]
    needed: set[str] = set()
    todo = [body]
    while todo:
        text = todo.pop()
        for name, helper in zip(names, helpers, strict=True):
            if name not in needed and re.search(rf"\b{name}\(", text):
                needed.add(name)
                todo.append(helper)
    return "\n".join([head, *(h for n, h in zip(names, helpers, strict=True) if n in needed)]) + "\n"


class Script:
    """A Lua script with the prelude helpers it uses, addressed by SHA1 for EVALSHA."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.source = _prelude_for(body) + body
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name})"


SCRIPTS = {
    name: Script(name, body)
    for name, body in {
        "put": PUT,
        "put_writes": PUT_WRITES,
        "load": LOAD,
        "delete_thread": DELETE_THREAD,
        "remove": REMOVE,
        "keep_latest": KEEP_LATEST,
        "find": FIND,
        "index_events": INDEX_EVENTS,
    }.items()
}
