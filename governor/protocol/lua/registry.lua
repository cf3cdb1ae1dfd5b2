-- keys: registry
-- args: cursor count max_bytes
-- The queue registry (a set), read in bounded pieces: any client can add a name, of any length.
-- -> {next cursor, n, n names of at most max_bytes, the first 64 bytes of each longer one...}
local registry = KEYS[1]
local cursor, count, max_bytes = ARGV[1], ARGV[2], tonumber(ARGV[3])
local reply = redis.call('SSCAN', registry, cursor, 'COUNT', count)
local names, long = {}, {}
for _, name in ipairs(reply[2]) do
  if #name <= max_bytes then names[#names + 1] = name else long[#long + 1] = string.sub(name, 1, 64) end
end
local out = {reply[1], #names}
for _, name in ipairs(names) do out[#out + 1] = name end
for _, name in ipairs(long) do out[#out + 1] = name end
return out
