-- keys: state_set records data queued?
-- args: offset want budget handler text what
-- Lists jobs of one state of a lane, newest first, filtered on the server in bounded steps.
--   state_set: the state's sorted set (waiting, delayed, active, dead or done); records: the
--   job records (QueueKeys.meta); queued, for waiting (optional): the index of the jobs queued
--   behind their key's head (lib/ordering.lua), which `status` counts as waiting too: listed
--   first (they are the newer), then the heads
--   offset: the rank from the newest to start at; want: how many matches at most; budget: how
--   many entries to look at at most (the bound on this call's work); handler: '' for any;
--   text: '' for any, else a case-insensitive substring of the arguments or of an error;
--   what: what to return of each: 'full' (record and payload), 'record', or 'ids'
-- Returns {next offset (-1: the end was reached), id, record, payload, id, record, ...}
-- (record and payload '' when not asked for).
local state_set, records, data, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local offset, want, budget, handler, text, what =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], string.lower(ARGV[5]), ARGV[6] or 'full'
-- the ids at ranks offset .. offset + budget - 1 of the sets one after the other, newest first
local sets = queued and {queued, state_set} or {state_set}
local ids, skip, indexed = {}, offset, {}
for _, set in ipairs(sets) do
  if #ids < budget then
    local n = redis.call('ZCARD', set)
    if skip < n then
      for _, id in ipairs(redis.call('ZREVRANGE', set, skip, skip + budget - #ids - 1)) do
        ids[#ids + 1] = id
        if set == queued then indexed[id] = true end
      end
      skip = 0
    else
      skip = skip - n
    end
  end
end
local out = {0}
local found, i = 0, 0
for _, id in ipairs(ids) do
  i = i + 1
  local raw = redis.call('HGET', records, id)
  if raw then
    local payload = (text ~= '' or what == 'full') and (redis.call('HGET', data, id) or '') or ''
    local ok = true
    if handler ~= '' or indexed[id] then
      local okd, meta = pcall(cjson.decode, raw)
      ok = okd and type(meta) == 'table' and (handler == '' or meta.handler == handler)
        -- (an index entry a version that did not keep the index left stale is not waiting)
        and (not indexed[id] or meta.state == 'queued')
    end
    if ok and text ~= '' then
      ok = string.find(string.lower(payload), text, 1, true) ~= nil
        or string.find(string.lower(raw), text, 1, true) ~= nil
    end
    if ok then
      out[#out + 1] = id
      out[#out + 1] = what ~= 'ids' and raw or ''
      out[#out + 1] = what == 'full' and payload or ''
      found = found + 1
      if found >= want then break end
    end
  end
end
if i < #ids or #ids == budget then out[1] = offset + i else out[1] = -1 end
return out
