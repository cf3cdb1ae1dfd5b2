-- The prelude, part 6 of 6: per-key order (partitioned queues).
-- Holds: LIVE (the states of a key's head), queued_add, key_next, key_release, key_enqueue.
--
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
