// tandem's worker, in a browser whose storage estimate says only 300 kB (200 kB of them used):
// for stream.test.mjs, which checks that a download too large for the quota is refused up
// front with a clear message. Playwright's init scripts do not reach workers; this does.
import '/js/worker.js';

StorageManager.prototype.estimate = async function estimate() {
  return { quota: 300_000, usage: 100_000 };
};
