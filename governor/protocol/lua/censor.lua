-- keys: runtimes handler_counts kills
-- args: limit_ms keep_runs handler id
--   runtimes: the handler's run-times list; handler_counts: the lane's per-handler counts;
--   kills: the handler's kills zset; keep_runs: how many run times to keep
-- A run killed at its handler's learnt limit (timeout.adaptive): a censored sample of the
-- handler's run time ('c' and the limit in ms: it needed at least that long), and a kill,
-- on Redis's clock, in the window that makes the handler fall back (handlers.lua).
local runtimes, handler_counts, kills = KEYS[1], KEYS[2], KEYS[3]
local limit_ms, keep_runs, handler, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('LPUSH', runtimes, 'c' .. limit_ms)
redis.call('LTRIM', runtimes, 0, tonumber(keep_runs) - 1)
redis.call('HINCRBY', handler_counts, handler .. '|adaptive_kills', 1)
redis.call('ZADD', kills, fmt(now_ms()), id)
return 1
