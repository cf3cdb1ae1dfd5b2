-- keys: holders masters hint_lists touched
-- args: master lease_ms partitions per_host mode
--   holders: the hash partition -> master; masters: the zset master -> lease end ms;
--   hint_lists, touched: the prefixes of each master's hint list and touched set;
--   per_host: 0 for no cap; mode: 'hold' or 'release'
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
local holders, masters, hint_lists, touched = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local master, lease_ms, partitions, per_host, mode =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', masters, '-inf', fmt(now))
if mode == 'release' then
  redis.call('ZREM', masters, master)
else
  redis.call('ZADD', masters, fmt(now + lease_ms), master)
end
local live = redis.call('ZRANGE', masters, 0, -1)
local alive = {}
for _, m in ipairs(live) do alive[m] = true end
local flat = redis.call('HGETALL', holders)
local holder = {}
for i = 1, #flat, 2 do
  local p = tonumber(flat[i])
  if p and p < partitions and alive[flat[i + 1]] then holder[p] = flat[i + 1] end  -- else its lease is over
end
local mine, free = {}, {}
for p = 0, partitions - 1 do
  if holder[p] == master then table.insert(mine, p)
  elseif not holder[p] then table.insert(free, p) end
end
local target = 0
if mode ~= 'release' then
  table.sort(live)
  local rank = 0
  for i, m in ipairs(live) do if m == master then rank = i - 1 end end
  target = math.floor(partitions / #live) + ((rank < partitions % #live) and 1 or 0)
  if per_host > 0 then target = math.min(target, per_host) end
end
while #mine > target do
  local p = table.remove(mine)
  redis.call('HDEL', holders, tostring(p))
  holder[p] = nil
end
local i = 1
while #mine < target and free[i] do
  redis.call('HSET', holders, tostring(free[i]), master)
  holder[free[i]] = master
  table.insert(mine, free[i])
  i = i + 1
end
table.sort(mine)
local touched_now = {}
if mode == 'release' then
  redis.call('DEL', hint_lists .. master, touched .. master)
else
  touched_now = redis.call('SMEMBERS', touched .. master)
  if #touched_now > 0 then redis.call('DEL', touched .. master) end
  -- the hint list of a master that stopped renewing goes away with its leases
  redis.call('PEXPIRE', hint_lists .. master, fmt(lease_ms * 2))
end
local out = {#live, #mine}
for _, p in ipairs(mine) do table.insert(out, p) end
local held = {}
for p = 0, partitions - 1 do
  if holder[p] then
    table.insert(held, p)
    table.insert(held, holder[p])
  end
end
table.insert(out, #held / 2)
for _, v in ipairs(held) do table.insert(out, v) end
for _, p in ipairs(touched_now) do table.insert(out, tonumber(p)) end
return out
