-- keys: settle_key*sum(set_size) reserve_key*
-- args: n k set_size*k (settle set na settle_arg*na)*n m (worker token)*m reserve_arg*
--   keys: each distinct settle key set in turn (set_size keys each), then reserve.lua's
--   n: settles; k: key sets; each settle: 'ack' or 'fail', the number of its key set
--   (1-based), its argument count, its arguments; m: reserves wanted, then each slot's worker
--   id and token; then reserve.lua's arguments after worker and token
-- A worker running several jobs at once (jobs_per_worker > 1): settles every job that finished
-- and reserves for every free slot, in one call. Composed after ack.lua, fail.lua and
-- reserve.lua (scripts.py `_load_scripts`), whose functions it runs in turn; every rule stays
-- in those files, and each reserve is exactly what reserve.lua does alone for that slot.
-- The settles are of one lane, so each distinct set of keys is sent once (an ack's differ only
-- by their handler's run-times list: a few sets for any number of settles).
-- Returns {settle reply 1, ..., settle reply n, {reserve reply, ...}}: the reserves stop at the
-- first reply that is not a job (it is the last one), and after a job marked a suspect (it
-- runs alone: the worker starts nothing beside it). Settles go first, so a slot they free (a
-- global_concurrency run) is the reserves' to take. Each part is idempotent for a call re-sent
-- after a lost reply (a settled run answers as before, or 0; a slot's live lease under the
-- same token is handed back), so a re-sent call loses and doubles nothing.
local n, k = tonumber(ARGV[1]), tonumber(ARGV[2])
if not n or not k or n < 0 or k < 0 or 2 + k > #ARGV then
  return redis.error_reply('flight: expected the number of settles and of key sets')
end
local sets, at = {}, 0
for i = 1, k do
  local set_size = tonumber(ARGV[2 + i])
  if not set_size or at + set_size > #KEYS then return redis.error_reply('flight: a key set past KEYS') end
  sets[i] = {unpack(KEYS, at + 1, at + set_size)}
  at = at + set_size
end
local settles = {ack = ack, fail = fail}
local out, a = {}, 3 + k
for i = 1, n do
  local settle, set, na = settles[ARGV[a]], sets[tonumber(ARGV[a + 1])], tonumber(ARGV[a + 2])
  if not settle or not set or not na or a + 2 + na > #ARGV then
    return redis.error_reply('flight: expected ack or fail, its key set and its argument count')
  end
  out[i] = settle(set, {unpack(ARGV, a + 3, a + 2 + na)}, nil)
  a = a + 3 + na
end
local m = tonumber(ARGV[a])
if not m or m < 0 or a + 2 * m > #ARGV then return redis.error_reply('flight: expected the slots to reserve for') end
local rkeys = {unpack(KEYS, at + 1, #KEYS)}
local rest = {unpack(ARGV, a + 2 * m + 1, #ARGV)}
local reserved = {}
for j = 1, m do
  local worker, token = ARGV[a + 2 * j - 1], ARGV[a + 2 * j]
  local rargv = {worker, token, unpack(rest)}
  local reply = reserve(rkeys, rargv)
  reserved[j] = reply
  if reply[1] ~= 1 or string.find(reply[4], '"suspect":1', 1, true) then break end
end
out[n + 1] = reserved
return out
