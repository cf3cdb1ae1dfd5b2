-- keys: state_set records data unique stats heads key_lists waiting delayed
-- args: state limit id*
--   state_set: the state's sorted set; records: the job records (QueueKeys.meta); key_lists:
--   the prefix of each ordering key's list; id: (optional) the only ids to delete (those of
--   them that are in the state; a delete of single jobs)
-- Deletes up to `limit` jobs of one state (dead, waiting, delayed or done) and their records:
-- bounded work per call, so a million dead jobs never block Redis; call again while it
-- returns more left. Jobs that are running (active) are never purged.
-- Waiting is what `status` counts as waiting: the waiting jobs and those queued behind their
-- key's head (whatever the head's state), the queued first, each key's from the front of its
-- list, so what is left of a key keeps its order and no queued job is made a head only to be
-- deleted (or started meanwhile, between two calls).
-- Returns {purged, left in the state}.
local state_set, records, data, unique, stats, heads, key_lists, waiting, delayed =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local state, limit = ARGV[1], tonumber(ARGV[2])
if state == 'active' then
  return redis.error_reply('ERR governor: active jobs are running: they cannot be purged (cancel or wait)')
end
local now = now_ms()
local ks = {meta = records, waiting = waiting, delayed = delayed, heads = heads, lists = key_lists, stats = stats}
local function forget(id, meta)
  if type(meta.unique) == 'string' and redis.pcall('HGET', unique, meta.unique) == id then
    redis.call('HDEL', unique, meta.unique)
  end
  redis.call('HDEL', records, id)
  redis.call('HDEL', data, id)
end
local n = 0
if state == 'waiting' and #ARGV == 2 then
  for _, id in ipairs(redis.call('ZRANGE', ks.lists, 0, limit - 1)) do
    local meta = load_meta(records, id)
    redis.call('ZREM', ks.lists, id)
    -- only a job still queued in its key's list: an entry left stale (a version that did not
    -- keep the index moved the job on, to active or waiting) is dropped from the index alone
    if meta.state == 'queued' and type(meta.key) == 'string' and valid_id(meta.key)
        and redis.call('LREM', ks.lists .. meta.key, 1, id) == 1 then
      redis.call('HINCRBY', stats, 'queued', -1)
      forget(id, meta)
      n = n + 1
    end
  end
end
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do
    if redis.call('ZSCORE', state_set, ARGV[i]) then ids[#ids + 1] = ARGV[i] end
  end
elseif n < limit then
  ids = redis.call('ZRANGE', state_set, 0, limit - n - 1)
end
for _, id in ipairs(ids) do
  local meta = load_meta(records, id)
  redis.call('ZREM', state_set, id)
  forget(id, meta)
  if (state == 'waiting' or state == 'delayed') and type(meta.key) == 'string' then
    key_release(ks, meta, id, now)  -- its key's next job becomes the head (purged in turn)
  end
end
n = n + #ids
if n > 0 then redis.call('HINCRBY', stats, 'purged', n) end
local left = redis.call('ZCARD', state_set)
if state == 'waiting' then left = left + redis.call('ZCARD', ks.lists) end
return {n, left}
