// Types of governor-client (index.js): the producer side of governor's Redis wire API.

/** A duration: seconds, or a string such as "250ms", "30s", "2m", "1h", "1d". */
export type Duration = number | string;

export interface JobOptions {
  args?: unknown[];
  kwargs?: Record<string, unknown>;
  /** 0-100, lower runs first (default 50). */
  priority?: number | null;
  /** 0 to 3650 days. */
  delay?: Duration | null;
  /** 0.001s to 365 days: the job's hard time limit. */
  timeout?: Duration | null;
  /** 0 to 1,000,000 retries after the first run. */
  maxRetries?: number | null;
  /** 1-200 printable ASCII characters without spaces; an existing id is not queued twice. */
  jobId?: string | null;
  /** While a job of the queue holding this key is waiting, delayed or active, nothing is queued. */
  unique?: string | null;
  /** The ordering key of a partitioned queue: a key's jobs run one at a time, in order. */
  key?: string | null;
}

export interface Job extends JobOptions {
  /** module:function */
  handler: string;
}

export interface ClientOptions {
  /** Key prefix (redis.prefix in governor's config); default "governor". */
  prefix?: string;
  /** Largest payload in bytes (default 1 MiB). */
  maxPayload?: number;
  /** Wait for replicas after every enqueue (redis.wait); fewer throw NotReplicated. */
  wait?: { replicas?: number; timeout?: Duration } | null;
  /** queue -> its partition count (the config's partitions:), registered as a master would. */
  partitions?: Record<string, number> | null;
}

export interface FromUrlOptions extends ClientOptions {
  /** More options for the redis package's createClient (e.g. socket.tls, password). */
  redis?: Record<string, unknown>;
}

/** A job's record, as governor's Python Client.job() returns it. */
export interface JobRecord {
  id: string;
  queue: string;
  handler: string;
  state: "waiting" | "delayed" | "active" | "dead" | "done" | "queued" | "unknown" | string;
  attempts: number;
  priority: number;
  result?: unknown;
  errors: Array<Record<string, unknown>>;
  args: unknown[];
  kwargs: Record<string, unknown>;
  enqueued_at?: number;
  started_at?: number;
  finished_at?: number;
  due_at?: number;
  [field: string]: unknown;
}

export interface Counts {
  waiting: number;
  delayed: number;
  active: number;
  dead: number;
  done: number;
  paused: boolean;
  enqueued_total: number;
  retried_total: number;
  done_total: number;
  dead_total: number;
  throttled_total: number;
  throttled_jobs_total: number;
  /** Only for a queue of more than one partition. */
  partitions?: number;
}

export class Client {
  /** Over a client of the redis package (connected or not); close() leaves it open. */
  constructor(redis: unknown, options?: ClientOptions);
  /** redis://[user:password@]host:port/db, rediss://..., or unix:///path?db=N. */
  static fromUrl(url: string, options?: FromUrlOptions): Client;
  readonly prefix: string;
  enqueue(queue: string, handler: string, options?: JobOptions): Promise<string>;
  enqueueMany(queue: string, jobs: Iterable<Job>): Promise<string[]>;
  job(id: string, queue?: string | null): Promise<JobRecord | null>;
  counts(queue: string): Promise<Counts>;
  partitions(queue: string): Promise<number | null>;
  queues(): Promise<string[]>;
  close(): Promise<void>;
}

/** Invalid input: the message is governor's Python Client's. Nothing was written. */
export class ValidationError extends Error {}

/** Queued on the primary, but fewer replicas than asked confirmed it in time. */
export class NotReplicated extends Error {
  acked: number;
  wanted: number;
  ids: string[];
}

/** Redis cannot run governor's functions: GOVERNOR_NO_LIBRARY (no master has loaded the library
 *  on it yet) or GOVERNOR_NO_FUNCTIONS (Redis < 7). */
export class GovernorUnavailable extends Error {
  code: "GOVERNOR_NO_LIBRARY" | "GOVERNOR_NO_FUNCTIONS";
}

/** The partition of an ordering key: CRC-32 of its UTF-8 bytes modulo the count. */
export function partitionOf(key: string, partitions: number): number;
/** Seconds from a duration as governor reads it. */
export function parseDuration(value: Duration): number;
export const PROTOCOL: number;
export const LIBRARY: string;
