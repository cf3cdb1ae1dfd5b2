-- Operator's retry: dead jobs back to waiting, attempts reset, their errors kept.
-- KEYS: dead, meta, waiting, delayed, wake, stats, heads, key lists' prefix, unique
-- A retried job takes its unique key back if no live job holds it meanwhile.
-- ARGV: 'strict' (every id must be dead, else nothing changes) or 'any' (retry the dead
--       ones), then job ids
-- Returns {1 if anything changed, then per id: 1 retried, 0 not dead (left alone), -1 no such job}.
local now = now_ms()
local ks = {meta = KEYS[2], waiting = KEYS[3], delayed = KEYS[4], heads = KEYS[7], lists = KEYS[8],
            stats = KEYS[6]}
local out, ready = {1}, 0
local ids = {unpack(ARGV, 2)}
local function code(id)
  if not redis.call('HGET', KEYS[2], id) then return -1 end
  if redis.call('ZSCORE', KEYS[1], id) == false then return 0 end
  return 1
end
if ARGV[1] == 'strict' then
  local codes, bad = {0}, false
  for i, id in ipairs(ids) do
    codes[i + 1] = code(id)
    bad = bad or codes[i + 1] ~= 1
  end
  if bad then return codes end
end
for j, id in ipairs(ids) do
  local i = j + 1
  local c = code(id)
  if c ~= 1 then
    out[i] = c
  else
    local meta = load_meta(KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
    meta.attempts = 0
    meta.retries_by_operator = (tonumber(meta.retries_by_operator) or 0) + 1
    meta.reason, meta.finished_at, meta.token = nil, nil, nil
    if meta.malformed then
      out[i] = 0  -- (a record governor cannot read stays dead)
      redis.call('ZADD', KEYS[1], fmt(now), id)
    else
      local waiting = true
      if type(meta.key) == 'string' then
        waiting = key_enqueue(ks, meta, id, now, 0)
      else
        schedule(meta, id, now, 0, KEYS[3], KEYS[4])
      end
      if waiting then ready = ready + 1 end
      if type(meta.unique) == 'string' then redis.pcall('HSETNX', KEYS[9], meta.unique, id) end
      redis.call('HSET', KEYS[2], id, cjson.encode(meta))
      out[i] = 1
    end
  end
end
if ready > 0 then
  wake(KEYS[5], ready)
  redis.call('HINCRBY', KEYS[6], 'retried_by_operator', ready)
end
return out
