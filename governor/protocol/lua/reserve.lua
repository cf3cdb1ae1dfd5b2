-- KEYS: waiting, delayed, active, meta, data, leases, wake, fence, paused, tickets, stats,
--       then one key per rate limit, then (a partition, on one Redis) the queue's fence counter
-- ARGV: worker, token, lease_ms, global_concurrency (0: none), grace_ms,
--       n_limits, then n times: algorithm, limit, per_ms, burst;
--       then the partition (-1: none) and the partition count (0: not known)
-- Leases the first waiting job to `worker` until now + lease_ms, if the queue's fleet-wide
-- rules allow a start now. Returns one of:
--   {1, id, payload, meta_json}   a job
--   {0, ms until the next delayed job is due (-1: none)}   nothing waits
--   {2, ms}   throttled: a start is reserved for this worker in ms (its ticket); call again then
--   {3}       global_concurrency jobs of the queue are running: wait for a wake token
--   {4}       the queue is paused: wait for a wake token
-- A function of its KEYS and ARGV (they shadow the script's own): reserve.lua run alone is
-- `return reserve(KEYS, ARGV)`, and settle_reserve.lua calls it, after the settle, with its
-- share of a combined call's keys and arguments (scripts.py `_load_scripts` composes the texts).
local function reserve(KEYS, ARGV)
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
  if redis.call('EXISTS', KEYS[9]) == 1 then
    redis.call('DEL', KEYS[7])  -- resume pushes fresh tokens
    return {4}
  end
  local gc = tonumber(ARGV[4])
  if gc > 0 and redis.call('ZCARD', KEYS[3]) >= gc then
    -- every settle (and every requeue) of this queue wakes one waiter: no token is needed before
    redis.call('DEL', KEYS[7])
    return {3}
  end
  local limited = tonumber(ARGV[6]) > 0
  if limited and redis.call('ZCARD', KEYS[1]) == 0 then  -- before a ticket is spent on nothing
    redis.call('DEL', KEYS[7])  -- (see below)
    return {0, next_due(KEYS[2], now)}
  end
  if limited then
    -- A ticket: a start this worker reserved earlier, valid from its time for `grace` ms
    -- A ticket is good for `grace` ms either side of its time (the limits count for that).
    local grace = tonumber(ARGV[5])
    local ticket = tonumber(redis.call('HGET', KEYS[10], ARGV[1]) or '')
    if ticket and ticket - now > grace then return {2, ticket - now} end  -- woke early
    redis.call('HDEL', KEYS[10], ARGV[1])
    if not (ticket and now - ticket <= grace) then
      -- Reserve the earliest start every limit allows, counted now, so that throttled workers
      -- across the fleet each hold one future start instead of all retrying at every instant.
      local x = limits_earliest(ARGV, KEYS, 6, 12, grace, now)
      limits_record(ARGV, KEYS, 6, 12, grace, x, now, ARGV[2])
      if x > now then
        x = math.ceil(x)
        redis.call('HSET', KEYS[10], ARGV[1], fmt(x))
        redis.call('HINCRBY', KEYS[11], 'throttled', 1)
        return {2, x - now}
      end
    end
  end
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
  -- The run's fencing token (lib.lua `next_fence`): grows across the runs of this job and of
  -- every other job of the queue, so a handler can fence its own writes elsewhere.
  local n_limits = tonumber(ARGV[6])
  local fence_at = 7 + 4 * n_limits
  meta.fence = next_fence(KEYS[8], KEYS[12 + n_limits], tonumber(ARGV[fence_at]) or -1,
                          tonumber(ARGV[fence_at + 1]) or 0)
  local deadline = now + tonumber(ARGV[3])
  redis.call('ZADD', KEYS[3], fmt(deadline), id)
  redis.call('HSET', KEYS[6], ARGV[1], id .. ' ' .. ARGV[2])
  local encoded = cjson.encode(meta)
  redis.call('HSET', KEYS[4], id, encoded)
  local payload = redis.call('HGET', KEYS[5], id) or ''
  return {1, id, payload, encoded}
end
