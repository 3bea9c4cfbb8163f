"""Local HTTPS-intercepting CONNECT proxy for TensorFlow's GCS filesystem (tests only).

TensorFlow's C++ GCS filesystem (tf.io.gfile, tf.summary) hard-codes
https://www.googleapis.com/storage/v1/ and .../upload/storage/v1/ and has no
endpoint-override variable. Its bundled libcurl does honour `https_proxy` and
`CURL_CA_BUNDLE`, so:

  https_proxy=http://127.0.0.1:<PROXY_PORT>  no_proxy=127.0.0.1,localhost
  CURL_CA_BUNDLE=<test CA pem>

make TF send `CONNECT www.googleapis.com:443` here. This proxy answers 200,
terminates TLS with a certificate for www.googleapis.com signed by the test CA,
and forwards each plain HTTP/1.1 request to the emulator's *http* port with
`Connection: close`, relaying the response back byte for byte.

It also drops `Transfer-Encoding: identity`, which TF sends on its empty POST
that starts a resumable upload and which Go's net/http (fake-gcs-server)
rejects with "501 Unsupported transfer encoding", and rewrites the
`Location: http://www.googleapis.com/...` that fake-gcs-server returns for a
resumable upload back to https, so TF's follow-up PUTs come here too.

Only www.googleapis.com / storage.googleapis.com are accepted; every other
CONNECT target gets 403, so nothing leaves the machine.

usage: python tests/gcs_proxy.py LISTEN_PORT UPSTREAM_HOST:UPSTREAM_PORT CERT.pem KEY.pem
"""
import socket
import ssl
import sys
import threading

ALLOWED = {"www.googleapis.com", "storage.googleapis.com"}


def _read_head(sock, buf=b""):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
        if len(buf) > 1 << 20:
            raise OSError("header too large")
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def _recv_exact(sock, n, buf):
    out = [buf[:n]]
    have = len(out[0])
    rest = buf[n:]
    while have < n:
        chunk = sock.recv(min(65536, n - have))
        if not chunk:
            raise OSError("client closed mid-body")
        out.append(chunk)
        have += len(chunk)
    return b"".join(out), rest


def _read_chunked(sock, buf):
    """Returns the raw chunked body (re-sent verbatim) and leftover bytes."""
    raw = b""
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("client closed mid-chunk")
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        size = int(line.split(b";")[0].strip(), 16)
        raw += line + b"\r\n"
        if size == 0:
            # trailers until empty line
            while True:
                while b"\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("client closed in trailers")
                    buf += chunk
                tline, buf = buf.split(b"\r\n", 1)
                raw += tline + b"\r\n"
                if tline == b"":
                    return raw, buf
        data, buf = _recv_exact(sock, size + 2, buf)
        raw += data


def serve_tls(tls, upstream_addr):
    buf = b""
    while True:
        head, buf = _read_head(tls, buf)
        if head is None:
            return
        lines = head.split(b"\r\n")
        request_line, headers = lines[0], lines[1:]
        keep = []
        clen, chunked, expect = 0, False, False
        for h in headers:
            name, _, value = h.partition(b":")
            lname, v = name.strip().lower(), value.strip()
            if lname == b"transfer-encoding":
                if v.lower() == b"chunked":
                    chunked = True
                    keep.append(h)
                continue  # drop "identity" (Go rejects it)
            if lname == b"connection" or lname == b"proxy-connection":
                continue
            if lname == b"expect":
                expect = True
                continue
            if lname == b"content-length":
                clen = int(v)
            keep.append(h)
        keep.append(b"Connection: close")
        if expect:
            tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            body, buf = _read_chunked(tls, buf)
        else:
            body, buf = _recv_exact(tls, clen, buf)
        up = socket.create_connection(upstream_addr)
        try:
            up.sendall(b"\r\n".join([request_line] + keep) + b"\r\n\r\n" + body)
            # fake-gcs-server builds the resumable-upload Location from the Host
            # header and its own scheme (http): point it back at https so that
            # TF's follow-up PUTs also go through this proxy.
            rhead, rrest = _read_head(up)
            if rhead is None:
                return
            rlines = rhead.split(b"\r\n")
            for i, h in enumerate(rlines):
                if h.lower().startswith(b"location:"):
                    for host in ALLOWED:
                        rlines[i] = h.replace(b"http://" + host.encode(), b"https://" + host.encode())
                        h = rlines[i]
            tls.sendall(b"\r\n".join(rlines) + b"\r\n\r\n" + rrest)
            while True:
                data = up.recv(65536)
                if not data:
                    break
                tls.sendall(data)
        finally:
            up.close()
        # Upstream answered with "Connection: close": close so curl reconnects.
        return


def handle(client, upstream_addr, ctx):
    try:
        head, rest = _read_head(client)
        if head is None:
            return
        parts = head.split(b"\r\n")[0].split()
        if len(parts) < 2 or parts[0].upper() != b"CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host = parts[1].decode().rsplit(":", 1)[0]
        if host not in ALLOWED:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        tls = ctx.wrap_socket(client, server_side=True)
        try:
            serve_tls(tls, upstream_addr)
        finally:
            try:
                tls.close()
            except OSError:
                pass
    except (OSError, ssl.SSLError, ValueError) as e:
        print(f"proxy: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    finally:
        try:
            client.close()
        except OSError:
            pass


def main():
    port = int(sys.argv[1])
    uhost, uport = sys.argv[2].rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    ctx.set_alpn_protocols(["http/1.1"])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    print(f"gcs mitm proxy on 127.0.0.1:{port} -> http://{uhost}:{uport}", flush=True)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c, (uhost, int(uport)), ctx), daemon=True).start()


if __name__ == "__main__":
    main()
