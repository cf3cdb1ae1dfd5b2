-- keys: active records waiting delayed dead leases wake_list stats unique heads key_lists
--       handler_counts?
-- args: id token worker error_json mode backoff_ms reason default_max_retries
--   records: the job records (QueueKeys.meta); key_lists: the prefix of each ordering key's
--   list; handler_counts: the lane's per-handler counts (handlers.lua)
-- mode 'retry': retry after backoff_ms while attempts remain, else dead-letter.
-- mode 'dead': dead-letter now (bad payload, handler not allowed).
-- mode 'requeue': back to the front of waiting, the attempt not counted
--   (the job did nothing wrong: its worker was stopped under it).
-- mode 'suspect': as 'requeue', the record marked a suspect: it ran beside others in a worker
--   that was killed (memory.hard, a crash) and may be the cause; it runs alone next time.
-- mode 'throttle': back as delayed by backoff_ms, the attempt not counted, the record
--   counting it as `throttled` (its handler met an exhausted governor.limit()).
-- Returns 0 lease lost, 1 requeued, 2 retry scheduled, 3 dead-lettered.
-- A function of its KEYS and ARGV (they shadow the script's own): fail.lua run alone is
-- `return fail(KEYS, ARGV)`, and settle_reserve.lua calls it with its share of a combined
-- call's keys and arguments (scripts.py `_load_scripts` composes the texts).
-- `nxt`: the ARGV (worker, token, ...) of the reserve that follows in one call
-- (settle_reserve.lua), else nil. The job this settle put back at once may be active again,
-- leased by that very reserve: re-sent, the call is still a retried settle.
local NEVER_RAN = {unknown_handler = true, not_allowed = true, import_error = true, malformed = true}
local function fail(KEYS, ARGV, nxt)
  local active, records, waiting, delayed, dead, leases, wake_list, stats, unique, heads, key_lists =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
  local handler_counts = KEYS[12]
  local id, token, worker, error_json, mode, backoff_ms, reason, default_max_retries =
    ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local now = now_ms()
  local meta = load_meta(records, id)
  -- a retried settle (a master may settle a run too, with its token: a reclaimed lease)
  local again = nxt and meta.worker == nxt[1] and leased(meta, nxt[2])
  if meta.settled_by == token and (meta.state ~= 'active' or again) then
    return tonumber(meta.settled_code) or 0
  end
  -- decode before the first write: a script that fails after writing leaves its writes
  local entry = nil
  if error_json ~= '' then
    local ok, decoded = pcall(cjson.decode, error_json)
    entry = (ok and type(decoded) == 'table') and decoded or {error = error_json}
  end
  if not leased(meta, token) then
    -- A run stopped because its lease was lost (another host has the job now): not ours to
    -- settle, but the job's history says what happened to that run.
    if reason == 'lease_lost' and entry and not meta.malformed then
      entry.at = now
      if type(meta.errors) ~= 'table' then meta.errors = {} end
      table.insert(meta.errors, entry)
      redis.call('HSET', records, id, cjson.encode(meta))
    end
    return 0
  end
  redis.call('ZREM', active, id)
  release(leases, worker, id)
  meta.token = nil
  meta.settled_by = token
  if entry then
    entry.at = now
    if type(meta.errors) ~= 'table' then meta.errors = {} end
    table.insert(meta.errors, entry)
  end
  local max_retries = tonumber(meta.max_retries) or tonumber(default_max_retries)
  local result
  if mode == 'requeue' or mode == 'throttle' or mode == 'suspect' then
    if mode == 'suspect' then meta.suspect = 1 end
    meta.attempts = math.max(0, (tonumber(meta.attempts) or 1) - 1)
    local delay = 0
    if mode == 'throttle' then
      delay = tonumber(backoff_ms)
      meta.throttled = (tonumber(meta.throttled) or 0) + 1
      meta.retry_after = delay / 1000
      redis.call('HINCRBY', stats, 'throttled_jobs', 1)
    end
    schedule(meta, id, now, delay, waiting, delayed)
    wake(wake_list, 1)
    result = 1
  elseif mode == 'retry' and (tonumber(meta.attempts) or 1) <= max_retries then
    schedule(meta, id, now, tonumber(backoff_ms), waiting, delayed)
    wake(wake_list, 1)
    redis.call('HINCRBY', stats, 'retried', 1)
    result = 2
  else
    meta.state = 'dead'
    meta.reason = reason
    meta.finished_at = now
    redis.call('ZADD', dead, fmt(now), id)
    redis.call('HINCRBY', stats, 'dead', 1)
    -- dead ends the job's hold on its key: the key's next job may start (partitioned queues)
    if meta.key then
      key_release({meta = records, waiting = waiting, delayed = delayed, heads = heads, lists = key_lists,
                   stats = stats}, meta, id, now)
    end
    -- the run's slot is free: a worker waiting for it (global_concurrency) may start the next
    if redis.call('ZCARD', waiting) > 0 then wake(wake_list, 1) end
    -- dead frees the job's unique key (enqueue.lua), unless a later job already holds it
    -- (pcall: a hash clobbered by something else must never fail a settle)
    if type(meta.unique) == 'string' and redis.pcall('HGET', unique, meta.unique) == id then
      redis.call('HDEL', unique, meta.unique)
    end
    result = 3
  end
  meta.settled_code = result
  redis.call('HSET', records, id, cjson.encode(meta))
  -- per handler: a failed run, and why (a job put back unharmed is not a failure)
  -- (a handler that never ran, named by whoever enqueued it, is counted as '?': the names
  -- kept are the allowlist's, not any producer's)
  if handler_counts and result ~= 1 then
    local h = type(meta.handler) == 'string' and not NEVER_RAN[reason] and meta.handler or '?'
    redis.call('HINCRBY', handler_counts, h .. '|failed', 1)
    redis.call('HINCRBY', handler_counts, h .. '|' .. reason, 1)
    if result == 3 then redis.call('HINCRBY', handler_counts, h .. '|dead', 1) end
  end
  return result
end
