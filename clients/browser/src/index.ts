/**
 * lkedge in the browser: join an lkedge relay's room over its WebSocket port and call
 * boards' RPC methods, serve methods boards call, and send and receive data streams.
 *
 *   import { Room } from './lkedge.mjs';
 *   const room = await Room.connect('ws://relay.local:7881', token);
 *   const answer = await room.localParticipant.performRpc({
 *     destinationIdentity: 'board-1', method: 'device.info', payload: '' });
 *
 * The RPC and data-stream work is livekit-client's own (its RpcClientManager,
 * RpcServerManager and data-stream managers, unmodified: peer.ts), so a browser behaves
 * on the wire exactly as a LiveKit web client does; the names follow livekit-client's
 * Room and LocalParticipant. What lkedge adds is the link to the relay (LINK.md over
 * WebSocket) and what LINK.md asks of a participant: a lost link fails every pending
 * call (RECIPIENT_DISCONNECTED) and is rejoined with backoff and jitter, with methods and
 * stream handlers kept; a LEAVE that says "don't come back" (client, duplicate identity,
 * unauthorized, forbidden) ends the room.
 */
import { EventEmitter } from 'events';
import { after, type JoinedInfo, type LinkConnection, LinkError, type ParticipantInfo } from './link';
import {
  type ByteStreamHandler,
  type ByteStreamInfo,
  type ByteStreamWriter,
  type PerformRpcParams,
  RpcError,
  type RpcInvocationData,
  type SendBytesOptions,
  type SendFileOptions,
  type SendTextOptions,
  type StreamBytesOptions,
  type StreamTextOptions,
  type TextStreamHandler,
  type TextStreamInfo,
  type TextStreamWriter,
} from './lk';
import type { ConnectOptions, ConnectionState, TokenSource } from '../lkedge.mjs';
import { LinkPeer, type LogSink } from './peer';
import { connectWebSocket } from './wslink';

export { RpcError, LinkError };
export type {
  ByteStreamHandler,
  ByteStreamInfo,
  LogSink,
  ParticipantInfo,
  PerformRpcParams,
  RpcInvocationData,
  TextStreamHandler,
  TextStreamInfo,
};

/** LEAVE codes after which rejoining cannot help (LINK.md): the room ends. */
const FINAL_LEAVE = [1, 2, 3, 7];

// The public option and state types are the declarations' own (lkedge.d.mts, the one
// place they are written; type imports leave nothing in the bundle).
export type { ConnectOptions, ConnectionState, TokenSource };

function defaults(o: ConnectOptions): Required<Omit<ConnectOptions, 'logSink'>> & { logSink?: LogSink } {
  const canInflate = typeof (globalThis as any).DecompressionStream !== 'undefined';
  return {
    clientProtocol: o.clientProtocol ?? 2,
    capabilities: o.capabilities ?? (canInflate ? [2] : []),
    pingIntervalMs: o.pingIntervalMs ?? 10000,
    joinTimeoutMs: o.joinTimeoutMs ?? 10000,
    autoReconnect: o.autoReconnect ?? true,
    reconnectMinMs: o.reconnectMinMs ?? 500,
    reconnectMaxMs: o.reconnectMaxMs ?? 30000,
    sendHighWater: o.sendHighWater ?? 1 << 20,
    verbose: o.verbose ?? false,
    logSink: o.logSink,
  };
}

/** Full jitter on the upper half: many clients cut off together do not return together. */
const jitter = (ms: number) => ms / 2 + Math.random() * (ms / 2);

/** The joining participant's side: calls, methods it serves, streams it sends. */
export class LocalParticipant {
  constructor(private room: Room) {}

  get identity(): string {
    return this.room.joined?.identity ?? '';
  }

  get sid(): string {
    return this.room.joined?.sid ?? '';
  }

  /** Calls `method` on another participant; resolves with its answer or rejects with RpcError. */
  async performRpc(params: PerformRpcParams): Promise<string> {
    if (this.room.state !== 'connected') {
      // fails at once: with no link the client manager would take a v1 path for a
      // participant no longer known, and the call would wait out its 7 s ack timeout
      throw RpcError.builtIn('SEND_FAILED', `not connected to the relay (${this.room.state})`);
    }
    const calling = this.room.calling;
    const who = params.destinationIdentity;
    calling.set(who, (calling.get(who) ?? 0) + 1);
    try {
      let completion: Promise<string>;
      try {
        [, completion] = await this.room.peer.rpcClient.performRpc(params);
      } catch (err) {
        // not sent (no link while the room rejoins, a closed WebSocket): an RpcError
        // like every other failure of a call, 1505 as livekit-client names it
        if (err instanceof RpcError) throw err;
        throw RpcError.builtIn('SEND_FAILED', (err as Error).message ?? String(err));
      }
      return await completion;
    } finally {
      const left = (calling.get(who) ?? 1) - 1;
      if (left) calling.set(who, left);
      else calling.delete(who);
    }
  }

  /** Serves `method`: the handler's string is the answer; a thrown RpcError is sent as is. */
  registerRpcMethod(method: string, handler: (data: RpcInvocationData) => Promise<string>): void {
    this.room.registerRpcMethod(method, handler);
  }

  unregisterRpcMethod(method: string): void {
    this.room.unregisterRpcMethod(method);
  }

  sendText(text: string, options?: SendTextOptions): Promise<TextStreamInfo> {
    return this.room.peer.outgoing.sendText(text, options);
  }

  sendBytes(bytes: Uint8Array, options?: SendBytesOptions): Promise<ByteStreamInfo> {
    return this.room.peer.outgoing.sendBytes(bytes, options);
  }

  sendFile(file: File, options?: SendFileOptions): Promise<{ id: string }> {
    return this.room.peer.outgoing.sendFile(file, options);
  }

  streamText(options?: StreamTextOptions): Promise<TextStreamWriter> {
    return this.room.peer.outgoing.streamText(options);
  }

  streamBytes(options?: StreamBytesOptions): Promise<ByteStreamWriter> {
    return this.room.peer.outgoing.streamBytes(options);
  }
}

/**
 * A room joined through an lkedge relay. Events: 'participantConnected' (ParticipantInfo),
 * 'participantUpdated' (ParticipantInfo), 'participantDisconnected' (identity, reason),
 * 'reconnecting' (why), 'reconnected', 'disconnected' (why), 'protocolError' (Error).
 */
export class Room extends EventEmitter {
  readonly localParticipant: LocalParticipant;

  /** Remote participants by identity, as the relay announced them. */
  readonly remoteParticipants = new Map<string, ParticipantInfo>();

  readonly peer: LinkPeer;

  state: ConnectionState = 'disconnected';

  joined: JoinedInfo | null = null;

  /** Why the link was last lost or refused. */
  lastError = '';

  /** Identities with calls of ours pending, and how many (someone never announced too). */
  readonly calling = new Map<string, number>();

  private options: ReturnType<typeof defaults>;

  private leaving = false;

  /** Who was in the room when the link was lost: a rejoin's JOINED tells who left meanwhile. */
  private beforeLoss: Map<string, ParticipantInfo> | null = null;

  private constructor(
    private url: string,
    private token: TokenSource,
    options: ConnectOptions,
  ) {
    super();
    this.options = defaults(options);
    this.localParticipant = new LocalParticipant(this);
    this.peer = new LinkPeer({
      clientProtocol: this.options.clientProtocol,
      capabilities: this.options.capabilities,
      verbose: this.options.verbose,
      name: 'lkedge',
      logSink: this.options.logSink,
    });
    this.peer.on('participant_joined', (p: ParticipantInfo) => this.announced(p, 'participantConnected'));
    this.peer.on('participant_updated', (p: ParticipantInfo) => this.announced(p, 'participantUpdated'));
    this.peer.on('participant_left', (identity: string, reason: string) => {
      this.remoteParticipants.delete(identity);
      this.emit('participantDisconnected', identity, reason);
    });
    this.peer.on('protocol_error', (err: Error) => this.emit('protocolError', err));
  }

  /** Joins the room the token names, through the relay's WebSocket port (ws:// or wss://). */
  static async connect(url: string, token: TokenSource, options: ConnectOptions = {}): Promise<Room> {
    const room = new Room(url, token, options);
    await room.open();
    return room;
  }

  get name(): string {
    return this.joined?.room ?? '';
  }

  registerRpcMethod(method: string, handler: (data: RpcInvocationData) => Promise<string>): void {
    this.peer.rpcServer.registerRpcMethod(method, handler);
  }

  unregisterRpcMethod(method: string): void {
    this.peer.rpcServer.unregisterRpcMethod(method);
  }

  registerTextStreamHandler(topic: string, handler: TextStreamHandler): void {
    this.peer.incoming.registerTextStreamHandler(topic, handler);
  }

  unregisterTextStreamHandler(topic: string): void {
    this.peer.incoming.unregisterTextStreamHandler(topic);
  }

  registerByteStreamHandler(topic: string, handler: ByteStreamHandler): void {
    this.peer.incoming.registerByteStreamHandler(topic, handler);
  }

  unregisterByteStreamHandler(topic: string): void {
    this.peer.incoming.unregisterByteStreamHandler(topic);
  }

  /** Leaves the room (LEAVE, then the WebSocket closes); pending calls fail with 1503. */
  async disconnect(reason = 'client initiated'): Promise<void> {
    if (this.state === 'disconnected' && !this.peer.connected) return;
    this.leaving = true;
    this.failPending('left the room');
    this.peer.closeWriters();
    this.peer.leave(reason);
    this.ended('left the room');
  }

  /** Joins over a new link; a rejoin stays 'reconnecting' until it has joined. */
  private async open(): Promise<void> {
    const rejoin = this.state === 'reconnecting';
    if (!rejoin) this.state = 'connecting';
    let joinedLink: LinkConnection | null = null;
    try {
      const token = typeof this.token === 'function' ? await this.token() : this.token;
      if (typeof token !== 'string') throw new LinkError(`a token is a string, got ${typeof token}`);
      const o = this.options;
      const link = await connectWebSocket(this.url, {
        pingMs: o.pingIntervalMs,
        timeoutMs: o.joinTimeoutMs,
        highWater: o.sendHighWater,
      });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          link.leave('join timeout');
          reject(new LinkError(`no JOINED from ${this.url} within ${o.joinTimeoutMs} ms`));
        }, o.joinTimeoutMs);
      });
      try {
        this.joined = await Promise.race([this.peer.join(link, token), late]);
      } finally {
        clearTimeout(timer);
      }
      joinedLink = link;
    } catch (err) {
      if (!rejoin) this.state = 'disconnected';
      this.lastError = (err as Error).message;
      throw err;
    }
    this.remoteParticipants.clear();
    for (const p of this.joined.participants) this.remoteParticipants.set(p.identity, p);
    this.state = 'connected';
    this.announceChanges();
    // Only a link that joined is lost: one that fails while joining fails open() (a
    // handler on every link started a second rejoin loop when an attempt failed so).
    // Last, so that a link gone already (JOINED and LEAVE in one read) is lost after
    // the room is set up, not while.
    const lost = (err?: Error) => void this.linkLost(err ? err.message : 'the link closed');
    if (joinedLink!.isClosed) lost();
    else joinedLink!.once('close', lost);
  }

  /** After a rejoin: events for those who left or came while the link was down. */
  private announceChanges(): void {
    const before = this.beforeLoss;
    this.beforeLoss = null;
    if (!before) return;
    for (const identity of before.keys()) {
      if (!this.remoteParticipants.has(identity)) this.emit('participantDisconnected', identity, 'left while the link was down');
    }
    for (const [identity, p] of this.remoteParticipants) {
      if (!before.has(identity)) this.emit('participantConnected', p);
    }
  }

  private announced(p: ParticipantInfo, event: string): void {
    this.remoteParticipants.set(p.identity, p);
    this.emit(event, p);
  }

  /** LINK.md: losing the link fails everything pending. */
  private failPending(why: string): void {
    // The client manager fails a participant's calls with RECIPIENT_DISCONNECTED; a call
    // may be to someone the relay never announced (it waits for its ack timeout, 7 s, on
    // a live link), so those we call count too.
    const known = new Set([...this.remoteParticipants.keys(), ...this.calling.keys()]);
    for (const identity of known) this.peer.rpcClient.handleParticipantDisconnected(identity);
    this.lastError = why;
  }

  private ended(why: string): void {
    if (this.state === 'disconnected' && this.leaving) return;
    this.state = 'disconnected';
    this.remoteParticipants.clear();
    this.emit('disconnected', why);
  }

  /** The relay's last LEAVE says rejoining cannot help. */
  private finalLeave(): boolean {
    const code = this.peer.lastLeaveCode;
    return code !== null && FINAL_LEAVE.includes(code);
  }

  private async linkLost(why: string): Promise<void> {
    if (this.leaving) return;
    this.failPending(why);
    this.beforeLoss = new Map(this.remoteParticipants);
    this.remoteParticipants.clear();
    if (!this.options.autoReconnect || this.finalLeave()) {
      const code = this.peer.lastLeaveCode;
      this.ended(code !== null ? `LEAVE ${code}: ${why}` : why);
      return;
    }
    this.state = 'reconnecting';
    this.emit('reconnecting', why);
    let delay = this.options.reconnectMinMs;
    while (!this.leaving) {
      await after(jitter(delay)); // (not the page's timers: a hidden tab's wake once a minute)
      if (this.leaving) return;
      try {
        await this.open();
        this.emit('reconnected');
        return;
      } catch {
        // open() kept the why in lastError, and the attempt's LEAVE code in the peer
        if (this.finalLeave()) {
          this.ended(this.lastError);
          return;
        }
      }
      delay = Math.min(delay * 2, this.options.reconnectMaxMs);
    }
  }
}
