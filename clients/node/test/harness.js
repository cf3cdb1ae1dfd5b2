"use strict";
// What the Node tests run against, all real: a redis-server of their own on a free loopback port,
// a `governor run` master (the repository's Python, GOVERNOR_PYTHON or .venv/bin/python) running
// test/nodetasks.py, and the Python Client itself as the oracle (test/oracle.py).

const { spawn, spawnSync } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const { createClient } = require("redis");

const REPO = path.resolve(__dirname, "..", "..", "..");
const HERE = __dirname;

function python() {
  if (process.env.GOVERNOR_PYTHON) return process.env.GOVERNOR_PYTHON;
  const venv = path.join(REPO, ".venv", "bin", "python");
  return fs.existsSync(venv) ? venv : "python3";
}

function tmpdir(name) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `governor-node-${name}-`));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what} (last: ${last})`);
    await sleep(50);
  }
}

function uid(n = 10) {
  return require("crypto").randomBytes(8).toString("hex").slice(0, n);
}

/** A redis-server child on 127.0.0.1 (``extra``: more of its arguments). */
class RedisServer {
  constructor(...extra) {
    this.extra = extra;
    this.proc = null;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  /** Starts it (again, on the same port and directory, after stop({keep: true})). */
  async start() {
    this.dir = this.dir || tmpdir("redis");
    this.port = this.port || await freePort();
    this.proc = spawn("redis-server", ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "",
      "--appendonly", "no", "--dir", this.dir, ...this.extra], { stdio: "ignore" });
    this.proc.on("error", () => {});
    this.admin = createClient({ url: this.url });
    this.admin.on("error", () => {});
    await waitFor(async () => {
      if (this.proc.exitCode !== null) throw new Error(`redis-server exited with ${this.proc.exitCode}`);
      if (!this.admin.isOpen) await this.admin.connect().catch(() => null);
      return this.admin.isReady && (await this.admin.sendCommand(["PING"])) === "PONG";
    }, 10000, "redis-server to answer");
    return this;
  }

  /** Every key whose name starts with ``prefix`` (or holds ``{prefix:``), sorted. */
  async keysOf(prefix) {
    const all = [...await this.admin.sendCommand(["KEYS", `*${prefix}*`])].map(String);
    return all.filter((k) => k.startsWith(`${prefix}:`) || k.includes(`{${prefix}:`)).sort();
  }

  async stop({ keep = false } = {}) {
    if (this.admin && this.admin.isOpen) await this.admin.disconnect().catch(() => null);
    if (this.proc && this.proc.exitCode === null) {
      const exited = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGTERM");
      await exited;
    }
    if (!keep) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** One `governor run` master with its own config, prefix and state dir, running nodetasks.py. */
class Master {
  constructor(redisUrl, queues, prefix = `n${uid()}`) {
    this.redisUrl = redisUrl;
    this.queues = queues;
    this.prefix = prefix;
    this.dir = tmpdir("master");
    fs.chmodSync(this.dir, 0o755);
    this.records = path.join(this.dir, "records");
    fs.mkdirSync(this.records, { mode: 0o777 });
    fs.chmodSync(this.records, 0o777); // (workers may run as another user)
    fs.copyFileSync(path.join(HERE, "nodetasks.py"), path.join(this.dir, "nodetasks.py"));
    this.stateDir = path.join(this.dir, "state");
    this.config = path.join(this.dir, "governor.yaml");
    const config = { // (JSON is YAML)
      redis: { url: redisUrl, prefix },
      app: { path: ["."], handlers: ["nodetasks:*"] },
      state_dir: this.stateDir,
      shutdown_timeout: "10s",
      defaults: { retry: { max: 2, backoff: "10ms", max_backoff: "50ms" } },
      queues,
    };
    fs.writeFileSync(this.config, JSON.stringify(config, null, 2));
    this.log = path.join(this.dir, "governor.log");
  }

  async start() {
    const log = fs.openSync(this.log, "a");
    const env = { ...process.env, PYTHONUNBUFFERED: "1", TEST_RECORDS: this.records };
    delete env.GOVERNOR_SCRIPTS; // (script mode loads no library: this client needs it)
    this.proc = spawn(python(), ["-m", "governor", "run", "-c", this.config], {
      cwd: this.dir, stdio: ["ignore", log, log], env,
    });
    fs.closeSync(log);
    for (const [queue, q] of Object.entries(this.queues)) {
      await waitFor(async () => {
        if (this.proc.exitCode !== null) throw new Error(`master exited with ${this.proc.exitCode}:\n${this.logText()}`);
        const idle = (await this.status()).pools.filter((p) => p.queue === queue)
          .flatMap((p) => p.workers).filter((w) => w.state === "idle");
        return idle.length === q.concurrency;
      }, 30000, `${q.concurrency} idle worker(s) in ${queue}`).catch((err) => {
        throw new Error(`${err.message}\n${this.logText()}`);
      });
    }
    return this;
  }

  /** The master's `status` over its control socket. */
  status() {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(path.join(this.stateDir, "control.sock"));
      const chunks = [];
      s.setTimeout(2000, () => s.destroy(new Error("status: timed out")));
      s.on("connect", () => s.write("status\n"));
      s.on("data", (d) => chunks.push(d));
      s.on("error", reject);
      s.on("end", () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString()));
        } catch (err) {
          reject(err);
        }
      });
    });
  }

  lines(name) {
    const file = path.join(this.records, name);
    return fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").filter(Boolean) : [];
  }

  logText() {
    return fs.existsSync(this.log) ? fs.readFileSync(this.log, "utf8") : "";
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      const exited = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGINT");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 15000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** JSON for the oracle: NaN and the infinities as {"$float": ...}. */
function toWire(value) {
  return JSON.stringify(value, (k, x) => (typeof x === "number" && !Number.isFinite(x)
    ? { $float: Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf" } : x));
}

/** The Python Client's answers to ``cases`` (test/oracle.py): one {ok}, {error} or {exception} each. */
function oracle(cases, { url, loadLibrary = false } = {}) {
  const proc = spawnSync(python(), [path.join(HERE, "oracle.py")], {
    input: toWire({ url, loadLibrary, cases }), encoding: "utf8", maxBuffer: 256 * 1024 * 1024, cwd: REPO,
  });
  if (proc.status !== 0) throw new Error(`oracle.py failed (${proc.status}): ${proc.stderr}`);
  const answers = JSON.parse(proc.stdout);
  if (answers.length !== cases.length) throw new Error("oracle.py answered a different number of cases");
  return answers;
}

/** What a call did: {ok: value} or {error: message} (an Error), as the oracle answers. */
async function outcome(fn) {
  try {
    return { ok: await fn() };
  } catch (err) {
    return { error: err.message, err };
  }
}

module.exports = { RedisServer, Master, oracle, outcome, waitFor, sleep, uid, tmpdir, python, REPO };
