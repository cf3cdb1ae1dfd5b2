-- keys: holders hint_lists touched
-- args: (partition count)*
--   holders: the hash partition -> master; hint_lists, touched: the prefixes of each master's
--   hint list and touched set
-- Tells the master holding each partition that it has `count` jobs ready: its idle workers
-- block on their master's hint list (one key: a worker cannot block on many slots at once),
-- and each hint sends one of them to reserve from that partition; the partition is also
-- marked touched, so the master's next lease pass has it looked at (it does not otherwise
-- poll partitions that were empty). A partition nobody holds gets no hint: whoever takes it
-- looks at it then. Hints only wake; a lost one delays a job until the holder looks at the
-- partition, never loses it.
local holders, hint_lists, touched = KEYS[1], KEYS[2], KEYS[3]
for i = 1, #ARGV, 2 do
  local partition, count = ARGV[i], ARGV[i + 1]
  local m = redis.call('HGET', holders, partition)
  local n = math.min(tonumber(count) or 0, 512)
  if m and n > 0 then
    local list = hint_lists .. m
    local tokens = {}
    for j = 1, n do tokens[j] = partition end
    redis.call('RPUSH', list, unpack(tokens))
    redis.call('LTRIM', list, -4096, -1)
    redis.call('SADD', touched .. m, partition)
    -- (the holder's pass keeps them alive; a dead holder's go away on their own). PTTL, not
    -- PEXPIRE's NX flag: that needs Redis 7, and script mode serves older ones
    if redis.call('PTTL', list) < 0 then redis.call('PEXPIRE', list, 600000) end
    if redis.call('PTTL', touched .. m) < 0 then redis.call('PEXPIRE', touched .. m, 600000) end
  end
end
return 1
