// tandem's worker in a browser that has no WebGPU adapter left once a device has been
// destroyed (as after a driver reset that takes the GPU away): for device-lost.test.mjs, which
// checks that the engine then reloads on the CPU. Playwright's init scripts do not reach
// workers; this does.
import '/js/worker.js';

let gone = false;
const destroy = GPUDevice.prototype.destroy;
GPUDevice.prototype.destroy = function destroyAndLoseTheAdapter() {
  gone = true;
  return destroy.call(this);
};
const requestAdapter = GPU.prototype.requestAdapter;
GPU.prototype.requestAdapter = function requestAdapterUnlessGone(...args) {
  return gone ? Promise.resolve(null) : requestAdapter.apply(this, args);
};
