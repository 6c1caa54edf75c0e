// Test-only: runs s3rver (a local S3-compatible server) on 127.0.0.1 at a free port with one
// bucket, prints the port on a line of its own, and exits when its stdin closes, so it never
// outlives the test that started it.
//   node s3rver.js DATA_DIR BUCKET
const S3rver = require('s3rver');

const [dir, bucket] = process.argv.slice(2);
const server = new S3rver({
  address: '127.0.0.1',
  port: 0,
  silent: true,
  directory: dir,
  configureBuckets: [{ name: bucket }],
});
server.run().then(
  (address) => process.stdout.write(`${address.port}\n`),
  (err) => {
    process.stderr.write(`s3rver: ${err.message}\n`);
    process.exit(1);
  },
);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
