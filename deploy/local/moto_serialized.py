"""moto's server with requests executed one at a time.

moto_server handles each connection on its own thread and its DynamoDB backend has no locks, so
two concurrent TransactWriteItems can both pass their conditions: moto is not isolated, DynamoDB
is. Serializing requests (connections are still accepted concurrently) restores the isolation our
concurrency tests rely on. Usage: python moto_serialized.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

_lock = threading.Lock()


class Serialized:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        with _lock:
            # Materialize the body inside the lock: the backend work is done by then.
            return list(self.app(environ, start_response))


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    run_simple(host, port, Serialized(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
