"""A real SMTP server (aiosmtpd) for the tests: STARTTLS required, AUTH LOGIN/PLAIN required
(user `dialtone`, password `s3cret`), every accepted mail written to OUT_DIR/NNNN.eml.

Usage: smtp_sink.py PORT CERT KEY OUT_DIR — prints "ready" once listening on 127.0.0.1:PORT
and runs until its standard input closes."""
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Handler:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        path = os.path.join(out, "%04d.eml" % self.n)
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"dialtone" and auth_data.password == b"s3cret"
    # handled=False: let aiosmtpd answer 535 itself on failure.
    return AuthResult(success=ok, handled=False)


ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=port,
    tls_context=ctx,
    require_starttls=True,
    authenticator=authenticate,
    auth_required=True,
    server_hostname="localhost",
)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
