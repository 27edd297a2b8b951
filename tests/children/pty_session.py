"""Drives a program in a real pseudo-terminal, as a person at a keyboard would, for the `vitals run`
terminal tests.

Usage: pty_session.py SCRIPT_JSON PROGRAM ARGS...

SCRIPT_JSON is a list of steps, run in order:
  ["expect", TEXT]        wait (up to 20 s) until TEXT has appeared in the output since the last expect
  ["send", TEXT]          type TEXT (may hold control characters such as "\u0003" for Ctrl-C)
  ["winsize", ROWS, COLS] resize the terminal (the kernel sends SIGWINCH to the foreground group)
  ["exit_status", CODE]   wait for PROGRAM to exit and check its exit code (128+N when killed by signal N)

Prints the whole transcript and exits 0 when every step held, 1 (naming the step) otherwise.
"""

import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time

STEP_TIMEOUT = 20.0  # seconds; generous for a loaded 2-core machine, a step normally takes milliseconds


def main():
    steps = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    pid, master = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    transcript = b""
    seen_upto = 0

    def read_some(timeout):
        nonlocal transcript
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the slave side closed (program exited)
            return False
        if not data:
            return False
        transcript += data
        return True

    def fail(why):
        sys.stdout.write(transcript.decode(errors="replace"))
        sys.stdout.write("\nFAILED: " + why + "\n")
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        sys.exit(1)

    for step in steps:
        kind = step[0]
        if kind == "expect":
            want = step[1].encode()
            deadline = time.monotonic() + STEP_TIMEOUT
            while want not in transcript[seen_upto:]:
                if time.monotonic() > deadline or not read_some(0.1):
                    fail("expected %r" % step[1])
            seen_upto = transcript.index(want, seen_upto) + len(want)
        elif kind == "send":
            os.write(master, step[1].encode())
        elif kind == "winsize":
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", step[1], step[2], 0, 0))
        elif kind == "exit_status":
            deadline = time.monotonic() + STEP_TIMEOUT
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    fail("program did not exit")
                read_some(0.1)
            while read_some(0.05) and select.select([master], [], [], 0)[0]:
                pass
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            if code != step[1]:
                fail("exit status %d, expected %d" % (code, step[1]))
        else:
            fail("unknown step %r" % kind)
    sys.stdout.write(transcript.decode(errors="replace"))
    sys.exit(0)


if __name__ == "__main__":
    main()
