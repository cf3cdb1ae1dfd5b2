-- KEYS: active, leases
-- ARGV: lease_ms, worker1, worker2, ...
-- Extends the leases held by the calling master's live workers. Only a job
-- still in `active` and still leased to that worker is touched, so a settled
-- or reclaimed job is never revived. Returns, per worker, 1 if its lease was
-- extended (it is provably still ours: nobody has taken the job) or 0.
local deadline = fmt(now_ms() + tonumber(ARGV[1]))
local out = {}
for i = 2, #ARGV do
  local id = parse_lease(redis.call('HGET', KEYS[2], ARGV[i]))
  local ok = 0
  if id and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    ok = 1
  end
  out[i - 1] = ok
end
return out
