-- KEYS: waiting, delayed, active, meta, data, done, wake
-- ARGV: done_ttl_ms
-- The master's periodic pass over one queue: promote due delayed jobs,
-- expire old done records, and list leases that have run out.
-- Returns {promoted, ms until next due (-1: none), active count, id1, meta1, id2, meta2, ...}
local now = now_ms()
local promoted = promote(KEYS[2], KEYS[1], KEYS[4], KEYS[7], now, 1000)
expire_done(KEYS[6], KEYS[4], KEYS[5], now - tonumber(ARGV[1]), 1000)
local out = {promoted, next_due(KEYS[2], now), redis.call('ZCARD', KEYS[3])}
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now), 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  table.insert(out, id)
  table.insert(out, redis.call('HGET', KEYS[4], id) or '')
end
return out
