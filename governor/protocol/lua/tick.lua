-- KEYS: waiting, delayed, active, meta, data, done, wake, dead, stats, paused, tickets
-- ARGV: done_ttl_ms
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
local now = now_ms()
local promoted = promote(KEYS[2], KEYS[1], KEYS[4], KEYS[7], now, 1000)
expire_done(KEYS[6], KEYS[4], KEYS[5], now - tonumber(ARGV[1]), 1000)
-- The longest-waiting job is the first of some priority band (FIFO within a band), so
-- looking at the head of each band present is exact and touches a handful of entries.
local waiting = redis.call('ZCARD', KEYS[1])
local queued = tonumber(redis.call('HGET', KEYS[9], 'queued') or '0') or 0  -- behind their key's head
local oldest, floor = -1, '-inf'
for _ = 1, (waiting > 0 and 101 or 0) do
  local head = redis.call('ZRANGEBYSCORE', KEYS[1], floor, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if not head[1] then break end
  local meta = load_meta(KEYS[4], head[1])
  local since = tonumber(meta.ready_at) or tonumber(meta.enqueued_at)
  if since and (oldest < 0 or since < oldest) then oldest = since end
  floor = fmt((math.floor(tonumber(head[2]) / 1e13) + 1) * 1e13)
end
-- A ticket is good for `grace` (at most 10 ms) past its time: one a second past it is of no use
-- to anyone, its worker gone (exited, its host dead) or about to take a fresh one. Its master
-- removes an exiting worker's at once; this catches the rest, a bounded sample a pass.
-- (HGETALL while the hash is no bigger than a fleet's workers; past that, the first entries of
-- an HSCAN: stale ones deleted there make room for the next pass. No HRANDFIELD: Redis < 6.2.)
local tickets = redis.call('HLEN', KEYS[11])
if tickets > 0 then
  local sample = tickets <= 1000 and redis.call('HGETALL', KEYS[11])
    or redis.call('HSCAN', KEYS[11], 0, 'COUNT', 200)[2]
  local stale = {}
  for i = 1, #sample, 2 do
    local t = tonumber(sample[i + 1])
    if not t or t < now - 1000 then table.insert(stale, sample[i]) end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[11], unpack(stale)) end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now), 'LIMIT', 0, 100)
local reclaim = {}
for _, id in ipairs(expired) do
  local meta = load_meta(KEYS[4], id)
  if meta.malformed then
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[8], fmt(now), id)
    redis.call('HSET', KEYS[4], id, cjson.encode({id = id, state = 'dead', reason = 'malformed',
      finished_at = now, errors = {{reason = 'malformed', at = now,
        error = 'malformed job: its record in Redis is unusable (' .. meta.malformed .. ') and its lease ran out'}}}))
    redis.call('HINCRBY', KEYS[9], 'dead', 1)
    if redis.call('ZCARD', KEYS[1]) > 0 then wake(KEYS[7], 1) end  -- a slot freed (global_concurrency)
  else
    table.insert(reclaim, id)
    table.insert(reclaim, redis.call('HGET', KEYS[4], id))
  end
end
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local out = {promoted, next_due(KEYS[2], now), waiting + math.max(queued, 0), redis.call('ZCARD', KEYS[2]),
             redis.call('ZCARD', KEYS[3]), redis.call('ZCARD', KEYS[8]), redis.call('ZCARD', KEYS[6]),
             oldest < 0 and -1 or math.max(0, now - oldest),
             first[2] and math.max(0, tonumber(first[2]) - now) or -1,
             tonumber(redis.call('HGET', KEYS[9], 'throttled') or '0') or 0, redis.call('EXISTS', KEYS[10]),
             waiting}
for _, v in ipairs(reclaim) do table.insert(out, v) end
return out
