-- keys: active records data done leases stats unique waiting wake_list delayed heads key_lists
--       (runtimes handler_counts)?
-- args: id token worker done_ttl_ms result_json run_ms result_note wake_waiter (keep_runs handler)?
--   records: the job records (QueueKeys.meta); key_lists: the prefix of each ordering key's list
--   result_json: '' for none; result_note: why a result was not kept (too large, not JSON; ''
--   for none); wake_waiter: '1' when the queue has a global_concurrency (the slot this job held
--   is free now); then, for a run counted as its handler's (handlers.lua reads both): keep_runs,
--   how many run times to keep in runtimes (the handler's run-times list), and the handler,
--   whose done count goes up in handler_counts (the lane's per-handler counts)
-- Returns 1 when settled, 0 when the lease was lost (the job is someone else's now).
-- A function of its KEYS and ARGV (they shadow the script's own): ack.lua run alone is
-- `return ack(KEYS, ARGV)`, and settle_reserve.lua calls it with its share of a combined
-- call's keys and arguments (scripts.py `_load_scripts` composes the texts).
local function ack(KEYS, ARGV)
  local active, records, data, done, leases, stats, unique, waiting, wake_list, delayed, heads, key_lists =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
  local runtimes, handler_counts = KEYS[13], KEYS[14]
  local id, token, worker, done_ttl_ms, result_json, run_ms, result_note, wake_waiter =
    ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local keep_runs, handler = ARGV[9], ARGV[10]
  local now = now_ms()
  local meta = load_meta(records, id)
  if meta.state == 'done' and meta.settled_by == token then return 1 end  -- a retried ack
  if not leased(meta, token) then return 0 end
  redis.call('ZREM', active, id)
  release(leases, worker, id)
  if wake_waiter == '1' and redis.call('ZCARD', waiting) > 0 then wake(wake_list, 1) end
  meta.state = 'done'
  meta.token = nil
  meta.settled_by = token
  meta.finished_at = now
  meta.run_ms = tonumber(run_ms)
  -- kept as the JSON text the worker sent: cjson would turn [] into {} and round numbers
  if result_json ~= '' then meta.result_json = result_json end
  if result_note and result_note ~= '' then meta.result_dropped = result_note end
  redis.call('HSET', records, id, cjson.encode(meta))
  redis.call('ZADD', done, fmt(now), id)
  redis.call('HINCRBY', stats, 'done', 1)
  if handler_counts and tonumber(keep_runs) then  -- a successful run: counted, and its time kept
    redis.call('LPUSH', runtimes, run_ms)
    redis.call('LTRIM', runtimes, 0, tonumber(keep_runs) - 1)
    redis.call('HINCRBY', handler_counts, handler .. '|done', 1)
  end
  -- the key's next job may start now (partitioned queues)
  if meta.key then
    key_release({meta = records, waiting = waiting, delayed = delayed, heads = heads, lists = key_lists,
                 stats = stats}, meta, id, now)
  end
  -- done frees the job's unique key (enqueue.lua), unless a later job already holds it
  -- (pcall: a hash clobbered by something else must never fail a settle)
  if type(meta.unique) == 'string' and redis.pcall('HGET', unique, meta.unique) == id then
    redis.call('HDEL', unique, meta.unique)
  end
  -- Expire done records a couple at a time, so the work keeps pace with acks
  -- without ever making one ack slow.
  expire_done(done, records, data, now - tonumber(done_ttl_ms), 2)
  return 1
end
