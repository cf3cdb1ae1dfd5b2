-- A run killed at its handler's learnt limit (timeout.adaptive): a censored sample of the
-- handler's run time ('c' and the limit in ms: it needed at least that long), and a kill,
-- on Redis's clock, in the window that makes the handler fall back (adaptive.lua).
-- KEYS: the handler's run-times list, the lane's per-handler counts, the handler's kills zset
-- ARGV: the limit in ms, how many run times to keep, the handler, the job id
redis.call('LPUSH', KEYS[1], 'c' .. ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('HINCRBY', KEYS[2], ARGV[3] .. '|adaptive_kills', 1)
redis.call('ZADD', KEYS[3], fmt(now_ms()), ARGV[4])
return 1
