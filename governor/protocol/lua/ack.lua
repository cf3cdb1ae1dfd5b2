-- KEYS: active, meta, data, done, leases, stats, unique, waiting, wake, delayed, heads,
--       key lists' prefix
-- ARGV: id, token, worker, done_ttl_ms, result_json ('' for none), run_ms,
--       result_note (why a result was not kept: too large, not JSON; '' for none),
--       wake ('1': the queue has a global_concurrency, and the slot this job held is free now),
--       then how many run times to keep in KEYS[13], the handler's run-times list, and the
--       handler, whose done count goes up in KEYS[14], the lane's per-handler counts
--       (handlers.lua reads both)
-- Returns 1 when settled, 0 when the lease was lost (the job is someone else's now).
-- A function of its KEYS and ARGV (they shadow the script's own): ack.lua run alone is
-- `return ack(KEYS, ARGV)`, and settle_reserve.lua calls it with its share of a combined
-- call's keys and arguments (scripts.py `_load_scripts` composes the texts).
local function ack(KEYS, ARGV)
  local now = now_ms()
  local id = ARGV[1]
  local meta = load_meta(KEYS[2], id)
  if meta.state == 'done' and meta.settled_by == ARGV[2] then return 1 end  -- a retried ack
  if not leased(meta, ARGV[2]) then return 0 end
  redis.call('ZREM', KEYS[1], id)
  release(KEYS[5], ARGV[3], id)
  if ARGV[8] == '1' and redis.call('ZCARD', KEYS[8]) > 0 then wake(KEYS[9], 1) end
  meta.state = 'done'
  meta.token = nil
  meta.settled_by = ARGV[2]
  meta.finished_at = now
  meta.run_ms = tonumber(ARGV[6])
  -- kept as the JSON text the worker sent: cjson would turn [] into {} and round numbers
  if ARGV[5] ~= '' then meta.result_json = ARGV[5] end
  if ARGV[7] and ARGV[7] ~= '' then meta.result_dropped = ARGV[7] end
  redis.call('HSET', KEYS[2], id, cjson.encode(meta))
  redis.call('ZADD', KEYS[4], fmt(now), id)
  redis.call('HINCRBY', KEYS[6], 'done', 1)
  if KEYS[14] and tonumber(ARGV[9]) then  -- a successful run: counted, and its time kept
    redis.call('LPUSH', KEYS[13], ARGV[6])
    redis.call('LTRIM', KEYS[13], 0, tonumber(ARGV[9]) - 1)
    redis.call('HINCRBY', KEYS[14], ARGV[10] .. '|done', 1)
  end
  -- the key's next job may start now (partitioned queues)
  if meta.key then
    key_release({meta = KEYS[2], waiting = KEYS[8], delayed = KEYS[10], heads = KEYS[11],
                 lists = KEYS[12], stats = KEYS[6]}, meta, id, now)
  end
  -- done frees the job's unique key (enqueue.lua), unless a later job already holds it
  -- (pcall: a hash clobbered by something else must never fail a settle)
  if type(meta.unique) == 'string' and redis.pcall('HGET', KEYS[7], meta.unique) == id then
    redis.call('HDEL', KEYS[7], meta.unique)
  end
  -- Expire done records a couple at a time, so the work keeps pace with acks
  -- without ever making one ack slow.
  expire_done(KEYS[4], KEYS[2], KEYS[3], now - tonumber(ARGV[4]), 2)
  return 1
end
