/**
 * The link over the relay's WebSocket port (`lkedge relay`, ws:// or wss://): one binary
 * WebSocket message per LINK.md frame out; what arrives is a byte stream whatever its
 * message boundaries (LINK.md allows frames split across or packed into messages).
 *
 * Uses the runtime's WebSocket: every browser, Node 22 and later (Node 20 with
 * --experimental-websocket).
 */
import { type ByteChannel, every, LinkConnection, LinkError } from './link';

/** Browsers have no 'drain' event: bufferedAmount is polled this often while full. */
const DRAIN_POLL_MS = 5;

/** After an error on an open WebSocket, how long its close event may take to come. */
const ERROR_CLOSE_WAIT_MS = 1000;

class WebSocketChannel implements ByteChannel {
  constructor(
    private ws: WebSocket,
    private highWater: number,
  ) {}

  write(bytes: Uint8Array): boolean {
    // Closing or closed: the close event ends the link, and the frame has nowhere to go.
    if (this.ws.readyState !== WebSocket.OPEN) return true;
    this.ws.send(bytes);
    return this.ws.bufferedAmount < this.highWater;
  }

  drained(): Promise<void> {
    const done = () => this.ws.readyState !== WebSocket.OPEN || this.ws.bufferedAmount < this.highWater / 2;
    if (done()) return Promise.resolve();
    // Polled from the worker's ticks (every()): a chain of the page's own timeouts would
    // wake once a minute in a hidden tab, and a send from it crawl.
    return new Promise<void>((resolve) => {
      const stop = every(DRAIN_POLL_MS, () => {
        if (!done()) return;
        stop();
        resolve();
      });
    });
  }

  end(): void {
    // The close frame goes after every message already queued (WebSocket standard).
    this.ws.close(1000, 'leaving');
  }

  destroy(): void {
    this.ws.close(1002, 'protocol error');
  }
}

export interface WebSocketLinkOptions {
  pingMs: number;
  /** How long opening the WebSocket may take, in ms. */
  timeoutMs: number;
  /** Bytes queued in the WebSocket before writers wait (backpressure). */
  highWater: number;
}

function describeClose(ev: CloseEvent): string {
  return `WebSocket closed with ${ev.code}${ev.reason ? ` (${ev.reason})` : ''}`;
}

/** Opens a WebSocket to the relay; resolves with a LinkConnection ready to join. */
export function connectWebSocket(url: string, opts: WebSocketLinkOptions): Promise<LinkConnection> {
  if (!/^wss?:\/\//.test(url)) {
    return Promise.reject(new LinkError(`the relay's URL must start with ws:// or wss://, got ${JSON.stringify(url)}`));
  }
  if (typeof WebSocket === 'undefined') {
    return Promise.reject(new LinkError('this runtime has no WebSocket (Node 20 needs --experimental-websocket)'));
  }
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const conn = new LinkConnection(new WebSocketChannel(ws, opts.highWater), opts.pingMs);
    let opened = false;
    const timer = setTimeout(() => {
      if (opened) return;
      ws.close();
      reject(new LinkError(`no WebSocket to ${url} after ${opts.timeoutMs} ms`));
    }, opts.timeoutMs);
    ws.onopen = () => {
      opened = true;
      clearTimeout(timer);
      resolve(conn);
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (typeof ev.data === 'string') {
        conn.channelClosed(new LinkError('the relay sent a text WebSocket message; the link is binary'));
        ws.close(1003, 'binary messages only');
        return;
      }
      conn.receive(new Uint8Array(ev.data as ArrayBuffer));
    };
    let failed = false;
    const fail = (why: string) => {
      if (failed) return;
      failed = true;
      clearTimeout(timer);
      // Browsers hide why (a refused upgrade, a bad certificate, no server): little to say.
      reject(new LinkError(`could not open a WebSocket to ${url}: ${why}`));
    };
    ws.onclose = (ev: CloseEvent) => {
      if (!opened) {
        fail(describeClose(ev));
        return;
      }
      conn.channelClosed(ev.code === 1000 || ev.code === 1005 ? undefined : new LinkError(describeClose(ev)));
    };
    ws.onerror = () => {
      // A close event follows in browsers; Node 20's WebSocket sends none when the
      // connection cannot be made (the attempt would hang until the timeout), and an
      // open link whose close never comes must still end.
      if (!opened) fail('connection failed');
      else setTimeout(() => conn.channelClosed(new LinkError('WebSocket error')), ERROR_CLOSE_WAIT_MS);
    };
  });
}
