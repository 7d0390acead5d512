// A download's body read ahead of where js/cache.js stores it, so that the bytes that arrived
// before a network error are kept.

/**
 * Reads `reader` ahead of its consumer, up to `ahead` bytes: an errored stream drops the
 * chunks queued in it, so this keeps what arrived before a network error (and the parts it
 * completes). Returns `next()`: the next non-empty chunk, null at the end, or the error once
 * every chunk before it was taken.
 */
export function readAhead(reader, ahead) {
  const chunks = [];
  let queued = 0;
  let end = null; // { error } once the stream ended
  let wake = () => {};
  let room = () => {};
  (async () => {
    try {
      for (;;) {
        while (queued >= ahead) await new Promise((ok) => (room = ok));
        const step = await reader.read();
        if (step.done) break;
        if (!step.value.byteLength) continue;
        chunks.push(step.value);
        queued += step.value.byteLength;
        wake();
      }
      end = { error: null };
    } catch (error) {
      end = { error };
    }
    wake();
  })();
  return async () => {
    while (!chunks.length && !end) await new Promise((ok) => (wake = ok));
    if (chunks.length) {
      const chunk = chunks.shift();
      queued -= chunk.byteLength;
      room();
      return chunk;
    }
    if (end.error) throw end.error;
    return null;
  };
}
