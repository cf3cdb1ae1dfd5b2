-- keys: dead records waiting delayed wake_list stats heads key_lists unique
-- args: mode id*
--   records: the job records (QueueKeys.meta); key_lists: the prefix of each ordering key's list
--   mode: 'strict' (every id must be retryable, else nothing changes), 'any' (retry those that
--   are, leave the others) or 'check' (change nothing, say what a retry would do)
-- Operator's retry: dead jobs back to waiting, attempts reset, their errors kept.
-- Returns {1 if anything may have changed (0: strict or check, and nothing did), then per id: 1 retried,
-- 0 not dead (left alone), -1 no such job, or {unique key, id of the live job holding it}: left
-- dead}.
--
-- Unique keys: a retried job takes its unique key back; while another live job (waiting,
-- delayed, active, or queued behind its key) holds it, the dead job is not retried (it would
-- make two live jobs of one unique key). Refused rather than answered with the holder's id, as
-- enqueue does: the operator asked for this job's run, and the dead job keeps its errors for a
-- look (retry it when the holder is done, or delete it).
--
-- Ordering keys (partitioned queues). "Its key's enqueue order": a retried job of key K goes
-- before every job of K that has not started since it was enqueued or retried (a waiting or
-- delayed head that never ran, and the jobs queued behind the head), among them by enqueue
-- sequence (meta.seq, which grows per lane, and a key's jobs share a lane), and after a head of
-- K that has started (running, or back after a failed or killed run): a job that has run is
-- never overtaken, and a job already done of K ran before it, necessarily. So dead jobs retried
-- in any order, in one call or several, run in their enqueue order, before K's newer jobs.
local dead, records, waiting, delayed, wake_list, stats, heads, key_lists, unique =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local mode = ARGV[1]
local now = now_ms()
local ks = {meta = records, waiting = waiting, delayed = delayed, heads = heads, lists = key_lists, stats = stats}
local live = {waiting = true, delayed = true, active = true, queued = true}
local ids = {unpack(ARGV, 2)}
local claimed = {}  -- unique keys taken by jobs retried in this call

-- 1 retryable, 0 not dead, -1 no such job, or {unique key, holder}
local function code(id)
  if not redis.call('HGET', records, id) then return -1 end
  if redis.call('ZSCORE', dead, id) == false then return 0 end
  local meta = load_meta(records, id)
  if type(meta.unique) == 'string' and not meta.malformed then
    local held = claimed[meta.unique]
    if not held then
      held = redis.pcall('HGET', unique, meta.unique)
      if type(held) ~= 'string' or held == id or not live[load_meta(records, held).state] then held = nil end
    end
    if held and held ~= id then return {meta.unique, held} end
    claimed[meta.unique] = id
  end
  return 1
end

if mode == 'strict' or mode == 'check' then
  local codes, bad = {0}, false
  for i, id in ipairs(ids) do
    codes[i + 1] = code(id)
    bad = bad or codes[i + 1] ~= 1
  end
  if bad or mode == 'check' then return codes end
  claimed = {}
end

local function seq_of(id)
  local m = load_meta(records, id)
  return tonumber(m.seq) or -1  -- (a record governor cannot read stays in front: it is passed on)
end

-- Puts `jobs` ({id, meta}, by seq) into key k's list at their places by seq: the list's front
-- is read only as far as the last of them goes, then rewritten.
local function merge_into_list(k, jobs)
  local list = ks.lists .. k
  local merged, taken, c = {}, 0, 1
  while c <= #jobs do
    local chunk = redis.call('LRANGE', list, taken, taken + 99)
    if #chunk == 0 then break end
    for _, x in ipairs(chunk) do
      local xs = seq_of(x)
      while c <= #jobs and tonumber(jobs[c].meta.seq) < xs do
        merged[#merged + 1] = jobs[c].id
        c = c + 1
      end
      if c > #jobs then break end
      merged[#merged + 1] = x
      taken = taken + 1
    end
  end
  for j = c, #jobs do merged[#merged + 1] = jobs[j].id end
  if taken > 0 then redis.call('LTRIM', list, taken, -1) end
  for hi = #merged, 1, -1000 do  -- LPUSH a b c leaves c b a: pushed from the end, reversed
    local args = {}
    for j = hi, math.max(1, hi - 999), -1 do args[#args + 1] = merged[j] end
    redis.call('LPUSH', list, unpack(args))
  end
end

-- The retried jobs of key k back in its order (see the top); returns how many are now waiting.
local function key_retry(k, jobs)
  local head = redis.call('HGET', ks.heads, k)
  if head then
    local hm = load_meta(records, head)
    if not LIVE[hm.state] then
      redis.call('HDEL', ks.heads, k)  -- a head that ended without handing its key on
    elseif (hm.state == 'waiting' or hm.state == 'delayed') and hm.started_at == nil and not hm.malformed
        and tonumber(hm.seq) and tonumber(hm.seq) > tonumber(jobs[1].meta.seq) then
      -- a head that never ran, enqueued after a retried job: back in the list, at its place
      redis.call('ZREM', hm.state == 'waiting' and waiting or delayed, head)
      hm.state, hm.ready_at = 'queued', nil  -- (a due_at is kept: it applies when it is head again)
      redis.call('HDEL', ks.heads, k)
      jobs[#jobs + 1] = {id = head, meta = hm}
      table.sort(jobs, function(a, b) return tonumber(a.meta.seq) < tonumber(b.meta.seq) end)
    end
  end
  for _, j in ipairs(jobs) do
    j.meta.state = 'queued'
    redis.call('HSET', records, j.id, cjson.encode(j.meta))
    queued_add(ks, j.id, j.meta)
  end
  redis.call('HINCRBY', ks.stats, 'queued', #jobs)
  merge_into_list(k, jobs)
  if not redis.call('HGET', ks.heads, k) and key_next(ks, k, now) then return 1 end
  return 0
end

local out, ready, retried = {1}, 0, 0
local keyed, key_order = {}, {}
for j, id in ipairs(ids) do
  local i = j + 1
  local c = code(id)
  if c ~= 1 then
    out[i] = c
  else
    local meta = load_meta(records, id)
    redis.call('ZREM', dead, id)
    meta.attempts = 0
    meta.retries_by_operator = (tonumber(meta.retries_by_operator) or 0) + 1
    -- (started_at too: a retried job has not started since, which its key's order goes by)
    meta.reason, meta.finished_at, meta.token, meta.started_at, meta.due_at = nil, nil, nil, nil, nil
    if meta.malformed then
      out[i] = 0  -- (a record governor cannot read stays dead)
      redis.call('ZADD', dead, fmt(now), id)
    else
      if type(meta.unique) == 'string' then redis.pcall('HSET', unique, meta.unique, id) end
      if type(meta.key) == 'string' and valid_id(meta.key) and tonumber(meta.seq) then
        if not keyed[meta.key] then
          keyed[meta.key] = {}
          key_order[#key_order + 1] = meta.key
        end
        table.insert(keyed[meta.key], {id = id, meta = meta})
      elseif type(meta.key) == 'string' and meta.key ~= '' then  -- (no sequence: behind its key)
        if key_enqueue(ks, meta, id, now, 0) then ready = ready + 1 end
        redis.call('HSET', records, id, cjson.encode(meta))
      else
        schedule(meta, id, now, 0, waiting, delayed)
        redis.call('HSET', records, id, cjson.encode(meta))
        ready = ready + 1
      end
      retried = retried + 1
      out[i] = 1
    end
  end
end
for _, k in ipairs(key_order) do
  local jobs = keyed[k]
  table.sort(jobs, function(a, b) return tonumber(a.meta.seq) < tonumber(b.meta.seq) end)
  ready = ready + key_retry(k, jobs)
end
wake(wake_list, ready)
if retried > 0 then redis.call('HINCRBY', stats, 'retried_by_operator', retried) end
return out
