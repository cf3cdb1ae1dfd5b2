-- keys: settle_key*nk reserve_key*
-- args: settle nk na settle_arg*na reserve_arg*
--   settle: 'ack' or 'fail'; nk: how many of the keys are the settle's (ack.lua's or fail.lua's
--   keys), the rest are reserve.lua's; na: how many of the arguments after these three are the
--   settle's arguments, the rest are reserve.lua's
-- Settles a worker's last job and reserves its next in one call: one round trip, one script.
-- Composed after ack.lua, fail.lua and reserve.lua (scripts.py `_load_scripts`), whose functions
-- it runs in turn on its share of the keys and arguments; every rule stays in those files.
-- Returns {the settle's reply, the reserve's reply}: exactly what each script returns alone.
-- The settle goes first, so a job it puts back with no delay may be the one reserved, and a
-- stale token fences only the settle (0), never the reserve. Both halves are idempotent for a
-- call re-sent after a lost reply (a settled run answers as before; a worker's live lease
-- under the same token is handed back), so a re-sent call loses and doubles nothing.
local settles = {ack = ack, fail = fail}
local settle, nk, na = settles[ARGV[1]], tonumber(ARGV[2]), tonumber(ARGV[3])
if not settle or not nk or not na or nk < 0 or nk > #KEYS or na < 0 or 3 + na > #ARGV then
  return redis.error_reply('settle_reserve: expected ack or fail, then the settle\'s key and argument counts')
end
local reserve_argv = {unpack(ARGV, 4 + na, #ARGV)}
local settled = settle({unpack(KEYS, 1, nk)}, {unpack(ARGV, 4, 3 + na)}, reserve_argv)
return {settled, reserve({unpack(KEYS, nk + 1, #KEYS)}, reserve_argv)}
