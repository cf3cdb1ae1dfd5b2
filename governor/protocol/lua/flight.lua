-- A worker running several jobs at once (jobs_per_worker > 1): settles every job that finished
-- and reserves for every free slot, in one call. Composed after ack.lua, fail.lua and
-- reserve.lua (scripts.py `_load_scripts`), whose functions it runs in turn; every rule stays
-- in those files, and each reserve is exactly what reserve.lua does alone for that slot.
-- KEYS: each settle's keys in turn (ack.lua's or fail.lua's), then reserve.lua's
-- ARGV: n (settles), then n times: 'ack' or 'fail', its key count, its argument count;
--       then every settle's arguments in turn; then m (reserves wanted), then m times: the
--       slot's worker id and its token; then reserve.lua's arguments after worker and token
-- Returns {settle reply 1, ..., settle reply n, {reserve reply, ...}}: the reserves stop at the
-- first reply that is not a job (it is the last one), and after a job marked a suspect (it
-- runs alone: the worker starts nothing beside it). Settles go first, so a slot they free (a
-- global_concurrency run) is the reserves' to take. Each part is idempotent for a call re-sent
-- after a lost reply (a settled run answers as before, or 0; a slot's live lease under the
-- same token is handed back), so a re-sent call loses and doubles nothing.
local settles = {ack = ack, fail = fail}
local n = tonumber(ARGV[1])
if not n or n < 0 then return redis.error_reply('flight: expected the number of settles') end
local out, k, a = {}, 0, 2 + 3 * n
for i = 1, n do
  local settle = settles[ARGV[2 + 3 * (i - 1)]]
  local nk, na = tonumber(ARGV[3 + 3 * (i - 1)]), tonumber(ARGV[4 + 3 * (i - 1)])
  if not settle or not nk or not na or k + nk > #KEYS or a + na > #ARGV then
    return redis.error_reply('flight: expected ack or fail, then the settle\'s key and argument counts')
  end
  out[i] = settle({unpack(KEYS, k + 1, k + nk)}, {unpack(ARGV, a, a + na - 1)}, nil)
  k, a = k + nk, a + na
end
local m = tonumber(ARGV[a])
if not m or m < 0 or a + 2 * m > #ARGV then return redis.error_reply('flight: expected the slots to reserve for') end
local rkeys = {unpack(KEYS, k + 1, #KEYS)}
local rest = {unpack(ARGV, a + 2 * m + 1, #ARGV)}
local reserved = {}
for j = 1, m do
  local rargv = {ARGV[a + 2 * j - 1], ARGV[a + 2 * j], unpack(rest)}
  local reply = reserve(rkeys, rargv)
  reserved[j] = reply
  if reply[1] ~= 1 or string.find(reply[4], '"suspect":1', 1, true) then break end
end
out[n + 1] = reserved
return out
