-- keys: records alive
-- args: op=beat master lease_ms record
-- args: op=leave master
-- args: op=read limit max_bytes
-- The fleet registry: each master's record, alive while its heartbeats come.
--   records: the hash master -> its JSON record; alive: the zset master -> expiry (ms on
--   Redis's clock)
-- 'beat'  -> how many masters are alive (this one included); record '': the expiry only (-1:
--            there is no record to keep, send it whole)
-- 'leave' -> 1
-- 'read'  -> {master, record, ms until it expires, ...} for the limit masters expiring first
--            (anyone can add names: a read is bounded); a record over max_bytes is sent as its
--            length instead
-- A master missing heartbeats for lease_ms drops out: whoever runs this next removes it.
local records, alive = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = now_ms()
local function prune()
  local gone = redis.call('ZRANGEBYSCORE', alive, '-inf', fmt(now))
  for _, m in ipairs(gone) do redis.call('HDEL', records, m) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', alive, '-inf', fmt(now)) end
end
if op == 'beat' then
  local master, lease_ms, record = ARGV[2], ARGV[3], ARGV[4]
  if record == '' and redis.call('HEXISTS', records, master) == 0 then return -1 end
  redis.call('ZADD', alive, fmt(now + tonumber(lease_ms)), master)
  if record ~= '' then redis.call('HSET', records, master, record) end
  prune()
  return redis.call('ZCARD', alive)
elseif op == 'leave' then
  local master = ARGV[2]
  redis.call('ZREM', alive, master)
  redis.call('HDEL', records, master)
  return 1
elseif op == 'read' then
  local limit, max_bytes = tonumber(ARGV[2]) or 500, tonumber(ARGV[3]) or 4194304
  prune()
  local out = {}
  local expiring = redis.call('ZRANGE', alive, 0, limit - 1, 'WITHSCORES')
  for i = 1, #expiring, 2 do
    local size = redis.call('HSTRLEN', records, expiring[i])
    local record = false
    if size > max_bytes then record = size elseif size > 0 then record = redis.call('HGET', records, expiring[i]) end
    if record then
      out[#out + 1] = expiring[i]
      out[#out + 1] = record
      out[#out + 1] = math.floor(tonumber(expiring[i + 1]) - now)
    end
  end
  return out
end
return redis.error_reply('fleet: expected beat, leave or read')
