-- keys: limit_key*n_limits
-- args: n_limits (algorithm limit per_ms burst)*n_limits member
--   limit_key: one key per rate limit of a named limiter; member: unique to this call
-- governor.limit(name) from inside a handler: takes one start now if every limit allows it.
-- Returns 0 when taken, else the ms until one will be allowed (nothing is counted then).
local n_limits = tonumber(ARGV[1])
local member = ARGV[2 + 4 * n_limits]
local LIMIT_KEYS_AT, LIMITS_AT = 1, 1  -- (limits_earliest: the first limit's key, and n_limits)
local now = now_ms()
local x = limits_earliest(ARGV, KEYS, LIMITS_AT, LIMIT_KEYS_AT, 0, now)
if x > now then return fmt(math.ceil(x - now)) end  -- never 0: 0 means taken
limits_record(ARGV, KEYS, LIMITS_AT, LIMIT_KEYS_AT, 0, now, now, member)
return 0
