// Large model files in the Origin Private File System, for js/cache.js, where `opfsMinBytes`
// asks for it. In a dedicated worker a FileSystemSyncAccessHandle writes a download at its
// offsets and reads it back straight into fresh buffers: in Chromium, alone, it read large
// files 2-3x and wrote them 1.3-2.5x as fast as the Cache API's entries; but a cached model's
// load gained little or nothing (0.94-1.62x on the CPU backend, 0.71-0.97x on WebGPU), most
// likely since the Cache API's reads (from another process) overlap the engine's work on each
// chunk and a sync handle's do not (bench/BROWSER.md, `npm run bench:storage`). So the Cache
// API stays the default. Sync access handles exist only
// in dedicated workers: a SharedWorker or a page keeps downloading into the Cache API, and
// reads an OPFS file through `getFile().stream()`, which works anywhere.
//
// One file per URL, `tandem-models-v1/<sha256 of the URL>` (a URL may be longer than a file
// name may be); what the file is (its URL, size, validators, the bytes flushed so far) stays in
// the Cache API beside the other downloads' entries, so listing and removing see both.

/** Files of at least this many bytes go to OPFS where it can write them (dedicated workers):
 * by default none (see above). */
export const OPFS_MIN_BYTES = Infinity;

const DIR = 'tandem-models-v1';
/** Bytes per read of a sync access handle (the engine takes 8 MiB at most at once). */
const READ_BYTES = 8 << 20;

const hasDirectory = () => typeof globalThis.navigator?.storage?.getDirectory === 'function';

/** Whether this context can write OPFS files through sync access handles. */
export function canWriteOpfs() {
  return hasDirectory() && typeof globalThis.FileSystemFileHandle?.prototype.createSyncAccessHandle === 'function';
}

/** The OPFS file name for `url`: its SHA-256, hex. */
export async function opfsName(url) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

const missing = (e) => e?.name === 'NotFoundError' || e?.name === 'TypeMismatchError';

async function fileHandle(name, create = false) {
  if (!hasDirectory()) return null;
  try {
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle(DIR, { create });
    return await dir.getFileHandle(name, { create });
  } catch (e) {
    if (missing(e)) return null;
    throw e;
  }
}

/** The size of file `name`, or null when there is none. */
export async function opfsSize(name) {
  const handle = await fileHandle(name);
  return handle ? (await handle.getFile()).size : null;
}

/** Removes file `name`; whether it was there. Where OPFS is refused (some private modes), false. */
export async function removeOpfsFile(name) {
  if (!hasDirectory()) return false;
  try {
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle(DIR);
    await dir.removeEntry(name);
    return true;
  } catch (e) {
    if (missing(e) || e?.name === 'SecurityError') return false;
    throw e;
  }
}

/**
 * File `name` open for writing from byte `from` on, anything after it cut off: `write(bytes)`
 * at the end, `flush()` to disk, `close()`.
 */
export async function openOpfsWriter(name, from) {
  const handle = await (await fileHandle(name, true)).createSyncAccessHandle();
  try {
    handle.truncate(from);
  } catch (e) {
    handle.close();
    throw e;
  }
  let at = from;
  return {
    write(bytes) {
      const n = handle.write(bytes, { at });
      if (n !== bytes.byteLength) throw new Error(`wrote ${n} of ${bytes.byteLength} bytes to the browser's file system`);
      at += n;
    },
    flush: () => handle.flush(),
    close: () => handle.close(),
  };
}

/**
 * File `name`'s bytes as a stream (null when there is none): through a read-only sync access
 * handle where this context has them, else (or while another reader holds the file, in a
 * browser without read-only handles) through `getFile().stream()`.
 */
export async function openOpfsReader(name) {
  const file = await fileHandle(name);
  if (!file) return null;
  if (canWriteOpfs()) {
    try {
      return syncStream(await file.createSyncAccessHandle({ mode: 'read-only' }));
    } catch (e) {
      if (e?.name !== 'NoModificationAllowedError' && e?.name !== 'InvalidStateError') throw e;
    }
  }
  return (await file.getFile()).stream();
}

/** A sync access handle's bytes as a stream of fresh buffers; the handle closes at the end. */
function syncStream(handle) {
  const size = handle.getSize();
  let at = 0;
  return new ReadableStream({
    pull(controller) {
      const chunk = at < size ? new Uint8Array(Math.min(READ_BYTES, size - at)) : null;
      const n = chunk ? handle.read(chunk, { at }) : 0;
      if (!n) {
        handle.close();
        return controller.close();
      }
      at += n;
      controller.enqueue(n < chunk.byteLength ? chunk.subarray(0, n) : chunk);
    },
    cancel() {
      handle.close();
    },
  }, { highWaterMark: 0 });
}
