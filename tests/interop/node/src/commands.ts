/**
 * JSON-lines command interface (stdin → stdout) over a LinkPeer. Every command line is an
 * object with "id" and "cmd"; the reply carries the same "id" and "ok". Commands run
 * concurrently, so replies may come back in any order. Unsolicited lines are events:
 * {"event": ...}. Large payloads travel as file paths, never inside JSON.
 */
import { writeFileSync } from 'fs';
import * as path from 'path';
import { type LinkPeer } from '../../../../clients/browser/src/peer';
import { RpcError } from '../../../../clients/browser/src/lk';
import { bytesPayload, patternText, sha256Hex, splitText, textPayload, utf8 } from './payloads';

export type Emit = (obj: Record<string, unknown>) => void;

/** Payloads up to this many UTF-8 bytes are echoed inside replies/events as "payload"/"text". */
const INLINE_REPORT_LIMIT = 4096;

function destinations(cmd: any): string[] | undefined {
  if (cmd.destination === undefined || cmd.destination === null) return undefined;
  return Array.isArray(cmd.destination) ? cmd.destination : [cmd.destination];
}

function errorReply(err: unknown): Record<string, unknown> {
  if (err instanceof RpcError) {
    return { code: err.code, message: err.message, data: err.data ?? null, request_id: (err as any).requestId ?? null };
  }
  const e = err as any;
  return { code: null, message: e?.message ?? String(e), reason: e?.reason ?? null, name: e?.name ?? null };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class CommandHandler {
  constructor(
    private peer: LinkPeer,
    private emit: Emit,
    private onQuit: () => void,
  ) {}

  /** Runs one command; never throws (failures become {"ok": false, "error": …}). */
  async run(line: string): Promise<void> {
    let cmd: any;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      this.emit({ id: null, ok: false, error: { code: null, message: `command is not JSON: ${(err as Error).message}` } });
      return;
    }
    const id = cmd?.id ?? null;
    try {
      const handler = (this as any)[`cmd_${cmd.cmd}`];
      if (typeof cmd.cmd !== 'string' || typeof handler !== 'function') {
        throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
      }
      const result = await handler.call(this, cmd);
      this.emit({ id, ok: true, ...result });
    } catch (err) {
      this.emit({ id, ok: false, error: errorReply(err) });
    }
  }

  async cmd_perform_rpc(cmd: any) {
    const payload = textPayload(cmd);
    const started = Date.now();
    const [requestId, completion] = await this.peer.rpcClient.performRpc({
      destinationIdentity: cmd.destination,
      method: cmd.method,
      payload,
      responseTimeout: cmd.timeout_ms,
    });
    let response: string;
    try {
      response = await completion;
    } catch (err) {
      // Keep the request id with the error: tests correlate it with the wire trace.
      (err as any).requestId = requestId;
      throw err;
    }
    const bytes = utf8(response);
    if (typeof cmd.response_file === 'string') writeFileSync(cmd.response_file, bytes);
    return {
      request_id: requestId,
      elapsed_ms: Date.now() - started,
      payload_len: bytes.length,
      payload_sha256: sha256Hex(bytes),
      ...(bytes.length <= INLINE_REPORT_LIMIT ? { payload: response } : {}),
    };
  }

  /**
   * Behaviours: "echo", "echo_sha256" (answers JSON {"len", "sha256"} of the request),
   * "fail" (RpcError code/message/data), "throw" (a plain Error with message), "pattern"
   * (n_bytes of UTF-8 built from pattern). "sleep_ms" delays any behaviour.
   */
  async cmd_register_rpc(cmd: any) {
    const behaviour = cmd.behaviour ?? 'echo';
    const known = ['echo', 'echo_sha256', 'fail', 'throw', 'pattern'];
    if (!known.includes(behaviour)) throw new Error(`unknown behaviour ${JSON.stringify(behaviour)}; one of ${known.join(', ')}`);
    this.peer.rpcServer.registerRpcMethod(cmd.method, async (data) => {
      const bytes = utf8(data.payload);
      this.emit({
        event: 'rpc_invoked',
        method: cmd.method,
        request_id: data.requestId,
        caller: data.callerIdentity,
        response_timeout: data.responseTimeout,
        payload_len: bytes.length,
        payload_sha256: sha256Hex(bytes),
      });
      if (cmd.sleep_ms) await sleep(cmd.sleep_ms);
      switch (behaviour) {
        case 'echo':
          return data.payload;
        case 'echo_sha256':
          return JSON.stringify({ len: bytes.length, sha256: sha256Hex(bytes) });
        case 'fail':
          throw new RpcError(cmd.code ?? 2000, cmd.message ?? 'failed', cmd.data ?? undefined);
        case 'throw':
          throw new Error(cmd.message ?? 'handler threw');
        default:
          return patternText(cmd.pattern ?? 'é', cmd.n_bytes ?? 0);
      }
    });
    return {};
  }

  async cmd_unregister_rpc(cmd: any) {
    this.peer.rpcServer.unregisterRpcMethod(cmd.method);
    return {};
  }

  async cmd_send_text(cmd: any) {
    const info = await this.peer.outgoing.sendText(textPayload(cmd), {
      topic: cmd.topic,
      attributes: cmd.attributes,
      destinationIdentities: destinations(cmd),
      compress: cmd.compress,
    });
    return { info: { id: info.id, size: info.size ?? null }, wire: this.peer.sent.get(info.id) ?? null };
  }

  async cmd_send_bytes(cmd: any) {
    const info = await this.peer.outgoing.sendBytes(bytesPayload(cmd), {
      topic: cmd.topic,
      attributes: cmd.attributes,
      destinationIdentities: destinations(cmd),
      compress: cmd.compress,
      name: cmd.name,
      mimeType: cmd.mime_type,
    });
    return { info: { id: info.id, size: info.size ?? null }, wire: this.peer.sent.get(info.id) ?? null };
  }

  /** Incremental writer (livekit-client streamText): one write per piece of piece_bytes. */
  async cmd_stream_text(cmd: any) {
    const text = textPayload(cmd);
    const writer = await this.peer.outgoing.streamText({
      topic: cmd.topic,
      attributes: cmd.attributes,
      destinationIdentities: destinations(cmd),
    });
    for (const piece of splitText(text, cmd.piece_bytes ?? 1024)) await writer.write(piece);
    await writer.close();
    return { info: { id: writer.info.id }, wire: this.peer.sent.get(writer.info.id) ?? null };
  }

  async cmd_stream_bytes(cmd: any) {
    const bytes = bytesPayload(cmd);
    const writer = await this.peer.outgoing.streamBytes({
      topic: cmd.topic,
      attributes: cmd.attributes,
      destinationIdentities: destinations(cmd),
      name: cmd.name,
      mimeType: cmd.mime_type,
    });
    const step = cmd.piece_bytes ?? 1024;
    for (let at = 0; at < bytes.length; at += step) await writer.write(bytes.subarray(at, at + step));
    await writer.close();
    return { info: { id: writer.info.id }, wire: this.peer.sent.get(writer.info.id) ?? null };
  }

  /** Received streams become "stream" / "stream_error" events; save_dir keeps the payload. */
  async cmd_register_stream_handler(cmd: any) {
    const topic = cmd.topic ?? '';
    const saveDir: string | undefined = cmd.save_dir;
    if (cmd.kind === 'bytes') {
      this.peer.incoming.registerByteStreamHandler(topic, (reader, { identity }) => {
        this.consume(reader as any, identity, 'bytes', saveDir, (c: Uint8Array) => c);
      });
    } else if (cmd.kind === 'text' || cmd.kind === undefined) {
      this.peer.incoming.registerTextStreamHandler(topic, (reader, { identity }) => {
        this.consume(reader as any, identity, 'text', saveDir, (c: string) => utf8(c));
      });
    } else {
      throw new Error(`kind must be "text" or "bytes", got ${JSON.stringify(cmd.kind)}`);
    }
    return {};
  }

  async cmd_unregister_stream_handler(cmd: any) {
    if (cmd.kind === 'bytes') this.peer.incoming.unregisterByteStreamHandler(cmd.topic ?? '');
    else this.peer.incoming.unregisterTextStreamHandler(cmd.topic ?? '');
    return {};
  }

  async cmd_participants(_cmd: any) {
    const j = this.peer.joined;
    return {
      connected: this.peer.connected,
      local: j
        ? { identity: j.identity, sid: j.sid, room: j.room, server_version: j.server_version, max_frame: j.max_frame }
        : null,
      participants: Array.from(this.peer.participants.values()),
    };
  }

  /** The wire trace of one stream, by id, in either direction. */
  async cmd_wire(cmd: any) {
    return {
      sent: this.peer.sent.get(cmd.stream_id) ?? null,
      received: this.peer.received.get(cmd.stream_id) ?? null,
      dropped_duplicates: this.peer.droppedDuplicates,
    };
  }

  async cmd_quit(_cmd: any) {
    setImmediate(this.onQuit);
    return {};
  }

  private async consume(
    reader: AsyncIterable<any> & { info: any },
    sender: string,
    kind: 'text' | 'bytes',
    saveDir: string | undefined,
    toBytes: (chunk: any) => Uint8Array,
  ): Promise<void> {
    const info = reader.info;
    const hash = (await import('crypto')).createHash('sha256');
    const kept: Uint8Array[] = [];
    let len = 0;
    let pieces = 0;
    const started = Date.now();
    const base = { kind, topic: info.topic, sender, stream_id: info.id };
    try {
      for await (const chunk of reader) {
        const bytes = toBytes(chunk);
        hash.update(bytes);
        len += bytes.length;
        pieces += 1;
        if (saveDir || len <= INLINE_REPORT_LIMIT) kept.push(bytes);
      }
    } catch (err) {
      this.emit({ event: 'stream_error', ...base, len, error: errorReply(err), wire: this.peer.received.get(info.id) ?? null });
      return;
    }
    const whole = Buffer.concat(kept);
    let file: string | null = null;
    if (saveDir) {
      file = path.join(saveDir, info.id);
      writeFileSync(file, whole);
    }
    this.emit({
      event: 'stream',
      ...base,
      attributes: { ...(info.attributes ?? {}) },
      len,
      sha256: hash.digest('hex'),
      pieces,
      elapsed_ms: Date.now() - started,
      file,
      ...(len <= INLINE_REPORT_LIMIT ? (kind === 'text' ? { text: whole.toString('utf8') } : { hex: whole.toString('hex') }) : {}),
      info: {
        id: info.id,
        mime_type: info.mimeType,
        size: info.size ?? null,
        timestamp: info.timestamp,
        name: info.name ?? null,
        attached_stream_ids: info.attachedStreamIds ?? null,
      },
      wire: this.peer.received.get(info.id) ?? null,
    });
  }
}
