-- keys: waiting delayed records done unique stats heads key_lists
-- args: id*
--   records: the job records (QueueKeys.meta); key_lists: the prefix of each ordering key's list
-- Cancels jobs that have not started: waiting, delayed, or queued behind their key.
-- Returns per id: 1 cancelled, 0 not waiting or delayed (left alone), -1 no such job.
-- A cancelled job's record is kept like a done one (state 'cancelled', expiring with them);
-- its unique key is freed, and a key's head hands the key on.
local waiting, delayed, records, done, unique, stats, heads, key_lists =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = now_ms()
local ks = {meta = records, waiting = waiting, delayed = delayed, heads = heads, lists = key_lists, stats = stats}
local out, n = {}, 0
for i, id in ipairs(ARGV) do
  local raw = redis.call('HGET', records, id)
  if not raw then
    out[i] = -1
  else
    local meta = load_meta(records, id)
    local state = meta.state
    if state == 'waiting' or state == 'delayed' or state == 'queued' then
      if state == 'queued' then
        if type(meta.key) == 'string' and valid_id(meta.key) then
          redis.call('LREM', ks.lists .. meta.key, 1, id)
        end
        redis.call('ZREM', ks.lists, id)
        redis.call('HINCRBY', stats, 'queued', -1)
      else
        redis.call('ZREM', state == 'waiting' and waiting or delayed, id)
      end
      meta.state = 'cancelled'
      meta.finished_at = now
      redis.call('HSET', records, id, cjson.encode(meta))
      redis.call('ZADD', done, fmt(now), id)
      if type(meta.unique) == 'string' and redis.pcall('HGET', unique, meta.unique) == id then
        redis.call('HDEL', unique, meta.unique)
      end
      if state ~= 'queued' and type(meta.key) == 'string' then key_release(ks, meta, id, now) end
      n = n + 1
      out[i] = 1
    else
      out[i] = 0
    end
  end
end
if n > 0 then redis.call('HINCRBY', stats, 'cancelled', n) end
return out
