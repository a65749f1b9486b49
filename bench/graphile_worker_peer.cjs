// One graphile-worker process for bench/broker.py (the peer in its batched mode).
//
//   node graphile_worker_peer.cjs <module dir> <connection string> <concurrency> <local queue size>
//
// Prints "ready" once connected, starts working when a line arrives on stdin, stops when the queue is
// empty and prints one JSON line: {"fetching", "first", "last", "drained", "n"}: Date.now() when its
// local queue started (right before its first batch fetch), when its first and last job ran and when it
// saw the queue empty (polled every 10 ms), and how many jobs it ran. Settings are those of graphile-worker's own performance page: localQueue (jobs fetched
// and locked in a batch, handed out locally) and completeJobBatchDelay / failJobBatchDelay = 0
// (completions of jobs finished in the same tick committed together).
const path = require("path");
const { EventEmitter } = require("events");
const [moduleDir, connectionString, concurrency, localQueueSize] = process.argv.slice(2);
const { run, Logger } = require(path.join(moduleDir, "node_modules", "graphile-worker"));
const { Pool } = require(path.join(moduleDir, "node_modules", "pg"));

let fetching = null; // when its local queue was set up, right before its first batch fetch
let first = null;
let last = null;
let n = 0;
const taskList = {
  noop: async () => {
    const t = Date.now();
    if (first === null) first = t;
    last = t;
    n += 1;
  },
};

async function main() {
  const probe = new Pool({ connectionString, max: 1 });
  await probe.query("select 1");
  process.stdout.write("ready\n");
  await new Promise((resolve) => process.stdin.once("data", resolve));
  const events = new EventEmitter();
  events.on("localQueue:init", () => {
    if (fetching === null) fetching = Date.now();
  });
  const runner = await run({
    taskList,
    events,
    noHandleSignals: true,
    logger: new Logger(() => () => {}),
    preset: {
      worker: {
        connectionString,
        concurrentJobs: Number(concurrency),
        maxPoolSize: Number(concurrency) + 1,
        pollInterval: 1000,
        localQueue: { size: Number(localQueueSize) },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    },
  });
  let drained;
  for (;;) {
    const { rows } = await probe.query("select count(*)::int as n from graphile_worker._private_jobs");
    if (rows[0].n === 0) {
      drained = Date.now(); // every job's completion committed (completed jobs are deleted)
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await runner.stop();
  await probe.end();
  process.stdout.write(JSON.stringify({ fetching, first, last, drained, n }) + "\n", () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
