-- keys: waiting delayed active records data done wake_list dead stats paused tickets
-- args: done_ttl_ms
--   records: the job records (QueueKeys.meta)
-- The master's periodic pass over one queue: promote due delayed jobs,
-- expire old done records, list leases that have run out, and sweep stale rate-limit tickets.
-- Returns {promoted, ms until next due (-1: none), waiting, delayed, active, dead, done,
--          age in ms of the longest-waiting job (-1: none),
--          ms until the earliest lease runs out (-1: none active),
--          throttled reserves so far (fleet-wide), 1 if paused else 0,
--          jobs a reserve could start now (waiting less those queued behind their key's head),
--          id1, meta1, id2, meta2, ...}
-- An expired job whose record cannot be read (written by something other than
-- governor) has no token to fence a requeue with: it is dead-lettered here, with
-- the reason, rather than left in `active` forever.
local waiting, delayed, active, records, data, done, wake_list, dead, stats, paused, tickets =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local done_ttl_ms = tonumber(ARGV[1])
local now = now_ms()
local promoted = promote(delayed, waiting, records, wake_list, now, 1000)
expire_done(done, records, data, now - done_ttl_ms, 1000)
-- The longest-waiting job is the first of some priority band (FIFO within a band), so
-- looking at the head of each band present is exact and touches a handful of entries.
local n_waiting = redis.call('ZCARD', waiting)
local queued = tonumber(redis.call('HGET', stats, 'queued') or '0') or 0  -- behind their key's head
local oldest, floor = -1, '-inf'
for _ = 1, (n_waiting > 0 and 101 or 0) do
  local head = redis.call('ZRANGEBYSCORE', waiting, floor, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if not head[1] then break end
  local meta = load_meta(records, head[1])
  local since = tonumber(meta.ready_at) or tonumber(meta.enqueued_at)
  if since and (oldest < 0 or since < oldest) then oldest = since end
  floor = fmt((math.floor(tonumber(head[2]) / 1e13) + 1) * 1e13)
end
-- A ticket is good for `grace` (at most 10 ms) past its time: one a second past it is of no use
-- to anyone, its worker gone (exited, its host dead) or about to take a fresh one. Its master
-- removes an exiting worker's at once; this catches the rest, a bounded sample a pass.
-- (HGETALL while the hash is no bigger than a fleet's workers; past that, the first entries of
-- an HSCAN: stale ones deleted there make room for the next pass. No HRANDFIELD: Redis < 6.2.)
local n_tickets = redis.call('HLEN', tickets)
if n_tickets > 0 then
  local sample = n_tickets <= 1000 and redis.call('HGETALL', tickets)
    or redis.call('HSCAN', tickets, 0, 'COUNT', 200)[2]
  local stale = {}
  for i = 1, #sample, 2 do
    local t = tonumber(sample[i + 1])
    if not t or t < now - 1000 then table.insert(stale, sample[i]) end
  end
  if #stale > 0 then redis.call('HDEL', tickets, unpack(stale)) end
end
local expired = redis.call('ZRANGEBYSCORE', active, '-inf', fmt(now), 'LIMIT', 0, 100)
local reclaim = {}
for _, id in ipairs(expired) do
  local meta = load_meta(records, id)
  if meta.malformed then
    redis.call('ZREM', active, id)
    redis.call('ZADD', dead, fmt(now), id)
    redis.call('HSET', records, id, cjson.encode({id = id, state = 'dead', reason = 'malformed',
      finished_at = now, errors = {{reason = 'malformed', at = now,
        error = 'malformed job: its record in Redis is unusable (' .. meta.malformed .. ') and its lease ran out'}}}))
    redis.call('HINCRBY', stats, 'dead', 1)
    if redis.call('ZCARD', waiting) > 0 then wake(wake_list, 1) end  -- a slot freed (global_concurrency)
  else
    table.insert(reclaim, id)
    table.insert(reclaim, redis.call('HGET', records, id))
  end
end
local first = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES')
local out = {promoted, next_due(delayed, now), n_waiting + math.max(queued, 0), redis.call('ZCARD', delayed),
             redis.call('ZCARD', active), redis.call('ZCARD', dead), redis.call('ZCARD', done),
             oldest < 0 and -1 or math.max(0, now - oldest),
             first[2] and math.max(0, tonumber(first[2]) - now) or -1,
             tonumber(redis.call('HGET', stats, 'throttled') or '0') or 0, redis.call('EXISTS', paused),
             n_waiting}
for _, v in ipairs(reclaim) do table.insert(out, v) end
return out
