-- The fleet registry: each master's record, alive while its heartbeats come.
-- KEYS: the records hash (master -> its JSON record), the alive zset (master -> expiry, ms on
--       Redis's clock)
-- ARGV: 'beat', master, lease_ms, record   -> how many masters are alive (this one included);
--                                            record '': the expiry only (-1: there is no record
--                                            to keep, send it whole)
--       'leave', master                    -> 1
--       'read', limit, max_bytes          -> {master, record, ms until it expires, ...} for the
--                                            limit masters expiring first (anyone can add names:
--                                            a read is bounded); a record over max_bytes is sent
--                                            as its length instead
-- A master missing heartbeats for lease_ms drops out: whoever runs this next removes it.
local now = now_ms()
local function prune()
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
  for _, m in ipairs(gone) do redis.call('HDEL', KEYS[1], m) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now)) end
end
local op = ARGV[1]
if op == 'beat' then
  if ARGV[4] == '' and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return -1 end
  redis.call('ZADD', KEYS[2], fmt(now + tonumber(ARGV[3])), ARGV[2])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[4]) end
  prune()
  return redis.call('ZCARD', KEYS[2])
elseif op == 'leave' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[1], ARGV[2])
  return 1
elseif op == 'read' then
  prune()
  local out = {}
  local limit = tonumber(ARGV[2]) or 500
  local max_bytes = tonumber(ARGV[3]) or 4194304
  local alive = redis.call('ZRANGE', KEYS[2], 0, limit - 1, 'WITHSCORES')
  for i = 1, #alive, 2 do
    local size = redis.call('HSTRLEN', KEYS[1], alive[i])
    local record = false
    if size > max_bytes then record = size elseif size > 0 then record = redis.call('HGET', KEYS[1], alive[i]) end
    if record then
      out[#out + 1] = alive[i]
      out[#out + 1] = record
      out[#out + 1] = math.floor(tonumber(alive[i + 1]) - now)
    end
  end
  return out
end
return redis.error_reply('fleet: expected beat, leave or read')
