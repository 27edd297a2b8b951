"""A small Flask app for gunicorn's pre-fork workers: each request does a known amount of CPU work, and every
worker holds 24 MiB of its own (touched after the fork, so not shared copy-on-write with the master)."""
from flask import Flask

app = Flask(__name__)
_held = None


@app.route("/")
def index():
    global _held
    if _held is None:
        _held = bytearray(24 << 20)
        for off in range(0, len(_held), 4096):
            _held[off] = 1
    total = 0
    for i in range(100_000):
        total += i
    return str(total)
