/**
 * A room participant built from livekit-client's real RPC and data-stream managers, with
 * our LINK.md connection standing in for RTCEngine's data channel. The wiring copies
 * livekit-client 2.23.0's Room.ts / RTCEngine.ts:
 *
 * - incoming DATA: `DataPacket.fromBinary`, the reliable-sequence de-duplication of
 *   RTCEngine.handleDataMessage (per participant_sid), then Room.handleDataPacket's switch:
 *   stream header/chunk/trailer → IncomingDataStreamManager.handleDataStreamPacket(packet,
 *   Encryption_Type.NONE); rpcRequest → RpcServerManager.handleIncomingRpcRequest(sender,
 *   request); rpcResponse payload/error → RpcClientManager.handleIncomingRpcResponseSuccess /
 *   Failure(RpcError.fromProto); rpcAck → RpcClientManager.handleIncomingRpcAck(id).
 * - `lk.rpc_request` / `lk.rpc_response` text-stream handlers call the managers'
 *   handleIncomingDataStream(reader, identity, reader.info.attributes) (Room.registerRpcDataStreamHandler).
 * - outgoing: the managers call engine.sendDataPacket(packet, kind); like RTCEngine we stamp
 *   `sequence` from a per-connection counter starting at 1, serialize with toBinary and
 *   send one DATA frame.
 * - PARTICIPANT_LEFT → incoming.validateParticipantHasNoActiveDataStreams(identity) and
 *   rpcClient.handleParticipantDisconnected(identity) (Room.handleParticipantDisconnected).
 * - link lost → incoming.clearControllers() (Room.handleDisconnect).
 *
 * The LOCAL client_protocol and capabilities: none of the four managers reads a local
 * protocol. They compare REMOTE protocols against the constants
 * CLIENT_PROTOCOL_DATA_STREAM_RPC = 1 and CLIENT_PROTOCOL_DATA_STREAM_V2 = 2 (version.ts;
 * livekit-client itself advertises clientProtocol = 2 and capability 2 when the runtime has
 * DecompressionStream). So the advertised value steers what OTHERS send us; to make it also
 * steer what WE send, the remote-protocol callback is capped at our advertised value
 * (min(remote, local)) unless rawRemoteProtocol is set. Compression additionally needs the
 * recipient's capability 2, which the managers read from the remote capabilities only.
 */
import { DataPacket, Encryption_Type } from '@livekit/protocol';
import { EventEmitter } from 'events';
import {
  type JoinedInfo,
  type LinkConnection,
  type ParticipantInfo,
} from './link';
import {
  IncomingDataStreamManager,
  OutgoingDataStreamManager,
  RPC_REQUEST_DATA_STREAM_TOPIC,
  RPC_RESPONSE_DATA_STREAM_TOPIC,
  RpcClientManager,
  RpcError,
  RpcServerManager,
  EngineEvent,
  livekitClientVersion,
} from './lk';
import { WireTrace } from './trace';

/** Where log lines go: `level` is trace/debug/info/warn/error. */
export type LogSink = (level: string, line: string) => void;

/** Node: stderr (the interop peer's stdout is its command channel); browsers: the console. */
export const defaultLogSink: LogSink = (level, line) => {
  const proc = (globalThis as any).process;
  if (proc?.stderr?.write) proc.stderr.write(line + '\n');
  else if (level === 'error') console.error(line);
  else if (level === 'warn') console.warn(line);
  else console.log(line);
};

/** The StructuredLogger the managers expect; trace/debug/info only when verbose. */
export function makeLogger(name: string, verbose: boolean, sink: LogSink = defaultLogSink): any {
  const emit = (level: string) => (msg: unknown, ...rest: unknown[]) => {
    if (!verbose && (level === 'trace' || level === 'debug' || level === 'info')) return;
    const extra = rest.length ? ' ' + rest.map((r) => (r instanceof Error ? r.message : safeJson(r))).join(' ') : '';
    sink(level, `[${name}] ${level}: ${String(msg)}${extra}`);
  };
  return {
    trace: emit('trace'),
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
    setDefaultLevel() {},
    setLevel() {},
    getLevel: () => 0,
  };
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x));
  } catch {
    return String(v);
  }
}

/** What OutgoingDataStreamManager and the RPC managers need from RTCEngine. */
export class LinkEngine extends EventEmitter {
  e2eeManager = undefined;

  serverVersion: string | undefined = undefined;

  private sequence = 0;

  constructor(
    private link: () => LinkConnection | null,
    readonly sent: WireTrace,
  ) {
    super();
  }

  async sendDataPacket(packet: DataPacket, _kind: number): Promise<void> {
    const link = this.link();
    if (!link) throw new Error('not connected to the relay');
    // RTCEngine stamps every reliable packet with the channel's next sequence number.
    this.sequence += 1;
    packet.sequence = this.sequence;
    const bytes = packet.toBinary();
    this.sent.record(packet, bytes.length);
    await link.sendData(bytes);
  }

  resetSequence(): void {
    this.sequence = 0;
  }
}

export interface PeerOptions {
  clientProtocol: number;
  capabilities: number[];
  verbose?: boolean;
  name?: string;
  /** Do not cap remote protocols at our own (see the constructor). */
  rawRemoteProtocol?: boolean;
  /** Where the managers' log lines go (defaultLogSink unless given). */
  logSink?: LogSink;
}

/**
 * Events: 'joined' (JoinedInfo), 'participant_joined' / 'participant_updated'
 * (ParticipantInfo), 'participant_left' (identity, reason), 'leave' (code, reason) when the
 * relay sends LEAVE, 'disconnected' (reason),
 * 'protocol_error' (Error).
 */
export class LinkPeer extends EventEmitter {
  readonly participants = new Map<string, ParticipantInfo>();

  readonly sent = new WireTrace();

  readonly received = new WireTrace();

  readonly engine: LinkEngine;

  readonly incoming: IncomingDataStreamManager;

  readonly outgoing: OutgoingDataStreamManager;

  readonly rpcClient: RpcClientManager;

  readonly rpcServer: RpcServerManager;

  joined: JoinedInfo | null = null;

  droppedDuplicates = 0;

  /** The code of the relay's LEAVE on the current link, if it sent one. */
  lastLeaveCode: number | null = null;

  private link: LinkConnection | null = null;

  private lastSequence = new Map<string, number>();

  constructor(readonly options: PeerOptions) {
    super();
    const log = makeLogger(options.name ?? 'peer', !!options.verbose, options.logSink);
    this.engine = new LinkEngine(() => this.link, this.sent);
    // The managers only ever compare a REMOTE protocol with 1 or 2. A real 2.23.0 client is
    // itself at 2, so capping the remote value at our advertised one changes nothing for a
    // v2 peer, and makes a peer configured as 0 or 1 behave like an older SDK would (never
    // sending streams/inline/compressed data it would not know). rawRemoteProtocol turns
    // the cap off to show what the unmodified managers do with a lower advertised value.
    const cap = options.rawRemoteProtocol ? Infinity : options.clientProtocol;
    const protocolOf = (identity: string) => Math.min(cap, this.participants.get(identity)?.client_protocol ?? 0);
    const capabilitiesOf = (identity: string) => (this.participants.get(identity)?.capabilities ?? []) as any;
    const everyone = () => Array.from(this.participants.keys());

    this.incoming = new IncomingDataStreamManager();
    this.outgoing = new OutgoingDataStreamManager(this.engine as any, log, protocolOf, capabilitiesOf, everyone);
    this.rpcClient = new RpcClientManager(log, this.outgoing, protocolOf, () => this.engine.serverVersion);
    this.rpcServer = new RpcServerManager(log, this.outgoing, protocolOf);
    const send = ({ packet }: { packet: DataPacket }) => {
      this.engine.sendDataPacket(packet, 0).catch((err) => log.warn('RPC packet not sent', err));
    };
    this.rpcClient.on('sendDataPacket', send);
    this.rpcServer.on('sendDataPacket', send);

    this.incoming.registerTextStreamHandler(RPC_REQUEST_DATA_STREAM_TOPIC, async (reader, { identity }) => {
      await this.rpcServer.handleIncomingDataStream(reader, identity, reader.info.attributes ?? {});
    });
    this.incoming.registerTextStreamHandler(RPC_RESPONSE_DATA_STREAM_TOPIC, async (reader, { identity }) => {
      await this.rpcClient.handleIncomingDataStream(reader, identity, reader.info.attributes ?? {});
    });
  }

  get connected(): boolean {
    return this.link !== null;
  }

  /** Takes over a connected link, JOINs, and resolves with JOINED. */
  join(link: LinkConnection, token: string): Promise<JoinedInfo> {
    this.link = link;
    this.lastLeaveCode = null;
    this.engine.resetSequence();
    link.on('participant', (p: ParticipantInfo) => {
      const known = this.participants.has(p.identity);
      this.participants.set(p.identity, p);
      this.emit(known ? 'participant_updated' : 'participant_joined', p);
    });
    link.on('participant_left', (identity: string, reason: string) => this.onParticipantLeft(identity, reason));
    link.on('data', (bytes: Uint8Array) => this.onData(bytes));
    link.on('protocol_error', (err: Error) => this.emit('protocol_error', err));
    link.on('leave', (code: number, reason: string) => {
      this.lastLeaveCode = code;
      this.emit('leave', code, reason);
    });
    link.on('close', (err?: Error) => this.onClose(err));
    return new Promise((resolve, reject) => {
      const fail = (err?: Error) => reject(err ?? new Error('link closed before JOINED'));
      const leave = (code: number, reason: string) => reject(new Error(`relay refused JOIN: LEAVE ${code} ${reason}`));
      link.once('close', fail);
      link.once('leave', leave);
      link.once('joined', (info: JoinedInfo) => {
        link.off('close', fail);
        link.off('leave', leave);
        this.joined = info;
        this.engine.serverVersion = info.server_version || undefined;
        for (const p of info.participants) this.participants.set(p.identity, p);
        this.incoming.setConnected(true);
        this.emit('joined', info);
        resolve(info);
      });
      link.join({
        token,
        clientProtocol: this.options.clientProtocol,
        capabilities: this.options.capabilities,
        sdk: 'js',
        sdkVersion: livekitClientVersion,
      });
    });
  }

  leave(reason = 'client initiated'): void {
    this.link?.leave(reason);
  }

  private onParticipantLeft(identity: string, reason: string): void {
    if (!this.participants.delete(identity)) return;
    this.incoming.validateParticipantHasNoActiveDataStreams(identity);
    this.rpcClient.handleParticipantDisconnected(identity);
    this.emit('participant_left', identity, reason);
  }

  private onClose(err?: Error): void {
    if (!this.link) return;
    this.link = null;
    this.incoming.setConnected(false);
    this.incoming.clearControllers();
    this.participants.clear();
    this.emit('disconnected', err ? err.message : 'link closed');
  }

  private onData(bytes: Uint8Array): void {
    let packet: DataPacket;
    try {
      packet = DataPacket.fromBinary(bytes);
    } catch (err) {
      this.emit('protocol_error', new Error(`DATA frame is not a valid DataPacket: ${(err as Error).message}`));
      return;
    }
    // RTCEngine.handleDataMessage: drop reliable packets whose sequence is not newer than the
    // last one seen from the same participant_sid.
    if (packet.sequence > 0 && packet.participantSid !== '') {
      const last = this.lastSequence.get(packet.participantSid);
      if (last && packet.sequence <= last) {
        this.droppedDuplicates += 1;
        return;
      }
      this.lastSequence.set(packet.participantSid, packet.sequence);
    }
    this.received.record(packet, bytes.length);
    this.dispatch(packet);
  }

  /** Room.handleDataPacket, restricted to the cases these managers own. */
  private dispatch(packet: DataPacket): void {
    const v = packet.value;
    switch (v.case) {
      case 'streamHeader':
      case 'streamChunk':
      case 'streamTrailer':
        this.incoming.handleDataStreamPacket(packet, Encryption_Type.NONE);
        return;
      case 'rpcRequest':
        this.rpcServer.handleIncomingRpcRequest(packet.participantIdentity, v.value);
        return;
      case 'rpcResponse':
        if (v.value.value.case === 'payload') {
          this.rpcClient.handleIncomingRpcResponseSuccess(v.value.requestId, v.value.value.value);
        } else if (v.value.value.case === 'error') {
          this.rpcClient.handleIncomingRpcResponseFailure(v.value.requestId, RpcError.fromProto(v.value.value.value));
        }
        return;
      case 'rpcAck':
        this.rpcClient.handleIncomingRpcAck(v.value.requestId);
        return;
      default:
        return;
    }
  }

  /** RTCEngine emits Closing on disconnect; open streamText writers close on it. */
  closeWriters(): void {
    this.engine.emit(EngineEvent.Closing);
  }
}
