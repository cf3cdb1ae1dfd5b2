-- KEYS: active, leases
-- ARGV: lease_ms, worker1, worker2, ...
-- Extends the leases held by the calling master's live workers. Only a job
-- still in `active` is touched (XX), so a settled job is never revived.
local deadline = fmt(now_ms() + tonumber(ARGV[1]))
local renewed = 0
for i = 2, #ARGV do
  local id = parse_lease(redis.call('HGET', KEYS[2], ARGV[i]))
  if id then renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, id) end
end
return renewed
