// The worker's clients and the order in which their generations enter the engine.
//
// A client is one page talking to the worker: the page itself for a dedicated worker, one
// connected MessagePort per tab for a SharedWorker. Each client numbers its requests itself;
// the worker gives each an engine id of its own, so two tabs' request 1 never meet.
//
// Admission: a shared engine lets at most `limit` generations into the engine at once (its
// max_seqs, so that none waits in the engine's own first-come queue); the rest wait here, one
// queue per client, and a freed place goes to the client whose turn it is (round robin). One
// tab's long queue then delays another tab's first request by one finished request at most,
// not by the whole queue. A dedicated worker's limit is Infinity: everything goes in at once.

export class Client {
  constructor(port, number) {
    this.port = port;
    this.number = number;
    /** Its generations not yet ended, by the page's id. */
    this.requests = new Map();
    this.gone = false;
  }

  post(msg) {
    if (!this.gone) this.port.postMessage(msg);
  }
}

export class Admission {
  constructor(limit = Infinity) {
    this.limit = limit;
    /** Generations let in and not yet ended. */
    this.running = 0;
    /** Waiting generations per client; the first key is the next client to be served. */
    this.queues = new Map();
  }

  /** Queues `request` (with its `start()`), starting it now if there is room. */
  submit(request) {
    const queue = this.queues.get(request.client) ?? [];
    queue.push(request);
    this.queues.set(request.client, queue);
    this.pump();
  }

  /** Takes `request` out of its queue; false when it was not waiting there. */
  remove(request) {
    const queue = this.queues.get(request.client);
    const at = queue ? queue.indexOf(request) : -1;
    if (at < 0) return false;
    queue.splice(at, 1);
    if (!queue.length) this.queues.delete(request.client);
    return true;
  }

  /** Starts `request` now, whatever the limit (an aborted one, to end through the engine). */
  force(request) {
    this.remove(request);
    this.running++;
    request.start();
  }

  /** A started generation has ended: its place goes to the next client in turn. */
  finished() {
    this.running--;
    this.pump();
  }

  waiting(client) {
    return this.queues.get(client)?.length ?? 0;
  }

  pump() {
    while (this.running < this.limit && this.queues.size) {
      const [client, queue] = this.queues.entries().next().value;
      const request = queue.shift();
      // To the back of the line, behind every other client that waits.
      this.queues.delete(client);
      if (queue.length) this.queues.set(client, queue);
      this.running++;
      request.start();
    }
  }
}

/**
 * Which clients each engine step produced text for. The engine hands out a step's text in one
 * synchronous run of callbacks, and awaits between steps, so a microtask queued at a step's
 * first piece runs once that step's pieces are all out.
 */
export class Steps {
  constructor() {
    this.current = null;
    /** Steps that produced text. */
    this.steps = 0;
    /** Of those, the steps with text for more than one client (their requests batched). */
    this.sharedSteps = 0;
    /** The most clients, and the most requests, with text in one step. */
    this.mostClients = 0;
    this.mostRequests = 0;
  }

  saw(client) {
    if (!this.current) {
      this.current = { clients: new Set(), requests: 0 };
      queueMicrotask(() => this.close());
    }
    this.current.clients.add(client);
    this.current.requests++;
  }

  close() {
    const { clients, requests } = this.current;
    this.current = null;
    this.steps++;
    if (clients.size > 1) this.sharedSteps++;
    this.mostClients = Math.max(this.mostClients, clients.size);
    this.mostRequests = Math.max(this.mostRequests, requests);
  }
}
