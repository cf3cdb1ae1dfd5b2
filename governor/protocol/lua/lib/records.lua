-- The prelude, part 2 of 6: job records and ids.
-- Holds: finite (no inf or nan in a decoded record), valid_id (the id rule, also for unique
-- and ordering keys), load_meta (a job's record, or a stand-in saying why it is malformed).

-- True when every number in the (decoded) value is finite. cjson decodes 1e999
-- to inf and then refuses to encode it, which would fail a script after its
-- first write; a record holding one is treated as malformed instead.
local function finite(v, depth)
  local t = type(v)
  if t == 'number' then return v == v and v ~= math.huge and v ~= -math.huge end
  if t ~= 'table' then return true end
  if depth > 32 then return false end
  for k, x in pairs(v) do
    if not finite(x, depth + 1) or not finite(k, depth + 1) then return false end
  end
  return true
end

-- A job id is 1-200 printable ASCII characters other than space (0x21-0x7E):
-- no whitespace or control characters to confuse a parser, a log line or a terminal.
local function valid_id(id)
  return #id >= 1 and #id <= 200 and not string.find(id, '[^\33-\126]')
end

local function load_meta(meta_key, id)
  local raw = redis.call('HGET', meta_key, id)
  local why = 'no record'
  if raw then
    local ok, meta = pcall(cjson.decode, raw)
    if ok and type(meta) == 'table' and finite(meta, 0) then return meta end
    why = ok and (type(meta) == 'table' and 'a number in it is not finite' or 'not a JSON object')
      or 'not valid JSON'
  end
  -- A record written by something other than governor: keep the id so the
  -- worker can dead-letter it with a reason instead of losing it.
  return {id = id, malformed = why}
end
