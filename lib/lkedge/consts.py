"""LiveKit wire constants shared by the RPC and data stream state machines (WIRE.md)."""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

CLIENT_PROTOCOL_DEFAULT = const(0)          # RPC v1 only, data streams v1 only
CLIENT_PROTOCOL_DATA_STREAM_RPC = const(1)  # understands RPC v2 over data streams
CLIENT_PROTOCOL_DATA_STREAM_V2 = const(2)   # also inline single-packet streams
CAP_PACKET_TRAILER = const(1)
CAP_COMPRESSION_DEFLATE_RAW = const(2)      # can DEcompress raw-deflate streams

STREAM_CHUNK_SIZE_BYTES = const(15000)      # max chunk content / whole header packet
MAX_V1_PAYLOAD_BYTES = const(15360)         # RPC v1 payload limit (UTF-8 bytes)
MAX_ERROR_MESSAGE_BYTES = const(256)
MAX_ERROR_DATA_BYTES = const(15360)

COMPRESSION_NONE = const(0)
COMPRESSION_DEFLATE_RAW = const(1)

OP_CREATE = const(0)

TOPIC_RPC_REQUEST = "lk.rpc_request"
TOPIC_RPC_RESPONSE = "lk.rpc_response"
ATTR_RPC_REQUEST_ID = "lk.rpc_request_id"
ATTR_RPC_METHOD = "lk.rpc_request_method"
ATTR_RPC_TIMEOUT = "lk.rpc_request_response_timeout_ms"
ATTR_RPC_VERSION = "lk.rpc_request_version"

RPC_ACK_TIMEOUT_MS = const(7000)
RPC_MIN_WIRE_TIMEOUT_MS = const(8000)
RPC_DEFAULT_TIMEOUT_MS = const(15000)

MIME_TEXT = "text/plain"
MIME_BYTES = "application/octet-stream"
