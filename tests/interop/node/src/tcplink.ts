/**
 * The interop peer's link to the relay over TCP: clients/browser's LinkConnection (the
 * LINK.md codec and frame handling the browser client uses too) on a Node socket.
 */
import * as net from 'net';
import { type ByteChannel, LinkConnection } from '../../../../clients/browser/src/link';

class TcpChannel implements ByteChannel {
  constructor(private socket: net.Socket) {}

  write(bytes: Uint8Array): boolean {
    return this.socket.write(bytes);
  }

  drained(): Promise<void> {
    return new Promise<void>((resolve) => this.socket.once('drain', resolve));
  }

  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function connectTcp(host: string, port: number, pingMs: number): Promise<LinkConnection> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host, port });
    socket.setNoDelay(true);
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      const conn = new LinkConnection(new TcpChannel(socket), pingMs);
      socket.on('data', (chunk: Buffer) => conn.receive(chunk));
      socket.on('error', (err) => conn.channelClosed(err));
      socket.on('close', () => conn.channelClosed(undefined));
      resolve(conn);
    });
  });
}
