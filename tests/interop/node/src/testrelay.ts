/**
 * A minimal in-process LINK.md relay used ONLY by selftest.ts, so the peer can be checked
 * without the project's relay (tests/interop/test_node_smoke.py uses the real one). It
 * does not verify tokens: it reads identity (sub) and room (video.room) from the JWT
 * payload. Routing follows LINK.md: sender identity/sid stamped on every DATA packet,
 * destinations honoured, never echoed back, PARTICIPANT before data, PARTICIPANT_LEFT after.
 */
import { DataPacket } from '@livekit/protocol';
import * as net from 'net';
import { decode as cborDecode } from '../../../../clients/browser/src/cbor';
import {
  DATA,
  FrameParser,
  JOIN,
  JOINED,
  PARTICIPANT,
  PARTICIPANT_LEFT,
  PING,
  PONG,
  encodeControl,
  encodeFrame,
} from '../../../../clients/browser/src/link';

interface Member {
  socket: net.Socket;
  identity: string;
  sid: string;
  room: string;
  info: Record<string, any>;
}

export class TestRelay {
  private server = net.createServer((s) => this.accept(s));

  private members: Member[] = [];

  private nextSid = 1;

  /** Every DATA packet routed, for assertions on what crossed the wire. */
  readonly routed: DataPacket[] = [];

  constructor(readonly maxFrame = 65536) {}

  listen(): Promise<number> {
    return new Promise((resolve) => {
      this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port));
    });
  }

  close(): void {
    for (const m of this.members) m.socket.destroy();
    this.server.close();
  }

  /** Drops a participant's connection, as a crash would. */
  kick(identity: string): void {
    this.members.find((m) => m.identity === identity)?.socket.destroy();
  }

  private accept(socket: net.Socket): void {
    const parser = new FrameParser(this.maxFrame);
    let me: Member | null = null;
    socket.on('data', (chunk: Buffer) => {
      for (const [type, body] of parser.push(chunk)) {
        if (type === JOIN) me = this.join(socket, cborDecode(body) as any);
        else if (type === PING) socket.write(encodeFrame(PONG, body));
        else if (type === DATA && me) this.route(me, body);
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      if (!me) return;
      const gone = me;
      this.members = this.members.filter((m) => m !== gone);
      for (const m of this.peersOf(gone)) {
        m.socket.write(encodeControl(PARTICIPANT_LEFT, { identity: gone.identity, reason: 'disconnected' }));
      }
    });
  }

  private join(socket: net.Socket, msg: Record<string, any>): Member {
    const claims = JSON.parse(Buffer.from(String(msg.token).split('.')[1], 'base64url').toString('utf8'));
    const member: Member = {
      socket,
      identity: claims.sub,
      sid: `PA_${this.nextSid++}`,
      room: claims.video.room,
      info: {},
    };
    member.info = {
      identity: member.identity,
      sid: member.sid,
      client_protocol: msg.client_protocol ?? 0,
      capabilities: msg.capabilities ?? [],
      attributes: {},
    };
    const others = this.peersOf(member);
    socket.write(
      encodeControl(JOINED, {
        v: 1,
        room: member.room,
        identity: member.identity,
        sid: member.sid,
        server_version: '1.9.0',
        max_frame: this.maxFrame,
        participants: others.map((m) => m.info),
      }),
    );
    for (const m of others) m.socket.write(encodeControl(PARTICIPANT, member.info));
    this.members.push(member);
    return member;
  }

  private peersOf(member: Member): Member[] {
    return this.members.filter((m) => m.room === member.room && m !== member);
  }

  private route(from: Member, body: Uint8Array): void {
    const packet = DataPacket.fromBinary(body);
    packet.participantIdentity = from.identity;
    packet.participantSid = from.sid;
    this.routed.push(packet);
    const frame = encodeFrame(DATA, packet.toBinary());
    const targets = packet.destinationIdentities;
    for (const m of this.peersOf(from)) {
      if (targets.length === 0 || targets.includes(m.identity)) m.socket.write(frame);
    }
  }
}

/** An unsigned JWT-shaped token carrying what TestRelay reads. */
export function testToken(identity: string, room: string): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'none' })}.${part({ sub: identity, video: { room, roomJoin: true } })}.`;
}
