/**
 * LINK.md (version 1) on the participant side: frame codec and a connection that joins a
 * room through a relay over any reliable byte stream. The stream itself is a ByteChannel:
 * wslink.ts (a WebSocket, browsers and Node 22+) or a TCP socket (the Node interop peer).
 *
 *   frame = varint(n) , type , body        n = 1 + len(body)
 *
 * Control bodies are CBOR maps; DATA bodies are serialized LiveKit DataPackets, handed up
 * unchanged. The connection keeps the relay alive with PINGs and answers its PINGs.
 */
import { EventEmitter } from 'events';
import { type CborValue, decode as cborDecode, encode as cborEncode } from './cbor';
import type { ParticipantInfo } from '../lkedge.mjs';

export const LINK_VERSION = 1;
export const JOIN = 0x01;
export const JOINED = 0x02;
export const PARTICIPANT = 0x03;
export const PARTICIPANT_LEFT = 0x04;
export const LEAVE = 0x05;
export const PING = 0x06;
export const PONG = 0x07;
export const DATA = 0x10;

export const LEAVE_CLIENT = 1;

export class LinkError extends Error {}

export function encodeVarint(value: number): number[] {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

export function encodeFrame(type: number, body: Uint8Array): Uint8Array {
  const prefix = encodeVarint(1 + body.length);
  const out = new Uint8Array(prefix.length + 1 + body.length);
  out.set(prefix, 0);
  out[prefix.length] = type;
  out.set(body, prefix.length + 1);
  return out;
}

export function encodeControl(type: number, map: { [key: string]: CborValue }): Uint8Array {
  return encodeFrame(type, cborEncode(map));
}

/**
 * Splits a byte stream into (type, body) frames; bodies are copies that outlive the input.
 * A frame that arrives in many pieces is joined once, when all of it is there: joining
 * at every piece would copy a 16 MiB frame in 4 KiB WebSocket messages ~32 GB.
 */
export class FrameParser {
  private pieces: Uint8Array[] = [];

  private held = 0;

  /** Bytes to hold before parsing again: the end of the frame begun (0: unknown yet). */
  private want = 0;

  constructor(public maxFrame: number) {}

  push(chunk: Uint8Array): Array<[number, Uint8Array]> {
    if (!chunk.length) return [];
    this.pieces.push(chunk);
    this.held += chunk.length;
    if (this.held < this.want) return [];
    const joined = this.pieces.length === 1 ? this.pieces[0] : concat(this.pieces, this.held);
    const frames: Array<[number, Uint8Array]> = [];
    let pos = 0;
    this.want = 0;
    for (;;) {
      const parsed = this.readVarint(joined, pos);
      if (parsed === null) break;
      const [n, bodyStart] = parsed;
      if (n === 0) throw new LinkError('frame with length 0 (a frame holds at least its type byte)');
      if (n > this.maxFrame) throw new LinkError(`frame of ${n} bytes (type + body) exceeds max_frame ${this.maxFrame}`);
      if (bodyStart + n > joined.length) {
        this.want = bodyStart + n - pos;
        break;
      }
      frames.push([joined[bodyStart], joined.slice(bodyStart + 1, bodyStart + n)]);
      pos = bodyStart + n;
    }
    // What is left is copied: the caller's chunk may be a view it reuses.
    const rest = joined.slice(pos);
    this.pieces = rest.length ? [rest] : [];
    this.held = rest.length;
    return frames;
  }

  private readVarint(data: Uint8Array, start: number): [number, number] | null {
    let value = 0;
    let scale = 1;
    for (let i = start; i < data.length; i++) {
      if (i - start >= 5) throw new LinkError('frame length varint longer than 5 bytes');
      value += (data[i] & 0x7f) * scale;
      scale *= 0x80;
      if ((data[i] & 0x80) === 0) return [value, i + 1];
    }
    return null;
  }
}

function concat(pieces: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// A PARTICIPANT map as the API gives it: declared once, in lkedge.d.mts
export type { ParticipantInfo };

export interface JoinedInfo {
  room: string;
  identity: string;
  sid: string;
  server_version: string;
  max_frame: number;
  participants: ParticipantInfo[];
}

export interface JoinOptions {
  token: string;
  clientProtocol: number;
  capabilities: number[];
  sdk: string;
  sdkVersion: string;
}

function asMap(v: CborValue, what: string): { [key: string]: CborValue } {
  if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) {
    throw new LinkError(`${what}: body is not a CBOR map`);
  }
  return v as { [key: string]: CborValue };
}

function str(m: { [key: string]: CborValue }, key: string, what: string, dflt?: string): string {
  const v = m[key];
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'string') throw new LinkError(`${what}: key "${key}" must be a text string, got ${JSON.stringify(v)}`);
  return v;
}

/** Normalises a LINK participant map: missing client_protocol → 0, capabilities → []. */
export function participantInfo(v: CborValue, what = 'PARTICIPANT'): ParticipantInfo {
  const m = asMap(v, what);
  const cp = m.client_protocol ?? 0;
  const caps = m.capabilities ?? [];
  if (typeof cp !== 'number') throw new LinkError(`${what}: client_protocol must be an int`);
  if (!Array.isArray(caps) || caps.some((c) => typeof c !== 'number')) {
    throw new LinkError(`${what}: capabilities must be a list of ints`);
  }
  const attrs = asMap(m.attributes ?? {}, `${what} attributes`);
  const attributes: { [key: string]: string } = {};
  for (const [k, val] of Object.entries(attrs)) attributes[k] = String(val);
  return {
    identity: str(m, 'identity', what),
    sid: str(m, 'sid', what, ''),
    client_protocol: cp,
    capabilities: caps as number[],
    attributes,
  };
}

export function decodeJoined(body: Uint8Array): JoinedInfo {
  const m = asMap(cborDecode(body), 'JOINED');
  const mf = m.max_frame;
  if (typeof mf !== 'number' || mf < 1) throw new LinkError(`JOINED: max_frame must be a positive int, got ${mf}`);
  const list = m.participants ?? [];
  if (!Array.isArray(list)) throw new LinkError('JOINED: participants must be a list');
  return {
    room: str(m, 'room', 'JOINED'),
    identity: str(m, 'identity', 'JOINED'),
    sid: str(m, 'sid', 'JOINED', ''),
    server_version: str(m, 'server_version', 'JOINED', ''),
    max_frame: mf,
    participants: list.map((p) => participantInfo(p, 'JOINED participant')),
  };
}

/**
 * The byte stream under a link. The connection calls write/end/destroy; the channel
 * reports what arrives with conn.receive(chunk) and its end with conn.channelClosed(err).
 */
export interface ByteChannel {
  /** Queues bytes; false when the channel's buffer is full (wait for drained()). */
  write(bytes: Uint8Array): boolean;
  /** Resolves once the buffer has room again. */
  drained(): Promise<void>;
  /** Closes after what is queued has been sent. */
  end(): void;
  /** Closes at once. */
  destroy(): void;
}

/**
 * One participant's link to the relay. Events: 'joined' (JoinedInfo), 'participant'
 * (ParticipantInfo), 'participant_left' (identity, reason), 'leave' (code, reason),
 * 'data' (Uint8Array DataPacket), 'protocol_error' (Error), 'close' (Error | undefined).
 */
export class LinkConnection extends EventEmitter {
  private parser: FrameParser;
  private stopPings: (() => void) | null = null;
  private closed = false;
  /** leave() was called: nothing more goes out but what was queued before it. */
  private left = false;
  joined: JoinedInfo | null = null;

  constructor(
    private channel: ByteChannel,
    private pingMs: number,
    maxIncomingFrame = 16 * 1024 * 1024,
  ) {
    super();
    this.parser = new FrameParser(maxIncomingFrame);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  join(opts: JoinOptions): void {
    this.write(
      encodeControl(JOIN, {
        v: LINK_VERSION,
        token: opts.token,
        client_protocol: opts.clientProtocol,
        capabilities: opts.capabilities,
        sdk: opts.sdk,
        sdk_version: opts.sdkVersion,
      }),
    );
  }

  /** Sends one DATA frame; resolves once the channel accepted it (backpressure). */
  async sendData(packet: Uint8Array): Promise<void> {
    if (this.closed || this.left) throw new LinkError('link is closed');
    const maxFrame = this.joined?.max_frame;
    if (maxFrame !== undefined && packet.length + 1 > maxFrame) {
      throw new LinkError(`DataPacket of ${packet.length} bytes exceeds the relay's max_frame ${maxFrame}`);
    }
    if (!this.write(encodeFrame(DATA, packet))) await this.channel.drained();
  }

  leave(reason: string): void {
    if (this.closed || this.left) return;
    this.left = true;
    this.write(encodeControl(LEAVE, { code: LEAVE_CLIENT, reason }));
    this.channel.end();
  }

  /** The channel's bytes, as they arrive. */
  receive(chunk: Uint8Array): void {
    let frames: Array<[number, Uint8Array]>;
    try {
      frames = this.parser.push(chunk);
    } catch (err) {
      this.channelClosed(err as Error);
      this.channel.destroy();
      return;
    }
    for (const [type, body] of frames) {
      try {
        this.onFrame(type, body);
      } catch (err) {
        this.emit('protocol_error', err);
      }
    }
  }

  /** The channel ended: err when it failed, undefined when it closed cleanly. */
  channelClosed(err: Error | undefined): void {
    if (this.closed) return;
    this.closed = true;
    if (this.stopPings) this.stopPings();
    this.emit('close', err);
  }

  private write(frame: Uint8Array): boolean {
    return this.channel.write(frame);
  }

  private onFrame(type: number, body: Uint8Array): void {
    switch (type) {
      case JOINED:
        this.joined = decodeJoined(body);
        this.startPings();
        this.emit('joined', this.joined);
        return;
      case PARTICIPANT:
        this.emit('participant', participantInfo(cborDecode(body)));
        return;
      case PARTICIPANT_LEFT: {
        const m = asMap(cborDecode(body), 'PARTICIPANT_LEFT');
        this.emit('participant_left', str(m, 'identity', 'PARTICIPANT_LEFT'), m.reason ?? '');
        return;
      }
      case LEAVE: {
        const m = asMap(cborDecode(body), 'LEAVE');
        this.emit('leave', m.code ?? 0, m.reason ?? '');
        return;
      }
      case PING:
        this.write(encodeFrame(PONG, body));
        return;
      case DATA:
        this.emit('data', body);
        return;
      default:
        // PONG and unknown frame types: nothing to do (LINK.md: skip unknown types).
        return;
    }
  }

  private startPings(): void {
    if (this.stopPings || this.pingMs <= 0) return;
    this.stopPings = every(this.pingMs, () => {
      if (!this.closed) this.write(encodeFrame(PING, new TextEncoder().encode(String(Date.now()))));
    });
  }
}

/** Resolves after `ms`, ticked as every() ticks (a hidden tab's rejoin is not held back a minute). */
export function after(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const stop = every(ms, () => {
      stop();
      resolve();
    });
  });
}

/**
 * Calls `fn` every `ms` until the returned function is called. In a page, the ticks come
 * from a dedicated worker: a hidden tab's own timers are throttled to one a minute
 * (Chrome's intensive wake-up throttling, after 5 minutes hidden; Safari does the like),
 * and PINGs that late let the relay close the link as idle (30 s by default), over and
 * over; a send that waits for the WebSocket to drain would crawl likewise. A worker's
 * timers are not throttled so, and its messages reach the page at once. One worker ticks
 * every timer of the page, and ends when none is left. Where no worker can be made
 * (Node; a Content-Security-Policy without blob: workers), setInterval.
 */
export function every(ms: number, fn: () => void): () => void {
  const id = nextTick++;
  const tick: Tick = { ms, fn };
  ticks.set(id, tick);
  const worker = tickWorker();
  if (worker) worker.postMessage([id, ms]);
  else tick.interval = setInterval(fn, ms);
  return () => {
    if (!ticks.delete(id)) return;
    if (tick.interval !== undefined) clearInterval(tick.interval);
    else ticker?.worker.postMessage([id, 0]);
    if (ticks.size === 0) endTicker(); // an idle page keeps no thread
  };
}

interface Tick {
  ms: number;
  fn: () => void;
  /** Set when this timer runs on the page's own setInterval instead of the worker. */
  interval?: ReturnType<typeof setInterval>;
}

const ticks = new Map<number, Tick>();
let nextTick = 1;
let ticker: { worker: any; url: string } | undefined;
/** A worker was refused here once (a CSP): setInterval from then on. */
let workerRefused = false;

// [id, ms] starts timer `id`, [id, 0] stops it; each tick posts its id.
const TICKER_SOURCE =
  'const t = new Map(); onmessage = (e) => { const [id, ms] = e.data;' +
  ' if (ms > 0) t.set(id, setInterval(() => postMessage(id), ms));' +
  ' else { clearInterval(t.get(id)); t.delete(id); } };';

function tickWorker(): any | undefined {
  if (ticker) return ticker.worker;
  const g = globalThis as any;
  if (workerRefused || typeof g.document === 'undefined' || typeof g.Worker !== 'function' || typeof g.Blob !== 'function') {
    return undefined;
  }
  let url: string | undefined;
  try {
    url = g.URL.createObjectURL(new g.Blob([TICKER_SOURCE], { type: 'text/javascript' })) as string;
    const worker = new g.Worker(url);
    ticker = { worker, url };
    worker.onmessage = (ev: MessageEvent) => ticks.get(ev.data as number)?.fn();
    // A worker refused (a CSP) reports an error after it was made: its timers move to
    // the page's own.
    worker.onerror = () => {
      workerRefused = true;
      endTicker();
      for (const t of ticks.values()) if (t.interval === undefined) t.interval = setInterval(t.fn, t.ms);
    };
    return worker;
  } catch {
    // ... or the constructor throws
    workerRefused = true;
    if (url) g.URL.revokeObjectURL(url);
    return undefined;
  }
}

function endTicker(): void {
  if (!ticker) return;
  ticker.worker.terminate();
  (globalThis as any).URL.revokeObjectURL(ticker.url);
  ticker = undefined;
}
