-- KEYS: holders (hash partition -> master), expiry (zset partition -> lease end ms),
--       masters (zset master -> lease end ms), hint lists' prefix
-- ARGV: master, lease_ms, partitions, per_host (0: no cap), mode ('hold' or 'release')
-- One master's pass over a partitioned queue's leases, all in the queue's home slot so one
-- script sees every lease and every live master. 'hold' renews the master's own leases and
-- moves it toward its share: masters sorted by name, the first (partitions mod masters) take
-- one more than the rest, capped by per_host; over its share it hands the extra back, under
-- it takes free ones (a dead master's lapse after lease_ms). 'release' hands every one back
-- at once (drain). Leases balance load; they never guard order, which the per-key heads in
-- each partition keep whoever serves it.
-- Returns {live masters, n mine, mine..., then partition, holder pairs for every held one}.
local now = now_ms()
local me, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cap, mode = tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now))
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now))) do
  redis.call('ZREM', KEYS[2], p)
  redis.call('HDEL', KEYS[1], p)
end
local flat = redis.call('HGETALL', KEYS[1])
local holder = {}
for i = 1, #flat, 2 do holder[tonumber(flat[i])] = flat[i + 1] end
local mine, free = {}, {}
for p = 0, n - 1 do
  if holder[p] == me then table.insert(mine, p)
  elseif not holder[p] then table.insert(free, p) end
end
local function drop(p)
  redis.call('HDEL', KEYS[1], tostring(p))
  redis.call('ZREM', KEYS[2], tostring(p))
  holder[p] = nil
end
local live = 0
if mode == 'release' then
  for _, p in ipairs(mine) do drop(p) end
  mine = {}
  redis.call('ZREM', KEYS[3], me)
  redis.call('DEL', KEYS[4] .. me)
  live = redis.call('ZCARD', KEYS[3])
else
  redis.call('ZADD', KEYS[3], fmt(now + lease), me)
  local masters = redis.call('ZRANGE', KEYS[3], 0, -1)
  table.sort(masters)
  live = #masters
  local rank = 0
  for i, m in ipairs(masters) do if m == me then rank = i - 1 end end
  local target = math.floor(n / live) + ((rank < n % live) and 1 or 0)
  if cap > 0 then target = math.min(target, cap) end
  while #mine > target do drop(table.remove(mine)) end
  local i = 1
  while #mine < target and free[i] do
    table.insert(mine, free[i])
    holder[free[i]] = me
    i = i + 1
  end
  table.sort(mine)
  for _, p in ipairs(mine) do
    redis.call('HSET', KEYS[1], tostring(p), me)
    redis.call('ZADD', KEYS[2], fmt(now + lease), tostring(p))
  end
  -- the hint list of a master that stopped renewing goes with its leases
  redis.call('PEXPIRE', KEYS[4] .. me, fmt(lease * 2))
end
local out = {live, #mine}
for _, p in ipairs(mine) do table.insert(out, p) end
for p = 0, n - 1 do
  if holder[p] then
    table.insert(out, p)
    table.insert(out, holder[p])
  end
end
return out
