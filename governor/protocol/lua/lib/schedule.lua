-- The prelude, part 4 of 6: where a job waits, and waking the workers that take it.
-- Holds: score (the waiting order), wake (wake tokens for idle workers), promote (due delayed
-- jobs to waiting), next_due, schedule (a job into delayed or waiting), expire_done.

-- FIFO within a priority: lower priority number first, then enqueue order.
local function score(meta)
  local p = tonumber(meta.priority) or 50
  return p * 1e13 + (tonumber(meta.seq) or 0)
end

-- Pushes n wake tokens (at most 512) onto the lane's wake list, where idle workers block; the
-- list keeps the last 4096.
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
