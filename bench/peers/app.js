// The tiny HTTP app of bench/run for PM2's cluster mode (which runs Node code
// only): the same response, the same BENCH_STARTUP_MS before it listens, and the
// same "start"/"ready" lines in BENCH_EVENTS as bench/peers/app.py.
'use strict';
const fs = require('fs');
const http = require('http');

const events = process.env.BENCH_EVENTS;
function record(kind) {
  if (events) fs.appendFileSync(events, `${kind} ${process.pid} ${(Date.now() / 1000).toFixed(6)}\n`);
}

record('start');
const hello = Buffer.from(`hello pid=${process.pid}\n`);
const held = [];
setTimeout(() => {
  const server = http.createServer((req, res) => {
    let body = hello;
    if (req.url.startsWith('/grow')) {
      const mb = parseInt(req.url.split('mb=')[1] || '100', 10);
      held.push(Buffer.alloc(mb << 20, 1));
      body = Buffer.from(`grew ${mb} MiB pid=${process.pid}\n`);
    }
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
    res.end(body);
  });
  server.listen(parseInt(process.env.BENCH_PORT, 10), '127.0.0.1', () => record('ready'));
  // PM2 stops a worker with SIGINT: stop accepting, let in-flight requests end.
  process.on('SIGINT', () => server.close(() => process.exit(0)));
}, parseInt(process.env.BENCH_STARTUP_MS || '300', 10));
