/**
 * lkedge interop peer: livekit-client's real RPC and data-stream managers joined to an
 * lkedge relay over LINK.md, driven by JSON lines on stdin, answering on stdout.
 *
 *   node build/peer.cjs --host 127.0.0.1 --port 7880 --token JWT | --token-file PATH
 *        [--client-protocol 2] [--capabilities 2[,1]|none] [--ping-ms 5000] [--verbose]
 *        [--raw-remote-protocol] [--ws-url ws://HOST:PORT]
 *
 * --raw-remote-protocol: do not cap remote protocols at our advertised one (peer.ts).
 * --token-file: (with --ws-url) a file holding the token, read at every join and rejoin.
 * --ws-url: join as the browser client does (clients/browser's Room over the relay's
 *   WebSocket port, which also rejoins after a lost link) instead of over TCP; the
 *   room_* commands (roomcommands.ts) then drive its public API. Node 20 needs
 *   --experimental-websocket for it.
 *
 * Exit codes: 0 after "quit" or stdin EOF, 2 bad arguments, 3 could not join.
 * First stdout line: {"event":"joined",...} or {"event":"join_failed","error":...}.
 */
import { readFileSync } from 'fs';
import * as readline from 'readline';
import { CommandHandler } from './commands';
import { connectTcp } from './tcplink';
import { LinkPeer } from '../../../../clients/browser/src/peer';
import { livekitClientVersion } from '../../../../clients/browser/src/lk';
import { Room } from '../../../../clients/browser/src/index';
import { RoomCommands } from './roomcommands';

interface Args {
  host: string;
  port: number;
  token: string;
  clientProtocol: number;
  capabilities: number[];
  pingMs: number;
  verbose: boolean;
  rawRemoteProtocol: boolean;
  wsUrl: string;
  tokenFile: string;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { host: '127.0.0.1', port: 0, token: '', clientProtocol: 2, capabilities: [2], pingMs: 5000, verbose: false, rawRemoteProtocol: false, wsUrl: '', tokenFile: '' };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    const int = (v: string) => {
      if (!/^-?\d+$/.test(v)) throw new Error(`${flag} needs an integer, got ${JSON.stringify(v)}`);
      return parseInt(v, 10);
    };
    if (flag === '--host') args.host = value();
    else if (flag === '--port') args.port = int(value());
    else if (flag === '--token') args.token = value();
    else if (flag === '--token-file') args.tokenFile = value();
    else if (flag === '--client-protocol') args.clientProtocol = int(value());
    else if (flag === '--capabilities') {
      const v = value();
      args.capabilities = v === '' || v === 'none' ? [] : v.split(',').map(int);
    } else if (flag === '--ping-ms') args.pingMs = int(value());
    else if (flag === '--verbose') args.verbose = true;
    else if (flag === '--raw-remote-protocol') args.rawRemoteProtocol = true;
    else if (flag === '--ws-url') args.wsUrl = value();
    else throw new Error(`unknown argument ${flag}`);
  }
  if (!args.port && !args.wsUrl) throw new Error('--port (or --ws-url) is required');
  if (!args.token && !args.tokenFile) throw new Error('--token (or --token-file) is required');
  if (args.tokenFile && !args.wsUrl) throw new Error('--token-file needs --ws-url');
  return args;
}

function emitLine(obj: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(obj, (_k, v) => (typeof v === 'bigint' ? Number(v) : v)) + '\n');
}

function reportPeerEvents(peer: LinkPeer): void {
  peer.on('participant_joined', (p) => emitLine({ event: 'participant_joined', participant: p }));
  peer.on('participant_updated', (p) => emitLine({ event: 'participant_updated', participant: p }));
  peer.on('participant_left', (identity, reason) => emitLine({ event: 'participant_left', identity, reason }));
  peer.on('leave', (code, reason) => emitLine({ event: 'leave', code, reason }));
  peer.on('protocol_error', (err) => emitLine({ event: 'protocol_error', message: err.message }));
}

/** The browser client's way in: its Room, with its own events reported too. */
async function joinRoom(args: Args): Promise<Room> {
  // --token-file: the token as a function, read again at every join and rejoin
  const token = args.tokenFile ? () => readFileSync(args.tokenFile, 'utf8').trim() : args.token;
  const room = await Room.connect(args.wsUrl, token, {
    clientProtocol: args.clientProtocol,
    capabilities: args.capabilities,
    pingIntervalMs: args.pingMs,
    verbose: args.verbose,
    reconnectMinMs: 200,
    reconnectMaxMs: 2000,
  });
  reportPeerEvents(room.peer);
  room.on('reconnecting', (why) => emitLine({ event: 'reconnecting', reason: why }));
  room.on('reconnected', () => emitLine({ event: 'reconnected', joined: room.joined }));
  room.on('disconnected', (why) => emitLine({ event: 'disconnected', reason: why }));
  room.on('participantConnected', (p) => emitLine({ event: 'room_participant_connected', identity: p.identity }));
  room.on('participantDisconnected', (identity, reason) =>
    emitLine({ event: 'room_participant_disconnected', identity, reason }),
  );
  return room;
}

async function main(): Promise<void> {
  // stdout is the command channel: anything livekit-client logs through console goes to stderr.
  console.log = console.error;
  console.info = console.error;
  console.debug = console.error;
  console.warn = console.error;

  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`peer: ${(err as Error).message}\n`);
    process.exit(2);
  }
  let peer: LinkPeer;
  let room: Room | null = null;
  try {
    if (args.wsUrl) {
      room = await joinRoom(args);
      peer = room.peer;
    } else {
      peer = new LinkPeer({
        clientProtocol: args.clientProtocol,
        capabilities: args.capabilities,
        verbose: args.verbose,
        rawRemoteProtocol: args.rawRemoteProtocol,
      });
      reportPeerEvents(peer);
      peer.on('disconnected', (reason) => emitLine({ event: 'disconnected', reason }));
      await peer.join(await connectTcp(args.host, args.port, args.pingMs), args.token);
    }
    emitLine({
      event: 'joined',
      ...peer.joined,
      livekit_client: livekitClientVersion,
      client_protocol: args.clientProtocol,
      capabilities: args.capabilities,
    });
  } catch (err) {
    emitLine({ event: 'join_failed', error: (err as Error).message });
    process.exit(3);
  }

  let quitting = false;
  const quit = () => {
    if (quitting) return;
    quitting = true;
    if (room) void room.disconnect();
    else {
      peer.closeWriters();
      peer.leave('client initiated');
    }
    // Let the LEAVE frame flush before exiting.
    setTimeout(() => process.exit(0), 50);
  };
  const commands = room ? new RoomCommands(room, emitLine, quit) : new CommandHandler(peer, emitLine, quit);
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', (line) => {
    if (line.trim()) void commands.run(line);
  });
  rl.on('close', quit);
}

void main();
