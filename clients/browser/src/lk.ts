/**
 * The livekit-client parts we run, imported from the package's own TypeScript sources
 * (unmodified; esbuild bundles them). Kept in one file so the exact paths are visible.
 */
export { default as RpcClientManager } from '../node_modules/livekit-client/src/room/rpc/client/RpcClientManager';
export { default as RpcServerManager } from '../node_modules/livekit-client/src/room/rpc/server/RpcServerManager';
export { RpcError } from '../node_modules/livekit-client/src/room/rpc/utils';
export { default as IncomingDataStreamManager } from '../node_modules/livekit-client/src/room/data-stream/incoming/IncomingDataStreamManager';
export { default as OutgoingDataStreamManager } from '../node_modules/livekit-client/src/room/data-stream/outgoing/OutgoingDataStreamManager';
export {
  RPC_REQUEST_DATA_STREAM_TOPIC,
  RPC_RESPONSE_DATA_STREAM_TOPIC,
} from '../node_modules/livekit-client/src/room/rpc/utils';
export { EngineEvent } from '../node_modules/livekit-client/src/room/events';
export {
  version as livekitClientVersion,
  protocolVersion,
  clientProtocol as livekitClientProtocol,
} from '../node_modules/livekit-client/src/version';
export type {
  TextStreamReader,
  ByteStreamReader,
} from '../node_modules/livekit-client/src/room/data-stream/incoming/StreamReader';
export type { PerformRpcParams, RpcInvocationData } from '../node_modules/livekit-client/src/room/rpc/utils';
export type {
  ByteStreamHandler,
  TextStreamHandler,
} from '../node_modules/livekit-client/src/room/data-stream/incoming/StreamReader';
export type {
  ByteStreamWriter,
  TextStreamWriter,
} from '../node_modules/livekit-client/src/room/data-stream/outgoing/StreamWriter';
export type {
  ByteStreamInfo,
  SendBytesOptions,
  SendFileOptions,
  SendTextOptions,
  StreamBytesOptions,
  StreamTextOptions,
  TextStreamInfo,
} from '../node_modules/livekit-client/src/room/types';
