"""Is this a relay's link port? One quick look at what answers at a tcp:// address.

A relay listens on three ports: the link port (tcp://, binary frames), the WebSocket
port and the HTTP port (both speak HTTP). A board or `lkedge call` pointed at one of the
HTTP ports with tcp:// only sees its join fail ("no JOINED", "the link closed"), so
deploy and call look here to say which port it was.
"""
import socket

HTTP_PROBE_S = 0.3


def answers_http_on(sock, timeout=HTTP_PROBE_S):
    """True if the peer on this connected socket answers an HTTP request with an HTTP
    status line. A relay's link port reads it as a frame and says nothing in time."""
    try:
        sock.settimeout(timeout)
        sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def answers_http(host, port, timeout=HTTP_PROBE_S):
    """answers_http_on over a fresh connection; False when nothing can be reached."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return False
    try:
        return answers_http_on(sock, timeout)
    finally:
        sock.close()


def speaks_tls(host, port, timeout=1.0):
    """True if a TLS handshake (certificate not checked: this only asks whether the port
    speaks TLS) completes at host:port: a tcp:// or ws:// URL given for a relay's tls://
    or wss:// port."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host):
                return True
    except (OSError, ValueError):
        return False
