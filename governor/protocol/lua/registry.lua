-- The queue registry, read in bounded pieces: any client can add a name, of any length.
-- KEYS: the registry set
-- ARGV: cursor, count, max_bytes
-- -> {next cursor, n, n names of at most max_bytes, the first 64 bytes of each longer one...}
local reply = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local max_bytes = tonumber(ARGV[3])
local names, long = {}, {}
for _, name in ipairs(reply[2]) do
  if #name <= max_bytes then names[#names + 1] = name else long[#long + 1] = string.sub(name, 1, 64) end
end
local out = {reply[1], #names}
for _, name in ipairs(names) do out[#out + 1] = name end
for _, name in ipairs(long) do out[#out + 1] = name end
return out
