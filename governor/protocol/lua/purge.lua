-- Deletes up to ARGV[2] jobs of one state (dead, waiting, delayed or done) and their records:
-- bounded work per call, so a million dead jobs never block Redis; call again while it
-- returns more left. Jobs that are running (active) are never purged.
-- Waiting is what `status` counts as waiting: the waiting jobs and those queued behind their
-- key's head (whatever the head's state), the queued first, each key's from the front of its
-- list, so what is left of a key keeps its order and no queued job is made a head only to be
-- deleted (or started meanwhile, between two calls).
-- KEYS: the state's sorted set, meta, data, unique, stats, heads, key lists' prefix, waiting,
--       delayed
-- ARGV: the state, how many at most, then (optional) the only ids to delete (those of them
--       that are in the state; a delete of single jobs)
-- Returns {purged, left in the state}.
local state, limit = ARGV[1], tonumber(ARGV[2])
if state == 'active' then
  return redis.error_reply('ERR governor: active jobs are running: they cannot be purged (cancel or wait)')
end
local now = now_ms()
local ks = {meta = KEYS[2], waiting = KEYS[8], delayed = KEYS[9], heads = KEYS[6], lists = KEYS[7],
            stats = KEYS[5]}
local function forget(id, meta)
  if type(meta.unique) == 'string' and redis.pcall('HGET', KEYS[4], meta.unique) == id then
    redis.call('HDEL', KEYS[4], meta.unique)
  end
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
local n = 0
if state == 'waiting' and #ARGV == 2 then
  for _, id in ipairs(redis.call('ZRANGE', ks.lists, 0, limit - 1)) do
    local meta = load_meta(KEYS[2], id)
    redis.call('ZREM', ks.lists, id)
    -- only a job still queued in its key's list: an entry left stale (a version that did not
    -- keep the index moved the job on, to active or waiting) is dropped from the index alone
    if meta.state == 'queued' and type(meta.key) == 'string' and valid_id(meta.key)
        and redis.call('LREM', ks.lists .. meta.key, 1, id) == 1 then
      redis.call('HINCRBY', KEYS[5], 'queued', -1)
      forget(id, meta)
      n = n + 1
    end
  end
end
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then ids[#ids + 1] = ARGV[i] end
  end
elseif n < limit then
  ids = redis.call('ZRANGE', KEYS[1], 0, limit - n - 1)
end
for _, id in ipairs(ids) do
  local meta = load_meta(KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  forget(id, meta)
  if (state == 'waiting' or state == 'delayed') and type(meta.key) == 'string' then
    key_release(ks, meta, id, now)  -- its key's next job becomes the head (purged in turn)
  end
end
n = n + #ids
if n > 0 then redis.call('HINCRBY', KEYS[5], 'purged', n) end
local left = redis.call('ZCARD', KEYS[1])
if state == 'waiting' then left = left + redis.call('ZCARD', ks.lists) end
return {n, left}
