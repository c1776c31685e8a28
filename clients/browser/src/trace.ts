/**
 * Wire trace: what actually crossed the link for each data stream (inline or chunked,
 * compression, chunk sizes, trailer reason), per direction. livekit-client's managers do
 * not expose this, and interop tests need it to check negotiation.
 */
import { type DataPacket } from '@livekit/protocol';

export interface StreamWire {
  kind: 'text' | 'bytes' | 'unknown';
  inline: boolean;
  inline_len: number | null;
  compression: number;
  total_length: number | null;
  header_packet_len: number;
  chunks: number;
  chunk_bytes: number;
  max_chunk: number;
  max_chunk_packet_len: number;
  trailer: boolean;
  trailer_reason: string;
  trailer_attributes: Record<string, string>;
  destinations: string[];
}

export class WireTrace {
  readonly streams = new Map<string, StreamWire>();

  private order: string[] = [];

  constructor(private limit = 1000) {}

  record(packet: DataPacket, packetLen: number): void {
    const v = packet.value;
    if (v.case === 'streamHeader') {
      const h = v.value;
      this.remember(h.streamId, {
        kind: h.contentHeader.case === 'textHeader' ? 'text' : h.contentHeader.case === 'byteHeader' ? 'bytes' : 'unknown',
        inline: h.inlineContent !== undefined,
        inline_len: h.inlineContent !== undefined ? h.inlineContent.length : null,
        compression: h.compression,
        total_length: h.totalLength !== undefined ? Number(h.totalLength) : null,
        header_packet_len: packetLen,
        chunks: 0,
        chunk_bytes: 0,
        max_chunk: 0,
        max_chunk_packet_len: 0,
        trailer: false,
        trailer_reason: '',
        trailer_attributes: {},
        destinations: [...packet.destinationIdentities],
      });
    } else if (v.case === 'streamChunk') {
      const s = this.streams.get(v.value.streamId);
      if (!s) return;
      s.chunks += 1;
      s.chunk_bytes += v.value.content.length;
      s.max_chunk = Math.max(s.max_chunk, v.value.content.length);
      s.max_chunk_packet_len = Math.max(s.max_chunk_packet_len, packetLen);
    } else if (v.case === 'streamTrailer') {
      const s = this.streams.get(v.value.streamId);
      if (!s) return;
      s.trailer = true;
      s.trailer_reason = v.value.reason;
      s.trailer_attributes = { ...v.value.attributes };
    }
  }

  get(streamId: string): StreamWire | undefined {
    return this.streams.get(streamId);
  }

  private remember(id: string, wire: StreamWire): void {
    if (!this.streams.has(id)) this.order.push(id);
    this.streams.set(id, wire);
    // Bounded: a long-running peer must not grow without limit.
    while (this.order.length > this.limit) this.streams.delete(this.order.shift() as string);
  }
}
