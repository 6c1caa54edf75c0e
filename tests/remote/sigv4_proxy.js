// Test-only: an HTTP proxy on 127.0.0.1 at a free port in front of an S3 server on loopback that
// checks every request's AWS Signature Version 4 (Authorization header) the way a real store
// does, since s3rver accepts any signature. A request that verifies is passed on unchanged and
// its answer streamed back; any other gets the store's 403 (or 400) with an S3 error document,
// SignatureDoesNotMatch carrying the canonical request and string to sign it expected (also
// written to stderr). GET /__stats answers what it has seen. Prints its port on a line of its
// own; exits when its stdin closes.
//   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… node sigv4_proxy.js UPSTREAM_PORT REGION
//   node sigv4_proxy.js --self-test   (the AWS documentation's S3 examples, then tampered ones)
// Written from the AWS documentation (S3 API Reference, "Signature Calculations for the
// Authorization Header: Transferring Payload in a Single Chunk"; IAM User Guide, "Create a signed
// AWS API request"). Like S3 and MinIO, the canonical URI and query are rebuilt from what was
// received: decoded, then encoded again (every byte but A-Z a-z 0-9 - . _ ~, and '/' in the path);
// the path is encoded once, not twice as other services do. Presigned URLs, chunked (STREAMING-*)
// payloads and the payload hash of a body are not checked: the client under test sends neither.
const http = require('http');
const crypto = require('crypto');

const ALGORITHM = 'AWS4-HMAC-SHA256';
const MAX_SKEW_MS = 15 * 60 * 1000;

const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();

// The bytes `text` stands for, every %XX decoded; null for a '%' without two hex digits.
function uriDecode(text) {
  const bytes = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== '%') {
      bytes.push(...Buffer.from(text[i], 'utf8'));
      continue;
    }
    const hex = text.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null;
    bytes.push(parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(bytes);
}

// SigV4's URI encoding: unreserved characters as they are, every other byte as %XX (upper case).
function uriEncode(bytes, keepSlash) {
  let out = '';
  for (const b of bytes) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-._~]/.test(c) || (keepSlash && c === '/')) out += c;
    else out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

// Path and query of a request target, each re-encoded canonically; null if one cannot be decoded.
function canonicalTarget(target) {
  const q = target.indexOf('?');
  const path = uriDecode(q < 0 ? target : target.slice(0, q));
  if (path === null) return null;
  const params = [];
  for (const part of (q < 0 ? '' : target.slice(q + 1)).split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = uriDecode(eq < 0 ? part : part.slice(0, eq));
    const value = uriDecode(eq < 0 ? '' : part.slice(eq + 1));
    if (name === null || value === null) return null;
    params.push([uriEncode(name, false), uriEncode(value, false)]);
  }
  // Sorted by name, then value, in code-unit order: all ASCII once encoded, so byte order.
  params.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return {
    uri: uriEncode(path, true) || '/',
    query: params.map(([n, v]) => `${n}=${v}`).join('&'),
    hasQuery: params.length > 0,
  };
}

// Header name (lower case) → its values in order, each trimmed with inner blank runs made one.
function headerMap(rawHeaders) {
  const map = new Map();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase();
    if (!map.has(name)) map.set(name, []);
    map.get(name).push(rawHeaders[i + 1].trim().replace(/\s+/g, ' '));
  }
  return map;
}

function reject(status, code, message, detail = {}) {
  return { ok: false, status, code, message, detail };
}

// Checks `req` ({method, url, rawHeaders}) against `account` ({keyId, secret, region, now}).
// Returns {ok: true, ...} or the error a store would answer, with what was expected.
function verify(req, account) {
  const headers = headerMap(req.rawHeaders);
  const auth = (headers.get('authorization') || [])[0];
  if (!auth) return reject(403, 'AccessDenied', 'Access Denied (no Authorization header)');
  if (!auth.startsWith(`${ALGORITHM} `))
    return reject(400, 'InvalidRequest', `Unsupported Authorization type (not ${ALGORITHM})`);
  const fields = {};
  for (const item of auth.slice(ALGORITHM.length + 1).split(',')) {
    const eq = item.indexOf('=');
    if (eq > 0) fields[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  const { Credential: credential, SignedHeaders: signedList, Signature: signature } = fields;
  if (!credential || !signedList || !/^[0-9a-f]{64}$/.test(signature || ''))
    return reject(400, 'AuthorizationHeaderMalformed', 'The authorization header is malformed');
  const [keyId, date, region, service, terminal, ...more] = credential.split('/');
  if (keyId !== account.keyId)
    return reject(403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.');
  if (more.length || service !== 's3' || terminal !== 'aws4_request' || !/^\d{8}$/.test(date))
    return reject(400, 'AuthorizationHeaderMalformed', `The credential scope '${credential}' is malformed`);
  if (region !== account.region)
    return reject(400, 'AuthorizationHeaderMalformed',
      `The authorization header is malformed; the region '${region}' is wrong; expecting '${account.region}'`);

  const amzDate = (headers.get('x-amz-date') || [])[0] || '';
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
  if (!m) return reject(403, 'AccessDenied', 'AWS authentication requires a valid x-amz-date header');
  if (amzDate.slice(0, 8) !== date)
    return reject(403, 'SignatureDoesNotMatch', `The scope's date ${date} is not that of x-amz-date ${amzDate}`);
  const sent = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
  if (Math.abs(sent - account.now) > MAX_SKEW_MS)
    return reject(403, 'RequestTimeTooSkewed',
      'The difference between the request time and the current time is too large.');
  const payloadHash = (headers.get('x-amz-content-sha256') || [])[0];
  if (!payloadHash)
    return reject(400, 'InvalidRequest', 'Missing required header for this request: x-amz-content-sha256');
  if (payloadHash !== 'UNSIGNED-PAYLOAD' && !/^[0-9a-f]{64}$/.test(payloadHash))
    return reject(400, 'InvalidArgument', `x-amz-content-sha256 '${payloadHash}' is not checked by this proxy`);

  const signed = signedList.split(';');
  if (!signed.includes('host'))
    return reject(400, 'AuthorizationHeaderMalformed', 'SignedHeaders must include host');
  // Every x-amz-* header sent must be signed; the payload hash may go unsigned (AWS's PUT example).
  const unsigned = [...headers.keys()].filter(
    (h) => h.startsWith('x-amz-') && h !== 'x-amz-content-sha256' && !signed.includes(h));
  if (unsigned.length)
    return reject(403, 'AccessDenied', `There were headers present in the request which were not signed: ${unsigned}`);
  const absent = signed.filter((h) => !headers.has(h));
  if (absent.length) return reject(403, 'SignatureDoesNotMatch', `Signed headers not in the request: ${absent}`);

  const target = canonicalTarget(req.url);
  if (!target) return reject(400, 'InvalidURI', 'Could not parse the specified URI.');
  const canonicalRequest = [
    req.method,
    target.uri,
    target.query,
    ...signed.map((h) => `${h}:${headers.get(h).join(',')}`),
    '',
    signedList,
    payloadHash,
  ].join('\n');
  const scope = `${date}/${region}/s3/aws4_request`;
  const stringToSign = [ALGORITHM, amzDate, scope, sha256(canonicalRequest)].join('\n');
  let key = hmac(`AWS4${account.secret}`, date);
  for (const part of [region, 's3', 'aws4_request']) key = hmac(key, part);
  const expected = hmac(key, stringToSign).toString('hex');
  const detail = { CanonicalRequest: canonicalRequest, StringToSign: stringToSign, SignatureProvided: signature };
  if (!crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(signature)))
    return reject(403, 'SignatureDoesNotMatch',
      'The request signature we calculated does not match the signature you provided. ' +
        'Check your key and signing method.',
      detail);
  return { ok: true, hasQuery: target.hasQuery, ranged: headers.has('range'), ...detail };
}

const xml = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function errorDocument(r) {
  const extra = Object.entries(r.detail).map(([k, v]) => `<${k}>${xml(v)}</${k}>`).join('');
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${r.code}</Code><Message>${xml(r.message)}</Message>` +
    `${extra}<RequestId>sigv4-proxy</RequestId></Error>`;
}

// ---------------------------------------------------------------------------------------------
// --self-test: the S3 API Reference's four examples (examplebucket, 2013-05-24, its example key),
// each with the documented signature and hash of the canonical request; then changed copies of
// them, each of which must fail.
function selfTest() {
  const account = {
    keyId: 'AKIAIOSFODNN7EXAMPLE',
    secret: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
    region: 'us-east-1',
    now: Date.UTC(2013, 4, 24),
  };
  const empty = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
  const authorization = (signed, sig) =>
    `${ALGORITHM} Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=${signed},` +
    `Signature=${sig}`;
  const host = ['Host', 'examplebucket.s3.amazonaws.com'];
  // [name, method, target, headers, documented hash of the canonical request]
  const examples = [
    ['GET Object', 'GET', '/test.txt', [...host, 'Range', 'bytes=0-9 ', 'x-amz-content-sha256', empty,
      'x-amz-date', '20130524T000000Z ', 'Authorization', authorization('host;range;x-amz-content-sha256;x-amz-date',
        'f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41')],
    '7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972'],
    // '$' sent as it is: the canonical URI is /test%24file.text.
    ['PUT Object', 'PUT', '/test$file.text', [...host, 'Date', 'Fri, 24 May 2013 00:00:00 GMT',
      'x-amz-date', '20130524T000000Z', 'x-amz-storage-class', 'REDUCED_REDUNDANCY',
      'x-amz-content-sha256', '44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072', 'Authorization',
      authorization('date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class',
        '98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd')],
    '9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d'],
    // A parameter without a value: "lifecycle=".
    ['GET Bucket Lifecycle', 'GET', '/?lifecycle', [...host, 'x-amz-date', '20130524T000000Z',
      'x-amz-content-sha256', empty, 'Authorization', authorization('host;x-amz-content-sha256;x-amz-date',
        'fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543')],
    '9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca'],
    // Sent out of order (the documentation sends max-keys=2&prefix=J): sorted before signing.
    ['Get Bucket (List Objects)', 'GET', '/?prefix=J&max-keys=2', [...host, 'x-amz-date', '20130524T000000Z',
      'x-amz-content-sha256', empty, 'Authorization', authorization('host;x-amz-content-sha256;x-amz-date',
        '34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7')],
    'df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7'],
  ];
  const failures = [];
  for (const [name, method, url, rawHeaders, requestHash] of examples) {
    const r = verify({ method, url, rawHeaders }, account);
    if (!r.ok) failures.push(`${name}: ${r.code}: ${r.message}\n${r.detail.CanonicalRequest || ''}`);
    else if (r.StringToSign.split('\n')[3] !== requestHash) failures.push(`${name}: canonical request hash differs`);
  }
  const [getName, , getUrl, getHeaders] = examples[0];
  const [listName, , , listHeaders] = examples[3];
  const set = (raw, name, value) => raw.map((v, i) => (i % 2 === 1 && raw[i - 1] === name ? value : v));
  // [name, method, target, headers, what differs from the example, the error expected]
  const tampered = [
    [`${getName}, another secret`, 'GET', getUrl, getHeaders, { secret: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEZ' }],
    [`${getName}, another region`, 'GET', getUrl, getHeaders, { region: 'eu-west-1' }, 'AuthorizationHeaderMalformed'],
    [`${getName}, another key id`, 'GET', getUrl, getHeaders, { keyId: 'AKIAIOSFODNN7EXAMPLF' }, 'InvalidAccessKeyId'],
    [`${getName}, as HEAD`, 'HEAD', getUrl, getHeaders, {}],
    [`${getName}, another object`, 'GET', '/test.txu', getHeaders, {}],
    [`${getName}, encoded twice`, 'GET', '/test%252Etxt', getHeaders, {}],
    [`${getName}, another range`, 'GET', getUrl, set(getHeaders, 'Range', 'bytes=0-10'), {}],
    [`${getName}, an hour later`, 'GET', getUrl, getHeaders, { now: account.now + 3600e3 }, 'RequestTimeTooSkewed'],
    [`${getName}, an unsigned x-amz- header`, 'GET', getUrl, [...getHeaders, 'x-amz-security-token', 't'], {},
      'AccessDenied'],
    [`${listName}, another prefix`, 'GET', '/?max-keys=2&prefix=K', listHeaders, {}],
    [`${listName}, a parameter more`, 'GET', '/?max-keys=2&prefix=J&list-type=2', listHeaders, {}],
    [`${listName}, no query`, 'GET', '/', listHeaders, {}],
  ];
  for (const [name, method, url, rawHeaders, change, code = 'SignatureDoesNotMatch'] of tampered) {
    const r = verify({ method, url, rawHeaders }, { ...account, ...change });
    if (r.code !== code) failures.push(`${name}: ${r.ok ? 'accepted' : r.code}, expected ${code}`);
  }
  // The encoding rules themselves.
  const c = canonicalTarget('/a%20b/c+d~e%7e!?prefix=hf/x%2By&list-type=2&continuation-token=a%2Fb%3D%3D&empty');
  const want = '/a%20b/c%2Bd~e~%21 continuation-token=a%2Fb%3D%3D&empty=&list-type=2&prefix=hf%2Fx%2By';
  if (`${c.uri} ${c.query}` !== want) failures.push(`canonical target: ${c.uri} ${c.query}, expected ${want}`);
  if (failures.length) {
    process.stderr.write(`sigv4_proxy self-test FAILED:\n${failures.join('\n')}\n`);
    process.exit(1);
  }
  process.stdout.write(`sigv4_proxy self-test: ${examples.length} AWS examples verified, ` +
    `${tampered.length} altered requests rejected\n`);
}

// ---------------------------------------------------------------------------------------------

function serve(upstreamPort, region) {
  const account = {
    keyId: process.env.AWS_ACCESS_KEY_ID,
    secret: process.env.AWS_SECRET_ACCESS_KEY,
    region,
  };
  if (!account.keyId || !account.secret || !upstreamPort || !region) {
    process.stderr.write(
      'usage: AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… node sigv4_proxy.js UPSTREAM_PORT REGION\n');
    process.exit(2);
  }
  const agent = new http.Agent({ keepAlive: true });
  // Requests passed on (of them with a query, with a Range header) and refused, by error code.
  const seen = { verified: 0, withQuery: 0, ranged: 0, rejected: {} };
  const server = http.createServer((req, res) => {
    if (req.url === '/__stats') return res.end(JSON.stringify(seen));
    const r = verify(req, { ...account, now: Date.now() });
    if (!r.ok) {
      seen.rejected[r.code] = (seen.rejected[r.code] || 0) + 1;
      process.stderr.write(`${req.method} ${req.url}: ${r.code}: ${r.message}\n` +
        (r.detail.CanonicalRequest ? `canonical request:\n${r.detail.CanonicalRequest}\n` : ''));
      const body = errorDocument(r);
      res.writeHead(r.status, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body) });
      return res.end(body);
    }
    seen.verified++;
    if (r.hasQuery) seen.withQuery++;
    if (r.ranged) seen.ranged++;
    const up = http.request(
      { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    up.on('error', () => req.socket.destroy());
    req.pipe(up);
  });
  server.keepAliveTimeout = 60000;
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

if (process.argv[2] === '--self-test') selfTest();
else serve(process.argv[2], process.argv[3]);
