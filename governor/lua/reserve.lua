-- KEYS: waiting, delayed, active, meta, data, leases, wake, fence
-- ARGV: worker, token, lease_ms
-- Leases the first waiting job to `worker` until now + lease_ms.
-- Returns {1, id, payload, meta_json} or {0, ms until the next delayed job is due (-1: none)}.
local now = now_ms()
-- A reserve re-sent after its reply was lost (a dropped connection) returns the job
-- the first one leased, instead of stranding it and leasing a second.
local hid, htoken = parse_lease(redis.call('HGET', KEYS[6], ARGV[1]))
if hid and htoken == ARGV[2] then
  local meta = load_meta(KEYS[4], hid)
  if leased(meta, ARGV[2]) then
    return {1, hid, redis.call('HGET', KEYS[5], hid) or '', redis.call('HGET', KEYS[4], hid)}
  end
end
promote(KEYS[2], KEYS[1], KEYS[4], KEYS[7], now, 100)
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then
  -- Nothing waits, so every wake token is stale: drop them, or idle
  -- workers would spin through them one reserve at a time.
  redis.call('DEL', KEYS[7])
  return {0, next_due(KEYS[2], now)}
end
local id = popped[1]
local meta = load_meta(KEYS[4], id)
meta.state = 'active'
meta.attempts = (tonumber(meta.attempts) or 0) + 1
meta.token = ARGV[2]
meta.worker = ARGV[1]
meta.started_at = now
-- The run's fencing token: only grows, across the runs of this job and of every other job of
-- the queue, so a handler can fence its own writes elsewhere (the store refuses a lower one).
meta.fence = redis.call('INCR', KEYS[8])
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[3], fmt(deadline), id)
redis.call('HSET', KEYS[6], ARGV[1], id .. ' ' .. ARGV[2])
local encoded = cjson.encode(meta)
redis.call('HSET', KEYS[4], id, encoded)
local payload = redis.call('HGET', KEYS[5], id) or ''
return {1, id, payload, encoded}
