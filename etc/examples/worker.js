// A governor worker in Node (protocol: jsonl). Jobs arrive one JSON line each on the pipe
// named by GOVERNOR_JOBS_FD; each answer is one line on GOVERNOR_RESULTS_FD. stdout and
// stderr stay this program's log (governor logs them line by line), so a stray print is safe.
const fs = require('fs');
const readline = require('readline');
const jobs = readline.createInterface({ input: fs.createReadStream(null, { fd: Number(process.env.GOVERNOR_JOBS_FD) }) });
const results = fs.createWriteStream(null, { fd: Number(process.env.GOVERNOR_RESULTS_FD) });
const answer = (msg) => results.write(JSON.stringify(msg) + '\n');

const handlers = {
  'demo:add': (a, b) => a + b,
  'demo:sleep': (ms) => new Promise((done) => setTimeout(() => done(ms), ms)),
  'demo:fail': (why) => { throw new Error(why); },
  'demo:garbage': () => { results.write('this is not json\n'); return new Promise(() => {}); },
};

jobs.on('line', async (line) => {
  const job = JSON.parse(line);
  if (job.soft_timeout) { console.error(`job ${job.id}: soft time limit reached`); return; }
  const handler = handlers[job.handler];
  try {
    if (!handler) throw new Error(`no handler ${job.handler}`);
    console.log(`job ${job.id} ${job.handler} attempt ${job.attempt}`);
    answer({ id: job.id, ok: true, result: await handler(...job.args, job.kwargs) });
  } catch (err) {
    answer({ id: job.id, ok: false, error: String(err), retry: Boolean(handler) });
  }
});
jobs.on('close', () => process.exit(0)); // governor closed the pipe: we are done
process.on('SIGTERM', () => process.exit(0)); // stop_signal: nothing of ours is half done
