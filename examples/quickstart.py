"""Send a round start to three FL clients on loopback and print what happened to each.

Two clients are served by a tiny stdlib HTTP server (one accepts, one rejects); the third
endpoint has nobody listening. The training's repository shows what the default callbacks did.
"""

from __future__ import annotations

import http.server
import threading
import uuid

import flnotify


class Client(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status = 409 if self.path.startswith("/reject") else 202
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Client)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    accepting = flnotify.Receiver(uuid.uuid4(), f"{base}/accept")
    rejecting = flnotify.Receiver(uuid.uuid4(), f"{base}/reject")
    unreachable = flnotify.Receiver(uuid.uuid4(), "http://127.0.0.1:9/nobody")

    repo = flnotify.InMemoryTrainingRepository()
    training = repo.create_training(
        actor=accepting,
        participants=[accepting, rejecting, unreachable],
        model_id=uuid.uuid4(),
        round=1,
        state=flnotify.TrainingState.ONGOING,
    )
    retry = flnotify.RetryPolicy(max_attempts=2, initial_backoff=0.05)
    with flnotify.Notifier(repository=repo, retry=retry) as notifier:
        report = notifier.send(flnotify.TrainingRoundStartNotification.from_training(training))
    server.shutdown()
    server.server_close()

    for delivery in report:
        print(delivery.describe())
    after = repo.get_training(training.id)
    print(f"training state: {after.state.value}")
    print(f"participants left: {len(after.participants)} of 3")


if __name__ == "__main__":
    main()
