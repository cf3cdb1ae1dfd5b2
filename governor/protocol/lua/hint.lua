-- KEYS: holders (hash partition -> master), hint lists' prefix, touched sets' prefix
-- ARGV: pairs of partition, count
-- Tells the master holding each partition that it has `count` jobs ready: its idle workers
-- block on their master's hint list (one key: a worker cannot block on many slots at once),
-- and each hint sends one of them to reserve from that partition; the partition is also
-- marked touched, so the master's next lease pass has it looked at (it does not otherwise
-- poll partitions that were empty). A partition nobody holds gets no hint: whoever takes it
-- looks at it then. Hints only wake; a lost one delays a job until the holder looks at the
-- partition, never loses it.
for i = 1, #ARGV, 2 do
  local m = redis.call('HGET', KEYS[1], ARGV[i])
  local n = math.min(tonumber(ARGV[i + 1]) or 0, 512)
  if m and n > 0 then
    local list = KEYS[2] .. m
    local tokens = {}
    for j = 1, n do tokens[j] = ARGV[i] end
    redis.call('RPUSH', list, unpack(tokens))
    redis.call('LTRIM', list, -4096, -1)
    redis.call('SADD', KEYS[3] .. m, ARGV[i])
    -- (the holder's pass keeps them alive; a dead holder's go away on their own)
    redis.call('PEXPIRE', list, 600000, 'NX')
    redis.call('PEXPIRE', KEYS[3] .. m, 600000, 'NX')
  end
end
return 1
