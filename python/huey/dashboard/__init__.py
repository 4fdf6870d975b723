"""The web dashboard: ``huey dashboard APP [--bind 127.0.0.1:8080] [--token TOKEN]``.

One server-rendered page (``templates/page.html``, the panel from ``huey.dashboard.panel``)
and a small script (``static/dashboard.js``) that fetches the panel again every few seconds.
Served by the standard library's ``http.server``; no build step, no dependency.

Security: bound to a loopback address by default. Bound elsewhere it refuses to start without
an access token (``--token`` or ``$HUEY_DASHBOARD_TOKEN``), which a browser presents once as
``?token=...`` (it is then kept in a same-site, HTTP-only cookie) and scripts as
``Authorization: Bearer ...``. Actions (requeue, purge) are POST only and carry a CSRF token
tied to this server and the access token; a POST whose Origin is another host is refused.

Routes: ``GET /`` the page, ``GET /panel`` the fragment, ``GET /static/*``,
``POST /dlq/requeue`` (``id=...`` or ``all=1``), ``POST /dlq/purge``.
"""

import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
import urllib.parse
from html import escape
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from string import Template

from huey.dashboard import panel

HERE = os.path.dirname(os.path.abspath(__file__))
COOKIE = 'huey_dashboard_token'
STATIC_TYPES = {'.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8'}
SECURITY_HEADERS = {
    'Content-Security-Policy': (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    'X-Frame-Options': 'DENY',
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Cache-Control': 'no-store',
}


def is_loopback(host):
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(*parts):
    with open(os.path.join(HERE, *parts), encoding='utf8') as fh:
        return fh.read()


class Dashboard:
    """The application: routes, access token and CSRF checks, rendering."""

    def __init__(self, huey, token=None, refresh=2.0):
        self.huey = huey
        self.token = token
        self.refresh = refresh
        self._secret = secrets.token_bytes(32)
        self.csrf = hmac.new(self._secret, (token or '').encode(), hashlib.sha256).hexdigest()
        self.page = Template(_read('templates', 'page.html'))
        self.static = {
            name: _read('static', name).encode('utf8')
            for name in ('dashboard.js', 'dashboard.css')
        }
        self.lock = threading.Lock()  # one storage reader at a time

    def authorized(self, request):
        if self.token is None:
            return True
        offered = []
        header = request.headers.get('Authorization', '')
        if header.startswith('Bearer '):
            offered.append(header[len('Bearer ') :])
        cookie = SimpleCookie(request.headers.get('Cookie', ''))
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        return any(hmac.compare_digest(value.encode(), self.token.encode()) for value in offered)

    def render_panel(self):
        with self.lock:
            return panel.render(self.huey, self.csrf)

    def render_page(self, notice=None):
        """The whole page; ``notice`` (an action's outcome) sits above the panel, so the
        panel's refreshes leave it on screen."""
        try:
            body = self.render_panel()
        except Exception as exc:
            body = (
                '<section class="bad" id="storage-error">The storage could not be read: '
                f'{escape(type(exc).__name__)}: {escape(str(exc))}</section>'
            )
        return self.page.substitute(
            queue=escape(self.huey.name),
            storage=escape(type(self.huey.storage).__name__),
            refreshed=time.strftime('%H:%M:%S'),
            refresh=self.refresh,
            root='',
            notice=f'<section class="notice" id="notice">{escape(notice)}</section>'
            if notice
            else '',
            panel=body,
        )

    def act(self, path, form):
        """Run a POST action; returns the notice to show."""
        huey = self.huey
        with self.lock:
            if path == '/dlq/requeue':
                if form.get('all') == '1':
                    ids = [letter['id'] for letter in huey.dead_letters()]
                else:
                    ids = [form['id']] if form.get('id') else []
                done = sum(1 for id in ids if huey.requeue_dead_letter(id))
                return f'Requeued {done} dead letter(s).'
            if path == '/dlq/purge':
                return f'Purged {huey.purge_dead_letters()} dead letter(s).'
        return None


class Handler(BaseHTTPRequestHandler):
    server_version = 'huey-dashboard'
    app = None  # set on the subclass made per server

    def log_message(self, format, *args):
        pass  # quiet: this is an operator's tool, not a web server log

    def send(self, status, body=b'', content_type='text/html; charset=utf-8', headers=()):
        self.send_response(status)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def refuse(self, status, message):
        self.send(status, f'<p>{escape(message)}</p>'.encode())

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        app = self.app
        offered = query.get('token', [None])[0]
        if app.token is not None and offered is not None:
            if not hmac.compare_digest(offered.encode(), app.token.encode()):
                return self.refuse(HTTPStatus.UNAUTHORIZED, 'Wrong access token.')
            cookie = f'{COOKIE}={offered}; HttpOnly; SameSite=Strict; Path=/'
            return self.send(
                HTTPStatus.SEE_OTHER,
                headers=[('Location', url.path or '/'), ('Set-Cookie', cookie)],
            )
        if url.path.startswith('/static/'):
            name = url.path[len('/static/') :]
            if name not in app.static:
                return self.refuse(HTTPStatus.NOT_FOUND, 'Not found.')
            return self.send(
                HTTPStatus.OK, app.static[name], STATIC_TYPES[os.path.splitext(name)[1]]
            )
        if not app.authorized(self):
            return self.refuse(
                HTTPStatus.UNAUTHORIZED,
                'This dashboard needs its access token: open it as /?token=YOUR_TOKEN.',
            )
        if url.path == '/':
            notice = query.get('done', [None])[0]
            return self.send(HTTPStatus.OK, app.render_page(notice).encode())
        if url.path == '/panel':
            try:
                body = app.render_panel()
            except Exception as exc:
                return self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, f'Storage error: {exc}')
            return self.send(HTTPStatus.OK, body.encode())
        return self.refuse(HTTPStatus.NOT_FOUND, 'Not found.')

    def do_POST(self):
        app = self.app
        url = urllib.parse.urlsplit(self.path)
        if not app.authorized(self):
            return self.refuse(HTTPStatus.UNAUTHORIZED, 'Access token required.')
        origin = self.headers.get('Origin')
        if origin and origin != 'null':
            if urllib.parse.urlsplit(origin).netloc != self.headers.get('Host'):
                return self.refuse(HTTPStatus.FORBIDDEN, 'Cross-origin request refused.')
        try:
            length = int(self.headers.get('Content-Length') or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= 65536:
            return self.refuse(HTTPStatus.BAD_REQUEST, 'Bad request body.')
        fields = urllib.parse.parse_qs(self.rfile.read(length).decode('utf8', 'replace'))
        form = {key: values[0] for key, values in fields.items()}
        if not hmac.compare_digest(form.get('csrf', '').encode(), app.csrf.encode()):
            return self.refuse(
                HTTPStatus.FORBIDDEN, 'Missing or wrong CSRF token: reload the page.'
            )
        try:
            notice = app.act(url.path, form)
        except Exception as exc:
            return self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, f'Storage error: {exc}')
        if notice is None:
            return self.refuse(HTTPStatus.NOT_FOUND, 'Not found.')
        location = '/?' + urllib.parse.urlencode({'done': notice})
        return self.send(HTTPStatus.SEE_OTHER, headers=[('Location', location)])


class DashboardServer:
    """A running dashboard: ``url``, ``wait()``, ``shutdown()``."""

    def __init__(self, app, host, port):
        handler = type('DashboardHandler', (Handler,), {'app': app})
        server_class = type(
            'Server',
            (ThreadingHTTPServer,),
            {'address_family': _family(host), 'daemon_threads': True},
        )
        self.app = app
        self._server = server_class((host, port), handler)
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name='huey-dashboard', daemon=True
        )
        self._thread.start()

    @property
    def url(self):
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.port}/'

    def wait(self):
        while self._thread.is_alive():
            self._thread.join(0.5)

    def shutdown(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _family(host):
    import socket

    return socket.AF_INET6 if ':' in host else socket.AF_INET


def serve(huey, bind=('127.0.0.1', 8080), token=None, refresh=2.0):
    """Start the dashboard for ``huey`` on ``bind`` (``(host, port)`` or ``'host:port'``)
    in a daemon thread. A non-loopback address needs ``token``."""
    if isinstance(bind, str):
        from huey.metrics import parse_bind

        bind = parse_bind(bind, 'dashboard address')
    host, port = bind
    if token is not None and not token:
        token = None
    if not is_loopback(host) and token is None:
        raise ValueError(
            f'the dashboard binds to {host}, which is not localhost: give it an access token '
            '(--token or $HUEY_DASHBOARD_TOKEN)'
        )
    return DashboardServer(Dashboard(huey, token, refresh), host, port)
