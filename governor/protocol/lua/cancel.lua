-- Cancels jobs that have not started: waiting, delayed, or queued behind their key.
-- KEYS: waiting, delayed, meta, done, unique, stats, heads, key lists' prefix
-- ARGV: job ids
-- Returns per id: 1 cancelled, 0 not waiting or delayed (left alone), -1 no such job.
-- A cancelled job's record is kept like a done one (state 'cancelled', expiring with them);
-- its unique key is freed, and a key's head hands the key on.
local now = now_ms()
local ks = {meta = KEYS[3], waiting = KEYS[1], delayed = KEYS[2], heads = KEYS[7], lists = KEYS[8],
            stats = KEYS[6]}
local out, n = {}, 0
for i, id in ipairs(ARGV) do
  local raw = redis.call('HGET', KEYS[3], id)
  if not raw then
    out[i] = -1
  else
    local meta = load_meta(KEYS[3], id)
    local state = meta.state
    if state == 'waiting' or state == 'delayed' or state == 'queued' then
      if state == 'queued' then
        if type(meta.key) == 'string' and valid_id(meta.key) then
          redis.call('LREM', ks.lists .. meta.key, 1, id)
        end
        redis.call('ZREM', ks.lists, id)
        redis.call('HINCRBY', KEYS[6], 'queued', -1)
      else
        redis.call('ZREM', state == 'waiting' and KEYS[1] or KEYS[2], id)
      end
      meta.state = 'cancelled'
      meta.finished_at = now
      redis.call('HSET', KEYS[3], id, cjson.encode(meta))
      redis.call('ZADD', KEYS[4], fmt(now), id)
      if type(meta.unique) == 'string' and redis.pcall('HGET', KEYS[5], meta.unique) == id then
        redis.call('HDEL', KEYS[5], meta.unique)
      end
      if state ~= 'queued' and type(meta.key) == 'string' then key_release(ks, meta, id, now) end
      n = n + 1
      out[i] = 1
    else
      out[i] = 0
    end
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[6], 'cancelled', n) end
return out
