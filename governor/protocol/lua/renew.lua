-- keys: active leases
-- args: lease_ms worker*
-- Extends the leases held by the calling master's live workers. Only a job
-- still in `active` and still leased to that worker is touched, so a settled
-- or reclaimed job is never revived. Returns, per worker, 1 if its lease was
-- extended (it is provably still ours: nobody has taken the job) or 0.
local active, leases = KEYS[1], KEYS[2]
local lease_ms = tonumber(ARGV[1])
local deadline = fmt(now_ms() + lease_ms)
local out = {}
for i = 2, #ARGV do
  local worker = ARGV[i]
  local id = parse_lease(redis.call('HGET', leases, worker))
  local ok = 0
  if id and redis.call('ZSCORE', active, id) then
    redis.call('ZADD', active, 'XX', deadline, id)
    ok = 1
  end
  out[i - 1] = ok
end
return out
