-- Shared prelude, prepended to every script. Every key a script touches is
-- passed in KEYS; all of a queue's keys share the hash tag {prefix:queue}.
-- Times are Redis server milliseconds, so hosts with skewed clocks agree.
-- Numbers are handed to redis.call as '%.0f' strings: Lua's default number
-- formatting keeps only 14 digits, which would corrupt scores.
-- Read once per script run: Redis's clock, shared by every host; a run that settles a job and
-- reserves the next (settle_reserve.lua) sees one instant, and pays for TIME once.
local now_cached
local function now_ms()
  if not now_cached then
    local t = redis.call('TIME')
    now_cached = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_cached
end

local function fmt(n)
  return string.format('%.0f', n)
end

-- FIFO within a priority: lower priority number first, then enqueue order.
local function score(meta)
  local p = tonumber(meta.priority) or 50
  return p * 1e13 + (tonumber(meta.seq) or 0)
end

-- True when every number in the (decoded) value is finite. cjson decodes 1e999
-- to inf and then refuses to encode it, which would fail a script after its
-- first write; a record holding one is treated as malformed instead.
local function finite(v, depth)
  local t = type(v)
  if t == 'number' then return v == v and v ~= math.huge and v ~= -math.huge end
  if t ~= 'table' then return true end
  if depth > 32 then return false end
  for k, x in pairs(v) do
    if not finite(x, depth + 1) or not finite(k, depth + 1) then return false end
  end
  return true
end

-- A job id is 1-200 printable ASCII characters other than space (0x21-0x7E):
-- no whitespace or control characters to confuse a parser, a log line or a terminal.
local function valid_id(id)
  return #id >= 1 and #id <= 200 and not string.find(id, '[^\33-\126]')
end

local function load_meta(meta_key, id)
  local raw = redis.call('HGET', meta_key, id)
  local why = 'no record'
  if raw then
    local ok, meta = pcall(cjson.decode, raw)
    if ok and type(meta) == 'table' and finite(meta, 0) then return meta end
    why = ok and (type(meta) == 'table' and 'a number in it is not finite' or 'not a JSON object')
      or 'not valid JSON'
  end
  -- A record written by something other than governor: keep the id so the
  -- worker can dead-letter it with a reason instead of losing it.
  return {id = id, malformed = why}
end

-- A lease entry is "<job id> <token>"; the token never holds a space, so the
-- entry is split at its last space, whatever characters the id holds.
local function parse_lease(held)
  if not held then return nil, nil end
  return string.match(held, '^(.*) ([^ ]+)$')
end

local function wake(wake_key, n)
  if n > 0 then
    local tokens = {}
    for i = 1, math.min(n, 512) do tokens[i] = '1' end
    redis.call('RPUSH', wake_key, unpack(tokens))
    redis.call('LTRIM', wake_key, -4096, -1)
  end
end

-- Moves delayed jobs that are due to waiting; returns how many moved.
local function promote(delayed_key, waiting_key, meta_key, wake_key, now, limit)
  local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local meta = load_meta(meta_key, id)
    meta.state = 'waiting'
    meta.ready_at = tonumber(meta.due_at) or now
    meta.due_at = nil
    redis.call('ZREM', delayed_key, id)
    redis.call('ZADD', waiting_key, fmt(score(meta)), id)
    redis.call('HSET', meta_key, id, cjson.encode(meta))
  end
  wake(wake_key, #due)
  return #due
end

-- Milliseconds until the next delayed job is due, or -1 when none is.
local function next_due(delayed_key, now)
  local first = redis.call('ZRANGE', delayed_key, 0, 0, 'WITHSCORES')
  if first[2] then return math.max(0, tonumber(first[2]) - now) end
  return -1
end

-- A run's fencing token. A queue of its own, or a partition on one Redis (`queue_key`: the
-- queue's counter, passed although it is in another slot, which only a Cluster refuses): one
-- INCR for the whole queue, so tokens grow strictly in the order jobs are reserved, across
-- every partition. The partition's own counter (`lane_key`) is where older versions counted,
-- and where the Cluster form below keeps its count: the queue's counter first jumps past it.
-- `partitions`: the queue's partition count (0: not known, then only older counters are small).
-- On a Cluster (no queue_key: each partition is a slot of its own, none reaches another's) the token
-- is hi * partitions + partition, hi = max(the partition's last hi + 1, Redis time since 2024 in
-- units of partitions / 31 ms): strictly growing within a partition, and across partitions as
-- their shards' clocks go. Under 1e14 until 2124, so exact in a record (cjson keeps 14 digits).
local function next_fence(lane_key, queue_key, partition, partitions)
  if partition < 0 then return redis.call('INCR', lane_key) end
  if queue_key then
    local t = redis.call('INCR', queue_key)
    local old = redis.call('GET', lane_key)
    if old then
      -- counted here before (an older version, or a Cluster): past every token handed out then
      local hi = tonumber(old) or 0
      local floor = (hi + 1) * math.max(1, partitions)  -- (a Cluster's hi * partitions + partition)
      if t <= floor then
        t = floor + 1
        redis.call('SET', queue_key, fmt(t))
      end
      -- (kept: an older master still counting there in a rolling upgrade goes on from it)
    end
    return t
  end
  partitions = math.max(1, partitions)
  local time = redis.call('TIME')
  local us = (tonumber(time[1]) - 1704067200) * 1e6 + tonumber(time[2])  -- since 2024-01-01
  local units = math.floor(us * 31 / (partitions * 1000))  -- (rounding keeps it monotonic)
  local hi = math.max((tonumber(redis.call('GET', lane_key) or '0') or 0) + 1, units)
  redis.call('SET', lane_key, fmt(hi))
  return hi * partitions + partition
end

-- Forgets a worker's lease entry, but only if it still names this job.
local function release(leases_key, worker, id)
  local held_id = parse_lease(redis.call('HGET', leases_key, worker))
  if held_id == id then
    redis.call('HDEL', leases_key, worker)
  end
end

-- The lease check that fences every settle: only the holder of the token
-- may move an active job on.
local function leased(meta, token)
  return meta.state == 'active' and meta.token == token
end

-- Puts a job in delayed (due in delay_ms) or, with no delay, in waiting.
local function schedule(meta, id, now, delay_ms, waiting_key, delayed_key)
  if delay_ms > 0 then
    meta.state = 'delayed'
    meta.due_at = now + delay_ms
    redis.call('ZADD', delayed_key, fmt(meta.due_at), id)
  else
    meta.state = 'waiting'
    meta.due_at = nil
    meta.ready_at = now
    redis.call('ZADD', waiting_key, fmt(score(meta)), id)
  end
end

-- Forgets done records older than the cutoff, at most `limit` of them.
local function expire_done(done_key, meta_key, data_key, cutoff, limit)
  local old = redis.call('ZRANGEBYSCORE', done_key, '-inf', fmt(cutoff), 'LIMIT', 0, limit)
  for _, gone in ipairs(old) do
    redis.call('ZREM', done_key, gone)
    redis.call('HDEL', meta_key, gone)
    redis.call('HDEL', data_key, gone)
  end
end

-- Rate limits. A limit is (algorithm, limit, per_ms, burst) and one key of its own. Every
-- function takes `grace` ms: a start recorded for time X may really happen up to `grace`
-- later (a worker woken at X still has a round trip to make), so each algorithm counts as
-- if its window were longer (`per + 2 * grace`: one grace for the late start, one to spare
-- for whoever measures it on another clock); over any interval of `per`, the starts that
-- really happen then stay within the limit.

-- The earliest time >= t at which the limit allows one more start.
local function limit_earliest(algo, key, limit, per, burst, grace, t)
  local span = per + 2 * grace
  if algo == 'token_bucket' then  -- GCRA: the theoretical arrival time of the next start
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    return math.max(t, tat - (burst - 1) * span / limit)
  elseif algo == 'fixed_window' then  -- counts per aligned window; `grace` at each end unused
    local w = math.floor(t / per)
    for _ = 1, 64 do
      local used = tonumber(redis.call('HGET', key, fmt(w)) or '0') or 0
      local x = math.max(t, w * per + grace)
      if used < limit and x < (w + 1) * per - grace then return x end
      w = w + 1
    end
    return math.floor(t / per) * per + 64 * per
  else  -- sliding_window: exact; the starts (and reserved starts) in a sorted set
    local floor = '(' .. fmt(t - span)
    local n = redis.call('ZCOUNT', key, floor, '+inf')
    if n < limit then return t end
    local e = redis.call('ZRANGEBYSCORE', key, floor, '+inf', 'WITHSCORES', 'LIMIT', n - limit, 1)
    return math.max(t, tonumber(e[2]) + span + 1)
  end
end

-- A key shared by several limits or callers (a named limiter) may hold reservations further
-- out than this caller's: its expiry is only ever extended, never cut short.
local function keep_at_least(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, fmt(ttl_ms)) end
end

-- Counts one start at time x (>= now) against the limit.
local function limit_record(algo, key, limit, per, burst, grace, x, now, member)
  local span = per + 2 * grace
  if algo == 'token_bucket' then
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    local new = math.max(tat, x) + span / limit
    -- kept to the microsecond: rounded to whole ms, per/limit would lose up to 0.5 ms a start
    local ttl = redis.call('PTTL', key)
    redis.call('SET', key, string.format('%.3f', new), 'PX', fmt(math.max(new - now + span, ttl)))
  elseif algo == 'fixed_window' then
    local w = math.floor(x / per)
    redis.call('HINCRBY', key, fmt(w), 1)
    redis.call('HDEL', key, fmt(math.floor(now / per) - 1), fmt(math.floor(now / per) - 2))
    keep_at_least(key, (w + 2) * per - now)
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - span))  -- out of every window to come
    redis.call('ZADD', key, fmt(x), fmt(x) .. ':' .. member)
    keep_at_least(key, x - now + span + 1000)
  end
end

-- The earliest time >= t that every limit allows. Limits are given in `argv` from `base`:
-- n, then n times (algorithm, limit, per_ms, burst), with their keys in `keys` from `kbase`.
-- (`argv` and `keys`: the script's ARGV and KEYS, or a combined call's share of them.)
local function limits_earliest(argv, keys, base, kbase, grace, t)
  local n = tonumber(argv[base])
  local x = t
  for _ = 1, 16 do
    local moved = false
    for i = 0, n - 1 do
      local a = base + 1 + i * 4
      local xi = limit_earliest(argv[a], keys[kbase + i], tonumber(argv[a + 1]), tonumber(argv[a + 2]),
                                tonumber(argv[a + 3]), grace, x)
      if xi > x then x = xi; moved = true end
    end
    if not moved then return x end
  end
  return x
end

local function limits_record(argv, keys, base, kbase, grace, x, now, member)
  local n = tonumber(argv[base])
  for i = 0, n - 1 do
    local a = base + 1 + i * 4
    limit_record(argv[a], keys[kbase + i], tonumber(argv[a + 1]), tonumber(argv[a + 2]),
                 tonumber(argv[a + 3]), grace, x, now, member)
  end
end

-- Per-key order (partitioned queues). Of one key's jobs only its head is ever waiting,
-- delayed or active; the others wait in the key's list (state 'queued') in enqueue order,
-- and only the head's end (done or dead) hands the key to the next. So a retried job keeps
-- its place, and a run whose worker or host died holds its key until it has run again.
-- `ks` names the keys: meta, waiting, delayed, heads (hash key -> head id), lists (the
-- prefix of each key's list), stats.
-- The lane's queued jobs are also indexed, for the operator's commands (jobs, purge) to see
-- what `status` counts as waiting: a sorted set (enqueue sequence -> id) under the lists'
-- prefix itself, which names no key's list (an ordering key has 1-200 characters).
-- The lists keep the order; the index only finds the jobs.
local LIVE = {waiting = true, delayed = true, active = true}

local function queued_add(ks, id, meta)
  redis.call('ZADD', ks.lists, fmt(tonumber(meta.seq) or 0), id)
end

-- The key's next queued job becomes its head; returns its id, or nil when none is left.
local function key_next(ks, k, now)
  local list = ks.lists .. k
  while true do
    local nxt = redis.call('LPOP', list)
    if not nxt then
      redis.call('HDEL', ks.heads, k)
      return nil
    end
    redis.call('HINCRBY', ks.stats, 'queued', -1)
    redis.call('ZREM', ks.lists, nxt)
    local m = load_meta(ks.meta, nxt)
    if m.state == 'queued' or m.malformed then
      m.key = k  -- (a malformed record keeps it, so its dead-lettering hands the key on)
      redis.call('HSET', ks.heads, k, nxt)
      schedule(m, nxt, now, math.max(0, (tonumber(m.due_at) or 0) - now), ks.waiting, ks.delayed)
      redis.call('HSET', ks.meta, nxt, cjson.encode(m))
      return nxt
    end
  end
end

-- A head that ended (done or dead) hands its key on; returns the new head's id or nil.
local function key_release(ks, meta, id, now)
  local k = meta.key
  if type(k) ~= 'string' or redis.call('HGET', ks.heads, k) ~= id then return nil end
  return key_next(ks, k, now)
end

-- A new job of key meta.key: the key's head if it has no live one, else queued behind it
-- (a delay then counts from enqueue, and applies when the job becomes the head).
-- Returns true when the job is waiting or delayed, false when queued.
local function key_enqueue(ks, meta, id, now, delay_ms)
  local k = meta.key
  local head = redis.call('HGET', ks.heads, k)
  if head and not LIVE[load_meta(ks.meta, head).state] then
    -- a head that ended without handing its key on (its record deleted from outside)
    key_next(ks, k, now)
    head = redis.call('HGET', ks.heads, k)
  end
  if head then
    meta.state = 'queued'
    if delay_ms > 0 then meta.due_at = now + delay_ms end
    redis.call('RPUSH', ks.lists .. k, id)
    redis.call('HINCRBY', ks.stats, 'queued', 1)
    queued_add(ks, id, meta)
    return false
  end
  redis.call('HSET', ks.heads, k, id)
  schedule(meta, id, now, delay_ms, ks.waiting, ks.delayed)
  return true
end
