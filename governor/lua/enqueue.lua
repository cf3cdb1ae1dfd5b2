-- KEYS: meta, data, waiting, delayed, seq, wake, stats
-- ARGV: n, then n times: id, payload, meta_json, delay_ms
-- Returns, per job, 1 if created or 0 if a job with that id already exists.
local now = now_ms()
local n = tonumber(ARGV[1])
local seq = redis.call('INCRBY', KEYS[5], n) - n
local created, n_created = {}, 0
for i = 0, n - 1 do
  local b = 2 + i * 4
  local id = ARGV[b]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    created[i + 1] = 0
  else
    local meta = cjson.decode(ARGV[b + 2])
    local delay = tonumber(ARGV[b + 3])
    seq = seq + 1
    meta.seq = seq
    meta.enqueued_at = now
    meta.attempts = 0
    schedule(meta, id, now, delay, KEYS[3], KEYS[4])
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
