-- KEYS: one key per rate limit of a named limiter
-- ARGV: n_limits, then n times: algorithm, limit, per_ms, burst; then a unique member
-- governor.limit(name) from inside a handler: takes one start now if every limit allows it.
-- Returns 0 when taken, else the ms until one will be allowed (nothing is counted then).
local now = now_ms()
local x = limits_earliest(ARGV, KEYS, 1, 1, 0, now)
if x > now then return fmt(math.ceil(x - now)) end  -- never 0: 0 means taken
limits_record(ARGV, KEYS, 1, 1, 0, now, now, ARGV[#ARGV])
return 0
