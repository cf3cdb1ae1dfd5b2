-- KEYS: meta, data, waiting, delayed, seq, wake, stats, unique, heads, key lists' prefix,
--       partitioned (exists when the queue is partitioned: every job must have a key)
-- ARGV: n, then n times: id, payload, meta_json, delay_ms
-- Returns, per job, 1 if created, 0 if a job with that id already exists, or the
-- id of the job that holds its unique key (meta.unique) while that job is waiting,
-- delayed or active: then nothing is added. The unique hash maps key -> job id;
-- ack.lua (done) and fail.lua (dead) free the key, and a holder found settled or
-- gone (a record expired or dead-lettered by something that did not free it) no
-- longer holds it. Only a job with a key looks at the unique hash.
-- Every job is checked before the first write, so a bad one fails the whole
-- call with an error that names it and nothing is half-committed. (The client
-- checks the same rules; this is the line for producers that bypass it.)
local n = tonumber(ARGV[1])
-- whether the queue is partitioned, asked once per call (and only if a job has no key)
local is_partitioned = nil
local function partitioned()
  if is_partitioned == nil then is_partitioned = redis.call('EXISTS', KEYS[11]) == 1 end
  return is_partitioned
end
local metas = {}
local any_unique = false
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
  if meta.unique ~= nil and not (type(meta.unique) == 'string' and valid_id(meta.unique)) then
    return bad(i, id, 'a unique key is 1-200 printable ASCII characters without spaces')
  end
  if meta.key ~= nil and not (type(meta.key) == 'string' and valid_id(meta.key)) then
    return bad(i, id, 'an ordering key is 1-200 printable ASCII characters without spaces')
  end
  if meta.key == nil and partitioned() then
    return bad(i, id, 'the queue is partitioned: every job needs an ordering key')
  end
  if meta.unique then any_unique = true end
  metas[i] = meta
end
-- a unique hash clobbered by something else would fail the script mid-way: refuse it up front
local unique_key = KEYS[8]
if any_unique then
  local t = redis.call('TYPE', unique_key)
  t = type(t) == 'table' and t.ok or t
  if t ~= 'hash' and t ~= 'none' then
    return redis.error_reply('ERR governor: ' .. unique_key .. ' is a ' .. t .. ', not the hash of unique keys')
  end
end
local now = now_ms()
local seq = redis.call('INCRBY', KEYS[5], n) - n
local live = {waiting = true, delayed = true, active = true, queued = true}  -- (queued: behind its key's head)
-- The job that holds a unique key, or nil when the key is free or its holder is
-- done, dead or gone.
local function holder_of(key)
  local held = redis.call('HGET', unique_key, key)
  if held and live[load_meta(KEYS[1], held).state] then return held end
  return nil
end
local ks = {meta = KEYS[1], waiting = KEYS[3], delayed = KEYS[4], heads = KEYS[9], lists = KEYS[10],
            stats = KEYS[7]}
local created, n_created, n_ready = {}, 0, 0
for i = 0, n - 1 do
  local b = 2 + i * 4
  local id = ARGV[b]
  local key = metas[i].unique
  local exists = redis.call('HEXISTS', KEYS[1], id) == 1
  local holder = not exists and key and holder_of(key) or nil
  if exists then
    created[i + 1] = 0
  elseif holder then
    created[i + 1] = holder
  else
    local meta = metas[i]
    seq = seq + 1
    meta.seq = seq
    meta.enqueued_at = now
    meta.attempts = 0
    if meta.key then
      if key_enqueue(ks, meta, id, now, tonumber(ARGV[b + 3])) then n_ready = n_ready + 1 end
    else
      schedule(meta, id, now, tonumber(ARGV[b + 3]), KEYS[3], KEYS[4])
      n_ready = n_ready + 1
    end
    redis.call('HSET', KEYS[2], id, ARGV[b + 1])
    redis.call('HSET', KEYS[1], id, cjson.encode(meta))
    if key then redis.call('HSET', unique_key, key, id) end
    created[i + 1] = 1
    n_created = n_created + 1
  end
end
-- one token per job; a delayed job wakes an idle worker too, so it re-arms its timer
wake(KEYS[6], n_ready)
if n_created > 0 then redis.call('HINCRBY', KEYS[7], 'enqueued', n_created) end
return created
