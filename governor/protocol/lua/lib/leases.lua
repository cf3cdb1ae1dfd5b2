-- The prelude, part 3 of 6: leases and fencing.
-- Holds: parse_lease (a lease entry "<job id> <token>"), leased (the token check that fences
-- every settle), release (a worker's lease entry forgotten), next_fence (a run's fencing token).

-- A lease entry is "<job id> <token>"; the token never holds a space, so the
-- entry is split at its last space, whatever characters the id holds.
local function parse_lease(held)
  if not held then return nil, nil end
  return string.match(held, '^(.*) ([^ ]+)$')
end

-- Forgets a worker's lease entry, but only if it still names this job.
local function release(leases_key, worker, id)
  local held_id = parse_lease(redis.call('HGET', leases_key, worker))
  if held_id == id then
    redis.call('HDEL', leases_key, worker)
  end
end

-- The lease check that fences every settle: only the holder of the token
-- may move an active job on.
local function leased(meta, token)
  return meta.state == 'active' and meta.token == token
end

-- A run's fencing token. A queue of its own, or a partition on one Redis (`queue_key`: the
-- queue's counter, passed although it is in another slot, which only a Cluster refuses): one
-- INCR for the whole queue, so tokens grow strictly in the order jobs are reserved, across
-- every partition. The partition's own counter (`lane_key`) is where older versions counted,
-- and where the Cluster form below keeps its count: the queue's counter first jumps past it.
-- `partitions`: the queue's partition count (0: not known, then only older counters are small).
-- On a Cluster (no queue_key: each partition is a slot of its own, none reaches another's) the token
-- is hi * partitions + partition, hi = max(the partition's last hi + 1, Redis time since 2024 in
-- units of partitions / 31 ms): strictly growing within a partition, and across partitions as
-- their shards' clocks go. Under 1e14 until 2124, so exact in a record (cjson keeps 14 digits).
local function next_fence(lane_key, queue_key, partition, partitions)
  if partition < 0 then return redis.call('INCR', lane_key) end
  if queue_key then
    local t = redis.call('INCR', queue_key)
    local old = redis.call('GET', lane_key)
    if old then
      -- counted here before (an older version, or a Cluster): past every token handed out then
      local hi = tonumber(old) or 0
      local floor = (hi + 1) * math.max(1, partitions)  -- (a Cluster's hi * partitions + partition)
      if t <= floor then
        t = floor + 1
        redis.call('SET', queue_key, fmt(t))
      end
      -- (kept: an older master still counting there in a rolling upgrade goes on from it)
    end
    return t
  end
  partitions = math.max(1, partitions)
  local time = redis.call('TIME')
  local us = (tonumber(time[1]) - 1704067200) * 1e6 + tonumber(time[2])  -- since 2024-01-01
  local units = math.floor(us * 31 / (partitions * 1000))  -- (rounding keeps it monotonic)
  local hi = math.max((tonumber(redis.call('GET', lane_key) or '0') or 0) + 1, units)
  redis.call('SET', lane_key, fmt(hi))
  return hi * partitions + partition
end
