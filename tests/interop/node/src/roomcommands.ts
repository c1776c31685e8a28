/**
 * Commands over the browser client's public API (clients/browser/src/index.ts), beside
 * the LinkPeer commands (commands.ts) that the interop suites share: what an application
 * in a browser calls, driven from pytest (tests/clients/test_browser_client.py).
 */
import { type Room, RpcError } from '../../../../clients/browser/src/index';
import { CommandHandler, type Emit } from './commands';
import { sha256Hex, textPayload, utf8 } from './payloads';

export class RoomCommands extends CommandHandler {
  constructor(
    private room: Room,
    emit: Emit,
    onQuit: () => void,
  ) {
    super(room.peer, emit, onQuit);
  }

  /** room.localParticipant.performRpc; a failure is the RpcError's code and message. */
  async cmd_room_perform_rpc(cmd: any) {
    const started = Date.now();
    const payload = await this.room.localParticipant.performRpc({
      destinationIdentity: cmd.destination,
      method: cmd.method,
      payload: textPayload(cmd),
      responseTimeout: cmd.timeout_ms,
    });
    const bytes = utf8(payload);
    return {
      payload_len: bytes.length,
      payload_sha256: sha256Hex(bytes),
      payload: bytes.length <= 4096 ? payload : null,
      elapsed_ms: Date.now() - started,
    };
  }

  /** room.registerRpcMethod with a handler that answers "<prefix><payload>" or fails. */
  async cmd_room_register_rpc(cmd: any) {
    this.room.registerRpcMethod(cmd.method, async (data) => {
      if (cmd.fail) throw new RpcError(cmd.fail, `refused by ${this.room.localParticipant.identity}`);
      return `${cmd.prefix ?? ''}${data.payload}`;
    });
    return {};
  }

  /** room.localParticipant.sendText */
  async cmd_room_send_text(cmd: any) {
    const info = await this.room.localParticipant.sendText(textPayload(cmd), {
      topic: cmd.topic,
      destinationIdentities: cmd.destination ? [cmd.destination] : undefined,
      attributes: cmd.attributes,
    });
    return { stream_id: info.id, size: info.size ?? null };
  }

  async cmd_room_state(_cmd: any) {
    const r = this.room;
    return {
      state: r.state,
      name: r.name,
      identity: r.localParticipant.identity,
      last_error: r.lastError,
      remote: Array.from(r.remoteParticipants.keys()).sort(),
    };
  }

  async cmd_room_disconnect(_cmd: any) {
    await this.room.disconnect();
    return { state: this.room.state };
  }
}
