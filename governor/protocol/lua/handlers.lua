-- Each handler's run-time percentiles in one lane of a queue (the queue, or one partition of
-- it), from its last successful runs; with timeout.adaptive also its learnt hard limit. Run
-- by the masters that tick the lane.
-- KEYS: the lane's adaptive hash (handler -> limit in ms, read by workers), then per handler
--       its run-times list (ack.lua pushes ms; a run killed at an adaptive limit is pushed as
--       'c<limit ms>', a censored sample: it ran at least that long) and its kills zset
-- ARGV: percentile, factor, min_ms, max_ms, samples (0: the queue learns no limits),
--       max_kills, window_ms, then the handlers
-- Returns per handler {samples, p50, p95, p99, p<percentile>, limit ms (0: the configured
-- limit applies), adaptive kills within the window, 1 if they made it fall back}.
-- A censored sample counts at its limit: the limit it was killed at is at most what that run
-- needed, so kills push the percentile up and the limit can never ratchet itself down.
local now = now_ms()
local pct, factor = tonumber(ARGV[1]), tonumber(ARGV[2])
local lo, hi, need = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_kills, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local function rank(sorted, p)
  local n = #sorted
  if n == 0 then return 0 end
  return sorted[math.max(1, math.min(n, math.ceil(p / 100 * n)))]
end
local out = {}
for i = 8, #ARGV do
  local handler, k = ARGV[i], 2 * (i - 8)
  local runs = {}
  for _, s in ipairs(redis.call('LRANGE', KEYS[2 + k], 0, -1)) do
    local ms = tonumber(s) or tonumber(string.sub(s, 2))
    if ms and ms == ms and ms >= 0 then runs[#runs + 1] = ms end
  end
  table.sort(runs)
  redis.call('ZREMRANGEBYSCORE', KEYS[3 + k], '-inf', fmt(now - window))
  local kills = redis.call('ZCARD', KEYS[3 + k])
  local fallback = kills >= max_kills
  local limit = 0
  if need == 0 then
    fallback = false  -- (not adaptive: nothing to learn, nothing written)
  elseif #runs >= need and not fallback then
    limit = math.floor(math.min(math.max(rank(runs, pct) * factor, lo), hi))
    redis.call('HSET', KEYS[1], handler, fmt(limit))
  else
    redis.call('HDEL', KEYS[1], handler)
  end
  out[#out + 1] = {#runs, rank(runs, 50), rank(runs, 95), rank(runs, 99), rank(runs, pct), limit, kills,
                   fallback and 1 or 0}
end
return out
