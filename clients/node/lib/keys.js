"use strict";
// A queue's keys in Redis, as governor/protocol/keys.py names them: every key of a queue under
// the hash tag {prefix:queue}, of a partition under {prefix:queue:N}; and the partition of an
// ordering key, as governor computes it (records.py partition_of).

class QueueKeys {
  constructor(prefix, queue, partition = null) {
    this.prefix = prefix;
    this.queue = queue;
    this.partition = partition;
  }

  key(part) {
    return this.partition === null
      ? `{${this.prefix}:${this.queue}}:${part}`
      : `{${this.prefix}:${this.queue}:${this.partition}}:${part}`;
  }

  /** The queue's own slot: its partition leases, hint lists and the partitions marker. */
  home() {
    return new QueueKeys(this.prefix, this.queue);
  }

  part(n) {
    return new QueueKeys(this.prefix, this.queue, n);
  }

  get partitionsKey() { return this.home().key("partitions"); }
  get waiting() { return this.key("waiting"); }
  get delayed() { return this.key("delayed"); }
  get active() { return this.key("active"); }
  get dead() { return this.key("dead"); }
  get done() { return this.key("done"); }
  get meta() { return this.key("meta"); }
  get data() { return this.key("data"); }
  get stats() { return this.key("stats"); }
  get paused() { return this.key("paused"); }

  /** enqueue's keys (lua/enqueue.lua), in its order; ARGV: n, then per job id, payload, record, delay_ms. */
  enqueue(jobs) {
    const args = [jobs.length];
    for (const job of jobs) args.push(job.id, job.payload, job.meta, job.delayMs);
    return {
      fn: "enqueue",
      keys: [this.meta, this.data, this.waiting, this.delayed, this.key("seq"), this.key("wake"), this.stats,
        this.key("unique"), this.key("heads"), this.key("key:"), this.key("partitions")],
      args,
    };
  }

  /** hint (lua/hint.lua): tells each partition's holder how many of its keys have jobs ready. */
  hint(counts) {
    const h = this.home();
    const args = [];
    for (const [p, n] of counts) args.push(p, n);
    return { fn: "hint", keys: [h.key("holders"), h.key("hint:"), h.key("touched:")], args };
  }
}

const CRC_TABLE = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3, as zlib computes it) of bytes. */
function crc32(bytes) {
  let c = -1;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** The partition of an ordering key: CRC-32 of its UTF-8 bytes, modulo the partition count. */
function partitionOf(key, partitions) {
  return crc32(Buffer.from(key, "utf8")) % partitions;
}

module.exports = { QueueKeys, crc32, partitionOf };
