-- keys: waiting delayed active records data leases wake_list fence paused tickets stats
--       limit_key*n_limits queue_fence?
-- args: worker token lease_ms global_concurrency grace_ms n_limits
--       (algorithm limit per_ms burst)*n_limits partition partitions
--   records: the job records (QueueKeys.meta); fence: the lane's fence counter; limit_key: one
--   key per rate limit; queue_fence: a partition's, on one Redis: the queue's fence counter
--   global_concurrency: 0 for none; partition: -1 for none; partitions: the partition count
--   (0: not known)
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
  local waiting, delayed, active, records, data, leases, wake_list, fence, paused, tickets, stats =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
  local worker, token, lease_ms, global_concurrency, grace_ms, n_limits =
    ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  -- the variable tail: n_limits keys from KEYS[12] and limits from ARGV[7], four values each
  -- (lib/limits.lua reads them), then the partition's
  local LIMIT_KEYS_AT, LIMITS_AT = 12, 6  -- (limits_earliest: the first limit's key, and n_limits)
  local partition, partitions = tonumber(ARGV[7 + 4 * n_limits]), tonumber(ARGV[8 + 4 * n_limits])
  local queue_fence = KEYS[12 + n_limits]
  local now = now_ms()
  -- A reserve re-sent after its reply was lost (a dropped connection) returns the job
  -- the first one leased, instead of stranding it and leasing a second.
  local hid, htoken = parse_lease(redis.call('HGET', leases, worker))
  if hid and htoken == token then
    local meta = load_meta(records, hid)
    if leased(meta, token) then
      return {1, hid, redis.call('HGET', data, hid) or '', redis.call('HGET', records, hid)}
    end
  end
  promote(delayed, waiting, records, wake_list, now, 100)
  if redis.call('EXISTS', paused) == 1 then
    redis.call('DEL', wake_list)  -- resume pushes fresh tokens
    return {4}
  end
  if global_concurrency > 0 and redis.call('ZCARD', active) >= global_concurrency then
    -- every settle (and every requeue) of this queue wakes one waiter: no token is needed before
    redis.call('DEL', wake_list)
    return {3}
  end
  local limited = n_limits > 0
  if limited and redis.call('ZCARD', waiting) == 0 then  -- before a ticket is spent on nothing
    redis.call('DEL', wake_list)  -- (see below)
    return {0, next_due(delayed, now)}
  end
  if limited then
    -- A ticket: a start this worker reserved earlier, good for grace_ms either side of its
    -- time (the limits count for that).
    local ticket = tonumber(redis.call('HGET', tickets, worker) or '')
    if ticket and ticket - now > grace_ms then return {2, ticket - now} end  -- woke early
    redis.call('HDEL', tickets, worker)
    if not (ticket and now - ticket <= grace_ms) then
      -- Reserve the earliest start every limit allows, counted now, so that throttled workers
      -- across the fleet each hold one future start instead of all retrying at every instant.
      local x = limits_earliest(ARGV, KEYS, LIMITS_AT, LIMIT_KEYS_AT, grace_ms, now)
      limits_record(ARGV, KEYS, LIMITS_AT, LIMIT_KEYS_AT, grace_ms, x, now, token)
      if x > now then
        x = math.ceil(x)
        redis.call('HSET', tickets, worker, fmt(x))
        redis.call('HINCRBY', stats, 'throttled', 1)
        return {2, x - now}
      end
    end
  end
  local popped = redis.call('ZPOPMIN', waiting)
  if #popped == 0 then
    -- Nothing waits, so every wake token is stale: drop them, or idle
    -- workers would spin through them one reserve at a time.
    redis.call('DEL', wake_list)
    return {0, next_due(delayed, now)}
  end
  local id = popped[1]
  local meta = load_meta(records, id)
  meta.state = 'active'
  meta.attempts = (tonumber(meta.attempts) or 0) + 1
  meta.token = token
  meta.worker = worker
  meta.started_at = now
  -- The run's fencing token (lib/leases.lua `next_fence`): grows across the runs of this job
  -- and of every other job of the queue, so a handler can fence its own writes elsewhere.
  meta.fence = next_fence(fence, queue_fence, partition or -1, partitions or 0)
  local deadline = now + tonumber(lease_ms)
  redis.call('ZADD', active, fmt(deadline), id)
  redis.call('HSET', leases, worker, id .. ' ' .. token)
  local encoded = cjson.encode(meta)
  redis.call('HSET', records, id, encoded)
  local payload = redis.call('HGET', data, id) or ''
  return {1, id, payload, encoded}
end
