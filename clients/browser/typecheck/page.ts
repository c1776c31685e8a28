/**
 * A page's TypeScript, compiled by typecheck.mjs with nothing but lkedge.d.mts and the
 * DOM's types (strict): the declarations stand alone, as they do in a page's project
 * that has only dist/lkedge.mjs and dist/lkedge.d.mts.
 */
import { type ParticipantInfo, type RpcInvocationData, Room, RpcError } from '../lkedge.mjs';

async function fetchToken(): Promise<string> {
  const r = await fetch('/token');
  return r.text();
}

export async function main(): Promise<void> {
  const room = await Room.connect('wss://relay.example:7881', fetchToken, { reconnectMaxMs: 10000 });
  room.on('participantConnected', (p: ParticipantInfo) => console.log(p.identity, p.capabilities));
  room.on('participantDisconnected', (identity, reason) => console.log(identity.length, reason.length));
  room.on('disconnected', (why) => console.log(why.toUpperCase()));

  room.registerRpcMethod('browser.echo', async (data: RpcInvocationData) => {
    if (data.payload.length > 1000) throw new RpcError(2001, 'too long', String(data.payload.length));
    return `${data.callerIdentity}: ${data.payload}`;
  });
  room.registerTextStreamHandler('chat', async (reader, { identity }) => {
    for await (const piece of reader) console.log(identity, reader.info.topic, piece.length);
  });
  room.registerByteStreamHandler('file', async (reader) => {
    const chunks: Uint8Array[] = await reader.readAll();
    console.log(reader.info.name, reader.info.size, chunks.length);
  });

  try {
    const answer: string = await room.localParticipant.performRpc({
      destinationIdentity: 'board-1',
      method: 'device.info',
      payload: '',
      responseTimeout: 10000,
    });
    console.log(answer);
  } catch (err) {
    if (err instanceof RpcError && err.code === RpcError.ErrorCode.RECIPIENT_DISCONNECTED) console.log('gone');
  }
  const info = await room.localParticipant.sendText('hello', { topic: 'chat', destinationIdentities: ['board-1'] });
  console.log(info.id, info.size);
  const writer = await room.localParticipant.streamBytes({ topic: 'file', name: 'log.bin', totalSize: 3 });
  await writer.write(new Uint8Array([1, 2, 3]));
  await writer.close();
  console.log(room.state === 'connected', room.remoteParticipants.get('board-1')?.client_protocol);
  await room.disconnect();
}
