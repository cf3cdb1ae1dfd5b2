-- KEYS: holders (hash partition -> master), masters (zset master -> lease end ms),
--       hint lists' prefix, touched sets' prefix
-- ARGV: master, lease_ms, partitions, per_host (0: no cap), mode ('hold' or 'release')
-- One master's pass over a partitioned queue's leases, all in the queue's home slot so one
-- script sees every lease and every live master. A partition's lease is its holder's: a
-- master renews all of its partitions by renewing itself (one write a pass, however many
-- it holds), and when it stops renewing, every partition it held is free once its lease
-- ends. 'hold' moves the master toward its share: masters sorted by name, the first
-- (partitions mod masters) take one more than the rest, capped by per_host; over its share
-- it hands the extra back, under it takes free ones. 'release' hands every one back at once
-- (drain). Leases balance load; they never guard order, which the per-key heads in each
-- partition keep whoever serves it.
-- Returns {live masters, n mine, mine..., n held, (partition, holder) per held partition,
--          then the partitions producers touched since the last pass (to look at now)}.
local now = now_ms()
local me, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cap, mode = tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
if mode == 'release' then
  redis.call('ZREM', KEYS[2], me)
else
  redis.call('ZADD', KEYS[2], fmt(now + lease), me)
end
local masters = redis.call('ZRANGE', KEYS[2], 0, -1)
local alive = {}
for _, m in ipairs(masters) do alive[m] = true end
local flat = redis.call('HGETALL', KEYS[1])
local holder = {}
for i = 1, #flat, 2 do
  local p = tonumber(flat[i])
  if p and p < n and alive[flat[i + 1]] then holder[p] = flat[i + 1] end  -- else its lease is over
end
local mine, free = {}, {}
for p = 0, n - 1 do
  if holder[p] == me then table.insert(mine, p)
  elseif not holder[p] then table.insert(free, p) end
end
local target = 0
if mode ~= 'release' then
  table.sort(masters)
  local rank = 0
  for i, m in ipairs(masters) do if m == me then rank = i - 1 end end
  target = math.floor(n / #masters) + ((rank < n % #masters) and 1 or 0)
  if cap > 0 then target = math.min(target, cap) end
end
while #mine > target do
  local p = table.remove(mine)
  redis.call('HDEL', KEYS[1], tostring(p))
  holder[p] = nil
end
local i = 1
while #mine < target and free[i] do
  redis.call('HSET', KEYS[1], tostring(free[i]), me)
  holder[free[i]] = me
  table.insert(mine, free[i])
  i = i + 1
end
table.sort(mine)
local touched = {}
if mode == 'release' then
  redis.call('DEL', KEYS[3] .. me, KEYS[4] .. me)
else
  touched = redis.call('SMEMBERS', KEYS[4] .. me)
  if #touched > 0 then redis.call('DEL', KEYS[4] .. me) end
  -- the hint list of a master that stopped renewing goes away with its leases
  redis.call('PEXPIRE', KEYS[3] .. me, fmt(lease * 2))
end
local out = {#masters, #mine}
for _, p in ipairs(mine) do table.insert(out, p) end
local held = {}
for p = 0, n - 1 do
  if holder[p] then
    table.insert(held, p)
    table.insert(held, holder[p])
  end
end
table.insert(out, #held / 2)
for _, v in ipairs(held) do table.insert(out, v) end
for _, p in ipairs(touched) do table.insert(out, tonumber(p)) end
return out
