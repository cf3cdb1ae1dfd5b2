-- The prelude, part 1 of 6: the clock and number formatting.
-- The prelude is the files of lua/lib/ one after the other, in the order library.py's PRELUDE
-- names them (clock, records, leases, schedule, limits, ordering): prepended to every script, and
-- the top of the function library. A file may use what an earlier one defines, never a later one.
-- Holds: now_ms (Redis's clock, read once per run: now_cached) and fmt (the '%.0f' rule).
--
-- Every key a script touches is passed in KEYS; all of a queue's keys share the hash tag
-- {prefix:queue} (a partition's: {prefix:queue:N}).
-- Times are Redis server milliseconds, so hosts with skewed clocks agree.
-- Numbers are handed to redis.call as '%.0f' strings: Lua's default number
-- formatting keeps only 14 digits, which would corrupt scores.
-- Read once per script run: Redis's clock, shared by every host; a run that settles a job and
-- reserves the next (settle_reserve.lua) sees one instant, and pays for TIME once. A function
-- of the library runs many times in one load: library.py's entry() resets now_cached per call.
local now_cached
local function now_ms()
  if not now_cached then
    local t = redis.call('TIME')
    now_cached = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_cached
end

local function fmt(n)
  return string.format('%.0f', n)
end
