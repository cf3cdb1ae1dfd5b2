-- The prelude, part 5 of 6: rate limits (reserve.lua for a queue's, limit.lua for a named
-- limiter's). Holds: limit_earliest, keep_at_least, limit_record, and limits_earliest and
-- limits_record, which read a list of limits from a script's ARGV and KEYS.
--
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
