// Test-only: an HTTP proxy on 127.0.0.1 at a free port in front of an upstream server on
// loopback, failing a share of the requests it passes on, the way networks and overloaded stores
// do: dropped connections, 503 and 429, bodies cut short (with the connection closed, or a 206
// whose Content-Length is shorter than its Content-Range), and stalls before or inside a body.
// GET /__stats answers what it has seen (requests, most at once, connections opened). Prints its
// port on a line of its own; exits when its stdin closes.
//   node fault_proxy.js UPSTREAM_PORT SEED RATE FAULTS
// RATE is the share of requests that fail (0..1), FAULTS a comma-separated subset of
// drop,503,429,short,short206,stall,stallbody.
const http = require('http');

const [upstreamPort, seedArg, rateArg, faultsArg] = process.argv.slice(2);
const rate = Number(rateArg);
const faults = faultsArg.split(',');
let seed = Number(seedArg) >>> 0;
// mulberry32: a seeded generator, so a failing run can be repeated.
function random() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const agent = new http.Agent({ keepAlive: true });

// Forwards the request and hands the upstream response, body buffered, to `reply`.
function forward(req, reply) {
  const up = http.request(
    { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent },
    (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => reply(res, Buffer.concat(chunks)));
    },
  );
  up.on('error', () => req.socket.destroy());
  req.pipe(up);
}

function half(body) {
  return body.subarray(0, Math.floor(body.length / 2));
}

const actions = {
  pass: (req, res) => forward(req, (up, body) => {
    res.writeHead(up.statusCode, up.headers);
    res.end(body);
  }),
  drop: (req) => req.socket.destroy(),
  503: (req, res) => res.writeHead(503, { 'Content-Type': 'text/plain' }).end('overloaded\n'),
  429: (req, res) => res.writeHead(429, { 'Retry-After': '0' }).end('slow down\n'),
  short: (req, res) => forward(req, (up, body) => {
    res.writeHead(up.statusCode, up.headers);
    res.write(half(body));
    setTimeout(() => req.socket.destroy(), 10);
  }),
  // Only a 206 is cut: any other answer (a HEAD's above all, whose Content-Length is the object's
  // size over an empty body) passes unchanged.
  short206: (req, res) => forward(req, (up, body) => {
    const cut = up.statusCode === 206 ? half(body) : body;
    res.writeHead(up.statusCode, up.statusCode === 206 ? { ...up.headers, 'content-length': String(cut.length) } : up.headers);
    res.end(cut);
  }),
  stall: () => {},
  stallbody: (req, res) => forward(req, (up, body) => {
    res.writeHead(up.statusCode, up.headers);
    res.write(half(body));
  }),
};

// What the test asks of the client: requests in flight at once, and connections opened.
const seen = { requests: 0, active: 0, maxActive: 0, connections: 0 };

const server = http.createServer((req, res) => {
  if (req.url === '/__stats') return res.end(JSON.stringify(seen));
  seen.requests++;
  seen.maxActive = Math.max(seen.maxActive, ++seen.active);
  res.on('close', () => seen.active--);
  const fault = random() < rate ? faults[Math.floor(random() * faults.length)] : 'pass';
  actions[fault](req, res);
});
server.on('connection', () => seen.connections++);
server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
