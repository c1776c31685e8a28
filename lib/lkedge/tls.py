"""TLS contexts for tls:// and wss:// (imported by transport.py only for those schemes,
and only when no ready `ssl=` context was given).

    make_context(url, verify, cadata, cafile) -> SSLContext

`cafile` (a path) is read into `cadata`; `cadata` is PEM (str or bytes) or DER bytes.
On CPython: the system CA store plus cadata; verify=False turns off hostname and
certificate checks. On MicroPython (no system CA store): verify=True needs cadata or
cafile, else a TransportError says so; only the first certificate of a PEM bundle is
loaded, converted to DER (its SSLContext takes one DER certificate).
"""
import sys

from .transport import TransportError


def make_context(url, verify, cadata, cafile):
    import ssl
    if cafile is not None:
        with open(cafile, "rb") as f:
            cadata = f.read()
    if isinstance(cadata, str):
        cadata = cadata.encode()
    pem = cadata is not None and cadata.lstrip().startswith(b"-----")
    if sys.implementation.name != "micropython":
        ctx = ssl.create_default_context()
        if cadata is not None:
            ctx.load_verify_locations(cadata=cadata.decode() if pem else cadata)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if cadata is None:
        raise TransportError(url, "certificate verification needs cadata= or cafile= on MicroPython "
                                  "(no system CA store); pass verify=False to skip it")
    if pem:  # the first certificate, as DER
        import binascii
        begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
        i = cadata.find(begin)
        j = cadata.find(end, i + 1)
        if i < 0 or j < 0:
            raise ValueError("no PEM certificate in the CA data")
        cadata = binascii.a2b_base64(cadata[i + len(begin):j].replace(b"\r", b"").replace(b"\n", b""))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cadata)
    return ctx
