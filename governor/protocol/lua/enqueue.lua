-- keys: records data waiting delayed seq wake_list stats unique heads key_lists partitions
-- args: n (id payload meta_json delay_ms)*n
--   records: the job records (QueueKeys.meta); key_lists: the prefix of each ordering key's
--   list; partitions: the queue's partition count, which exists while the queue is partitioned
--   (every job must have a key then)
-- Returns, per job, 1 if created, 0 if a job with that id already exists, or the
-- id of the job that holds its unique key (meta.unique) while that job is waiting,
-- delayed or active: then nothing is added. The unique hash maps key -> job id;
-- ack.lua (done) and fail.lua (dead) free the key, and a holder found settled or
-- gone (a record expired or dead-lettered by something that did not free it) no
-- longer holds it. Only a job with a key looks at the unique hash.
-- Every job is checked before the first write, so a bad one fails the whole
-- call with an error that names it and nothing is half-committed. (The client
-- checks the same rules; this is the line for producers that bypass it.)
local records, data, waiting, delayed, seq, wake_list, stats, unique, heads, key_lists, partitions =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local n = tonumber(ARGV[1])
-- whether the queue is partitioned, asked once per call (and only if a job has no key)
local is_partitioned = nil
local function partitioned()
  if is_partitioned == nil then is_partitioned = redis.call('EXISTS', partitions) == 1 end
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
  local b = 2 + i * 4  -- this job's id, payload, meta_json and delay_ms: ARGV[b] to ARGV[b + 3]
  local id, meta_json, delay_ms = ARGV[b], ARGV[b + 2], ARGV[b + 3]
  if not valid_id(id) then
    return bad(i, id, 'a job id is 1-200 printable ASCII characters without spaces')
  end
  local ok, meta = pcall(cjson.decode, meta_json)
  if not ok or type(meta) ~= 'table' or not finite(meta, 0) then
    return bad(i, id, 'its record is not a JSON object of finite numbers')
  end
  if not number_in(tonumber(delay_ms), 0, 315360000000, true) then
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
if any_unique then
  local t = redis.call('TYPE', unique)
  t = type(t) == 'table' and t.ok or t
  if t ~= 'hash' and t ~= 'none' then
    return redis.error_reply('ERR governor: ' .. unique .. ' is a ' .. t .. ', not the hash of unique keys')
  end
end
local now = now_ms()
local last_seq = redis.call('INCRBY', seq, n) - n
local live = {waiting = true, delayed = true, active = true, queued = true}  -- (queued: behind its key's head)
-- The job that holds a unique key, or nil when the key is free or its holder is
-- done, dead or gone.
local function holder_of(key)
  local held = redis.call('HGET', unique, key)
  if held and live[load_meta(records, held).state] then return held end
  return nil
end
local ks = {meta = records, waiting = waiting, delayed = delayed, heads = heads, lists = key_lists, stats = stats}
local created, n_created, n_ready = {}, 0, 0
for i = 0, n - 1 do
  local b = 2 + i * 4
  local id, payload, delay_ms = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 3])
  local key = metas[i].unique
  local exists = redis.call('HEXISTS', records, id) == 1
  local holder = not exists and key and holder_of(key) or nil
  if exists then
    created[i + 1] = 0
  elseif holder then
    created[i + 1] = holder
  else
    local meta = metas[i]
    last_seq = last_seq + 1
    meta.seq = last_seq
    meta.enqueued_at = now
    meta.attempts = 0
    if meta.key then
      if key_enqueue(ks, meta, id, now, delay_ms) then n_ready = n_ready + 1 end
    else
      schedule(meta, id, now, delay_ms, waiting, delayed)
      n_ready = n_ready + 1
    end
    redis.call('HSET', data, id, payload)
    redis.call('HSET', records, id, cjson.encode(meta))
    if key then redis.call('HSET', unique, key, id) end
    created[i + 1] = 1
    n_created = n_created + 1
  end
end
-- one token per job; a delayed job wakes an idle worker too, so it re-arms its timer
wake(wake_list, n_ready)
if n_created > 0 then redis.call('HINCRBY', stats, 'enqueued', n_created) end
return created
