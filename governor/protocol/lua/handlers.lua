-- keys: adaptive (runtimes kills)*handler
-- args: percentile factor min_ms max_ms samples max_kills window_ms handler*
-- Each handler's run-time percentiles in one lane of a queue (the queue, or one partition of
-- it), from its last successful runs; with timeout.adaptive also its learnt hard limit. Run
-- by the masters that tick the lane.
--   adaptive: the lane's adaptive hash (handler -> limit in ms, read by workers); per handler
--   its runtimes, the run-times list (ack.lua pushes ms; a run killed at an adaptive limit is
--   pushed as 'c<limit ms>', a censored sample: it ran at least that long) and its kills zset;
--   samples: 0 when the queue learns no limits
-- Returns per handler {samples, p50, p95, p99, p<percentile>, limit ms (0: the configured
-- limit applies), adaptive kills within the window, 1 if they made it fall back}.
-- A censored sample counts at its limit: the limit it was killed at is at most what that run
-- needed, so kills push the percentile up and the limit can never ratchet itself down.
local adaptive = KEYS[1]
local percentile, factor, min_ms, max_ms, samples, max_kills, window_ms =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local function rank(sorted, p)
  local n = #sorted
  if n == 0 then return 0 end
  return sorted[math.max(1, math.min(n, math.ceil(p / 100 * n)))]
end
local out = {}
for i = 8, #ARGV do  -- per handler: ARGV[i], its keys KEYS[2 + k] and KEYS[3 + k]
  local k = 2 * (i - 8)
  local handler, runtimes, kills = ARGV[i], KEYS[2 + k], KEYS[3 + k]
  local runs = {}
  for _, s in ipairs(redis.call('LRANGE', runtimes, 0, -1)) do
    local ms = tonumber(s) or tonumber(string.sub(s, 2))
    if ms and ms == ms and ms >= 0 then runs[#runs + 1] = ms end
  end
  table.sort(runs)
  redis.call('ZREMRANGEBYSCORE', kills, '-inf', fmt(now - window_ms))
  local n_kills = redis.call('ZCARD', kills)
  local fallback = n_kills >= max_kills
  local limit = 0
  if samples == 0 then
    fallback = false  -- (not adaptive: nothing to learn, nothing written)
  elseif #runs >= samples and not fallback then
    limit = math.floor(math.min(math.max(rank(runs, percentile) * factor, min_ms), max_ms))
    redis.call('HSET', adaptive, handler, fmt(limit))
  else
    redis.call('HDEL', adaptive, handler)
  end
  out[#out + 1] = {#runs, rank(runs, 50), rank(runs, 95), rank(runs, 99), rank(runs, percentile), limit, n_kills,
                   fallback and 1 or 0}
end
return out
