// A governor worker in Node (protocol: jsonl). Jobs arrive one JSON line each on the pipe
// named by GOVERNOR_JOBS_FD; each answer is one line on GOVERNOR_RESULTS_FD. stdout and
// stderr stay this program's log (governor logs them line by line), so a stray print is safe.
//
// Jobs run concurrently: with `jobs_per_worker: N` governor sends up to N job lines before
// any answer, and each job is answered as it finishes, in any order (answers carry the job's
// id). A soft time limit names one job: only that job's AbortSignal fires.
const net = require('net');
const readline = require('readline');

// The pipes as non-blocking streams (net.Socket), not fs streams: an fs stream reads a pipe
// on a thread of libuv's pool, and process.exit() would wait for that read to return.
const pipe = (fd, readable) => new net.Socket({ fd: Number(fd), readable, writable: !readable });
const jobs = readline.createInterface({ input: pipe(process.env.GOVERNOR_JOBS_FD, true) });
const results = pipe(process.env.GOVERNOR_RESULTS_FD, false);
const answer = (msg) => results.write(JSON.stringify(msg) + '\n');
const inFlight = new Map(); // job id -> its AbortController

// Each handler gets the job's context (id, attempt, deadline, signal) and then its args.
const sleep = (ms, signal) => new Promise((done, fail) => {
  const timer = setTimeout(() => done(ms), ms);
  signal.addEventListener('abort', () => { clearTimeout(timer); fail(new Error('soft time limit')); });
});
const handlers = {
  'demo:add': (ctx, a, b) => a + b,
  'demo:sleep': (ctx, ms) => sleep(ms, ctx.signal),
  'demo:fail': (ctx, why) => { throw new Error(why); },
  'demo:garbage': () => { results.write('this is not json\n'); return new Promise(() => {}); },
};

async function run(job) {
  const handler = handlers[job.handler];
  const controller = new AbortController();
  inFlight.set(job.id, controller);
  try {
    if (!handler) throw new Error(`no handler ${job.handler}`);
    console.log(`job ${job.id} ${job.handler} attempt ${job.attempt}`);
    const ctx = { id: job.id, attempt: job.attempt, deadline: job.deadline_ms, signal: controller.signal };
    answer({ id: job.id, ok: true, result: await handler(ctx, ...job.args, job.kwargs) });
  } catch (err) {
    answer({ id: job.id, ok: false, error: String(err), retry: Boolean(handler) });
  } finally {
    inFlight.delete(job.id);
  }
}

jobs.on('line', (line) => {
  const job = JSON.parse(line);
  if (job.soft_timeout) {
    console.error(`job ${job.id}: soft time limit reached`);
    inFlight.get(job.id)?.abort();
    return;
  }
  run(job); // not awaited: the next line is read while this job runs
});
jobs.on('close', () => process.exit(0)); // governor closed the pipe: we are done
// stop_signal: governor sends it once no job is in flight (drain and recycle finish them
// first), or when this program must go (it broke the protocol): nothing of ours is half done
process.on('SIGTERM', () => process.exit(0));
