/**
 * In-process self-test: several LinkPeers (real livekit-client managers + our LINK client
 * and command layer) joined through TestRelay over loopback TCP. Checks the wiring, not
 * the project's relay (test_node_smoke.py does that). Exit code 0 = all passed.
 */
import { strict as assert } from 'assert';
import { CommandHandler } from './commands';
import { connectTcp } from './tcplink';
import { LinkPeer } from '../../../../clients/browser/src/peer';
import { patternText, sha256Hex } from './payloads';
import { TestRelay, testToken } from './testrelay';
import { DATA, FrameParser, encodeFrame } from '../../../../clients/browser/src/link';

class Driver {
  readonly events: Record<string, any>[] = [];
  private replies = new Map<number, (r: Record<string, any>) => void>();
  private nextId = 1;
  private waiters: Array<() => void> = [];
  readonly handler: CommandHandler;

  constructor(readonly peer: LinkPeer) {
    this.handler = new CommandHandler(peer, (o) => this.onLine(o), () => {});
  }

  private onLine(o: Record<string, any>): void {
    if ('event' in o) {
      this.events.push(o);
      this.waiters.splice(0).forEach((w) => w());
    } else {
      this.replies.get(o.id as number)?.(o);
    }
  }

  call(cmd: Record<string, any>): Promise<Record<string, any>> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.replies.set(id, resolve);
      void this.handler.run(JSON.stringify({ id, ...cmd }));
    });
  }

  async ok(cmd: Record<string, any>): Promise<Record<string, any>> {
    const r = await this.call(cmd);
    assert.equal(r.ok, true, `${cmd.cmd} failed: ${JSON.stringify(r.error)}`);
    return r;
  }

  async event(pred: (e: Record<string, any>) => boolean, ms = 5000): Promise<Record<string, any>> {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = this.events.find(pred);
      if (hit) {
        this.events.splice(this.events.indexOf(hit), 1);
        return hit;
      }
      if (Date.now() > deadline) throw new Error('timed out waiting for an event');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }
}

async function joinPeer(
  port: number,
  identity: string,
  clientProtocol: number,
  capabilities: number[],
  rawRemoteProtocol = false,
): Promise<Driver> {
  const peer = new LinkPeer({ clientProtocol, capabilities, name: identity, rawRemoteProtocol });
  const link = await connectTcp('127.0.0.1', port, 1000);
  await peer.join(link, testToken(identity, 'selftest'));
  return new Driver(peer);
}

/** Text that deflate cannot shrink much: pseudo-random code points, some multi-byte. */
function randomText(nBytes: number): string {
  let seed = 12345;
  const alphabet = 'abcdefghijklmnopqrstuvwxyzé€😀0123456789';
  const chars = Array.from(alphabet);
  let out = '';
  let size = 0;
  while (size < nBytes - 4) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    const ch = chars[seed % chars.length];
    out += ch;
    size += Buffer.byteLength(ch);
  }
  return out;
}

async function settle(ms = 100) {
  await new Promise((r) => setTimeout(r, ms));
}

async function main() {
  console.log = console.error;
  const relay = new TestRelay();
  const port = await relay.listen();
  const alice = await joinPeer(port, 'alice', 2, [2]);
  const bob = await joinPeer(port, 'bob', 2, [2]);
  const carol = await joinPeer(port, 'carol', 0, []);
  const dave = await joinPeer(port, 'dave', 1, []);
  const erin = await joinPeer(port, 'erin', 0, [], true);
  await settle();
  const results: Array<[string, string | null]> = [];
  const check = async (name: string, fn: () => Promise<void>) => {
    relay.routed.length = 0;
    try {
      await fn();
      results.push([name, null]);
    } catch (err) {
      results.push([name, (err as Error).stack ?? String(err)]);
    }
  };

  await alice.ok({ cmd: 'register_rpc', method: 'echo', behaviour: 'echo' });
  await alice.ok({ cmd: 'register_rpc', method: 'fail', behaviour: 'fail', code: 2001, message: 'nope', data: 'd' });
  await alice.ok({ cmd: 'register_rpc', method: 'throw', behaviour: 'throw', message: 'boom' });
  await alice.ok({ cmd: 'register_rpc', method: 'big', behaviour: 'pattern', pattern: 'aé€😀', n_bytes: 20000 });
  await alice.ok({ cmd: 'register_rpc', method: 'slow', behaviour: 'echo', sleep_ms: 3000 });

  await check('participants tracked from JOINED and PARTICIPANT', async () => {
    const r = await bob.ok({ cmd: 'participants' });
    const byId = Object.fromEntries(r.participants.map((p: any) => [p.identity, p]));
    assert.deepEqual(Object.keys(byId).sort(), ['alice', 'carol', 'dave', 'erin']);
    assert.equal(byId.carol.client_protocol, 0);
    assert.deepEqual(byId.alice.capabilities, [2]);
  });

  await check('v2->v2 small RPC goes as inline lk.rpc_request stream, answered by stream', async () => {
    const r = await bob.ok({ cmd: 'perform_rpc', destination: 'alice', method: 'echo', payload: 'hello é' });
    assert.equal(r.payload, 'hello é');
    const cases = relay.routed.map((p) => p.value.case);
    assert.deepEqual(cases, ['streamHeader', 'rpcAck', 'streamHeader']);
    const req = relay.routed[0].value.value as any;
    assert.equal(req.topic, 'lk.rpc_request');
    assert.ok(req.inlineContent !== undefined);
    assert.equal(req.attributes['lk.rpc_request_version'], '2');
    assert.equal(req.attributes['lk.rpc_request_response_timeout_ms'], '15000');
    assert.equal((relay.routed[2].value.value as any).topic, 'lk.rpc_response');
  });

  await check('v2->v2 1 MiB repetitive RPC: deflated to fit ONE inline header packet', async () => {
    const payload = patternText('aé€😀', 1 << 20);
    const r = await bob.ok({ cmd: 'perform_rpc', destination: 'alice', method: 'echo', payload });
    assert.equal(r.payload_len, 1 << 20);
    assert.equal(r.payload_sha256, sha256Hex(payload));
    const header = relay.routed[0].value.value as any;
    assert.equal(header.compression, 1);
    assert.ok(header.inlineContent.length < 15000);
  });

  await check('v2->v2 1 MiB incompressible RPC: compressed chunked stream, echoed intact', async () => {
    const payload = randomText(1 << 20);
    const r = await bob.ok({ cmd: 'perform_rpc', destination: 'alice', method: 'echo', payload });
    assert.equal(r.payload_sha256, sha256Hex(payload));
    const header = relay.routed[0].value.value as any;
    assert.equal(header.compression, 1);
    assert.equal(header.inlineContent, undefined);
    const chunks = relay.routed.filter((p) => p.value.case === 'streamChunk' && p.participantIdentity === 'bob');
    assert.ok(chunks.length > 1);
    assert.ok(chunks.every((p) => (p.value.value as any).content.length <= 15000));
  });

  await check('v2 caller to v1 handler: RpcRequest packet and RpcResponse packet', async () => {
    await carol.ok({ cmd: 'register_rpc', method: 'echo', behaviour: 'echo' });
    const r = await bob.ok({ cmd: 'perform_rpc', destination: 'carol', method: 'echo', payload: 'x' });
    assert.equal(r.payload, 'x');
    assert.deepEqual(relay.routed.map((p) => p.value.case), ['rpcRequest', 'rpcAck', 'rpcResponse']);
    assert.equal((relay.routed[0].value.value as any).responseTimeoutMs, 15000);
  });

  await check('unmodified managers: a handler advertising 0 still answers a v2 caller by stream', async () => {
    await erin.ok({ cmd: 'register_rpc', method: 'echo', behaviour: 'echo' });
    const r = await bob.ok({ cmd: 'perform_rpc', destination: 'erin', method: 'echo', payload: 'x' });
    assert.equal(r.payload, 'x');
    assert.deepEqual(relay.routed.map((p) => p.value.case), ['rpcRequest', 'rpcAck', 'streamHeader']);
  });

  await check('v1 destination: request over 15360 bytes fails 1402 with nothing sent', async () => {
    const r = await bob.call({ cmd: 'perform_rpc', destination: 'carol', method: 'echo', payload: 'a'.repeat(15361) });
    assert.equal(r.ok, false);
    assert.equal(r.error.code, 1402);
    assert.equal(relay.routed.length, 0);
  });

  await check('v1 caller gets 1504 for a response over 15360 bytes', async () => {
    const r = await carol.call({ cmd: 'perform_rpc', destination: 'alice', method: 'big', payload: '' });
    assert.equal(r.error.code, 1504);
  });

  await check('RpcError code/message/data travel unchanged (as an rpc_response packet)', async () => {
    const r = await bob.call({ cmd: 'perform_rpc', destination: 'alice', method: 'fail', payload: '' });
    assert.deepEqual([r.error.code, r.error.message, r.error.data], [2001, 'nope', 'd']);
    assert.equal(relay.routed.at(-1)?.value.case, 'rpcResponse');
  });

  await check('plain exception -> 1500; unknown method -> 1400', async () => {
    const a = await bob.call({ cmd: 'perform_rpc', destination: 'alice', method: 'throw', payload: '' });
    assert.equal(a.error.code, 1500);
    const b = await bob.call({ cmd: 'perform_rpc', destination: 'alice', method: 'nope', payload: '' });
    assert.equal(b.error.code, 1400);
  });

  await check('text stream with attributes reaches the handler, sender stamped by relay', async () => {
    await alice.ok({ cmd: 'register_stream_handler', kind: 'text', topic: 'chat' });
    await bob.ok({ cmd: 'send_text', topic: 'chat', payload: 'hi 😀', attributes: { a: '1' }, destination: 'alice' });
    const e = await alice.event((x) => x.event === 'stream' && x.topic === 'chat');
    assert.equal(e.sender, 'bob');
    assert.equal(e.text, 'hi 😀');
    assert.deepEqual(e.attributes, { a: '1' });
    assert.equal(e.wire.inline, true);
  });

  await check('compression only when every recipient advertises v2 + capability 2', async () => {
    const big = 'abc'.repeat(20000);
    const toAlice = await bob.ok({ cmd: 'send_text', topic: 'chat', payload: big, destination: 'alice' });
    assert.equal(toAlice.wire.compression, 1);
    const toDave = await bob.ok({ cmd: 'send_text', topic: 'chat', payload: big, destination: 'dave' });
    assert.equal(toDave.wire.compression, 0);
    assert.equal(toDave.wire.inline, false);
    assert.equal(toDave.wire.max_chunk, 15000);
    const e = await alice.event((x) => x.event === 'stream' && x.topic === 'chat');
    assert.equal(e.len, big.length);
  });

  await check('byte stream to a v1 receiver is chunked, uncompressed, received intact', async () => {
    await carol.ok({ cmd: 'register_stream_handler', kind: 'bytes', topic: 'blob' });
    const hex = Buffer.alloc(40000, 7).toString('hex');
    const r = await bob.ok({ cmd: 'send_bytes', topic: 'blob', payload_hex: hex, destination: 'carol', name: 'f.bin' });
    assert.equal(r.wire.inline, false);
    assert.equal(r.wire.chunks, 3);
    const e = await carol.event((x) => x.event === 'stream' && x.topic === 'blob');
    assert.equal(e.len, 40000);
    assert.equal(e.info.name, 'f.bin');
    assert.equal(e.sha256, sha256Hex(Buffer.from(hex, 'hex')));
  });

  await check('destination leaving with a call pending -> 1503', async () => {
    const pending = bob.call({ cmd: 'perform_rpc', destination: 'alice', method: 'slow', payload: 'z' });
    await alice.event((x) => x.event === 'rpc_invoked' && x.method === 'slow');
    relay.kick('alice');
    const r = await pending;
    assert.equal(r.error.code, 1503);
  });

  await check('link frames split anywhere, or packed together, parse to the same frames', async () => {
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const sent: Array<[number, Uint8Array]> = [];
    for (const size of [0, 1, 127, 128, 16383, 16384, 70000, 3]) {
      sent.push([DATA, Uint8Array.from({ length: size }, (_, i) => (i * 31 + size) & 255)]);
    }
    const wire = Buffer.concat(sent.map(([t, b]) => encodeFrame(t, b)));
    for (let round = 0; round < 50; round++) {
      const parser = new FrameParser(1 << 20);
      const got: Array<[number, Uint8Array]> = [];
      for (let at = 0; at < wire.length; ) {
        const k = 1 + rand(round % 2 ? 9000 : 40);
        got.push(...parser.push(Uint8Array.from(wire.subarray(at, at + k))));
        at += k;
      }
      assert.deepEqual(got.map(([t, b]) => [t, Buffer.from(b).toString('hex')]), sent.map(([t, b]) => [t, Buffer.from(b).toString('hex')]));
    }
    assert.throws(() => new FrameParser(100).push(encodeFrame(DATA, new Uint8Array(100))), /exceeds max_frame 100/);
  });

  relay.close();
  let failed = 0;
  for (const [name, err] of results) {
    process.stderr.write(`${err ? 'FAIL' : 'ok  '} ${name}\n${err ? err + '\n' : ''}`);
    if (err) failed += 1;
  }
  process.stderr.write(`${results.length - failed} passed, ${failed} failed\n`);
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  process.stderr.write(`selftest crashed: ${err.stack ?? err}\n`);
  process.exit(1);
});
