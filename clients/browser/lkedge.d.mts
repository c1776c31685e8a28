/**
 * Type declarations of dist/lkedge.mjs, the browser client's bundle (build.mjs copies this
 * file beside it as dist/lkedge.d.mts, where TypeScript looks for an .mjs file's types).
 *
 * Written by hand, self-contained (no livekit-client types needed by a page's project),
 * and checked by typecheck.mjs against the sources: every declared member must be what
 * src/index.ts and livekit-client actually give (conformance.ts), so this file cannot
 * promise more than the bundle does.
 */

/** An RPC call's failure, as livekit-client's RpcError: `code`, `message`, `data`. */
export declare class RpcError extends Error {
  constructor(code: number, message: string, data?: string, options?: { cause?: unknown });
  code: number;
  data?: string;
  static MAX_MESSAGE_BYTES: number;
  static MAX_DATA_BYTES: number;
  static ErrorCode: {
    readonly APPLICATION_ERROR: 1500;
    readonly CONNECTION_TIMEOUT: 1501;
    readonly RESPONSE_TIMEOUT: 1502;
    readonly RECIPIENT_DISCONNECTED: 1503;
    readonly RESPONSE_PAYLOAD_TOO_LARGE: 1504;
    readonly SEND_FAILED: 1505;
    readonly UNSUPPORTED_METHOD: 1400;
    readonly RECIPIENT_NOT_FOUND: 1401;
    readonly REQUEST_PAYLOAD_TOO_LARGE: 1402;
    readonly UNSUPPORTED_SERVER: 1403;
    readonly UNSUPPORTED_VERSION: 1404;
  };
  /** An error with one of the codes above and its standard message. */
  static builtIn(key: keyof typeof RpcError.ErrorCode, data?: string, options?: { cause?: unknown }): RpcError;
}

/** The link to the relay failed: a join refused (its LEAVE code and reason in the message), a bad token. */
export declare class LinkError extends Error {}

export interface PerformRpcParams {
  destinationIdentity: string;
  method: string;
  payload: string;
  /** ms; livekit-client sends at least 8000 */
  responseTimeout?: number;
}

export interface RpcInvocationData {
  requestId: string;
  /** stamped by the relay from the caller's token */
  callerIdentity: string;
  payload: string;
  /** ms */
  responseTimeout: number;
}

/** A remote participant as the relay announced it (LINK.md's PARTICIPANT map). */
export interface ParticipantInfo {
  identity: string;
  sid: string;
  client_protocol: number;
  capabilities: number[];
  attributes: { [key: string]: string };
}

export interface BaseStreamInfo {
  id: string;
  mimeType: string;
  topic: string;
  timestamp: number;
  /** total bytes of a finite stream; undefined when unknown */
  size?: number;
  attributes?: Record<string, string>;
}

export interface TextStreamInfo extends BaseStreamInfo {
  attachedStreamIds?: Array<string>;
}

export interface ByteStreamInfo extends BaseStreamInfo {
  name: string;
}

export interface StreamReadAllOptions {
  /** ends the read early */
  signal?: AbortSignal;
}

/** An incoming text stream: `for await (const piece of reader)` or `await reader.readAll()`. */
export interface TextStreamReader {
  readonly info: TextStreamInfo;
  /** progress between 0 and 1; undefined for a stream of unknown size */
  onProgress?: (progress: number | undefined) => void;
  [Symbol.asyncIterator](): { next: () => Promise<IteratorResult<string>>; return(): Promise<IteratorResult<string>> };
  withAbortSignal(signal: AbortSignal): this;
  readAll(opts?: StreamReadAllOptions): Promise<string>;
}

/** An incoming byte stream: `for await (const chunk of reader)` or `await reader.readAll()`. */
export interface ByteStreamReader {
  readonly info: ByteStreamInfo;
  onProgress?: (progress: number | undefined) => void;
  [Symbol.asyncIterator](): {
    next: () => Promise<IteratorResult<Uint8Array>>;
    return(): Promise<IteratorResult<Uint8Array>>;
  };
  withAbortSignal(signal: AbortSignal): this;
  readAll(opts?: StreamReadAllOptions): Promise<Array<Uint8Array>>;
}

export type TextStreamHandler = (reader: TextStreamReader, participantInfo: { identity: string }) => void;
export type ByteStreamHandler = (reader: ByteStreamReader, participantInfo: { identity: string }) => void;

/** An outgoing stream written in pieces; `close()` ends it. */
export interface TextStreamWriter {
  readonly info: TextStreamInfo;
  write(text: string): Promise<void>;
  close(): Promise<void>;
}

export interface ByteStreamWriter {
  readonly info: ByteStreamInfo;
  write(chunk: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export interface SendTextOptions {
  topic?: string;
  destinationIdentities?: Array<string>;
  attachments?: Array<File>;
  onProgress?: (progress: number) => void;
  attributes?: Record<string, string>;
  /** deflate-raw when every recipient can inflate it (true) */
  compress?: boolean;
}

export interface SendBytesOptions {
  topic?: string;
  destinationIdentities?: Array<string>;
  attributes?: Record<string, string>;
  onProgress?: (progress: number) => void;
  compress?: boolean;
  name?: string;
  mimeType?: string;
}

export interface SendFileOptions {
  topic?: string;
  mimeType?: string;
  destinationIdentities?: Array<string>;
  onProgress?: (progress: number) => void;
  compress?: boolean;
}

export interface StreamTextOptions {
  topic?: string;
  destinationIdentities?: Array<string>;
  type?: 'create' | 'update';
  streamId?: string;
  version?: number;
  attachedStreamIds?: Array<string>;
  replyToStreamId?: string;
  totalSize?: number;
  attributes?: Record<string, string>;
}

export interface StreamBytesOptions {
  name?: string;
  topic?: string;
  attributes?: Record<string, string>;
  destinationIdentities?: Array<string>;
  streamId?: string;
  mimeType?: string;
  totalSize?: number;
}

/** A token, or a function that mints one; it is called at every join and rejoin. */
export type TokenSource = string | (() => string | Promise<string>);

export type LogSink = (level: string, line: string) => void;

export interface ConnectOptions {
  /** advertised client_protocol (2) */
  clientProtocol?: number;
  /** advertised capabilities ([2], deflate-raw, when the browser has DecompressionStream) */
  capabilities?: number[];
  /** keepalive PING period, ms (10000) */
  pingIntervalMs?: number;
  /** for opening the WebSocket, then for joining, ms (10000 each) */
  joinTimeoutMs?: number;
  /** rejoin after a lost link (true) */
  autoReconnect?: boolean;
  /** rejoin backoff bounds, ms (500 and 30000; doubled each try, with jitter) */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** bytes queued in the WebSocket before senders wait (1 MiB) */
  sendHighWater?: number;
  /** log livekit-client's info and debug lines too */
  verbose?: boolean;
  /** where log lines go (the console unless given) */
  logSink?: LogSink;
}

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

export declare class LocalParticipant {
  private constructor();
  readonly identity: string;
  readonly sid: string;
  /** resolves with the answer, or rejects with RpcError */
  performRpc(params: PerformRpcParams): Promise<string>;
  registerRpcMethod(method: string, handler: (data: RpcInvocationData) => Promise<string>): void;
  unregisterRpcMethod(method: string): void;
  sendText(text: string, options?: SendTextOptions): Promise<TextStreamInfo>;
  sendBytes(bytes: Uint8Array, options?: SendBytesOptions): Promise<ByteStreamInfo>;
  sendFile(file: File, options?: SendFileOptions): Promise<{ id: string }>;
  streamText(options?: StreamTextOptions): Promise<TextStreamWriter>;
  streamBytes(options?: StreamBytesOptions): Promise<ByteStreamWriter>;
}

export interface RoomEvents {
  participantConnected: [participant: ParticipantInfo];
  participantUpdated: [participant: ParticipantInfo];
  participantDisconnected: [identity: string, reason: string];
  reconnecting: [why: string];
  reconnected: [];
  disconnected: [why: string];
  protocolError: [error: Error];
}

/** A room joined through an lkedge relay's WebSocket port. */
export declare class Room {
  private constructor();
  /** joins the room the token names (ws:// or wss://) */
  static connect(url: string, token: TokenSource, options?: ConnectOptions): Promise<Room>;
  readonly localParticipant: LocalParticipant;
  /** remote participants by identity */
  readonly remoteParticipants: Map<string, ParticipantInfo>;
  readonly state: ConnectionState;
  readonly name: string;
  /** why the link was last lost or refused */
  readonly lastError: string;
  registerRpcMethod(method: string, handler: (data: RpcInvocationData) => Promise<string>): void;
  unregisterRpcMethod(method: string): void;
  registerTextStreamHandler(topic: string, handler: TextStreamHandler): void;
  unregisterTextStreamHandler(topic: string): void;
  registerByteStreamHandler(topic: string, handler: ByteStreamHandler): void;
  unregisterByteStreamHandler(topic: string): void;
  /** leaves (LEAVE, then the WebSocket closes); pending calls fail with 1503 */
  disconnect(reason?: string): Promise<void>;
  on<E extends keyof RoomEvents>(event: E, listener: (...args: RoomEvents[E]) => void): this;
  once<E extends keyof RoomEvents>(event: E, listener: (...args: RoomEvents[E]) => void): this;
  off<E extends keyof RoomEvents>(event: E, listener: (...args: RoomEvents[E]) => void): this;
}
