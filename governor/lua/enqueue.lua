-- KEYS: meta, data, waiting, delayed, seq, wake, stats
-- ARGV: n, then n times: id, payload, meta_json, delay_ms
-- Returns, per job, 1 if created or 0 if a job with that id already exists.
-- Every job is checked before the first write, so a bad one fails the whole
-- call with an error that names it and nothing is half-committed. (The client
-- checks the same rules; this is the line for producers that bypass it.)
local n = tonumber(ARGV[1])
local metas = {}
local function bad(i, id, what)
  return redis.error_reply(string.format('ERR governor: job %d of %d (id %q): %s', i + 1, n,
                                         string.sub(id, 1, 64), what))
end
local function number_in(v, lo, hi, integer)
  return type(v) == 'number' and v == v and v >= lo and v <= hi
    and (not integer or math.floor(v) == v)
end
for i = 0, n - 1 do
  local b = 2 + i * 4
  local id = ARGV[b]
  if not valid_id(id) then
    return bad(i, id, 'a job id is 1-200 printable ASCII characters without spaces')
  end
  local ok, meta = pcall(cjson.decode, ARGV[b + 2])
  if not ok or type(meta) ~= 'table' or not finite(meta, 0) then
    return bad(i, id, 'its record is not a JSON object of finite numbers')
  end
  if not number_in(tonumber(ARGV[b + 3]), 0, 315360000000, true) then
    return bad(i, id, 'delay_ms must be an integer from 0 to 10 years')
  end
  if not number_in(meta.priority or 50, 0, 100, true) then
    return bad(i, id, 'priority must be an integer 0-100')
  end
  if meta.timeout ~= nil and not number_in(meta.timeout, 0.001, 31536000, false) then
    return bad(i, id, 'timeout must be a number of seconds from 0.001 to 1 year')
  end
  if meta.max_retries ~= nil and not number_in(meta.max_retries, 0, 1000000, true) then
    return bad(i, id, 'max_retries must be an integer from 0 to 1000000')
  end
  metas[i] = meta
end
local now = now_ms()
local seq = redis.call('INCRBY', KEYS[5], n) - n
local created, n_created = {}, 0
for i = 0, n - 1 do
  local b = 2 + i * 4
  local id = ARGV[b]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    created[i + 1] = 0
  else
    local meta = metas[i]
    seq = seq + 1
    meta.seq = seq
    meta.enqueued_at = now
    meta.attempts = 0
    schedule(meta, id, now, tonumber(ARGV[b + 3]), KEYS[3], KEYS[4])
    redis.call('HSET', KEYS[2], id, ARGV[b + 1])
    redis.call('HSET', KEYS[1], id, cjson.encode(meta))
    created[i + 1] = 1
    n_created = n_created + 1
  end
end
-- one token per job; a delayed job wakes an idle worker too, so it re-arms its timer
wake(KEYS[6], n_created)
if n_created > 0 then redis.call('HINCRBY', KEYS[7], 'enqueued', n_created) end
return created
